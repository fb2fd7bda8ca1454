//! The ledger as the console shows it: an export (fetched from the coordinator as an auditor,
//! or read from files offline), checked with the `privacy` crate's verifier against the key
//! the auditor pinned, with inclusion proofs and countersignatures recomputed here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use harambee_privacy::audit;
use harambee_privacy::ledger::export::{HeadFile, KeyPin, head_path_for};
use harambee_privacy::ledger::{
    self, LedgerEvent, LedgerLine, MerkleTree, Sha256Digest, key_fingerprint,
};

/// An export: the entries' text (one canonical line each) and the head file, and offline,
/// facilities' privacy logs to check it against.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub text: String,
    pub head: HeadFile,
    pub receipts: Vec<ReceiptsFile>,
}

/// A facility's privacy log: the file's name and its contents.
#[derive(Debug, Clone)]
pub struct ReceiptsFile {
    pub name: String,
    pub text: String,
}

impl Snapshot {
    /// Reads `ledger`, its head file (`head`, or `<stem>.head.json` beside it) and the
    /// privacy logs `receipts`.
    pub fn read(
        ledger: &Path,
        head: Option<&Path>,
        receipts: &[PathBuf],
    ) -> anyhow::Result<Snapshot> {
        let text = std::fs::read_to_string(ledger)
            .with_context(|| format!("reading {}", ledger.display()))?;
        let head_path = head.map_or_else(|| head_path_for(ledger), Path::to_path_buf);
        let head = serde_json::from_str(
            &std::fs::read_to_string(&head_path)
                .with_context(|| format!("reading {}", head_path.display()))?,
        )
        .with_context(|| format!("parsing {}", head_path.display()))?;
        let receipts = receipts
            .iter()
            .map(|path| {
                Ok(ReceiptsFile {
                    name: path.display().to_string(),
                    text: std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Snapshot {
            text,
            head,
            receipts,
        })
    }
}

/// Whether the ledger verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Tree, head signature (under the pinned key) and receipts check out.
    Verifies,
    /// Something is wrong: see the failures.
    Fails,
    /// It checks out against the key it states itself, but no key was pinned: anyone can
    /// re-sign a rewritten ledger.
    Unpinned,
}

/// One countersignature and what checking it gave.
#[derive(Debug, Clone)]
pub struct Cosigned {
    pub facility: String,
    pub tree_size: u64,
    pub timestamp_ms: u64,
    /// `Ok(())`, or why it does not hold; `None` when the ledger names no key for the
    /// facility (a revoked one, say) to check it with.
    pub check: Option<Result<(), String>>,
}

/// An export, checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    /// What is wrong, each naming the entry where there is one.
    pub failures: Vec<String>,
    /// The key the head was checked with, and where it came from.
    pub key_line: String,
    pub entries: Vec<LedgerLine>,
    pub head: HeadFile,
    pub cosigned: Vec<Cosigned>,
    pub receipts_verified: u64,
    /// Each privacy log given, checked against the export.
    pub facility_logs: Vec<FacilityLog>,
    /// Every facility the entries name, for the filter.
    pub facilities: BTreeSet<String>,
    /// The tree over the entries' recomputed leaf hashes, for inclusion proofs.
    tree: MerkleTree,
}

/// A facility's privacy log checked against the export: the audit `harambee-agent audit
/// verify --receipts` runs.
#[derive(Debug, Clone)]
pub struct FacilityLog {
    /// The log's file.
    pub file: String,
    /// The facility the log belongs to, as it names itself.
    pub facility: Option<String>,
    /// Receipts found in the ledger exactly as the log holds them.
    pub matched: u64,
    /// Where the log and the ledger disagree (empty: the receipts match).
    pub mismatches: Vec<String>,
    /// The whole audit with this log, as `audit verify` would end it.
    pub outcome: audit::Outcome,
    /// Everything that audit found wrong, the ledger's own failures included.
    pub failures: Vec<String>,
}

/// Audits the export with each privacy log in `snapshot`.
fn check_logs(
    snapshot: &Snapshot,
    entries: &[LedgerLine],
    pin: Option<&KeyPin>,
) -> Vec<FacilityLog> {
    snapshot
        .receipts
        .iter()
        .map(|log| {
            let inputs = audit::Inputs {
                entries,
                head: &snapshot.head,
                ledger_key: pin,
                receipts: Some(audit::Named {
                    name: &log.name,
                    text: &log.text,
                }),
                model_card: None,
            };
            match audit::audit(&inputs) {
                Ok(report) => FacilityLog {
                    file: log.name.clone(),
                    facility: report.facility,
                    matched: report.receipts_matched,
                    mismatches: report.facility_failures,
                    outcome: report.outcome,
                    failures: report.failures,
                },
                Err(e) => FacilityLog {
                    file: log.name.clone(),
                    facility: None,
                    matched: 0,
                    mismatches: Vec::new(),
                    outcome: audit::Outcome::Failed,
                    failures: vec![e.to_string()],
                },
            }
        })
        .collect()
}

/// Checks `snapshot` against `pin` (the auditor's key or its fingerprint).
pub fn check(snapshot: &Snapshot, pin: Option<&KeyPin>) -> Checked {
    let head = snapshot.head.clone();
    let mut failures = Vec::new();
    let entries = match ledger::parse_jsonl(&snapshot.text) {
        Ok(entries) => entries,
        Err(e) => {
            // The entry on line N is entry N - 1: say both.
            let message = match &e {
                ledger::LedgerError::Parse { line, message } => format!(
                    "entry {}: cannot be read (line {line} of the export): {message}",
                    line.saturating_sub(1)
                ),
                other => other.to_string(),
            };
            return Checked {
                verdict: Verdict::Fails,
                failures: vec![message],
                key_line: String::new(),
                entries: Vec::new(),
                head,
                cosigned: Vec::new(),
                receipts_verified: 0,
                facility_logs: Vec::new(),
                facilities: BTreeSet::new(),
                tree: MerkleTree::new(),
            };
        }
    };
    let stated = match KeyPin::parse(&head.ledger_key) {
        Ok(KeyPin::Key(key)) => Some(key),
        _ => None,
    };
    let (key, key_line): (Option<VerifyingKey>, String) = match (pin, stated) {
        (Some(pin), _) => match pin.resolve(&head, &entries) {
            Some(key) => (Some(key), format!("pinned key {}", key_fingerprint(&key))),
            None => {
                failures.push(format!(
                    "no ledger key in the export has the pinned fingerprint; the export states {}",
                    stated.map_or_else(|| "no valid key".to_owned(), |k| key_fingerprint(&k))
                ));
                (None, "pinned key not found in the export".to_owned())
            }
        },
        (None, Some(key)) => (
            Some(key),
            format!(
                "key {} as the export states it (not pinned)",
                key_fingerprint(&key)
            ),
        ),
        (None, None) => {
            failures.push("the head file's ledger key is not an Ed25519 key".to_owned());
            (None, "no key".to_owned())
        }
    };
    let facility_keys = ledger::enrolled_receipt_keys(&entries);
    let mut receipts_verified = 0;
    if let Some(key) = key {
        if pin.is_some() {
            let (history, _) = ledger::KeyHistory::follow(&entries, &key);
            if stated.is_some() && history.key_at(head.signed_tree_head.head.tree_size) != stated {
                failures.push(
                    "the export states another ledger key than the pinned key leads to: it was signed with another key"
                        .to_owned(),
                );
            }
        }
        let report =
            ledger::verify_ledger(&entries, &head.signed_tree_head, &key, None, &facility_keys);
        receipts_verified = report.receipts_verified;
        failures.extend(report.failures.iter().map(ToString::to_string));
    }
    let cosigned = head
        .cosignatures
        .iter()
        .map(|c| Cosigned {
            facility: c.cosignature.facility.clone(),
            tree_size: c.head.tree_size,
            timestamp_ms: c.head.timestamp_ms,
            check: facility_keys.get(&c.cosignature.facility).map(|key| {
                ledger::verify_cosignature(&entries, &c.head, &c.cosignature, key)
                    .map_err(|f| f.to_string())
            }),
        })
        .collect();
    let tree = MerkleTree::from_leaf_hashes(
        entries
            .iter()
            .map(|l| l.computed_leaf_hash().unwrap_or(l.leaf_hash)),
    );
    let verdict = if !failures.is_empty() {
        Verdict::Fails
    } else if pin.is_none() {
        Verdict::Unpinned
    } else {
        Verdict::Verifies
    };
    let facilities = entries
        .iter()
        .flat_map(|l| facilities_of(&l.event))
        .map(str::to_owned)
        .collect();
    let facility_logs = check_logs(snapshot, &entries, pin);
    Checked {
        verdict,
        failures,
        key_line,
        entries,
        head,
        cosigned,
        receipts_verified,
        facility_logs,
        facilities,
        tree,
    }
}

/// An entry's inclusion proof in the signed head's tree, recomputed from the entries, and
/// whether it leads to the head's root.
pub struct Inclusion {
    pub leaf_hash: Sha256Digest,
    pub path: Vec<Sha256Digest>,
    pub verifies: bool,
}

impl Checked {
    /// The inclusion proof of entry `index` in the signed head, if the head covers it.
    pub fn inclusion(&self, index: u64) -> Option<Inclusion> {
        let size = self.head.signed_tree_head.head.tree_size;
        let line = self.entries.get(usize::try_from(index).ok()?)?;
        let leaf_hash = line.computed_leaf_hash().ok()?;
        let path = self.tree.inclusion_proof(index, size).ok()?;
        let verifies = ledger::verify_inclusion(
            &leaf_hash,
            index,
            size,
            &path,
            &self.head.signed_tree_head.head.root_hash,
        )
        .is_ok();
        Some(Inclusion {
            leaf_hash,
            path,
            verifies,
        })
    }
}

/// `facility_enrolled`, `contribution`, ...: the entry's type as the export names it.
pub fn type_name(event: &LedgerEvent) -> &'static str {
    match event {
        LedgerEvent::FacilityEnrolled { .. } => "facility_enrolled",
        LedgerEvent::FacilityRevoked { .. } => "facility_revoked",
        LedgerEvent::FederationCreated { .. } => "federation_created",
        LedgerEvent::RoundStarted { .. } => "round_started",
        LedgerEvent::Contribution(_) => "contribution",
        LedgerEvent::Dropout { .. } => "dropout",
        LedgerEvent::RoundCommitted { .. } => "round_committed",
        LedgerEvent::RoundFailed { .. } => "round_failed",
        LedgerEvent::LedgerKeyRotated { .. } => "ledger_key_rotated",
        LedgerEvent::ModelExported { .. } => "model_exported",
        LedgerEvent::AdminAction { .. } => "admin_action",
        LedgerEvent::Certificate { .. } => "certificate",
    }
}

/// Every type name, for the filter.
pub const TYPES: [&str; 12] = [
    "facility_enrolled",
    "facility_revoked",
    "federation_created",
    "round_started",
    "contribution",
    "dropout",
    "round_committed",
    "round_failed",
    "ledger_key_rotated",
    "model_exported",
    "admin_action",
    "certificate",
];

/// The facilities an entry is about.
pub fn facilities_of(event: &LedgerEvent) -> Vec<&str> {
    match event {
        LedgerEvent::FacilityEnrolled { facility, .. }
        | LedgerEvent::FacilityRevoked { facility, .. }
        | LedgerEvent::Dropout { facility, .. } => vec![facility.as_str()],
        LedgerEvent::Contribution(c) => vec![c.facility.as_str()],
        LedgerEvent::RoundStarted { selected, .. } => selected.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The round an entry is about.
pub fn round_of(event: &LedgerEvent) -> Option<u64> {
    match event {
        LedgerEvent::RoundStarted { round_id, .. }
        | LedgerEvent::Dropout { round_id, .. }
        | LedgerEvent::RoundCommitted { round_id, .. }
        | LedgerEvent::RoundFailed { round_id, .. } => Some(*round_id),
        LedgerEvent::Contribution(c) => Some(c.round_id),
        _ => None,
    }
}

/// One line saying what the entry records.
pub fn summary(event: &LedgerEvent) -> String {
    match event {
        LedgerEvent::FacilityEnrolled {
            facility,
            receipt_key,
        } => format!(
            "{facility} enrolled{}",
            receipt_key.map_or_else(String::new, |k| format!(", key {}", key_fingerprint(&k)))
        ),
        LedgerEvent::FacilityRevoked { facility, reason } => {
            format!("{facility} revoked: {reason}")
        }
        LedgerEvent::FederationCreated { name, .. } => format!("federation {name} created"),
        LedgerEvent::RoundStarted {
            federation,
            round_id,
            selected,
            eligible,
        } => format!(
            "round {round_id} of {federation}: {} of {eligible} selected",
            selected.len()
        ),
        LedgerEvent::Contribution(c) => format!(
            "{} contributed to round {} of {} (ε spent {:.4})",
            c.facility, c.round_id, c.federation, c.epsilon_spent
        ),
        LedgerEvent::Dropout {
            federation,
            round_id,
            facility,
            stage,
        } => format!("{facility} dropped out of round {round_id} of {federation} at {stage}"),
        LedgerEvent::RoundCommitted {
            federation,
            round_id,
            model_version,
            ..
        } => format!("round {round_id} of {federation} committed version {model_version}"),
        LedgerEvent::RoundFailed {
            federation,
            round_id,
            reason,
            revealed,
        } => format!(
            "round {round_id} of {federation} failed: {reason}{}",
            if *revealed { " (after revealing)" } else { "" }
        ),
        LedgerEvent::LedgerKeyRotated {
            old_key, new_key, ..
        } => format!(
            "ledger key {} handed over to {}",
            key_fingerprint(old_key),
            key_fingerprint(new_key)
        ),
        LedgerEvent::ModelExported {
            federation,
            model_version,
            actor,
            ..
        } => format!("{actor} exported version {model_version} of {federation}"),
        LedgerEvent::AdminAction {
            actor,
            action,
            detail,
        } => format!("{actor}: {action} {detail}"),
        LedgerEvent::Certificate {
            change,
            identity,
            serial,
            ..
        } => format!("certificate {serial} of {identity} {change:?}").to_lowercase(),
    }
}
