//! `state_dir/privacy-log.jsonl` is append-only and hash-chained: each line is
//! `{"hash", "prev", "record", "seq", "unix_ms"}` where `hash = SHA-256(prev || canonical JSON
//! of {"record", "seq", "unix_ms"})` (keys sorted, no whitespace) and `prev` is the previous
//! line's hash (32 zero bytes for the first). Changing, removing or reordering a line breaks
//! the chain at that line ([`parse_log`] refuses it and names the line). It records:
//!
//! - `receipt`: an update about to leave, the receipt the agent signed for it, and the DP-SGD
//!   steps behind it (the accountant is rebuilt from these at start-up, so the budget survives
//!   restarts);
//! - `accepted`: the coordinator took the upload (only these receipts must be in the ledger);
//! - `proof`: the ledger entry of a contribution with its inclusion proof and signed head;
//! - `head`: a tree head checked consistent with the previous one, and this facility's
//!   countersignature of it;
//! - `refusal`: a task the facility declined, and why;
//! - `identity`: the facility's own public key, when the log starts or the key changes;
//! - `alarm`: an answer of the coordinator about a contribution that did not verify;
//! - `key_rotation`: the coordinator's ledger key changed: the `LedgerKeyRotated` entries
//!   from the pinned key to the new one, each with its inclusion proof in the first head
//!   signed by the new key (written before that head's `head` record).
//!
//! The pinned ledger key is the one of the last `head` ([`last_head`]); a `head` under
//! another key than the one before it must follow a `key_rotation` to that key
//! ([`check_ledger_keys`]). Logs written before rotations were followed hold one key only.
//!
//! This module is the format: records, lines, the chain and the queries an auditor or the
//! agent makes of a log. Writing the file (append, fsync) is the agent's.

use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::{Cosignature, LedgerLine, Sha256Digest, SignedReceipt, SignedTreeHead};
use crate::policy::DpSteps;

/// The file name of the privacy log inside an agent's state directory.
pub const LOG_FILE: &str = "privacy-log.jsonl";

/// One record of the privacy log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Receipt {
        receipt: SignedReceipt,
        dp: Option<DpSteps>,
    },
    Accepted {
        federation: String,
        round_id: u64,
    },
    Proof {
        federation: String,
        round_id: u64,
        entry: Box<LedgerLine>,
        inclusion_proof: Vec<Sha256Digest>,
        signed_tree_head: SignedTreeHead,
    },
    Head {
        signed_tree_head: SignedTreeHead,
        ledger_key: String,
        cosignature: Cosignature,
    },
    Refusal {
        federation: String,
        round_id: u64,
        reason: String,
    },
    /// The facility's Ed25519 key (hex), the one its receipts and countersignatures verify
    /// with; recorded when the log starts and whenever the key changes (re-enrolment).
    Identity {
        facility: String,
        key: String,
    },
    /// A peer facility's Ed25519 key (hex), pinned the first time its certificate verified:
    /// a later certificate with another key for it is refused.
    PeerKey {
        facility: String,
        key: String,
    },
    /// The coordinator's answer about a contribution did not verify: for the auditor.
    Alarm {
        federation: String,
        round_id: u64,
        problem: String,
    },
    /// The ledger key changed from `old_key` to `new_key` (hex): the rotation entries that
    /// chain them, each with its audit path in `signed_tree_head`, the first head seen under
    /// the new key.
    KeyRotation {
        old_key: String,
        new_key: String,
        rotations: Vec<LedgerLine>,
        inclusion_proofs: Vec<Vec<Sha256Digest>>,
        signed_tree_head: SignedTreeHead,
    },
}

/// One line of the privacy log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub seq: u64,
    pub unix_ms: i64,
    pub prev: Sha256Digest,
    pub hash: Sha256Digest,
    pub record: Record,
}

/// `SHA-256(prev || canonical JSON of {"record", "seq", "unix_ms"})`.
fn chain_hash(prev: &Sha256Digest, seq: u64, unix_ms: i64, record: &Record) -> Sha256Digest {
    // serde_json::Value objects keep keys sorted: the encoding is canonical.
    let body = serde_json::json!({ "record": record, "seq": seq, "unix_ms": unix_ms });
    let mut hasher = Sha256::new();
    hasher.update(prev.0);
    // A record of plain data always serializes; nothing would be hashed otherwise.
    hasher.update(serde_json::to_vec(&body).unwrap_or_default());
    Sha256Digest(hasher.finalize().into())
}

impl LogLine {
    /// The line that follows `prev` (the first line when `None`) with `record`.
    pub fn next(prev: Option<&LogLine>, unix_ms: i64, record: Record) -> LogLine {
        let seq = prev.map_or(0, |l| l.seq + 1);
        let prev = prev.map_or(Sha256Digest([0; 32]), |l| l.hash);
        let hash = chain_hash(&prev, seq, unix_ms, &record);
        LogLine {
            seq,
            unix_ms,
            prev,
            hash,
            record,
        }
    }
}

/// A privacy log whose chain is broken, and where (1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogError {
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

impl std::error::Error for LogError {}

/// Parses a privacy log and checks its chain; the error names the first bad line (1-based).
pub fn parse_log(text: &str) -> Result<Vec<LogLine>, LogError> {
    let mut lines: Vec<LogLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line: LogLine = serde_json::from_str(raw).map_err(|e| LogError {
            line: n,
            problem: format!("not a privacy log record: {e}"),
        })?;
        let prev = lines.last().map_or(Sha256Digest([0; 32]), |l| l.hash);
        if line.seq != i as u64 {
            return Err(LogError {
                line: n,
                problem: format!(
                    "sequence number {} where {i} was expected (a line was removed or moved)",
                    line.seq
                ),
            });
        }
        if line.prev != prev {
            return Err(LogError {
                line: n,
                problem:
                    "does not chain to the line before it (a line was removed, moved or altered)"
                        .to_owned(),
            });
        }
        if chain_hash(&prev, line.seq, line.unix_ms, &line.record) != line.hash {
            return Err(LogError {
                line: n,
                problem: "its contents do not match its hash (the line was altered)".to_owned(),
            });
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Receipts of the uploads the coordinator accepted: those the ledger must hold.
pub fn accepted_receipts(lines: &[LogLine]) -> Vec<SignedReceipt> {
    let mut out = Vec::new();
    for line in lines {
        if let Record::Accepted {
            federation,
            round_id,
        } = &line.record
        {
            let receipt = lines.iter().rev().find_map(|l| match &l.record {
                Record::Receipt { receipt, .. }
                    if receipt.receipt.federation == *federation
                        && receipt.receipt.round_id == *round_id =>
                {
                    Some(receipt)
                }
                _ => None,
            });
            if let Some(r) = receipt {
                out.push(r.clone());
            }
        }
    }
    out
}

/// Receipts of uploads the facility sent but never heard accepted (the connection or the
/// coordinator ended first): the ledger may hold them exactly as signed, or not at all.
pub fn unacknowledged_receipts(lines: &[LogLine]) -> Vec<SignedReceipt> {
    let accepted = |f: &str, r: u64| {
        lines.iter().any(|l| {
            matches!(&l.record, Record::Accepted { federation, round_id } if federation == f && *round_id == r)
        })
    };
    let mut out: Vec<SignedReceipt> = Vec::new();
    for line in lines {
        if let Record::Receipt { receipt, .. } = &line.record {
            let r = &receipt.receipt;
            if accepted(&r.federation, r.round_id) {
                continue;
            }
            out.retain(|o| {
                (o.receipt.federation.as_str(), o.receipt.round_id)
                    != (r.federation.as_str(), r.round_id)
            });
            out.push(receipt.clone());
        }
    }
    out
}

/// The facility's own key (hex) as last recorded in its log.
pub fn facility_key(lines: &[LogLine], facility: &str) -> Option<String> {
    lines.iter().rev().find_map(|l| match &l.record {
        Record::Identity { facility: f, key } if f == facility => Some(key.clone()),
        _ => None,
    })
}

/// Every key the facility's log records as its own (hex parsed), oldest first.
pub fn facility_keys(lines: &[LogLine], facility: &str) -> Vec<VerifyingKey> {
    lines
        .iter()
        .filter_map(|l| match &l.record {
            Record::Identity { facility: f, key } if f == facility => parse_key(key),
            _ => None,
        })
        .collect()
}

/// The last head the facility checked and countersigned, and the ledger key it pinned.
pub fn last_head(lines: &[LogLine]) -> Option<(SignedTreeHead, VerifyingKey)> {
    lines.iter().rev().find_map(|l| match &l.record {
        Record::Head {
            signed_tree_head,
            ledger_key,
            ..
        } => {
            let bytes: [u8; 32] = hex::decode(ledger_key).ok()?.try_into().ok()?;
            Some((*signed_tree_head, VerifyingKey::from_bytes(&bytes).ok()?))
        }
        _ => None,
    })
}

fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Checks the ledger keys of a log's heads: every `head` is under the key of the head before
/// it, or under the key a `key_rotation` after that head hands over to; every `key_rotation`
/// starts from the key then pinned and proves its chain (see
/// [`crate::ledger::rotation::follow_proven_rotations`]). The error names the line (1-based).
pub fn check_ledger_keys(lines: &[LogLine]) -> Result<(), LogError> {
    let bad = |i: usize, problem: String| LogError {
        line: i + 1,
        problem,
    };
    let mut pinned: Option<(SignedTreeHead, VerifyingKey)> = None;
    let mut handed_to: Option<VerifyingKey> = None;
    for (i, line) in lines.iter().enumerate() {
        match &line.record {
            Record::Head {
                signed_tree_head,
                ledger_key,
                ..
            } => {
                let key = parse_key(ledger_key)
                    .ok_or_else(|| bad(i, "the head's ledger key is not an Ed25519 key".into()))?;
                if let Some((_, old)) = &pinned
                    && *old != key
                    && handed_to != Some(key)
                {
                    return Err(bad(
                        i,
                        format!(
                            "a tree head under ledger key {}, but no recorded rotation hands the pinned key {} over to it",
                            crate::ledger::key_fingerprint(&key),
                            crate::ledger::key_fingerprint(old)
                        ),
                    ));
                }
                pinned = Some((*signed_tree_head, key));
                handed_to = None;
            }
            Record::KeyRotation {
                old_key,
                new_key,
                rotations,
                inclusion_proofs,
                signed_tree_head,
            } => {
                let (Some(old), Some(new)) = (parse_key(old_key), parse_key(new_key)) else {
                    return Err(bad(i, "a rotation's key is not an Ed25519 key".into()));
                };
                let Some((seen, pinned_key)) = &pinned else {
                    return Err(bad(i, "a key rotation before any head".into()));
                };
                if old != *pinned_key {
                    return Err(bad(
                        i,
                        "a key rotation from another key than the pinned one".into(),
                    ));
                }
                let texts = rotations
                    .iter()
                    .map(LedgerLine::to_json)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(i, format!("a rotation entry: {e}")))?;
                if texts.len() != inclusion_proofs.len() {
                    return Err(bad(
                        i,
                        "a rotation entry without its inclusion proof".into(),
                    ));
                }
                let proven: Vec<(&str, Vec<Sha256Digest>)> = texts
                    .iter()
                    .map(String::as_str)
                    .zip(inclusion_proofs.iter().cloned())
                    .collect();
                crate::ledger::rotation::follow_proven_rotations(
                    &old,
                    &new,
                    seen.head.tree_size,
                    &proven,
                    signed_tree_head,
                )
                .map_err(|e| bad(i, e.to_string()))?;
                handed_to = Some(new);
            }
            _ => {}
        }
    }
    Ok(())
}
