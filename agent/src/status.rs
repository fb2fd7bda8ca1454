//! What the agent records for `harambee-agent doctor`, beside its logs: when it last heard
//! from the coordinator (`contact.json`), and the schema of each federation that sent it a
//! task (`schemas.json`), so that the data file can be checked against it offline. Neither
//! holds patient data: a time, the coordinator's address, column names and the
//! federation's standardisation constants.
//!
//! Writing them is best effort: a failure is logged, never fatal to a round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use harambee_models::data::Schema;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// The last contact, in the state directory.
pub const CONTACT_FILE: &str = "contact.json";
/// Federation schemas by federation, in the state directory.
pub const SCHEMAS_FILE: &str = "schemas.json";
/// The last contact is rewritten at most this often while connected.
const CONTACT_EVERY: Duration = Duration::from_secs(60);

/// When the coordinator last answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub coordinator: String,
    pub unix_ms: i64,
}

/// Keeps `contact.json` and `schemas.json` up to date.
pub struct StatusFiles {
    dir: PathBuf,
    contact_written: Mutex<Option<Instant>>,
    schemas: Mutex<BTreeMap<String, Schema>>,
}

impl StatusFiles {
    pub fn new(state_dir: &Path) -> StatusFiles {
        StatusFiles {
            dir: state_dir.to_owned(),
            contact_written: Mutex::new(None),
            schemas: Mutex::new(read_schemas(state_dir).unwrap_or_default()),
        }
    }

    /// Records that `coordinator` answered at `unix_ms`: always when `connected` (a new
    /// session), otherwise at most every minute.
    pub fn contact(&self, coordinator: &str, unix_ms: i64, connected: bool) {
        let mut written = self
            .contact_written
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !connected && written.is_some_and(|at| at.elapsed() < CONTACT_EVERY) {
            return;
        }
        *written = Some(Instant::now());
        let contact = Contact {
            coordinator: coordinator.to_owned(),
            unix_ms,
        };
        self.write(CONTACT_FILE, &contact);
    }

    /// Records the schema `federation` trains with, if it is new or changed.
    pub fn schema(&self, federation: &str, schema: &Schema) {
        let mut schemas = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
        if schemas.get(federation) == Some(schema) {
            return;
        }
        schemas.insert(federation.to_owned(), schema.clone());
        self.write(SCHEMAS_FILE, &*schemas);
    }

    fn write(&self, name: &str, value: &impl Serialize) {
        let path = self.dir.join(name);
        let written = serde_json::to_vec_pretty(value)
            .map_err(std::io::Error::other)
            .and_then(|bytes| harambee_link::files::replace(&path, &bytes, 0o644));
        if let Err(e) = written {
            warn!(path = %path.display(), "could not record the agent's status: {e}");
        }
    }
}

/// The last contact recorded in `state_dir`, if any.
pub fn read_contact(state_dir: &Path) -> anyhow::Result<Option<Contact>> {
    read_json(&state_dir.join(CONTACT_FILE))
}

/// The federation schemas recorded in `state_dir` (none before the first task).
pub fn read_schemas(state_dir: &Path) -> anyhow::Result<BTreeMap<String, Schema>> {
    Ok(read_json(&state_dir.join(SCHEMAS_FILE))?.unwrap_or_default())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
