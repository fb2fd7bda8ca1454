//! The facility's own log of everything that left it: one JSON object per line, appended
//! and flushed before the data is sent. Facility IT reads it; auditors cross-check it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct EgressRecord<'a> {
    pub unix_ms: i64,
    /// `update` (plain), `trained` (held for secure aggregation), `masked-update`,
    /// `metrics`, or a secure-aggregation message: `secagg-advertisement`,
    /// `secagg-key-shares`, `secagg-signature`, `secagg-unmask-shares`.
    pub kind: &'a str,
    pub federation: &'a str,
    pub round_id: u64,
    pub bytes: u64,
    pub sha256: Option<&'a str>,
    pub n_samples: u64,
}

pub struct EgressLog {
    path: PathBuf,
    payload_dir: Option<PathBuf>,
}

impl EgressLog {
    /// The log at `state_dir/egress.jsonl`; with `keep_payloads`, update bytes are kept
    /// under `state_dir/egress/`.
    pub fn new(state_dir: &Path, keep_payloads: bool) -> EgressLog {
        EgressLog {
            path: state_dir.join("egress.jsonl"),
            payload_dir: keep_payloads.then(|| state_dir.join("egress")),
        }
    }

    /// With `keep_payloads`, also keeps a secure round's update before masking (it never
    /// leaves the facility) as `state_dir/egress/round-ID-unmasked.f32`.
    pub fn keep_unmasked(&self, round_id: u64, update: &[f32]) -> anyhow::Result<()> {
        if let Some(dir) = &self.payload_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("round-{round_id}-unmasked.f32"));
            std::fs::write(&path, harambee_core::params::to_le_bytes(update))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Keeps a copy of an outgoing payload (when configured to), named by its digest.
    pub fn keep_payload(&self, sha256: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if let Some(dir) = &self.payload_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("{sha256}.f32"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record, whole or not at all, synced before it returns.
    pub fn append(&self, record: &EgressRecord<'_>) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        harambee_link::files::append_line(&self.path, &line)
            .with_context(|| format!("appending to {}", self.path.display()))
    }

    /// Completes or removes a last line torn by a crash or a full disk (it was never
    /// synced, so what it records had not left); returns the bytes removed.
    pub fn repair(&self) -> anyhow::Result<u64> {
        harambee_link::files::repair_torn_tail(&self.path, |line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok()
        })
        .with_context(|| format!("repairing {}", self.path.display()))
    }
}
