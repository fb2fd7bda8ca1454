//! Who is on the other end of a connection, as the federation's certificates say: the
//! identity scheme both ends of the wire share.
//!
//! - A client certificate carries exactly one URI subject alternative name
//!   `harambee://<role>/<name>` ([`IDENTITY_SCHEME`]), where `<role>` is a [`Role`] and
//!   `<name>` passes [`validate_name`] (for agents: the facility name). The URI SAN is what
//!   counts; the CN is ignored. [`identity_from_cert`] is the one parser of that rule, for
//!   the coordinator's access layer and for the agent's checks of its peers alike.
//! - Agent keys are Ed25519: the same key signs the agent's secure-aggregation
//!   advertisements and egress receipts ([`ed25519_key_of`], [`signing_key_from_pem`]).
//! - [`PeerVerifier`] checks a peer facility's certificate against the agent's own copy of
//!   the federation CA before the agent trusts the key inside.
//!
//! Nothing here verifies a TLS handshake (rustls does) or knows about revocation (the
//! coordinator's database does).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::extensions::GeneralName;

/// URI scheme of identity SANs.
pub const IDENTITY_SCHEME: &str = "harambee://";
const MAX_NAME_LEN: usize = 64;
/// id-Ed25519 (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// Why a certificate or a name does not make an identity.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error(
        "invalid name {0:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid role {0:?}: expected agent, operator or auditor")]
    InvalidRole(String),
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    #[error("certificate has no harambee:// URI SAN")]
    MissingIdentity,
    #[error("certificate has {0} harambee:// URI SANs, expected exactly one")]
    AmbiguousIdentity(usize),
    #[error("malformed identity SAN {0:?}: expected harambee://<role>/<name>")]
    MalformedIdentity(String),
    #[error("the certificate is for {found}, not for an agent")]
    NotAnAgent { found: String },
    #[error("its key is not Ed25519")]
    NotEd25519,
    #[error("malformed Ed25519 key: {0}")]
    BadKey(String),
    #[error("the agent's private key is not PKCS#8 Ed25519 ({0}); re-issue the certificate")]
    BadPrivateKey(String),
}

/// What a peer is allowed to do; carried in the URI SAN of its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A facility agent (AgentService).
    Agent,
    /// A national operator (AdminService).
    Operator,
    /// A read-only auditor (AuditService).
    Auditor,
}

impl Role {
    /// All roles, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Agent, Role::Operator, Role::Auditor];

    /// The lowercase name used in SANs, file names and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| IdentityError::InvalidRole(s.to_owned()))
    }
}

/// Who is on the other end of a verified TLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
    /// Lowercase hex SHA-256 of the certificate's DER encoding (pins one certificate, e.g.
    /// in the ledger or audit log).
    pub cert_sha256: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{IDENTITY_SCHEME}{}/{}", self.role, self.name)
    }
}

/// Checks a facility, operator or auditor name against `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(IdentityError::InvalidName(name.to_owned()))
    }
}

/// Reads the identity from a client certificate's DER encoding: exactly one
/// `harambee://<role>/<name>` URI SAN with a known role and a valid name.
///
/// The certificate must already have been verified against the federation CA; this only
/// parses.
pub fn identity_from_cert(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::BadCertificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?
        .ok_or(IdentityError::MissingIdentity)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .filter(|uri| has_identity_scheme(uri))
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(IdentityError::MissingIdentity),
        [uri] => *uri,
        many => return Err(IdentityError::AmbiguousIdentity(many.len())),
    };
    let (role, name) = parse_identity_uri(uri)?;
    Ok(PeerIdentity {
        role,
        name,
        cert_sha256: hex::encode(Sha256::digest(der)),
    })
}

/// Splits `harambee://<role>/<name>` into a role and a validated name.
pub fn parse_identity_uri(uri: &str) -> Result<(Role, String), IdentityError> {
    let malformed = || IdentityError::MalformedIdentity(uri.to_owned());
    let rest = uri.get(IDENTITY_SCHEME.len()..).ok_or_else(malformed)?;
    let (role, name) = rest.split_once('/').ok_or_else(malformed)?;
    let role = role.parse::<Role>()?;
    validate_name(name).map_err(|_| malformed())?;
    Ok((role, name.to_owned()))
}

/// Whether `uri` starts with [`IDENTITY_SCHEME`] (in any case).
pub fn has_identity_scheme(uri: &str) -> bool {
    uri.get(..IDENTITY_SCHEME.len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(IDENTITY_SCHEME))
}

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("the federation CA certificate is unreadable: {0}")]
    BadCa(String),
    #[error("certificate of peer {facility:?} is not valid for this federation: {reason}")]
    Untrusted { facility: String, reason: String },
}

/// The federation CA, as this agent trusts it.
#[derive(Clone)]
pub struct PeerVerifier {
    ca_der: CertificateDer<'static>,
}

impl PeerVerifier {
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<PeerVerifier, PeerError> {
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

        let identity = identity_from_cert(cert_der).map_err(|e| untrusted(e.to_string()))?;
        if identity.role != Role::Agent || identity.name != facility {
            return Err(untrusted(format!(
                "it does not name {IDENTITY_SCHEME}agent/{facility} (it names {identity})"
            )));
        }
        let (_, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|e| untrusted(e.to_string()))?;
        ed25519_key(&cert).map_err(|e| untrusted(e.to_string()))
    }
}

/// The Ed25519 key of a certificate the TLS layer has already verified.
pub fn ed25519_key_of(cert_der: &[u8]) -> Result<VerifyingKey, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    ed25519_key(&cert)
}

fn ed25519_key(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<VerifyingKey, IdentityError> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(IdentityError::NotEd25519);
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| IdentityError::BadKey("not 32 bytes".to_owned()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| IdentityError::BadKey(e.to_string()))
}

/// The agent's own Ed25519 signing key: the private key of its certificate (PKCS#8 PEM).
pub fn signing_key_from_pem(key_pem: &[u8]) -> Result<ed25519_dalek::SigningKey, IdentityError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::str::from_utf8(key_pem)
        .map_err(|_| IdentityError::BadPrivateKey("the file is not PEM text".to_owned()))?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| IdentityError::BadPrivateKey(e.to_string()))
}

/// The facility named by an agent certificate (PEM, leaf first).
pub fn facility_of_pem(cert_pem: &[u8]) -> Result<String, IdentityError> {
    let der = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let identity = identity_from_cert(&der)?;
    match identity.role {
        Role::Agent => Ok(identity.name),
        _ => Err(IdentityError::NotAnAgent {
            found: identity.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "Kisumu-CRH", "site_1.ward-2", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "é",
            "a:b",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert!("Agent".parse::<Role>().is_err());
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn identity_uris() {
        assert_eq!(
            parse_identity_uri("harambee://agent/kisumu").unwrap(),
            (Role::Agent, "kisumu".to_owned())
        );
        for bad in [
            "harambee://agent/",
            "harambee://agent",
            "harambee://root/x",
            "harambee://agent/a/b",
            "harambee://agent/../x",
        ] {
            assert!(parse_identity_uri(bad).is_err(), "{bad}");
        }
    }
}
