//! `harambee-agent enrol --token TOKEN`: one command turns the operator's one-time token
//! into a working agent identity, with no certificate handled by hand.
//!
//! 1. The token ([`Token`]) names the coordinator, the facility, and the SHA-256 of the
//!    federation CA certificate. Nothing else is trusted.
//! 2. The agent generates its Ed25519 key here (`agent.key`, mode 0600); it never leaves
//!    the facility.
//! 3. It fetches the CA certificate over TLS without verifying the server (it has no trust
//!    anchor yet) and accepts it only if the answer is exactly one certificate whose DER
//!    encoding hashes (SHA-256) to the token's fingerprint ([`pinned_ca`]); a bundle of
//!    several certificates is refused, even if one of them is the pinned one, since every
//!    certificate in it would otherwise become a trust anchor. Nothing secret travels on
//!    that connection. (kubeadm's `--discovery-token-ca-cert-hash` works the same way.)
//! 4. It connects again, now verifying the coordinator against that CA, and sends the
//!    token and a certificate request; the coordinator answers with the certificate.
//! 5. It writes `ca.pem` (re-encoded from the pinned DER, never the server's text),
//!    `agent.pem` and, unless one exists, an `agent.toml` skeleton.
//!
//! Nothing is written, not even the key, until the CA certificate has passed the pin.
//!
//! The agent has no certificate during enrolment, so its connections announce themselves
//! with the extra ALPN protocol [`ENROL_ALPN`] (next to `h2`); the coordinator then does not
//! ask for a client certificate and serves only the enrolment calls on that connection (see
//! the coordinator's `tls` and `access` modules). There is still only one port, all TLS.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use harambee_link::files;
use harambee_link::proxy::ProxyConfig;
use harambee_link::tls::{self, TlsError};
use harambee_link::token::{ENROL_ALPN, Token};
use harambee_proto::pb::{self, enrolment_service_client::EnrolmentServiceClient};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// File names [`enrol`] writes in its directory.
pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.pem";
pub const CA_FILE: &str = "ca.pem";
pub const CONFIG_FILE: &str = "agent.toml";

/// `harambee-agent enrol` arguments.
#[derive(clap::Args, Debug)]
pub struct EnrolArgs {
    /// The one-time token printed by `harambee-coordinator facility add`.
    #[arg(long, env = "HARAMBEE_ENROLMENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Where to write agent.key, agent.pem, ca.pem and agent.toml.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Seconds to wait for the coordinator.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_s: u64,
    /// HTTP proxy to tunnel through (`http://[user:password@]host:port`, or `none`);
    /// defaults to `HTTPS_PROXY` / `ALL_PROXY`, minus the hosts in `NO_PROXY`.
    #[arg(long)]
    pub proxy: Option<String>,
}

/// Runs `harambee-agent enrol`.
pub async fn run(args: EnrolArgs) -> anyhow::Result<()> {
    let proxies = ProxyConfig::resolve(args.proxy.as_deref(), None, &crate::cli::process_env)?;
    let done = enrol_via(
        &args.token,
        &args.dir,
        &proxies,
        Duration::from_secs(args.connect_timeout_s.max(1)),
    )
    .await?;
    println!(
        "enrolled facility {} with the coordinator at {}",
        done.facility, done.coordinator
    );
    println!(
        "  private key  {} (never leaves this machine)",
        done.key.display()
    );
    println!(
        "  certificate  {} (renewed automatically by `harambee-agent run`)",
        done.cert.display()
    );
    println!("  CA           {}", done.ca.display());
    if done.wrote_config {
        let allowed = allowed_invitations(&done.federations);
        if !allowed.is_empty() {
            println!(
                "  [policy] allows what the coordinator says may select this facility now; REVIEW it:"
            );
        }
        for f in &allowed {
            let scope = if f.names_facility {
                "names this facility"
            } else {
                "open to every facility"
            };
            println!(
                "    federation {} ({}, label {}, {scope})",
                f.name, f.model_kind, f.label
            );
        }
        let policy_note = if allowed.is_empty() {
            " (it allows no federation until you name one)"
        } else {
            ""
        };
        println!(
            "next: set [data] csv and review [policy]{policy_note} in {}, then run `harambee-agent run --config {}`",
            done.config.display(),
            done.config.display()
        );
    } else {
        println!(
            "kept the existing {}; check that its [tls] section names these files",
            done.config.display()
        );
    }
    Ok(())
}

/// What [`enrol`] wrote.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub facility: String,
    pub coordinator: String,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    pub config: PathBuf,
    /// `false` if an `agent.toml` was already there (it is never overwritten).
    pub wrote_config: bool,
    pub not_after_unix_ms: i64,
    /// The federations the coordinator said may select this facility (the written
    /// `[policy]` allows those that pass [`allowed_invitations`]).
    pub federations: Vec<pb::FederationInvitation>,
}

/// Enrols with `token`, writing the key, certificate, CA and an `agent.toml` skeleton into
/// `dir` (created if needed). Refuses if `dir` already holds a certificate. A key left by an
/// attempt that failed later is reused.
pub async fn enrol(token: &str, dir: &Path, connect_timeout: Duration) -> anyhow::Result<Enrolled> {
    enrol_via(token, dir, &ProxyConfig::direct(), connect_timeout).await
}

/// [`enrol`] with both connections through the proxy `proxies` names, if any.
pub async fn enrol_via(
    token: &str,
    dir: &Path,
    proxies: &ProxyConfig,
    connect_timeout: Duration,
) -> anyhow::Result<Enrolled> {
    let token = Token::parse(token)?;
    let paths = EnrolPaths::new(dir);
    if paths.cert.exists() {
        bail!(
            "{} exists: this directory is already enrolled (move it away to enrol again)",
            paths.cert.display()
        );
    }
    // The pin first: a coordinator that fails it gets nothing and leaves nothing behind.
    let ca = fetch_ca(&token, proxies, connect_timeout).await?;
    let ca_pem = pem_of_certificate(&ca)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let key = load_or_create_key(&paths.key)?;

    let channel = connect_without_certificate_via(
        &token.coordinator,
        ca_pem.as_bytes(),
        &token.server_name(),
        proxies,
        connect_timeout,
    )
    .await
    .with_context(|| format!("connecting to the coordinator at {}", token.coordinator))?;
    let csr_der = certificate_request(&key, &token.facility)?;
    let issued = EnrolmentServiceClient::new(channel)
        .enrol(pb::EnrolRequest {
            token: token.text.clone(),
            csr_der,
        })
        .await
        .map_err(|status| {
            anyhow!(
                "the coordinator refused the enrolment: {}",
                status.message()
            )
        })?
        .into_inner();
    check_issued(&issued, &key, &token.facility, &token.ca_sha256)?;

    write_file(&paths.ca, ca_pem.as_bytes(), 0o644)?;
    write_file(&paths.cert, issued.certificate_pem.as_bytes(), 0o644)?;
    let wrote_config = !paths.config.exists();
    if wrote_config {
        let text = config_skeleton(&token, &issued.federations);
        write_file(&paths.config, text.as_bytes(), 0o644)?;
    }
    Ok(Enrolled {
        facility: token.facility.clone(),
        coordinator: token.coordinator.clone(),
        key: paths.key,
        cert: paths.cert,
        ca: paths.ca,
        config: paths.config,
        wrote_config,
        not_after_unix_ms: issued.not_after_unix_ms,
        federations: issued.federations,
    })
}

/// The invitations a written `[policy]` may name: a plain federation name, a model kind the
/// agent knows, and a label that is a plain column name. Anything else from the coordinator
/// is left out (the facility names it by hand if it wants it).
pub fn allowed_invitations(
    invitations: &[pb::FederationInvitation],
) -> Vec<&pb::FederationInvitation> {
    let plain = harambee_privacy::policy::is_plain_name;
    invitations
        .iter()
        .filter(|f| {
            plain(&f.name)
                && matches!(
                    f.model_kind.as_str(),
                    "logistic_regression" | "mlp" | "personalized" | "minilm_lora"
                )
                && plain(&f.label)
        })
        .collect()
}

/// A TLS connection to the coordinator that verifies it against `ca_pem` but presents no
/// client certificate, offering [`ENROL_ALPN`]. The coordinator serves only the enrolment
/// calls on it.
pub async fn connect_without_certificate(
    endpoint: &str,
    ca_pem: &[u8],
    server_name: &str,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let direct = ProxyConfig::direct();
    connect_without_certificate_via(endpoint, ca_pem, server_name, &direct, connect_timeout).await
}

/// [`connect_without_certificate`] through the proxy `proxies` names, if any.
pub async fn connect_without_certificate_via(
    endpoint: &str,
    ca_pem: &[u8],
    server_name: &str,
    proxies: &ProxyConfig,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| TlsError::Pem {
            what: "CA certificate".to_owned(),
            reason: e.to_string(),
        })?;
        roots
            .add(ca)
            .map_err(|e| TlsError::TrustAnchor(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), ENROL_ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    tls::connect_with_config(
        endpoint,
        Arc::new(config),
        server_name,
        proxies,
        connect_timeout,
    )
    .await
}

/// A DER PKCS#10 request for `harambee://agent/<facility>` signed with `key`.
pub fn certificate_request(key: &rcgen::KeyPair, facility: &str) -> anyhow::Result<Vec<u8>> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, facility);
    let uri = format!("harambee://agent/{facility}");
    params.subject_alt_names =
        vec![rcgen::SanType::URI(uri.as_str().try_into().map_err(
            |e| anyhow!("facility name {facility:?} cannot be encoded: {e}"),
        )?)];
    Ok(params
        .serialize_request(key)
        .context("building the certificate request")?
        .der()
        .to_vec())
}

/// The files of an enrolled agent in one directory.
struct EnrolPaths {
    key: PathBuf,
    cert: PathBuf,
    ca: PathBuf,
    config: PathBuf,
}

impl EnrolPaths {
    fn new(dir: &Path) -> Self {
        EnrolPaths {
            key: dir.join(KEY_FILE),
            cert: dir.join(CERT_FILE),
            ca: dir.join(CA_FILE),
            config: dir.join(CONFIG_FILE),
        }
    }
}

/// Fetches the CA certificate without trusting the server, and accepts it only if it is
/// the one the token pins (see [`pinned_ca`]).
async fn fetch_ca(
    token: &Token,
    proxies: &ProxyConfig,
    connect_timeout: Duration,
) -> anyhow::Result<CertificateDer<'static>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), ENROL_ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let channel = tls::connect_with_config(
        &token.coordinator,
        Arc::new(config),
        &token.server_name(),
        proxies,
        connect_timeout,
    )
    .await
    .with_context(|| format!("connecting to the coordinator at {}", token.coordinator))?;
    let ca = EnrolmentServiceClient::new(channel)
        .get_ca_certificate(pb::GetCaCertificateRequest {})
        .await
        .map_err(|status| {
            anyhow!(
                "the coordinator did not send its CA certificate: {}",
                status.message()
            )
        })?
        .into_inner();
    pinned_ca(&ca.ca_pem, &token.ca_sha256).with_context(|| {
        format!(
            "refusing the coordinator at {} (nothing was sent to it and nothing was written)",
            token.coordinator
        )
    })
}

/// The one CA certificate in `pem`, if `pem` holds exactly one certificate and its DER
/// encoding has the SHA-256 `pinned_sha256` (lowercase hex). Any other answer is refused:
/// no certificate, an unreadable one, another one, or several (a bundle would make every
/// certificate in it a trust anchor, for enrolment and forever after in `ca.pem`).
pub fn pinned_ca(pem: &str, pinned_sha256: &str) -> anyhow::Result<CertificateDer<'static>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the server presented an unreadable CA certificate: {e}"))?;
    let der = match <[_; 1]>::try_from(certs) {
        Ok([der]) => der,
        Err(certs) if certs.is_empty() => bail!("the server presented no CA certificate"),
        Err(certs) => bail!(
            "the server presented a CA bundle of {} certificates, but the token pins exactly one CA certificate (SHA-256 {pinned_sha256}); a bundle would make every certificate in it a trust anchor",
            certs.len()
        ),
    };
    let got = hex::encode(Sha256::digest(&der));
    if got != pinned_sha256 {
        bail!(
            "the server presented a CA certificate with SHA-256 {got}, but the token pins {pinned_sha256}: it is not this federation's coordinator, or something in the network intercepts TLS"
        );
    }
    Ok(der)
}

/// `der` as one PEM `CERTIFICATE` block.
fn pem_of_certificate(der: &CertificateDer<'_>) -> anyhow::Result<String> {
    use ed25519_dalek::pkcs8::spki::der::pem::{self, LineEnding};
    pem::encode_string("CERTIFICATE", LineEnding::LF, der.as_ref())
        .map_err(|e| anyhow!("encoding the CA certificate as PEM: {e}"))
}

/// Checks that the coordinator issued what was asked: our key, our facility, the pinned CA.
fn check_issued(
    issued: &pb::IssuedCertificate,
    key: &rcgen::KeyPair,
    facility: &str,
    ca_sha256: &str,
) -> anyhow::Result<()> {
    pinned_ca(&issued.ca_pem, ca_sha256)
        .context("the coordinator answered the enrolment with another CA than the pinned one")?;
    let leaf = CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .map_err(|e| anyhow!("the issued certificate is unreadable: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow!("the issued certificate is unreadable: {e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("the issued certificate is not for this agent's key");
    }
    let want = format!("harambee://agent/{facility}");
    let named = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(
                |n| matches!(n, x509_parser::extensions::GeneralName::URI(uri) if *uri == want),
            )
        });
    if !named {
        bail!("the issued certificate does not name {want}");
    }
    Ok(())
}

fn load_or_create_key(path: &Path) -> anyhow::Result<rcgen::KeyPair> {
    if path.exists() {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("reading the key in {}", path.display()))?;
        if key.algorithm() != &rcgen::PKCS_ED25519 {
            bail!(
                "{} is not an Ed25519 key; move it away and enrol again",
                path.display()
            );
        }
        tracing::info!(key = %path.display(), "reusing the key of an earlier enrolment attempt");
        return Ok(key);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .context("generating the facility's key")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.serialize_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

/// Writes `bytes` to `path` whole (see [`files::replace`]).
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    files::replace(path, bytes, mode).with_context(|| format!("writing {}", path.display()))
}

fn config_skeleton(token: &Token, federations: &[pb::FederationInvitation]) -> String {
    // Comments aligned in one column, as in the README's example.
    let line = |setting: String, comment: &str| match comment {
        "" => format!("{setting}\n"),
        _ => format!("{setting:<36}# {comment}\n"),
    };
    let mut out = format!(
        "# Written by `harambee-agent enrol` for facility {}.\n# Set [data] csv, then: harambee-agent run --config agent.toml\n",
        token.facility
    );
    out += &line(format!("coordinator = {:?}", token.coordinator), "");
    if let Some(name) = &token.server_name {
        out += &line(
            format!("server_name = {name:?}"),
            "the name in the coordinator's certificate",
        );
    }
    out += &line(
        "# proxy = \"http://proxy.hospital:3128\"".to_owned(),
        "if outbound HTTPS must go through a proxy",
    );
    out += &line(
        "state_dir = \"state\"".to_owned(),
        "model cache and egress.jsonl, the log of all that left",
    );
    out += "\n[tls]\n";
    out += &line(
        format!("ca = \"{CA_FILE}\""),
        "the federation CA, pinned by the token",
    );
    out += &line(
        format!("cert = \"{CERT_FILE}\""),
        "renewed automatically before it expires",
    );
    out += &line(
        format!("key = \"{KEY_FILE}\""),
        "generated here; never leaves this machine",
    );
    out += "\n[data]\n";
    out += &line(
        "csv = \"data.csv\"".to_owned(),
        "the facility's CSV file: set this",
    );
    out += &line("holdout_fraction = 0.25".to_owned(), "");
    out += &policy_section(federations);
    out
}

/// The `[policy]` section: [`POLICY_SKELETON`], with the three allow-lists filled from the
/// coordinator's invitations when it sent any.
fn policy_section(federations: &[pb::FederationInvitation]) -> String {
    let allowed = allowed_invitations(federations);
    if allowed.is_empty() {
        return POLICY_SKELETON.to_owned();
    }
    let list = |items: Vec<&str>| {
        let mut items: Vec<&str> = items;
        items.sort_unstable();
        items.dedup();
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let names = list(allowed.iter().map(|f| f.name.as_str()).collect());
    let kinds = list(allowed.iter().map(|f| f.model_kind.as_str()).collect());
    let labels = list(allowed.iter().map(|f| f.label.as_str()).collect());
    let filled = format!(
        "[policy]\n\
         # REVIEW: the coordinator said at enrolment that these federations may select this\n\
         # facility. Keep only those the national unit asked it to join (\"*\": any).\n\
         {:<36}# {}\n{:<36}# {}\n{:<36}# {}\n",
        format!("allowed_federations = {names}"),
        "federations this facility takes part in",
        format!("allowed_model_kinds = {kinds}"),
        "logistic_regression, mlp, personalized, minilm_lora",
        format!("allowed_labels = {labels}"),
        "label columns of the federations' schemas",
    );
    let rules = POLICY_SKELETON
        .split_once("# The rules below")
        .map(|(_, rest)| format!("# The rules below{rest}"))
        .expect("the skeleton has its default rules");
    format!("\n{filled}{rules}")
}

/// The `[policy]` section `enrol` writes: what the facility allows, every rule with its
/// default (commented), and the three lists that must be filled before it trains.
const POLICY_SKELETON: &str = r#"
[policy]
# REVIEW: nothing is allowed until named. List the federations the national unit asked this
# facility to join, the model kinds and the label columns it may train for ("*": any).
allowed_federations = []            # e.g. ["heart-disease"]
allowed_model_kinds = []            # logistic_regression, mlp, personalized, minilm_lora
allowed_labels = []                 # label columns of the federation's schema, e.g. ["target"]
# The rules below are the defaults; uncomment one to change it.
# max_epsilon = 10.0                # patient-level privacy budget over all federations
                                    # (unset: none; when set, only DP-SGD federations)
# delta = 1e-5                      # the delta that budget is measured at
# require_secure_aggregation = true # updates leave only masked; plain uploads are declined
# min_contributors = 3              # the fewest facilities an update may be summed with
# require_consistency_check = true  # SecAgg+'s check against a coordinator lying about dropouts
# min_threshold_fraction = 0.5      # smallest Shamir threshold, as a share of neighbours
# require_distributed_noise = true  # when the federation declares distributed noise
# min_samples = 0                   # do not train on fewer training rows
# min_cohort = 20                   # withhold metrics for a held-out cohort this small
"#;

/// Accepts any server certificate. Used only to fetch the CA certificate, which is then
/// checked against the token's fingerprint; the handshake signature is still verified.
#[derive(Debug)]
struct UnverifiedServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        for server_name in [None, Some("coordinator.health.example")] {
            let token = Token::generate(
                "https://10.0.0.5:7443",
                server_name,
                "kisumu",
                &"ab".repeat(32),
                42,
            );
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, config_skeleton(&token, &[])).unwrap();
            let config = crate::config::AgentConfig::load(&path).unwrap();
            assert_eq!(config.tls.key, dir.path().join(KEY_FILE));
            assert_eq!(config.server_name(), server_name.unwrap_or("10.0.0.5"));
        }
    }

    /// The commented rules of the written `[policy]` are the defaults: uncommenting all of
    /// them changes nothing but the budget (which has no default).
    #[test]
    fn the_written_policy_states_the_defaults() {
        let token = Token::generate(
            "https://10.0.0.5:7443",
            None,
            "kisumu",
            &"ab".repeat(32),
            42,
        );
        let text = config_skeleton(&token, &[]);
        let policy = text.split("[policy]").nth(1).expect("a [policy] section");
        let as_written: crate::config::PolicyConfig = toml::from_str(policy).unwrap();
        assert_eq!(as_written, crate::config::PolicyConfig::default());
        let uncommented: String = policy
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rule) if rule.split_whitespace().nth(1) == Some("=") => rule,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut every_rule: crate::config::PolicyConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(every_rule.max_epsilon, Some(10.0));
        every_rule.max_epsilon = None;
        assert_eq!(every_rule, crate::config::PolicyConfig::default());
    }

    /// The coordinator's invitations fill the three allow-lists; the other rules keep their
    /// defaults, and a name that is not plain is left out rather than written.
    #[test]
    fn the_written_policy_allows_the_invitations() {
        let token = Token::generate(
            "https://10.0.0.5:7443",
            None,
            "kisumu",
            &"ab".repeat(32),
            42,
        );
        let invite = |name: &str, kind: &str, label: &str| pb::FederationInvitation {
            name: name.into(),
            model_kind: kind.into(),
            label: label.into(),
            names_facility: true,
        };
        let invitations = [
            invite("heart-disease", "logistic_regression", "target"),
            invite("readmission", "mlp", "readmitted"),
            invite("evil\"]\nallowed_labels = [\"*", "mlp", "x"),
            invite("odd", "transformer", "x"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config_skeleton(&token, &invitations)).unwrap();
        let config = crate::config::AgentConfig::load(&path).unwrap();
        let policy = config.policy;
        assert_eq!(
            policy.allowed_federations,
            vec!["heart-disease".to_owned(), "readmission".to_owned()]
        );
        assert_eq!(
            policy.allowed_model_kinds,
            vec!["logistic_regression".to_owned(), "mlp".to_owned()]
        );
        assert_eq!(
            policy.allowed_labels,
            vec!["readmitted".to_owned(), "target".to_owned()]
        );
        let defaults = crate::config::PolicyConfig::default();
        assert_eq!(policy.max_epsilon, defaults.max_epsilon);
        assert_eq!(policy.min_contributors, defaults.min_contributors);
        assert_eq!(
            policy.require_secure_aggregation,
            defaults.require_secure_aggregation
        );
    }

    #[test]
    fn requests_name_the_facility() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = certificate_request(&key, "kisumu").unwrap();
        use x509_parser::prelude::FromDer;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        assert_eq!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            key.public_key_raw()
        );
    }
}
