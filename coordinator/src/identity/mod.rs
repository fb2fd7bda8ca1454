//! The coordinator's identity state, shared by the access layer (`crate::server::access`,
//! which decides every call with it) and the enrolment service (`crate::service::enrol`,
//! which issues and revokes): revoked facilities and certificates, the `Enrol` rate limits,
//! and the certificate issuing when this host holds a CA key. It names no layer above it.

pub mod limit;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::pki::Signer;
use crate::store::RevokedCertificateRow;
use limit::EnrolLimiter;

/// The coordinator's identity state: revoked facilities and certificates, the `Enrol` rate
/// limiter and, when enabled, its certificate issuing (see [`crate::service::enrol`]).
#[derive(Default)]
pub struct Identity {
    revoked: RwLock<HashSet<String>>,
    revoked_certificates: RwLock<RevokedCertificates>,
    pub(crate) enrol_limiter: Mutex<EnrolLimiter>,
    pub(crate) issuing: RwLock<Option<Arc<Issuing>>>,
}

/// Certificates revoked by serial, and their keys.
#[derive(Default)]
struct RevokedCertificates {
    /// Serial to the key recorded with it (empty if unknown).
    serials: HashMap<String, String>,
    /// Key SHA-256 to the serial whose revocation refused it.
    keys: HashMap<String, String>,
}

/// Why a certificate is refused although the CA signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Its serial was revoked.
    Serial(String),
    /// Its key is the key of this revoked serial.
    Key(String),
}

impl Identity {
    pub fn is_revoked(&self, facility: &str) -> bool {
        self.revoked.read().unwrap().contains(facility)
    }

    /// Marks facilities revoked (revocation is permanent, so this only ever adds).
    pub fn add_revoked(&self, facilities: impl IntoIterator<Item = String>) {
        self.revoked.write().unwrap().extend(facilities);
    }

    /// Whether a certificate with `serial` and key `key_sha256` (see [`crate::pki::CertFacts`]) has
    /// been revoked, and how.
    pub fn certificate_revocation(&self, serial: &str, key_sha256: &str) -> Option<Revoked> {
        let revoked = self.revoked_certificates.read().unwrap();
        if revoked.serials.contains_key(serial) {
            return Some(Revoked::Serial(serial.to_owned()));
        }
        revoked
            .keys
            .get(key_sha256)
            .map(|serial| Revoked::Key(serial.clone()))
    }

    /// Marks certificates (and their keys) revoked; returns those that were not yet.
    pub fn add_revoked_certificates(
        &self,
        rows: impl IntoIterator<Item = RevokedCertificateRow>,
    ) -> Vec<RevokedCertificateRow> {
        let mut revoked = self.revoked_certificates.write().unwrap();
        let mut new = Vec::new();
        for row in rows {
            if revoked.serials.contains_key(&row.serial) {
                continue;
            }
            revoked
                .serials
                .insert(row.serial.clone(), row.key_sha256.clone());
            if !row.key_sha256.is_empty() {
                revoked
                    .keys
                    .entry(row.key_sha256.clone())
                    .or_insert_with(|| row.serial.clone());
            }
            new.push(row);
        }
        new
    }
}

/// What the coordinator needs to enrol and renew: the CA certificate and, if this host
/// holds a CA key, the signer.
pub struct Issuing {
    pub(crate) ca_pem: String,
    pub(crate) ca_sha256: String,
    pub(crate) signer: Option<Signer>,
    pub(crate) validity: Duration,
}
