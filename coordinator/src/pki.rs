//! The federation's private PKI: one CA, one server certificate for the coordinator, and
//! one client certificate per facility agent, operator and auditor.
//!
//! This module creates and reads certificate files, signs certificate requests
//! ([`Signer`], for enrolment and renewal) and turns a verified client certificate into a
//! [`PeerIdentity`](harambee_link::identity::PeerIdentity). It does not verify certificate chains (rustls does that during the
//! handshake, see [`crate::server::tls`]) and it keeps no revocation list: revocation (of a
//! facility, or of one certificate by serial and with it its key) is in the coordinator's
//! database and checked on every call (see [`crate::server::access`]); otherwise a
//! certificate stays valid until it expires, which is why leaf certificates are short-lived.
//! [`CertFacts`] reads what revocation and renewal need from a certificate.
//!
//! # Identity scheme
//!
//! - Every certificate is issued by the federation CA (ECDSA P-256, valid
//!   [`CA_VALIDITY_DAYS`], CN `Harambee federation CA <random tag>`, path length 0), or,
//!   when the CA key is kept offline ([`init_offline`]), by an issuing CA that the offline
//!   CA certified for the serving host (CN `Harambee issuing CA <tag>`, valid
//!   [`ISSUING_CA_VALIDITY_DAYS`]; the root then has path length 1). Certificate files then
//!   hold the leaf followed by the issuing CA's certificate; `ca.pem` is always the root,
//!   the one trust anchor every peer pins. Agent keys are Ed25519 (they also sign
//!   secure-aggregation key advertisements); the others are ECDSA P-256.
//! - A client certificate carries exactly one URI subject alternative name
//!   `harambee://<role>/<name>`, where `<role>` is `agent`, `operator` or `auditor` and
//!   `<name>` matches `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (for agents: the facility name).
//!   The subject CN equals `<name>`; the extended key usage is client authentication.
//!   The URI SAN is what counts: [`identity_from_cert`](harambee_link::identity::identity_from_cert) reads the role and name from it and
//!   ignores the CN.
//! - The coordinator's server certificate carries the DNS names and IP addresses given to
//!   [`init`] (default `localhost` and `127.0.0.1`), the server-authentication extended key
//!   usage and no `harambee://` SAN, so it can never pass as a client.
//! - Leaf certificates are valid for a number of days chosen at issue time
//!   ([`DEFAULT_LEAF_VALIDITY_DAYS`] by default) and are back-dated by one hour to tolerate
//!   clock skew between the coordinator and facilities ([`Signer`] back-dates by a tenth of
//!   the validity when that is shorter, so a certificate of minutes still has most of its
//!   life ahead of it).
//!
//! # Directory layout
//!
//! See [`PkiPaths`]. Private keys are created with mode 0600 (never widened and narrowed
//! afterwards); the directory and `issued/` are created with mode 0700.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use harambee_link::files;
use harambee_link::identity::{
    IDENTITY_SCHEME, IdentityError, Role, has_identity_scheme, parse_identity_uri, validate_name,
};

/// Validity of the federation CA certificate.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Default validity of an issuing CA certificate (see [`init_offline`]).
pub const ISSUING_CA_VALIDITY_DAYS: u32 = 365;
/// Default validity of leaf (server and client) certificates.
pub const DEFAULT_LEAF_VALIDITY_DAYS: u32 = 90;

/// Followed by a random tag, so that two federations' CAs never share a subject name (which
/// would turn "unknown CA" errors into confusing bad-signature ones).
const CA_COMMON_NAME: &str = "Harambee federation CA";
const ISSUING_CA_COMMON_NAME: &str = "Harambee issuing CA";
const SERVER_COMMON_NAME: &str = "harambee-coordinator";
/// Leaf certificates start this long before "now", for clock skew.
const BACKDATE: Duration = Duration::hours(1);

/// Errors of PKI file handling and certificate parsing.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("a CA already exists at {0} (refusing to overwrite it)")]
    AlreadyInitialized(PathBuf),
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName { name: String, reason: String },
    #[error("invalid validity of {0} days: must be between 1 and {CA_VALIDITY_DAYS}")]
    InvalidValidity(u32),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot load the CA from {path}: {reason}")]
    LoadCa { path: PathBuf, reason: String },
    #[error("cannot use the coordinator's key {path}: {reason}")]
    ServerKey { path: PathBuf, reason: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    #[error("invalid serial number {serial:?}: {reason}")]
    BadSerial { serial: String, reason: String },
    #[error(
        "no CA key in {0}: neither issuing-ca.key nor ca.key is there (if the CA key is kept offline, create an issuing CA with `pki issuing-ca`)"
    )]
    NoSigningKey(PathBuf),
}

/// Why a certificate signing request was refused; the messages go back to the requester.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate request is not a valid signed PKCS#10 request: {0}")]
    Invalid(String),
    #[error("the certificate request names no identity (no harambee:// URI SAN and no CN)")]
    NoName,
    #[error("the certificate request names {requested:?} but it may only be for {expected:?}")]
    WrongName { requested: String, expected: String },
    #[error(
        "the certificate request asks for the {requested} role but it may only be for the {expected} role"
    )]
    WrongRole { requested: Role, expected: Role },
    #[error(
        "agent keys must be Ed25519 (they sign secure-aggregation advertisements); the request's key is {0}"
    )]
    NotEd25519(String),
    #[error(
        "a renewal must keep the key: the certificate request's key differs from the key of the certificate it renews (a new key means enrolling again)"
    )]
    OtherKey,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The layout of a PKI directory:
///
/// ```text
/// <dir>/ca.pem                      federation CA certificate (distribute to every peer)
/// <dir>/ca.key                      CA private key (0600; keep offline if you can)
/// <dir>/coordinator.pem, .key       the coordinator's server certificate and key
/// <dir>/issued/<role>-<name>.pem    client certificates, e.g. issued/agent-kisumu-crh.pem
/// <dir>/issued/<role>-<name>.key    their private keys (0600; hand over to the peer)
/// <dir>/issuing-ca.pem, .key        issuing CA, only when the CA key is offline (then
///                                   ca.key is absent; see [`init_offline`])
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiPaths {
    dir: PathBuf,
}

impl PkiPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiPaths { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("coordinator.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("coordinator.key")
    }

    pub fn issued_dir(&self) -> PathBuf {
        self.dir.join("issued")
    }

    /// The name must have passed [`validate_name`]; it cannot contain `/`.
    pub fn issued_cert(&self, role: Role, name: &str) -> PathBuf {
        self.issued_dir().join(format!("{role}-{name}.pem"))
    }

    pub fn issued_key(&self, role: Role, name: &str) -> PathBuf {
        self.issued_dir().join(format!("{role}-{name}.key"))
    }

    /// The issuing CA's certificate, when the root CA key is kept offline.
    pub fn issuing_ca_cert(&self) -> PathBuf {
        self.dir.join("issuing-ca.pem")
    }

    /// The issuing CA's private key (0600), on the serving host in place of `ca.key`.
    pub fn issuing_ca_key(&self) -> PathBuf {
        self.dir.join("issuing-ca.key")
    }
}

/// Creates a federation CA in `dir` (creating `dir` if needed) and issues the coordinator's
/// server certificate for `server_names` (DNS names or IP literals; empty means
/// `localhost` and `127.0.0.1`), valid [`DEFAULT_LEAF_VALIDITY_DAYS`].
///
/// Refuses with [`PkiError::AlreadyInitialized`] if `ca.pem` or `ca.key` exists, so a
/// federation's CA is never replaced by accident.
pub fn init(dir: &Path, server_names: &[String]) -> Result<PkiPaths, PkiError> {
    let paths = PkiPaths::new(dir);
    for existing in [paths.ca_cert(), paths.ca_key()] {
        if existing.exists() {
            return Err(PkiError::AlreadyInitialized(existing));
        }
    }
    // Validate before writing anything, so a typo leaves no half-made directory behind.
    let server_sans = server_sans(server_names)?;
    create_private_dir(dir)?;

    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(0)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    // The key first, with create_new: of two concurrent `init`s only one gets past here.
    write_new_private(&paths.ca_key(), ca_key.serialize_pem().as_bytes())?;
    write_public(&paths.ca_cert(), ca_cert.pem().as_bytes())?;

    let issuer = SigningCa {
        issuer: Issuer::new(ca_params, ca_key),
        chain_pem: String::new(),
    };
    issue_server_with(&paths, &issuer, server_sans, DEFAULT_LEAF_VALIDITY_DAYS)?;
    Ok(paths)
}

/// Like [`init`], but the CA key never touches the serving host: the root CA (path
/// length 1) goes to `ca_out` (`ca.pem`, `ca.key`; move it offline), and `dir` receives a copy of
/// `ca.pem`, an issuing CA certified by the root (`issuing-ca.pem`, `issuing-ca.key`,
/// valid [`ISSUING_CA_VALIDITY_DAYS`]) and the coordinator's server certificate issued by
/// it. Everything the coordinator signs later (enrolment, renewal, `pki issue`) uses the
/// issuing CA; renew it with [`issue_issuing_ca`] before it expires.
pub fn init_offline(
    dir: &Path,
    ca_out: &Path,
    server_names: &[String],
) -> Result<PkiPaths, PkiError> {
    let paths = PkiPaths::new(dir);
    let offline = PkiPaths::new(ca_out);
    for existing in [
        offline.ca_cert(),
        offline.ca_key(),
        paths.ca_cert(),
        paths.ca_key(),
        paths.issuing_ca_key(),
    ] {
        if existing.exists() {
            return Err(PkiError::AlreadyInitialized(existing));
        }
    }
    let server_sans = server_sans(server_names)?;
    create_private_dir(ca_out)?;
    create_private_dir(dir)?;

    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(1)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_new_private(&offline.ca_key(), ca_key.serialize_pem().as_bytes())?;
    write_public(&offline.ca_cert(), ca_cert.pem().as_bytes())?;
    write_public(&paths.ca_cert(), ca_cert.pem().as_bytes())?;

    let root = SigningCa {
        issuer: Issuer::new(ca_params, ca_key),
        chain_pem: String::new(),
    };
    let issuing = issuing_ca_with(&paths, &root, ISSUING_CA_VALIDITY_DAYS)?;
    issue_server_with(&paths, &issuing, server_sans, DEFAULT_LEAF_VALIDITY_DAYS)?;
    Ok(paths)
}

/// Certifies a new issuing CA for the serving host's PKI directory `dir` with the offline
/// root CA in `ca_dir` (the ceremony of deploy/PKI.md), replacing `issuing-ca.pem` and
/// `.key`, and reissues the coordinator's server certificate from it for the same names.
/// Certificates issued by the previous issuing CA stay valid: they chain to the same root.
/// Restart the coordinator to use the new ones.
pub fn issue_issuing_ca(
    ca_dir: &Path,
    dir: &Path,
    validity_days: u32,
) -> Result<PathBuf, PkiError> {
    let offline = PkiPaths::new(ca_dir);
    let paths = PkiPaths::new(dir);
    // Read everything before writing anything.
    let server_names = server_names_of(&paths.server_cert())?;
    let sans = server_sans(&server_names)?;
    let root = load_ca(&offline.ca_cert(), &offline.ca_key())?;
    let root = SigningCa {
        issuer: root,
        chain_pem: String::new(),
    };
    let issuing = issuing_ca_with(&paths, &root, validity_days)?;
    issue_server_with(&paths, &issuing, sans, DEFAULT_LEAF_VALIDITY_DAYS)?;
    Ok(paths.issuing_ca_cert())
}

/// The DNS names and IP addresses of a server certificate.
fn server_names_of(cert_path: &Path) -> Result<Vec<String>, PkiError> {
    let der = CertificateDer::from_pem_file(cert_path)
        .map_err(|e| PkiError::BadCertificate(format!("{}: {e}", cert_path.display())))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let names = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(names)
}

/// Lowercase hex SHA-256 of the DER encoding of the first certificate in `pem` (the CA
/// fingerprint an enrolment token carries).
pub fn pem_fingerprint(pem: &[u8]) -> Result<String, PkiError> {
    let der =
        CertificateDer::from_pem_slice(pem).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&der)))
}

/// Issues (or renews) the coordinator's server certificate from the CA in `dir`, replacing
/// `coordinator.pem` and `coordinator.key`.
pub fn issue_server(
    dir: &Path,
    server_names: &[String],
    validity_days: u32,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let paths = PkiPaths::new(dir);
    let sans = server_sans(server_names)?;
    let issuer = load_signing_ca(&paths)?;
    issue_server_with(&paths, &issuer, sans, validity_days)?;
    Ok((paths.server_cert(), paths.server_key()))
}

/// Whether `pki renew-server` keeps the coordinator's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKey {
    /// The new certificate certifies the key in `coordinator.key` (routine renewal).
    Keep,
    /// A new key replaces `coordinator.key` (the old one may have leaked; revoke the old
    /// certificate's serial too, which refuses its key).
    New,
}

/// Renews the coordinator's server certificate in `dir` with the signing CA there (the
/// issuing CA, or the CA): the same DNS names and IP addresses unless `server_names` gives
/// others, valid `validity_days`, for the current key or a new one. Replaces
/// `coordinator.pem` (and, with [`ServerKey::New`], `coordinator.key`); the coordinator
/// uses them from its next start. Returns the facts of the old and of the new certificate.
pub fn renew_server(
    dir: &Path,
    server_names: &[String],
    key: ServerKey,
    validity_days: u32,
) -> Result<(CertFacts, CertFacts), PkiError> {
    let paths = PkiPaths::new(dir);
    // Read and check everything before writing anything.
    let old = CertFacts::of_pem_file(&paths.server_cert())?;
    let names = if server_names.is_empty() {
        server_names_of(&paths.server_cert())?
    } else {
        server_names.to_vec()
    };
    let sans = server_sans(&names)?;
    leaf_params(validity_days)?;
    let issuer = load_signing_ca(&paths)?;
    let key = match key {
        ServerKey::New => KeyPair::generate()?,
        ServerKey::Keep => {
            let path = paths.server_key();
            let pem = read_to_string(&path)?;
            let key = KeyPair::from_pem(&pem).map_err(|e| PkiError::ServerKey {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if hex::encode(Sha256::digest(key.public_key_raw())) != old.key_sha256 {
                return Err(PkiError::ServerKey {
                    path,
                    reason: format!(
                        "this key does not belong to {}; renew with a new key instead",
                        paths.server_cert().display()
                    ),
                });
            }
            key
        }
    };
    issue_server_for_key(&paths, &issuer, sans, validity_days, key)?;
    let new = CertFacts::of_pem_file(&paths.server_cert())?;
    Ok((old, new))
}

/// Issues a client certificate for `harambee://<role>/<name>` from the CA in `dir` (the
/// issuing CA when there is one) and writes it to `issued/<role>-<name>.pem` (followed by
/// the issuing CA's certificate, if any) and `.key`, replacing an earlier pair for the same
/// identity (renewal). Returns the certificate and key paths.
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    validity_days: u32,
) -> Result<(PathBuf, PathBuf), PkiError> {
    validate_name(name)?;
    let paths = PkiPaths::new(dir);
    let issuer = load_signing_ca(&paths)?;

    let mut params = leaf_params(validity_days)?;
    params.distinguished_name = common_name(name);
    let uri = format!("{IDENTITY_SCHEME}{role}/{name}");
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

    // Agents sign their secure-aggregation key advertisements with their certificate's key,
    // which must therefore be Ed25519; the CA's signature binds it to the facility.
    let key = match role {
        Role::Agent => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
        Role::Operator | Role::Auditor => KeyPair::generate()?,
    };
    let cert = params.signed_by(&key, &issuer.issuer)?;
    create_private_dir(&paths.issued_dir())?;
    let (cert_path, key_path) = (paths.issued_cert(role, name), paths.issued_key(role, name));
    replace_private(&key_path, key.serialize_pem().as_bytes())?;
    replace_public(
        &cert_path,
        format!("{}{}", cert.pem(), issuer.chain_pem).as_bytes(),
    )?;
    Ok((cert_path, key_path))
}

/// The coordinator's certificate authority at run time: signs certificate requests for
/// enrolment and renewal with the issuing CA (or the root CA, when its key is on the host).
pub struct Signer {
    ca: SigningCa,
    ca_pem: String,
    ca_sha256: String,
}

/// A certificate made by [`Signer::sign_request`].
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate followed by any issuing CA certificate.
    pub chain_pem: String,
    pub der: Vec<u8>,
    /// Lowercase hex SHA-256 of `der`.
    pub sha256: String,
    /// Lowercase hex serial number (see [`serial_hex`]).
    pub serial: String,
    /// Lowercase hex SHA-256 of the public key bits (see [`CertFacts::key_sha256`]).
    pub key_sha256: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Signer {
    /// The signing CA of a PKI directory: `issuing-ca.{pem,key}` if present, else
    /// `ca.{pem,key}`. `Ok(None)` when neither key is on this host.
    pub fn load(paths: &PkiPaths) -> Result<Option<Signer>, PkiError> {
        if !paths.issuing_ca_key().exists() && !paths.ca_key().exists() {
            return Ok(None);
        }
        let ca = load_signing_ca(paths)?;
        let ca_pem = read_to_string(&paths.ca_cert())?;
        let ca_sha256 = pem_fingerprint(ca_pem.as_bytes())?;
        Ok(Some(Signer {
            ca,
            ca_pem,
            ca_sha256,
        }))
    }

    /// The federation CA certificate (the root), PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Lowercase hex SHA-256 of the root's DER encoding.
    pub fn ca_sha256(&self) -> &str {
        &self.ca_sha256
    }

    /// [`Signer::sign_request`] for a renewal: refuses ([`CsrError::OtherKey`]) unless the
    /// request's public key is the one whose SHA-256 is `key_sha256` (the certificate being
    /// renewed), so a renewal never moves an identity to a new key.
    pub fn sign_renewal(
        &self,
        csr_der: &[u8],
        role: Role,
        name: &str,
        validity: std::time::Duration,
        key_sha256: &str,
    ) -> Result<IssuedCert, CsrError> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into())
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        if hex::encode(Sha256::digest(csr.public_key.der_bytes())) != key_sha256 {
            return Err(CsrError::OtherKey);
        }
        self.sign_request(csr_der, role, name, validity)
    }

    /// Signs a DER PKCS#10 request for `harambee://<role>/<name>`, valid for `validity`.
    ///
    /// The request must carry a valid self-signature (proof of possession), name exactly
    /// this identity (in its `harambee://` URI SAN, or else its CN) and, for agents, hold an
    /// Ed25519 key. Everything else in the certificate is fixed here and anything else the
    /// request asks for (extensions, other names, CA rights, validity) is ignored.
    pub fn sign_request(
        &self,
        csr_der: &[u8],
        role: Role,
        name: &str,
        validity: std::time::Duration,
    ) -> Result<IssuedCert, CsrError> {
        validate_name(name).map_err(|e| CsrError::Invalid(e.to_string()))?;
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.into())
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let (requested_role, requested_name) = requested_identity(&csr.params)?;
        if requested_name != name {
            return Err(CsrError::WrongName {
                requested: requested_name,
                expected: name.to_owned(),
            });
        }
        if let Some(requested) = requested_role
            && requested != role
        {
            return Err(CsrError::WrongRole {
                requested,
                expected: role,
            });
        }
        if role == Role::Agent && csr.public_key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(CsrError::NotEd25519(format!(
                "{:?}",
                csr.public_key.algorithm()
            )));
        }

        let validity =
            Duration::try_from(validity).unwrap_or(Duration::days(i64::from(CA_VALIDITY_DAYS)));
        let validity = validity.clamp(
            Duration::seconds(1),
            Duration::days(i64::from(CA_VALIDITY_DAYS)),
        );
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE.min(validity / 10);
        params.not_after = now + validity;
        params.distinguished_name = common_name(name);
        let uri = format!("{IDENTITY_SCHEME}{role}/{name}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&csr.public_key, &self.ca.issuer)?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.ca.chain_pem),
            sha256: hex::encode(Sha256::digest(cert.der())),
            der: cert.der().to_vec(),
            serial: serial_hex(serial.as_ref()),
            key_sha256: hex::encode(Sha256::digest(csr.public_key.der_bytes())),
            // The encoding keeps whole seconds.
            not_before: params
                .not_before
                .replace_nanosecond(0)
                .unwrap_or(params.not_before),
            not_after: params
                .not_after
                .replace_nanosecond(0)
                .unwrap_or(params.not_after),
        })
    }
}

/// The identity a certificate request asks for: its `harambee://` URI SAN if it has one
/// (role and name), otherwise its CN (name only).
fn requested_identity(params: &CertificateParams) -> Result<(Option<Role>, String), CsrError> {
    let uris: Vec<String> = params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
        .filter(|uri| has_identity_scheme(uri))
        .collect();
    match uris.as_slice() {
        [uri] => {
            let (role, name) =
                parse_identity_uri(uri).map_err(|e| CsrError::Invalid(e.to_string()))?;
            Ok((Some(role), name))
        }
        [] => match params.distinguished_name.get(&DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(cn)) => Ok((None, cn.clone())),
            Some(rcgen::DnValue::PrintableString(cn)) => Ok((None, cn.as_str().to_owned())),
            Some(rcgen::DnValue::Ia5String(cn)) => Ok((None, cn.as_str().to_owned())),
            _ => Err(CsrError::NoName),
        },
        many => Err(CsrError::Invalid(format!(
            "{} harambee:// URI SANs, expected one",
            many.len()
        ))),
    }
}

/// Reads a certificate's validity period (DER).
pub fn validity(der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// What revocation and renewal need to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// Lowercase hex serial number (see [`serial_hex`]).
    pub serial: String,
    /// Lowercase hex SHA-256 of the public key bits (the BIT STRING of the
    /// SubjectPublicKeyInfo): the same for a certificate and the request it was issued for,
    /// and for every renewal of it.
    pub key_sha256: String,
    /// `harambee://<role>/<name>` for a client certificate, `server` for one with the
    /// server-authentication extended key usage and no identity, else empty.
    pub identity: String,
    pub not_after: OffsetDateTime,
}

impl CertFacts {
    /// Reads a certificate's DER encoding.
    pub fn of(der: &[u8]) -> Result<CertFacts, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let identity = match harambee_link::identity::identity_from_cert(der) {
            Ok(identity) => identity.to_string(),
            Err(_) => {
                let server = cert
                    .extended_key_usage()
                    .ok()
                    .flatten()
                    .is_some_and(|eku| eku.value.server_auth);
                if server { "server" } else { "" }.to_owned()
            }
        };
        Ok(CertFacts {
            serial: serial_hex(cert.raw_serial()),
            key_sha256: hex::encode(Sha256::digest(
                cert.public_key().subject_public_key.data.as_ref(),
            )),
            identity,
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// Reads the first certificate of a PEM file.
    pub fn of_pem_file(path: &Path) -> Result<CertFacts, PkiError> {
        let der = CertificateDer::from_pem_file(path)
            .map_err(|e| PkiError::BadCertificate(format!("{}: {e}", path.display())))?;
        CertFacts::of(&der)
    }
}

/// A serial number's canonical text: lowercase hex of its octets without leading zero
/// octets (`00` for zero).
pub fn serial_hex(octets: &[u8]) -> String {
    let start = octets
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(octets.len().saturating_sub(1));
    hex::encode(&octets[start..])
}

/// Parses a serial number as an operator types it (hex, any case, optionally `0x`-prefixed
/// or with `:` between octets, as openssl prints it) into [`serial_hex`] form.
pub fn parse_serial(text: &str) -> Result<String, PkiError> {
    let bad = |reason: &str| PkiError::BadSerial {
        serial: text.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = text.trim();
    let digits: String = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed)
        .chars()
        .filter(|&c| c != ':')
        .collect();
    if digits.is_empty() {
        return Err(bad("it is empty"));
    }
    if digits.len() > 40 {
        return Err(bad("a serial number has at most 20 octets (40 hex digits)"));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let octets = hex::decode(padded).map_err(|_| bad("not hexadecimal"))?;
    Ok(serial_hex(&octets))
}

/// A root CA; `path_len` 1 lets it certify an issuing CA.
fn ca_params(path_len: u8) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let tag: [u8; 4] = rand::random();
    params.distinguished_name = common_name(&format!("{CA_COMMON_NAME} {}", hex::encode(tag)));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(CA_VALIDITY_DAYS));
    Ok(params)
}

fn leaf_params(validity_days: u32) -> Result<CertificateParams, PkiError> {
    // A leaf never needs to outlive the CA, and the bound keeps the date arithmetic sane.
    if validity_days == 0 || validity_days > CA_VALIDITY_DAYS {
        return Err(PkiError::InvalidValidity(validity_days));
    }
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(validity_days));
    Ok(params)
}

/// A CA key that signs, with the certificates to send after what it signs (empty for the
/// root, the issuing CA's own certificate for an issuing CA).
struct SigningCa {
    issuer: Issuer<'static, KeyPair>,
    chain_pem: String,
}

fn issue_server_with(
    paths: &PkiPaths,
    issuer: &SigningCa,
    sans: Vec<SanType>,
    validity_days: u32,
) -> Result<(), PkiError> {
    issue_server_for_key(paths, issuer, sans, validity_days, KeyPair::generate()?)
}

/// Issues the server certificate for `key` and replaces `coordinator.{pem,key}`.
fn issue_server_for_key(
    paths: &PkiPaths,
    issuer: &SigningCa,
    sans: Vec<SanType>,
    validity_days: u32,
    key: KeyPair,
) -> Result<(), PkiError> {
    let mut params = leaf_params(validity_days)?;
    params.distinguished_name = common_name(SERVER_COMMON_NAME);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer.issuer)?;
    replace_private(&paths.server_key(), key.serialize_pem().as_bytes())?;
    replace_public(
        &paths.server_cert(),
        format!("{}{}", cert.pem(), issuer.chain_pem).as_bytes(),
    )?;
    Ok(())
}

/// Creates an issuing CA (path length 0) signed by `root` and writes it to `paths`,
/// replacing any previous one.
fn issuing_ca_with(
    paths: &PkiPaths,
    root: &SigningCa,
    validity_days: u32,
) -> Result<SigningCa, PkiError> {
    if validity_days == 0 || validity_days > CA_VALIDITY_DAYS {
        return Err(PkiError::InvalidValidity(validity_days));
    }
    let mut params = CertificateParams::default();
    let tag: [u8; 4] = rand::random();
    params.distinguished_name =
        common_name(&format!("{ISSUING_CA_COMMON_NAME} {}", hex::encode(tag)));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(validity_days));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &root.issuer)?;
    create_private_dir(paths.dir())?;
    replace_private(&paths.issuing_ca_key(), key.serialize_pem().as_bytes())?;
    replace_public(&paths.issuing_ca_cert(), cert.pem().as_bytes())?;
    Ok(SigningCa {
        issuer: Issuer::new(params, key),
        chain_pem: cert.pem(),
    })
}

fn server_sans(server_names: &[String]) -> Result<Vec<SanType>, PkiError> {
    let defaults = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let names = if server_names.is_empty() {
        &defaults[..]
    } else {
        server_names
    };
    names
        .iter()
        .map(|name| {
            let invalid = |reason: &str| PkiError::InvalidServerName {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                return Ok(SanType::IpAddress(ip));
            }
            // What webpki will later accept as a reference name, so a typo fails here and
            // not at the first handshake.
            rustls::pki_types::DnsName::try_from(name.as_str())
                .map_err(|_| invalid("not a DNS name or IP address"))?;
            let ia5 = name.as_str().try_into().map_err(|_| invalid("not ASCII"))?;
            Ok(SanType::DnsName(ia5))
        })
        .collect()
}

/// The CA that signs in `paths`: the issuing CA if its key is there, else the root.
fn load_signing_ca(paths: &PkiPaths) -> Result<SigningCa, PkiError> {
    if paths.issuing_ca_key().exists() {
        let issuer = load_ca(&paths.issuing_ca_cert(), &paths.issuing_ca_key())?;
        let chain_pem = read_to_string(&paths.issuing_ca_cert())?;
        return Ok(SigningCa { issuer, chain_pem });
    }
    if !paths.ca_key().exists() && paths.ca_cert().exists() {
        return Err(PkiError::NoSigningKey(paths.dir().to_owned()));
    }
    Ok(SigningCa {
        issuer: load_ca(&paths.ca_cert(), &paths.ca_key())?,
        chain_pem: String::new(),
    })
}

fn load_ca(cert_path: &Path, key_path: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let (cert_path, key_path) = (cert_path.to_owned(), key_path.to_owned());
    let cert_pem = read_to_string(&cert_path)?;
    let key_pem = read_to_string(&key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::LoadCa {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let load_err = |reason: String| PkiError::LoadCa {
        path: cert_path.clone(),
        reason,
    };
    // Refuse a key that does not belong to the certificate: everything signed with it would
    // fail verification at every peer, long after issuance.
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| load_err(e.to_string()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| load_err(e.to_string()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(load_err(format!(
            "the key in {} does not belong to this certificate",
            key_path.display()
        )));
    }
    Issuer::from_ca_cert_der(&der, key).map_err(|e| load_err(e.to_string()))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero octet, so the encoding keeps its 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    files::create_private_dir(dir).map_err(|source| PkiError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    files::write_new(path, bytes, mode).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::AlreadyInitialized(path.to_owned())
        } else {
            PkiError::Io {
                action: "create",
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_new(path, bytes, files::PRIVATE)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_new(path, bytes, files::PUBLIC)
}

/// Replaces `path` whole (see [`files::replace`]).
fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    files::replace(path, bytes, mode).map_err(|source| PkiError::Io {
        action: "replace",
        path: path.to_owned(),
        source,
    })
}

fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    replace(path, bytes, files::PRIVATE)
}

fn replace_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    replace(path, bytes, files::PUBLIC)
}
