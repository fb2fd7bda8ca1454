//! What the ledger records, how an entry becomes a leaf, and the JSON-lines export.
//!
//! # Leaf encoding
//!
//! Entry `i` is the leaf input `canonical_json({"event": event, "index": i, "timestamp_ms": t})`
//! (keys sorted, no whitespace; see the `canonical` module), and its leaf hash is
//! `SHA-256(0x00 || leaf input)`. Events are tagged by a `"type"` field in snake case, e.g.
//!
//! ```text
//! {"event":{"actor":"op","action":"pause","detail":"","type":"admin_action"},"index":4,"timestamp_ms":1700000000000}
//! ```
//!
//! # Export format
//!
//! One [`LedgerLine`] per line, in index order, each the canonical JSON of
//! `{"event", "index", "leaf_hash", "timestamp_ms"}` followed by `\n`. [`parse_jsonl`] accepts
//! only lines in exactly that form (re-encoding a parsed line must give back its bytes), so any
//! change to a line's bytes is either a parse error naming the line or a change of content that
//! the verifier catches.

use std::collections::BTreeSet;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::merkle::{MerkleTree, hash_leaf};
use super::receipt::SignedReceipt;
use super::{LedgerError, Sha256Digest, SignedTreeHead, TreeHead, canonical, hexser};

/// Something an auditor needs to know about. Serialized with a `"type"` tag in snake case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LedgerEvent {
    /// A facility joined; `receipt_key` is the Ed25519 key it signs receipts with, when known.
    FacilityEnrolled {
        facility: String,
        #[serde(with = "hexser::opt_verifying_key")]
        receipt_key: Option<VerifyingKey>,
    },
    FacilityRevoked {
        facility: String,
        reason: String,
    },
    /// A federation was created with these privacy parameters (the coordinator's own JSON form:
    /// mechanism, clipping norm, noise multiplier, δ, sampling, …).
    FederationCreated {
        name: String,
        privacy: serde_json::Value,
    },
    /// A round began training with `selected` facilities out of `eligible` connected ones
    /// that could take part (the facility sampling rate of the facility-level accounting).
    RoundStarted {
        federation: String,
        round_id: u64,
        selected: Vec<String>,
        #[serde(default)]
        eligible: u64,
    },
    Contribution(Contribution),
    /// A selected facility did not finish `stage` of the round.
    Dropout {
        federation: String,
        round_id: u64,
        facility: String,
        stage: String,
    },
    RoundCommitted {
        federation: String,
        round_id: u64,
        model_version: u64,
        model_sha256: Sha256Digest,
    },
    /// A round ended without a model version. `revealed` says whether anything computed from
    /// the contributions left the round's secrecy before it failed (an unmasked sum at the
    /// coordinator, or a candidate model sent to evaluators): such a round counts in the
    /// facility-level privacy accounting like a committed one.
    RoundFailed {
        federation: String,
        round_id: u64,
        reason: String,
        revealed: bool,
    },
    /// The coordinator's ledger key changed: heads covering this entry are signed with
    /// `new_key`; `signature` is `old_key`'s over the handover (see `rotation`).
    LedgerKeyRotated {
        #[serde(with = "hexser::verifying_key")]
        old_key: VerifyingKey,
        #[serde(with = "hexser::verifying_key")]
        new_key: VerifyingKey,
        #[serde(with = "hexser::signature")]
        signature: ed25519_dalek::Signature,
    },
    /// An operator exported a model version. `model_card_sha256` is the SHA-256 of the
    /// canonical JSON of the model card written with it (`crate::card`); absent in entries
    /// written before cards existed.
    ModelExported {
        federation: String,
        model_version: u64,
        model_sha256: Sha256Digest,
        actor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_card_sha256: Option<Sha256Digest>,
    },
    AdminAction {
        actor: String,
        action: String,
        detail: String,
    },
    /// One certificate changed: revoked by its serial (refused on every connection from
    /// then on), or issued by renewal for the same key as the one it replaces.
    Certificate {
        change: CertificateChange,
        /// `harambee://<role>/<name>`, `server` for the coordinator's own certificate, or
        /// empty when only the serial is known.
        identity: String,
        /// Lowercase hex serial number, without leading zero octets.
        serial: String,
        /// Lowercase hex SHA-256 of the certificate's public key (the bits of its
        /// SubjectPublicKeyInfo), empty when unknown. A revoked key is refused in any
        /// certificate.
        key_sha256: String,
        /// Revoked: the operator's reason. Renewed: the serial of the certificate renewed.
        detail: String,
    },
}

/// What happened to the certificate of a [`LedgerEvent::Certificate`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateChange {
    Renewed,
    Revoked,
}

/// One facility's update in one round, as the coordinator received it, with the agent's signed
/// receipt. The verifier checks that the two agree field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub facility: String,
    pub federation: String,
    pub round_id: u64,
    pub n_params: u64,
    /// Size of the upload in bytes.
    pub bytes: u64,
    /// SHA-256 of the upload as received (the masked update under secure aggregation).
    pub upload_sha256: Sha256Digest,
    pub clipping_norm: f64,
    pub noise_multiplier: f64,
    /// The facility's total ε after this contribution, as its receipt states it.
    pub epsilon_spent: f64,
    pub receipt: SignedReceipt,
}

impl Contribution {
    /// Fields in which the contribution and its receipt disagree (empty when they agree).
    pub fn receipt_mismatches(&self) -> Vec<&'static str> {
        let r = &self.receipt.receipt;
        let mut out = Vec::new();
        let checks = [
            ("facility", self.facility == r.facility),
            ("federation", self.federation == r.federation),
            ("round_id", self.round_id == r.round_id),
            ("bytes", self.bytes == r.bytes),
            ("upload_sha256", self.upload_sha256 == r.update_sha256),
            (
                "clipping_norm",
                self.clipping_norm.to_bits() == r.clipping_norm.to_bits(),
            ),
            (
                "noise_multiplier",
                self.noise_multiplier.to_bits() == r.noise_multiplier.to_bits(),
            ),
            (
                "epsilon_spent",
                self.epsilon_spent.to_bits() == r.epsilon_spent.to_bits(),
            ),
        ];
        for (field, same) in checks {
            if !same {
                out.push(field);
            }
        }
        out
    }
}

impl LedgerEvent {
    fn check_finite(&self) -> Result<(), LedgerError> {
        if let LedgerEvent::Contribution(c) = self {
            for (field, x) in [
                ("clipping_norm", c.clipping_norm),
                ("noise_multiplier", c.noise_multiplier),
                ("epsilon_spent", c.epsilon_spent),
            ] {
                if !x.is_finite() {
                    return Err(LedgerError::NonFinite { field });
                }
            }
            c.receipt.receipt.check_finite()?;
        }
        Ok(())
    }
}

/// An entry as the Merkle tree sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub index: u64,
    /// When the coordinator appended the entry, Unix milliseconds.
    pub timestamp_ms: u64,
    pub event: LedgerEvent,
}

impl LedgerEntry {
    /// The leaf input: canonical JSON of `{event, index, timestamp_ms}`.
    pub fn leaf_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        self.event.check_finite()?;
        canonical::to_vec(self)
    }

    /// `SHA-256(0x00 || leaf_bytes)`.
    pub fn leaf_hash(&self) -> Result<Sha256Digest, LedgerError> {
        Ok(hash_leaf(&self.leaf_bytes()?))
    }
}

/// One line of the export, and the unit a coordinator stores per entry: the entry and the leaf
/// hash recorded when it was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerLine {
    pub index: u64,
    pub timestamp_ms: u64,
    pub event: LedgerEvent,
    pub leaf_hash: Sha256Digest,
}

impl LedgerLine {
    /// The line for an entry, with its leaf hash computed.
    pub fn from_entry(entry: LedgerEntry) -> Result<LedgerLine, LedgerError> {
        let leaf_hash = entry.leaf_hash()?;
        Ok(LedgerLine {
            index: entry.index,
            timestamp_ms: entry.timestamp_ms,
            event: entry.event,
            leaf_hash,
        })
    }

    pub fn entry(&self) -> LedgerEntry {
        LedgerEntry {
            index: self.index,
            timestamp_ms: self.timestamp_ms,
            event: self.event.clone(),
        }
    }

    /// The leaf hash recomputed from the contents (what the verifier trusts, rather than
    /// [`LedgerLine::leaf_hash`]).
    pub fn computed_leaf_hash(&self) -> Result<Sha256Digest, LedgerError> {
        self.entry().leaf_hash()
    }

    /// The export form: canonical JSON, no trailing newline.
    pub fn to_json(&self) -> Result<String, LedgerError> {
        self.event.check_finite()?;
        let bytes = canonical::to_vec(self)?;
        String::from_utf8(bytes).map_err(|e| LedgerError::Encode(e.to_string()))
    }

    /// Parses one export line; `line_no` (1-based) is used in errors.
    pub fn parse(line_no: usize, text: &str) -> Result<LedgerLine, LedgerError> {
        let parse_err = |message: String| LedgerError::Parse {
            line: line_no,
            message,
        };
        let line: LedgerLine = serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        let again = line.to_json().map_err(|e| parse_err(e.to_string()))?;
        if again != text {
            let at = again
                .bytes()
                .zip(text.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(again.len().min(text.len()));
            return Err(parse_err(format!(
                "not in canonical form (first difference at byte {at})"
            )));
        }
        Ok(line)
    }
}

/// The export: each line's canonical JSON followed by `\n`.
pub fn to_jsonl(lines: &[LedgerLine]) -> Result<String, LedgerError> {
    let mut out = String::new();
    for line in lines {
        out.push_str(&line.to_json()?);
        out.push('\n');
    }
    Ok(out)
}

/// Parses an export; the error names the first bad line (1-based). A final newline is
/// optional; blank lines are errors.
pub fn parse_jsonl(text: &str) -> Result<Vec<LedgerLine>, LedgerError> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split('\n')
        .enumerate()
        .map(|(i, line)| LedgerLine::parse(i + 1, line))
        .collect()
}

/// An in-memory ledger: the lines and the Merkle tree over them. The coordinator keeps one as
/// the mirror of its stored ledger; tests and the simulator use it directly.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    lines: Vec<LedgerLine>,
    tree: MerkleTree,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Rebuilds from stored lines, refusing lines out of index order or whose contents do not
    /// hash to their recorded leaf hash (storage corruption or tampering).
    pub fn from_lines(lines: Vec<LedgerLine>) -> Result<Ledger, LedgerError> {
        let mut tree = MerkleTree::new();
        for (position, line) in lines.iter().enumerate() {
            if line.index != position as u64 {
                return Err(LedgerError::BadEntry {
                    index: line.index,
                    message: format!("found at position {position}"),
                });
            }
            let computed = line.computed_leaf_hash()?;
            if computed != line.leaf_hash {
                return Err(LedgerError::BadEntry {
                    index: line.index,
                    message: "contents do not match the recorded leaf hash".into(),
                });
            }
            tree.push(computed);
        }
        Ok(Ledger { lines, tree })
    }

    /// Appends an event at time `timestamp_ms` and returns its line, to be persisted by the
    /// caller in the same transaction as the state the event describes.
    pub fn append(
        &mut self,
        timestamp_ms: u64,
        event: LedgerEvent,
    ) -> Result<&LedgerLine, LedgerError> {
        let line = LedgerLine::from_entry(LedgerEntry {
            index: self.size(),
            timestamp_ms,
            event,
        })?;
        self.tree.push(line.leaf_hash);
        self.lines.push(line);
        Ok(self.lines.last().expect("just pushed"))
    }

    /// Appends a line read back from storage (written by another process or transaction),
    /// refusing one whose index is not the next or whose contents do not hash to its leaf hash.
    pub fn push_line(&mut self, line: LedgerLine) -> Result<(), LedgerError> {
        if line.index != self.size() {
            return Err(LedgerError::BadEntry {
                index: line.index,
                message: format!("expected entry {} next", self.size()),
            });
        }
        if line.computed_leaf_hash()? != line.leaf_hash {
            return Err(LedgerError::BadEntry {
                index: line.index,
                message: "contents do not match the recorded leaf hash".into(),
            });
        }
        self.tree.push(line.leaf_hash);
        self.lines.push(line);
        Ok(())
    }

    pub fn lines(&self) -> &[LedgerLine] {
        &self.lines
    }

    /// Lines `start..end` (clamped to the ledger), for paging an export.
    pub fn range(&self, start: u64, end: u64) -> &[LedgerLine] {
        let end = usize::try_from(end)
            .unwrap_or(usize::MAX)
            .min(self.lines.len());
        let start = usize::try_from(start).unwrap_or(usize::MAX).min(end);
        &self.lines[start..end]
    }

    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    pub fn root(&self) -> Sha256Digest {
        self.tree.root()
    }

    pub fn tree(&self) -> &MerkleTree {
        &self.tree
    }

    /// The head of the whole ledger at `timestamp_ms`, signed with the ledger key.
    pub fn sign_head(&self, timestamp_ms: u64, ledger_key: &SigningKey) -> SignedTreeHead {
        TreeHead {
            tree_size: self.size(),
            root_hash: self.root(),
            timestamp_ms,
        }
        .sign(ledger_key)
    }

    pub fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<Vec<Sha256Digest>, LedgerError> {
        self.tree.inclusion_proof(index, tree_size)
    }

    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Sha256Digest>, LedgerError> {
        self.tree.consistency_proof(old_size, new_size)
    }

    /// Facilities with a contribution in `round_id` of `federation` (to refuse a second one).
    pub fn contributors(&self, federation: &str, round_id: u64) -> BTreeSet<&str> {
        self.lines
            .iter()
            .filter_map(|l| match &l.event {
                LedgerEvent::Contribution(c)
                    if c.federation == federation && c.round_id == round_id =>
                {
                    Some(c.facility.as_str())
                }
                _ => None,
            })
            .collect()
    }
}

/// The receipt keys recorded by `FacilityEnrolled` entries (the latest per facility wins).
/// These are the coordinator's claims: an auditor who has the facilities' keys from elsewhere
/// should prefer those.
pub fn enrolled_receipt_keys(
    lines: &[LedgerLine],
) -> std::collections::BTreeMap<String, VerifyingKey> {
    let mut keys = std::collections::BTreeMap::new();
    for line in lines {
        match &line.event {
            LedgerEvent::FacilityEnrolled {
                facility,
                receipt_key: Some(key),
            } => {
                keys.insert(facility.clone(), *key);
            }
            LedgerEvent::FacilityRevoked { facility, .. } => {
                keys.remove(facility);
            }
            _ => {}
        }
    }
    keys
}

/// The `FacilityEnrolled` entries that record `facility` under a key not among `own_keys`
/// (every key the facility's own log says it held), as (index, key). A coordinator that
/// certified a second key for a facility and ledgered it, so that peers would accept it in
/// secure aggregation, leaves such an entry for good; the facility's auditor finds it here.
pub fn foreign_enrolments(
    lines: &[LedgerLine],
    facility: &str,
    own_keys: &[VerifyingKey],
) -> Vec<(u64, VerifyingKey)> {
    lines
        .iter()
        .filter_map(|line| match &line.event {
            LedgerEvent::FacilityEnrolled {
                facility: f,
                receipt_key: Some(key),
            } if f == facility && !own_keys.contains(key) => Some((line.index, *key)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_bytes_are_canonical_json_of_the_entry() {
        let entry = LedgerEntry {
            index: 4,
            timestamp_ms: 1_700_000_000_000,
            event: LedgerEvent::AdminAction {
                actor: "op".into(),
                action: "pause".into(),
                detail: String::new(),
            },
        };
        let text = String::from_utf8(entry.leaf_bytes().unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"event":{"action":"pause","actor":"op","detail":"","type":"admin_action"},"index":4,"timestamp_ms":1700000000000}"#
        );
        assert_eq!(entry.leaf_hash().unwrap(), hash_leaf(text.as_bytes()));
    }

    #[test]
    fn export_round_trips_and_rejects_non_canonical_lines() {
        let mut ledger = Ledger::new();
        ledger
            .append(
                1,
                LedgerEvent::FederationCreated {
                    name: "f".into(),
                    privacy: serde_json::json!({"delta": 1e-5, "mechanism": "distributed"}),
                },
            )
            .unwrap();
        ledger
            .append(
                2,
                LedgerEvent::AdminAction {
                    actor: "op".into(),
                    action: "start".into(),
                    detail: "x\ny".into(),
                },
            )
            .unwrap();
        let text = to_jsonl(ledger.lines()).unwrap();
        assert_eq!(parse_jsonl(&text).unwrap(), ledger.lines());
        assert_eq!(parse_jsonl(text.trim_end()).unwrap(), ledger.lines());
        assert_eq!(parse_jsonl("").unwrap(), vec![]);

        let spaced = text.replacen("\"index\":1", "\"index\": 1", 1);
        assert!(
            matches!(
                parse_jsonl(&spaced),
                Err(LedgerError::Parse { line: 2, .. })
            ),
            "{:?}",
            parse_jsonl(&spaced)
        );
        let garbage = format!("{text}{{not json\n");
        assert!(matches!(
            parse_jsonl(&garbage),
            Err(LedgerError::Parse { line: 3, .. })
        ));
        let blank = text.replacen('\n', "\n\n", 1);
        assert!(matches!(
            parse_jsonl(&blank),
            Err(LedgerError::Parse { line: 2, .. })
        ));
    }

    #[test]
    fn from_lines_refuses_corruption() {
        let mut ledger = Ledger::new();
        for t in 0..3 {
            ledger
                .append(
                    t,
                    LedgerEvent::AdminAction {
                        actor: "op".into(),
                        action: format!("a{t}"),
                        detail: String::new(),
                    },
                )
                .unwrap();
        }
        let rebuilt = Ledger::from_lines(ledger.lines().to_vec()).unwrap();
        assert_eq!(rebuilt.root(), ledger.root());

        let mut lines = ledger.lines().to_vec();
        lines[1].timestamp_ms += 1;
        assert!(matches!(
            Ledger::from_lines(lines),
            Err(LedgerError::BadEntry { index: 1, .. })
        ));
        let mut lines = ledger.lines().to_vec();
        lines.swap(0, 2);
        assert!(matches!(
            Ledger::from_lines(lines),
            Err(LedgerError::BadEntry { index: 2, .. })
        ));
    }
}
