//! The agent renews its own certificate before it expires, with no operator involved.
//!
//! Once two thirds of the certificate's lifetime have passed (day 60 of a 90-day
//! certificate), the task started by [`spawn`] asks the coordinator for a new certificate
//! (`EnrolmentService.RenewCertificate`) over mTLS with the current one, sending a request
//! signed by the agent's existing key, and replaces the certificate file atomically.
//!
//! The key stays the same. Only one file changes, so a crash can never leave a certificate
//! that does not match the key, and the key that signs secure-aggregation advertisements
//! does not change under a running round. A new key means enrolling again.
//!
//! The runtime reads the certificate on every (re)connection, so the renewed one is used
//! from the next connection on. The coordinator refuses calls on a connection whose
//! certificate has expired, which forces that reconnection at the latest. The coordinator
//! keeps nothing about a renewal in memory, so renewal works across coordinator restarts.
//! A failed renewal is retried with backoff; once the certificate has expired, only a new
//! enrolment helps, and the task says so.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use harambee_link::tls::{self, ClientTls};
use harambee_proto::pb::{self, enrolment_service_client::EnrolmentServiceClient};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use crate::config::AgentConfig;

/// Renew once this share of the lifetime (not_before to not_after) has passed.
pub const RENEW_AT_NUMERATOR: u32 = 2;
pub const RENEW_AT_DENOMINATOR: u32 = 3;
/// The task re-reads the certificate at least this often (a renewal by hand, a clock jump).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
const RETRY_MIN: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(900);

/// What the agent's certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The facility, from `harambee://agent/<name>`.
    pub facility: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Lowercase hex SHA-256 of the DER encoding.
    pub sha256: String,
}

impl CertInfo {
    /// When this certificate is due for renewal.
    pub fn renewal_time(&self) -> SystemTime {
        renewal_time(self.not_before, self.not_after)
    }
}

/// `not_before` plus two thirds of the lifetime.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime * RENEW_AT_NUMERATOR / RENEW_AT_DENOMINATOR
}

/// Reads the first certificate of a PEM file.
pub fn read_certificate(path: &Path) -> anyhow::Result<CertInfo> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| anyhow!("reading the certificate {}: {e}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("parsing the certificate {}: {e}", path.display()))?;
    let facility = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    uri.strip_prefix("harambee://agent/").map(str::to_owned)
                }
                _ => None,
            })
        })
        .ok_or_else(|| {
            anyhow!(
                "{} is not an agent certificate (no harambee://agent/ name)",
                path.display()
            )
        })?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(CertInfo {
        facility,
        not_before: at(cert.validity().not_before),
        not_after: at(cert.validity().not_after),
        sha256: hex::encode(Sha256::digest(&der)),
    })
}

/// The agent's TLS files as they are on disk now (the certificate may have been renewed).
pub fn current_tls(config: &AgentConfig) -> anyhow::Result<ClientTls> {
    Ok(ClientTls::from_files(
        &config.tls.ca,
        &config.tls.cert,
        &config.tls.key,
        &config.server_name(),
    )?)
}

/// Renews the certificate now: a new certificate for the same key and facility replaces
/// `config.tls.cert`. Returns what the new certificate says.
pub async fn renew(config: &AgentConfig) -> anyhow::Result<CertInfo> {
    let current = read_certificate(&config.tls.cert)?;
    let key_pem = std::fs::read_to_string(&config.tls.key)
        .with_context(|| format!("reading {}", config.tls.key.display()))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .with_context(|| format!("reading the key {}", config.tls.key.display()))?;
    let csr_der = crate::enrol::certificate_request(&key, &current.facility)?;
    let channel = tls::connect_via(
        &config.coordinator,
        &current_tls(config)?,
        &config.proxies,
        config.connect_timeout(),
    )
    .await?;
    let issued = EnrolmentServiceClient::new(channel)
        .renew_certificate(pb::RenewCertificateRequest { csr_der })
        .await
        .map_err(|status| {
            anyhow!(
                "the coordinator refused to renew the certificate: {}",
                status.message()
            )
        })?
        .into_inner();

    let ca_on_disk = CertificateDer::from_pem_file(&config.tls.ca)
        .map_err(|e| anyhow!("reading {}: {e}", config.tls.ca.display()))?;
    // Exactly the CA this agent pinned at enrolment, alone (as `enrol` checks it).
    crate::enrol::pinned_ca(&issued.ca_pem, &hex::encode(Sha256::digest(&ca_on_disk)))
        .with_context(|| {
            format!(
                "the coordinator renewed under another CA than {}; refusing the certificate",
                config.tls.ca.display()
            )
        })?;
    let leaf = CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
        .map_err(|e| anyhow!("the renewed certificate is unreadable: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow!("the renewed certificate is unreadable: {e}"))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!("the renewed certificate is not for this agent's key");
    }
    // Write, then check the file as the runtime will read it.
    let previous = std::fs::read(&config.tls.cert)
        .with_context(|| format!("reading {}", config.tls.cert.display()))?;
    crate::enrol::write_file(&config.tls.cert, issued.certificate_pem.as_bytes(), 0o644)?;
    let renewed = match read_certificate(&config.tls.cert)
        .and_then(|info| current_tls(config).map(|_| info))
    {
        Ok(info) if info.facility == current.facility => info,
        Ok(info) => {
            crate::enrol::write_file(&config.tls.cert, &previous, 0o644)?;
            bail!(
                "the renewed certificate names {:?}, not {:?}; kept the old one",
                info.facility,
                current.facility
            );
        }
        Err(e) => {
            crate::enrol::write_file(&config.tls.cert, &previous, 0o644)?;
            return Err(e.context("the renewed certificate is unusable; kept the old one"));
        }
    };
    Ok(renewed)
}

/// Starts the renewal task; it stops when the returned handle is dropped.
pub fn spawn(config: AgentConfig) -> RenewalTask {
    RenewalTask(tokio::spawn(renewal_loop(config)).abort_handle())
}

/// Aborts the renewal task when dropped.
pub struct RenewalTask(AbortHandle);

impl Drop for RenewalTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn renewal_loop(config: AgentConfig) {
    let mut retry = RETRY_MIN;
    loop {
        let info = match read_certificate(&config.tls.cert) {
            Ok(info) => info,
            Err(e) => {
                warn!("cannot check the certificate for renewal: {e:#}");
                tokio::time::sleep(MAX_SLEEP).await;
                continue;
            }
        };
        let now = SystemTime::now();
        let due = info.renewal_time();
        if now < due {
            let wait = due.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
            tokio::time::sleep(wait).await;
            continue;
        }
        if now >= info.not_after {
            error!(
                facility = %info.facility,
                "the agent certificate has expired and can no longer be renewed; ask the operator for a new enrolment token and run `harambee-agent enrol` again"
            );
            tokio::time::sleep(MAX_SLEEP).await;
            continue;
        }
        match renew(&config).await {
            Ok(renewed) => {
                let not_after_unix_s = renewed
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                info!(facility = %renewed.facility, not_after_unix_s, sha256 = %renewed.sha256, "certificate renewed");
                retry = RETRY_MIN;
            }
            Err(e) => {
                let left = info.not_after.duration_since(now).unwrap_or_default();
                warn!(
                    expires_in_s = left.as_secs(),
                    "certificate renewal failed: {e:#}; retrying in {retry:?}"
                );
                tokio::time::sleep(retry.min(left / 4).max(Duration::from_secs(1))).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 86_400);
        assert_eq!(
            renewal_time(start, end),
            start + Duration::from_secs(60 * 86_400)
        );
        // A certificate that ends before it starts is due at once.
        assert_eq!(renewal_time(end, start), end);
    }
}
