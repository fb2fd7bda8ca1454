//! The coordinator's view of its privacy ledger: the signing key, and an in-memory mirror of
//! the stored entries that answers tree heads and proofs.
//!
//! The database is the ledger (`store/ledger.rs` writes each entry inside the transaction of
//! the state it describes); the mirror only caches the Merkle tree. Before answering, it
//! reads the entries appended since it last looked and checks each one's contents against
//! its leaf hash, so a row altered in the database is refused here instead of being served
//! and signed.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_privacy::ledger::{Ledger, SignedTreeHead};
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

/// Loads the coordinator's Ed25519 ledger key (PKCS#8 PEM), creating it (mode 0600) if the
/// file does not exist. The key is the coordinator's identity towards auditors: keep it, and
/// back it up, with the database; a new key makes every earlier head unverifiable with it.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem)
            .with_context(|| format!("reading the ledger key {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            let pem = key
                .to_pkcs8_pem(Default::default())
                .context("encoding the ledger key")?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, pem.as_bytes())
                .with_context(|| format!("writing the ledger key {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the ledger signing key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the ledger key {}", path.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
