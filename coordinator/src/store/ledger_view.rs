//! The coordinator's view of its privacy ledger: the signing key, and an in-memory mirror of
//! the stored entries that answers tree heads and proofs.
//!
//! The database is the ledger (`store/ledger.rs` writes each entry inside the transaction of
//! the state it describes); the mirror only caches the Merkle tree. Before answering, it
//! reads the entries appended since it last looked and checks each one's contents against
//! its leaf hash, so a row altered in the database is refused here instead of being served
//! and signed.

use std::collections::HashMap;
use std::path::Path;

use harambee_core::FacilityId;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_privacy::ledger::{
    Ledger, LedgerEvent, LedgerLine, Sha256Digest, SignedTreeHead, key_fingerprint,
};
use tokio::sync::{Mutex, MutexGuard};

use crate::store::{Store, StoreError};

/// Entries read from the database per query while catching up.
const SYNC_PAGE: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored ledger is inconsistent: {0}")]
    Corrupt(#[from] harambee_privacy::ledger::LedgerError),
}

pub struct LedgerView {
    key: SigningKey,
    mirror: Mutex<Ledger>,
}

impl LedgerView {
    pub fn new(key: SigningKey) -> LedgerView {
        LedgerView {
            key,
            mirror: Mutex::new(Ledger::new()),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The mirror, caught up with the database.
    pub async fn synced(&self, store: &Store) -> Result<MutexGuard<'_, Ledger>, LedgerError> {
        let mut ledger = self.mirror.lock().await;
        loop {
            let start = ledger.size();
            let lines = store.ledger_lines(start, start + SYNC_PAGE).await?;
            let n = lines.len() as u64;
            for line in lines {
                ledger.push_line(line)?;
            }
            if n < SYNC_PAGE {
                return Ok(ledger);
            }
        }
    }

    /// The head of the whole ledger, signed at `now_ms`.
    pub fn sign(&self, ledger: &Ledger, now_ms: i64) -> SignedTreeHead {
        ledger.sign_head(now_ms.max(0) as u64, &self.key)
    }
}

/// The ledger key rotations an agent that last saw a head of `known_tree_size` entries has
/// not seen (every `LedgerKeyRotated` entry at that index or later), each as its export line
/// with its inclusion proof in the tree of `tree_size` entries, in ledger order.
pub fn rotation_proofs(
    ledger: &Ledger,
    known_tree_size: u64,
    tree_size: u64,
) -> Result<Vec<(String, Vec<Sha256Digest>)>, harambee_privacy::ledger::LedgerError> {
    ledger
        .lines()
        .iter()
        .skip(usize::try_from(known_tree_size).unwrap_or(usize::MAX))
        .take_while(|l| l.index < tree_size)
        .filter(|l| matches!(l.event, LedgerEvent::LedgerKeyRotated { .. }))
        .map(|l| Ok((l.to_json()?, ledger.inclusion_proof(l.index, tree_size)?)))
        .collect()
}

/// For each (facility, key), the latest `FacilityEnrolled` entry that records that key for
/// that facility, as its export line with its audit path in the tree of `tree_size` entries.
/// A pair the ledger does not record is left out: its peers will refuse it.
pub fn enrolment_proofs(
    ledger: &Ledger,
    keys: &[(FacilityId, VerifyingKey)],
    tree_size: u64,
) -> Result<HashMap<FacilityId, (String, Vec<Sha256Digest>)>, harambee_privacy::ledger::LedgerError>
{
    let mut latest: HashMap<&str, &LedgerLine> = HashMap::new();
    for line in ledger
        .lines()
        .iter()
        .take(usize::try_from(tree_size).unwrap_or(usize::MAX))
    {
        if let LedgerEvent::FacilityEnrolled {
            facility,
            receipt_key: Some(key),
        } = &line.event
            && keys.iter().any(|(f, k)| f.as_str() == facility && k == key)
        {
            latest.insert(facility.as_str(), line);
        }
    }
    latest
        .into_iter()
        .map(|(facility, line)| {
            Ok((
                FacilityId::from(facility),
                (
                    line.to_json()?,
                    ledger.inclusion_proof(line.index, tree_size)?,
                ),
            ))
        })
        .collect()
}

/// Opens the coordinator's Ed25519 ledger key (PKCS#8 PEM at `path`) against the key the
/// database records, at start-up:
///
/// - the file must be readable by its owner only (mode 0600 or stricter);
/// - a ledger with entries needs the key that signed them: a missing file, or a key whose
///   fingerprint is not the recorded one, is refused with both fingerprints, never
///   replaced by a new key (change keys with `harambee-coordinator ledger rotate-key`);
/// - a fresh ledger creates the key (mode 0600) if the file does not exist, and the
///   database records its fingerprint.
pub async fn open_key(store: &Store, path: &Path, now_ms: i64) -> anyhow::Result<SigningKey> {
    use anyhow::{Context, bail};
    let recorded = store
        .ledger_key()
        .await
        .context("reading the recorded ledger key")?;
    let n_entries = store.ledger_size().await?;
    let key = match read_key(path)? {
        Some(key) => key,
        None => {
            match (&recorded, n_entries) {
                (Some(row), 1..) => bail!(
                    "the ledger key file {} does not exist, but the ledger's {n_entries} entries are signed with key {}: restore that key from its backup (a new key would leave every head that facilities and auditors hold unverifiable)",
                    path.display(),
                    row.fingerprint
                ),
                (None, 1..) => bail!(
                    "the ledger key file {} does not exist, and the ledger already holds {n_entries} entries signed with another key: restore that key from its backup",
                    path.display()
                ),
                _ => {}
            }
            create_key(path)?
        }
    };
    let fingerprint = key_fingerprint(&key.verifying_key());
    match recorded {
        Some(row) if row.fingerprint == fingerprint => {}
        Some(row) if n_entries > 0 => bail!(
            "the ledger key {} has fingerprint {fingerprint}, but the ledger's {n_entries} entries are signed with key {}: start with that key, or hand the ledger over with `harambee-coordinator ledger rotate-key`",
            path.display(),
            row.fingerprint
        ),
        _ => {
            if n_entries > 0 {
                tracing::warn!(%fingerprint, n_entries, "no ledger key recorded for an existing ledger; recording this one");
            }
            store
                .record_first_ledger_key(&key.verifying_key(), now_ms)
                .await
                .context("recording the ledger key's fingerprint")?;
            tracing::info!(%fingerprint, "ledger key recorded");
        }
    }
    tracing::info!(%fingerprint, path = %path.display(), "ledger key");
    Ok(key)
}

/// Reads a ledger key file, `None` if it does not exist. Refuses a file that others than
/// its owner may read or write, naming the file and its mode.
pub fn read_key(path: &Path) -> anyhow::Result<Option<SigningKey>> {
    use anyhow::{Context, bail};
    use std::os::unix::fs::PermissionsExt;
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the ledger key {}", path.display()));
        }
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the ledger key {} has mode {mode:04o}; a key file must be readable by its owner only (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ledger key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map(Some).with_context(|| {
        format!(
            "the ledger key {} is not a PKCS#8 Ed25519 key",
            path.display()
        )
    })
}

/// Creates a new ledger key at `path` (which must not exist), mode 0600.
pub fn create_key(path: &Path) -> anyhow::Result<SigningKey> {
    use anyhow::Context;
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let pem = key
        .to_pkcs8_pem(Default::default())
        .context("encoding the ledger key")?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        harambee_link::files::create_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    harambee_link::files::write_new(path, pem.as_bytes(), harambee_link::files::PRIVATE)
        .with_context(|| format!("writing the ledger key {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a ledger signing key");
    Ok(key)
}
