//! Who the other facilities of a secure-aggregation round are, as their CA-signed
//! certificates say: the coordinator forwards each peer's certificate, and the agent checks
//! it against its own copy of the federation CA before trusting the key inside. A
//! coordinator without the CA's private key cannot substitute a peer's signing key.

use ed25519_dalek::VerifyingKey;
use rustls::pki_types::{CertificateDer, UnixTime};
use thiserror::Error;
use x509_parser::extensions::GeneralName;

/// `harambee://agent/<facility>`, the identity SAN of an agent certificate.
const AGENT_SAN_PREFIX: &str = "harambee://agent/";
/// id-Ed25519 (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("the federation CA certificate is unreadable: {0}")]
    BadCa(String),
    #[error("certificate of peer {facility:?} is not valid for this federation: {reason}")]
    Untrusted { facility: String, reason: String },
}

/// The federation CA, as this agent trusts it.
pub struct PeerVerifier {
    ca_der: CertificateDer<'static>,
}

impl PeerVerifier {
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<PeerVerifier, PeerError> {
        use rustls::pki_types::pem::PemObject;
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem).map_err(|e| PeerError::BadCa(e.to_string()))?;
        Ok(PeerVerifier { ca_der })
    }

    /// Checks that `cert_der` is a current agent certificate issued by the federation CA for
    /// `facility`, and returns the Ed25519 key it certifies.
    pub fn verify(&self, facility: &str, cert_der: &[u8]) -> Result<VerifyingKey, PeerError> {
        self.verify_chain(facility, cert_der, &[])
    }

    /// [`PeerVerifier::verify`] for a certificate issued by an intermediate (an issuing CA
    /// on the coordinator's host while the root stays offline): `intermediates` are the DER
    /// certificates between it and the root.
    pub fn verify_chain(
        &self,
        facility: &str,
        cert_der: &[u8],
        intermediates: &[Vec<u8>],
    ) -> Result<VerifyingKey, PeerError> {
        let untrusted = |reason: String| PeerError::Untrusted {
            facility: facility.to_owned(),
            reason,
        };
        let anchor = webpki::anchor_from_trusted_cert(&self.ca_der)
            .map_err(|e| PeerError::BadCa(format!("{e:?}")))?;
        let der = CertificateDer::from(cert_der);
        let ee = webpki::EndEntityCert::try_from(&der).map_err(|e| untrusted(format!("{e:?}")))?;
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        ee.verify_for_usage(
            algs,
            &[anchor],
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| untrusted(format!("{e:?}")))?;

        let (_, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|e| untrusted(e.to_string()))?;
        let named = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value.general_names.iter().any(|n| matches!(n, GeneralName::URI(uri) if uri.strip_prefix(AGENT_SAN_PREFIX) == Some(facility)))
            })
            .unwrap_or(false);
        if !named {
            return Err(untrusted(format!(
                "it does not name {AGENT_SAN_PREFIX}{facility}"
            )));
        }
        ed25519_key(&cert).map_err(untrusted)
    }
}

/// The Ed25519 key of a certificate the TLS layer has already verified.
pub fn ed25519_key_of(cert_der: &[u8]) -> Result<VerifyingKey, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    ed25519_key(&cert)
}

fn ed25519_key(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<VerifyingKey, String> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err("its key is not Ed25519".to_owned());
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| "malformed Ed25519 key".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// The agent's own Ed25519 signing key: the private key of its certificate (PKCS#8 PEM).
pub fn signing_key_from_pem(key_pem: &[u8]) -> anyhow::Result<ed25519_dalek::SigningKey> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::str::from_utf8(key_pem)
        .map_err(|_| anyhow::anyhow!("the private key file is not PEM text"))?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| {
        anyhow::anyhow!(
            "the agent's private key is not PKCS#8 Ed25519 ({e}); re-issue the certificate"
        )
    })
}

/// The facility named by an agent certificate (PEM): `<facility>` of its
/// `harambee://agent/<facility>` URI SAN.
pub fn facility_of_pem(cert_pem: &[u8]) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| anyhow::anyhow!("unreadable certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("the certificate has no subject alternative name"))?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix(AGENT_SAN_PREFIX).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("the certificate names no {AGENT_SAN_PREFIX}<facility>"))
}
