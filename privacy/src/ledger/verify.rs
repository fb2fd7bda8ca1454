//! The offline verifier: recompute everything from the entries and name what broke.
//!
//! [`verify_ledger`] is what an auditor (or `harambee-agent audit verify`) runs on an export and
//! a signed tree head; [`cross_check`] compares the ledger with one facility's own log of
//! receipts. Both collect every [`Failure`] rather than stopping at the first, and neither
//! trusts a leaf hash, index or root that the coordinator wrote down: all are recomputed.
//!
//! For an agent that holds only heads and proofs (no export), [`verify_receipt_inclusion`] and
//! [`verify_head_consistency`] check one contribution and one pair of heads.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::VerifyingKey;

use super::event::{LedgerEvent, LedgerLine};
use super::merkle::{MerkleTree, verify_consistency, verify_inclusion};
use super::receipt::SignedReceipt;
use super::rotation::{KeyHistory, RotationFailure};
use super::{LedgerError, Sha256Digest, SignedTreeHead};

/// Which of the two heads given to [`verify_ledger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRole {
    Current,
    Previous,
}

/// One thing that is wrong, naming the entry (by index) where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The entry's contents do not hash to its recorded leaf hash: it was altered.
    BadLeafHash { index: u64 },
    /// The entry recorded as `index` sits at `position`: entries were reordered.
    Reordered { position: u64, index: u64 },
    /// No entry with these indices (`from..to`): entries were deleted.
    Missing { from: u64, to: u64 },
    /// More than one entry claims this index.
    Duplicate { index: u64 },
    /// A tree head's signature does not verify with the coordinator's ledger key.
    BadHeadSignature { head: HeadRole },
    /// The entries `head_size..n_entries` are not covered by the signed head.
    Unsigned { head_size: u64, n_entries: u64 },
    /// The first `tree_size` entries do not hash to the signed head's root.
    RootMismatch {
        tree_size: u64,
        head_root: Sha256Digest,
        computed_root: Sha256Digest,
    },
    /// The previous head's tree is not a prefix of this ledger: the history was rewritten, or
    /// different parties were shown different histories.
    Fork {
        previous_size: u64,
        previous_root: Sha256Digest,
        computed_root: Sha256Digest,
    },
    /// The previous head is larger than the current one: the ledger shrank.
    Rollback {
        previous_size: u64,
        current_size: u64,
    },
    /// A contribution's receipt does not verify with its facility's key.
    BadReceiptSignature { index: u64, facility: String },
    /// A contribution disagrees with its own receipt in `field`.
    ReceiptMismatch { index: u64, field: &'static str },
    /// A receipt in the facility's log has no contribution in the ledger.
    MissingFromLedger {
        federation: String,
        round_id: u64,
        update_sha256: Sha256Digest,
    },
    /// A contribution of the facility in the ledger that its log does not hold.
    ExtraInLedger {
        index: u64,
        federation: String,
        round_id: u64,
    },
    /// The ledger holds a receipt for this round that differs from the facility's own copy.
    ReceiptDiffers {
        index: u64,
        federation: String,
        round_id: u64,
    },
    /// The facility's log holds a receipt naming another facility.
    ForeignReceipt { facility: String, round_id: u64 },
    /// A ledger key rotation recorded in the ledger does not follow from the pinned key.
    KeyRotation(RotationFailure),
    /// The pinned ledger key became current after this head: the head cannot be checked.
    HeadBeforePinnedKey { head: HeadRole, tree_size: u64 },
}

impl Failure {
    /// The entry index the failure is about, if it is about one entry.
    pub fn index(&self) -> Option<u64> {
        match self {
            Failure::BadLeafHash { index }
            | Failure::Reordered { index, .. }
            | Failure::Duplicate { index }
            | Failure::BadReceiptSignature { index, .. }
            | Failure::ReceiptMismatch { index, .. }
            | Failure::ExtraInLedger { index, .. }
            | Failure::ReceiptDiffers { index, .. }
            | Failure::KeyRotation(RotationFailure::BadSignature { index })
            | Failure::KeyRotation(RotationFailure::NotFromCurrentKey { index }) => Some(*index),
            Failure::Missing { from, to } if to - from == 1 => Some(*from),
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadLeafHash { index } => write!(
                f,
                "entry {index}: bad hash: contents do not match the recorded leaf hash (entry altered)"
            ),
            Failure::Reordered { position, index } => {
                write!(f, "entry {index}: reordered: found at position {position}")
            }
            Failure::Missing { from, to } if to - from == 1 => {
                write!(f, "entry {from}: missing (deleted)")
            }
            Failure::Missing { from, to } => write!(f, "entries {from}..{to}: missing (deleted)"),
            Failure::Duplicate { index } => write!(f, "entry {index}: duplicated"),
            Failure::BadHeadSignature {
                head: HeadRole::Current,
            } => write!(
                f,
                "tree head: bad signature: it does not verify with the pinned ledger key (or the key a recorded rotation led to)"
            ),
            Failure::BadHeadSignature {
                head: HeadRole::Previous,
            } => write!(f, "previous tree head: bad signature"),
            Failure::KeyRotation(RotationFailure::BadSignature { index }) => write!(
                f,
                "entry {index}: ledger key rotation not signed by the key it replaces"
            ),
            Failure::KeyRotation(RotationFailure::NotFromCurrentKey { index }) => write!(
                f,
                "entry {index}: ledger key rotation from a key that was not in force (not the pinned key's chain)"
            ),
            Failure::HeadBeforePinnedKey { head, tree_size } => write!(
                f,
                "{} tree head of size {tree_size}: signed before the pinned ledger key was in force",
                match head {
                    HeadRole::Current => "the",
                    HeadRole::Previous => "the previous",
                }
            ),
            Failure::Unsigned {
                head_size,
                n_entries,
            } => write!(
                f,
                "entries {head_size}..{n_entries}: not covered by the signed tree head"
            ),
            Failure::RootMismatch {
                tree_size,
                head_root,
                computed_root,
            } => {
                write!(
                    f,
                    "tree head: root mismatch: the first {tree_size} entries hash to {computed_root}, the signed head says {head_root}"
                )
            }
            Failure::Fork {
                previous_size,
                previous_root,
                computed_root,
            } => write!(
                f,
                "fork: the previous head (size {previous_size}) has root {previous_root}, but this ledger's first {previous_size} entries hash to {computed_root}"
            ),
            Failure::Rollback {
                previous_size,
                current_size,
            } => {
                write!(
                    f,
                    "rollback: the previous head has {previous_size} entries, the current one only {current_size} (the ledger was rolled back, e.g. restored from a backup, or this export is older than the head the facility saw: export again)"
                )
            }
            Failure::BadReceiptSignature { index, facility } => write!(
                f,
                "entry {index}: bad signature on the receipt of facility {facility:?}"
            ),
            Failure::ReceiptMismatch { index, field } => write!(
                f,
                "entry {index}: contribution disagrees with its receipt in {field}"
            ),
            Failure::MissingFromLedger {
                federation,
                round_id,
                update_sha256,
            } => {
                write!(
                    f,
                    "missing: receipt for federation {federation:?} round {round_id} (update {update_sha256}) is not in the ledger"
                )
            }
            Failure::ExtraInLedger {
                index,
                federation,
                round_id,
            } => {
                write!(
                    f,
                    "entry {index}: extra: contribution to federation {federation:?} round {round_id} is not in the facility's log"
                )
            }
            Failure::ReceiptDiffers {
                index,
                federation,
                round_id,
            } => {
                write!(
                    f,
                    "entry {index}: the receipt for federation {federation:?} round {round_id} differs from the facility's copy"
                )
            }
            Failure::ForeignReceipt { facility, round_id } => write!(
                f,
                "the facility's log holds a receipt of facility {facility:?} (round {round_id})"
            ),
        }
    }
}

/// The outcome of [`verify_ledger`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationReport {
    pub n_entries: u64,
    /// The size the (current) signed head claims.
    pub head_size: u64,
    /// Contributions whose receipt signature was checked and good.
    pub receipts_verified: u64,
    /// Contributions (index, facility) whose receipt could not be checked: no key was given for
    /// the facility. Not failures: an agent verifying the ledger holds only its own key.
    pub receipts_unchecked: Vec<(u64, String)>,
    pub failures: Vec<Failure>,
}

impl VerificationReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for VerificationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ledger: {} entries; signed tree head: {} entries",
            self.n_entries, self.head_size
        )?;
        writeln!(
            f,
            "receipts: {} verified, {} without a known facility key",
            self.receipts_verified,
            self.receipts_unchecked.len()
        )?;
        if self.is_ok() {
            return writeln!(f, "OK: tree, signatures and receipts verify");
        }
        writeln!(f, "FAILED: {} problem(s)", self.failures.len())?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}

/// The outcome of [`cross_check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossCheckReport {
    pub facility: String,
    /// Receipts found in the ledger exactly as the facility holds them.
    pub matched: u64,
    /// Of those, uploads the coordinator recorded whose acknowledgement never reached the
    /// facility (it stopped or lost the connection in between).
    pub unacknowledged: u64,
    pub failures: Vec<Failure>,
}

impl CrossCheckReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for CrossCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "facility {:?}: {} receipt(s) found in the ledger",
            self.facility, self.matched
        )?;
        if self.unacknowledged > 0 {
            writeln!(
                f,
                "  of which {} recorded although the facility never heard them accepted (the connection ended first)",
                self.unacknowledged
            )?;
        }
        if self.is_ok() {
            return writeln!(f, "OK: the ledger and the facility's log agree");
        }
        writeln!(f, "FAILED: {} problem(s)", self.failures.len())?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}

/// Verifies a whole ledger export against a signed tree head.
///
/// Checks, collecting every failure: each entry's index is its position (else reordered,
/// missing or duplicated entries are named); each entry's contents hash to its recorded leaf
/// hash; the head's signature (with `ledger_key`, the key pinned out of band, or the key that
/// the ledger's recorded rotations lead to from it, each signed by its predecessor); the root of the first `tree_size`
/// entries, recomputed from their contents, equals the head's; no entry lies beyond the head;
/// with `previous_head` (one seen earlier, e.g. kept by an agent), its signature and that its
/// tree is a prefix of this one (a fork or rollback is named); each contribution agrees with its
/// receipt and the receipt's signature verifies with `facility_keys[facility]` (facilities
/// without a key are listed as unchecked).
pub fn verify_ledger(
    entries: &[LedgerLine],
    head: &SignedTreeHead,
    ledger_key: &VerifyingKey,
    previous_head: Option<&SignedTreeHead>,
    facility_keys: &BTreeMap<String, VerifyingKey>,
) -> VerificationReport {
    let mut failures = Vec::new();
    let n_entries = entries.len() as u64;
    let head_size = head.head.tree_size;

    check_order(entries, head_size, &mut failures);

    // Leaf hashes from the contents, in file order: the tree is over what the file holds.
    let mut tree = MerkleTree::new();
    for line in entries {
        let computed = line.computed_leaf_hash();
        if computed.as_ref() != Ok(&line.leaf_hash) {
            failures.push(Failure::BadLeafHash { index: line.index });
        }
        // A line that cannot be encoded (non-finite float) cannot come from parse_jsonl; hash
        // its recorded leaf hash so the tree keeps its shape, it is already reported above.
        tree.push(computed.unwrap_or(line.leaf_hash));
    }

    let (keys, rotation_failures) = KeyHistory::follow(entries, ledger_key);
    failures.extend(rotation_failures.into_iter().map(Failure::KeyRotation));
    check_head_signature(&keys, head, HeadRole::Current, &mut failures);
    if n_entries >= head_size {
        let computed_root = tree.root_at(head_size).expect("size checked");
        if computed_root != head.head.root_hash {
            failures.push(Failure::RootMismatch {
                tree_size: head_size,
                head_root: head.head.root_hash,
                computed_root,
            });
        }
        if n_entries > head_size {
            failures.push(Failure::Unsigned {
                head_size,
                n_entries,
            });
        }
    }

    if let Some(previous) = previous_head {
        check_head_signature(&keys, previous, HeadRole::Previous, &mut failures);
        let previous_size = previous.head.tree_size;
        if previous_size > head_size {
            failures.push(Failure::Rollback {
                previous_size,
                current_size: head_size,
            });
        } else if previous_size <= n_entries {
            let computed_root = tree.root_at(previous_size).expect("size checked");
            if computed_root != previous.head.root_hash {
                failures.push(Failure::Fork {
                    previous_size,
                    previous_root: previous.head.root_hash,
                    computed_root,
                });
            }
        }
    }

    let mut receipts_verified = 0;
    let mut receipts_unchecked = Vec::new();
    for line in entries {
        let LedgerEvent::Contribution(c) = &line.event else {
            continue;
        };
        for field in c.receipt_mismatches() {
            failures.push(Failure::ReceiptMismatch {
                index: line.index,
                field,
            });
        }
        let facility = &c.receipt.receipt.facility;
        match facility_keys.get(facility) {
            Some(key) if c.receipt.verify(key).is_ok() => receipts_verified += 1,
            Some(_) => failures.push(Failure::BadReceiptSignature {
                index: line.index,
                facility: facility.clone(),
            }),
            None => receipts_unchecked.push((line.index, facility.clone())),
        }
    }

    VerificationReport {
        n_entries,
        head_size,
        receipts_verified,
        receipts_unchecked,
        failures,
    }
}

/// Checks `head`'s signature with the key in force at its size.
fn check_head_signature(
    keys: &KeyHistory,
    head: &SignedTreeHead,
    role: HeadRole,
    failures: &mut Vec<Failure>,
) {
    match keys.key_at(head.head.tree_size) {
        Some(key) if head.verify(&key).is_ok() => {}
        Some(_) => failures.push(Failure::BadHeadSignature { head: role }),
        None => failures.push(Failure::HeadBeforePinnedKey {
            head: role,
            tree_size: head.head.tree_size,
        }),
    }
}

/// Names reordered, missing and duplicated entries. Indices must be `0, 1, 2, …` in file order
/// and reach at least `head_size - 1`.
fn check_order(entries: &[LedgerLine], head_size: u64, failures: &mut Vec<Failure>) {
    let in_place = entries.iter().enumerate().all(|(p, l)| l.index == p as u64);
    if in_place {
        let n = entries.len() as u64;
        if n < head_size {
            failures.push(Failure::Missing {
                from: n,
                to: head_size,
            });
        }
        return;
    }
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for line in entries {
        *counts.entry(line.index).or_default() += 1;
    }
    let mut expected_end = head_size.max(entries.len() as u64);
    if let Some((&max, _)) = counts.last_key_value() {
        expected_end = expected_end.max(max.saturating_add(1));
    }
    let present: BTreeSet<u64> = counts.keys().copied().collect();
    let duplicates: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(i, _)| *i)
        .collect();
    let mut missing = Vec::new();
    let mut next = 0u64;
    for &i in present.iter().chain(std::iter::once(&expected_end)) {
        if i > next {
            missing.push(Failure::Missing {
                from: next,
                to: i.min(expected_end),
            });
        }
        next = next.max(i.saturating_add(1));
        if next >= expected_end {
            break;
        }
    }
    if missing.is_empty() && duplicates.is_empty() {
        // A permutation of 0..n: name every entry out of place.
        for (position, line) in entries.iter().enumerate() {
            if line.index != position as u64 {
                failures.push(Failure::Reordered {
                    position: position as u64,
                    index: line.index,
                });
            }
        }
        return;
    }
    failures.extend(missing);
    failures.extend(
        duplicates
            .into_iter()
            .map(|index| Failure::Duplicate { index }),
    );
    // Beyond gaps and duplicates, the order must still be increasing.
    for (position, pair) in entries.windows(2).enumerate() {
        if pair[1].index < pair[0].index {
            failures.push(Failure::Reordered {
                position: position as u64 + 1,
                index: pair[1].index,
            });
        }
    }
}

/// Compares the ledger with one facility's own log of signed receipts: every receipt the
/// coordinator acknowledged (`receipts`) must be in the ledger, byte for byte, and the ledger
/// must claim no contribution of the facility that the log does not hold, acknowledged or
/// not: a receipt whose acknowledgement never arrived (`unacknowledged`) may be in the
/// ledger exactly as signed, or absent. Contributions are matched by (federation, round).
///
/// A log newer than the export shows its latest receipts as missing: export after the last
/// contribution, or cut the log at the export's time.
pub fn cross_check(
    ledger: &[LedgerLine],
    facility: &str,
    receipts: &[SignedReceipt],
    unacknowledged: &[SignedReceipt],
) -> CrossCheckReport {
    let mut failures = Vec::new();
    let mut in_ledger: BTreeMap<(&str, u64), (u64, &SignedReceipt)> = BTreeMap::new();
    for line in ledger {
        let LedgerEvent::Contribution(c) = &line.event else {
            continue;
        };
        if c.facility != facility && c.receipt.receipt.facility != facility {
            continue;
        }
        match in_ledger.entry((c.federation.as_str(), c.round_id)) {
            Entry::Occupied(_) => failures.push(Failure::ExtraInLedger {
                index: line.index,
                federation: c.federation.clone(),
                round_id: c.round_id,
            }),
            Entry::Vacant(slot) => {
                slot.insert((line.index, &c.receipt));
            }
        }
    }

    let mut matched = 0;
    let mut seen = BTreeSet::new();
    for signed in receipts {
        let r = &signed.receipt;
        if r.facility != facility {
            failures.push(Failure::ForeignReceipt {
                facility: r.facility.clone(),
                round_id: r.round_id,
            });
            continue;
        }
        let key = (r.federation.as_str(), r.round_id);
        seen.insert(key);
        match in_ledger.get(&key) {
            Some((_, theirs)) if *theirs == signed => matched += 1,
            Some((index, _)) => failures.push(Failure::ReceiptDiffers {
                index: *index,
                federation: r.federation.clone(),
                round_id: r.round_id,
            }),
            None => failures.push(Failure::MissingFromLedger {
                federation: r.federation.clone(),
                round_id: r.round_id,
                update_sha256: r.update_sha256,
            }),
        }
    }
    let mut recorded_unacknowledged = 0;
    for signed in unacknowledged {
        let r = &signed.receipt;
        let key = (r.federation.as_str(), r.round_id);
        if r.facility != facility || seen.contains(&key) {
            continue;
        }
        match in_ledger.get(&key) {
            Some((_, theirs)) if *theirs == signed => {
                seen.insert(key);
                matched += 1;
                recorded_unacknowledged += 1;
            }
            Some((index, _)) => {
                seen.insert(key);
                failures.push(Failure::ReceiptDiffers {
                    index: *index,
                    federation: r.federation.clone(),
                    round_id: r.round_id,
                });
            }
            None => {}
        }
    }
    for ((federation, round_id), (index, _)) in &in_ledger {
        if !seen.contains(&(*federation, *round_id)) {
            failures.push(Failure::ExtraInLedger {
                index: *index,
                federation: federation.to_string(),
                round_id: *round_id,
            });
        }
    }
    failures.sort_by_key(|f| f.index().unwrap_or(u64::MAX));
    CrossCheckReport {
        facility: facility.to_string(),
        matched,
        unacknowledged: recorded_unacknowledged,
        failures,
    }
}

/// What an agent checks when the coordinator answers its contribution: the head is signed by
/// the ledger key, `line` is a contribution carrying exactly `receipt`, and `proof` shows that
/// line (its leaf hash recomputed from its contents) in the head's tree.
pub fn verify_receipt_inclusion(
    line: &LedgerLine,
    receipt: &SignedReceipt,
    proof: &[Sha256Digest],
    head: &SignedTreeHead,
    ledger_key: &VerifyingKey,
) -> Result<(), LedgerError> {
    head.verify(ledger_key)?;
    match &line.event {
        LedgerEvent::Contribution(c) if c.receipt == *receipt => {}
        _ => {
            return Err(LedgerError::BadEntry {
                index: line.index,
                message: "is not the contribution of this receipt".into(),
            });
        }
    }
    line_in_head(line, proof, head)
}

/// What an agent checks before it trusts a peer's key in a secure round: `line` is a
/// `FacilityEnrolled` entry recording `facility` under `key`, and `proof` shows that line in
/// the tree of `head`. The caller has checked `head` itself (signature under the pinned
/// ledger key, consistency with the last head it saw). A key the CA certified without a
/// ledgered enrolment fails here; one with a ledgered enrolment is in the ledger for good,
/// where [`super::foreign_enrolments`] shows it to the facility it names.
pub fn verify_enrolment(
    line: &LedgerLine,
    facility: &str,
    key: &VerifyingKey,
    proof: &[Sha256Digest],
    head: &SignedTreeHead,
) -> Result<(), LedgerError> {
    match &line.event {
        LedgerEvent::FacilityEnrolled {
            facility: enrolled,
            receipt_key: Some(recorded),
        } if enrolled == facility && recorded == key => {}
        _ => {
            return Err(LedgerError::BadEntry {
                index: line.index,
                message: format!("is not the enrolment of {facility} under this key"),
            });
        }
    }
    line_in_head(line, proof, head)
}

/// `proof` shows `line` (its leaf hash recomputed from its contents) in the tree of `head`.
fn line_in_head(
    line: &LedgerLine,
    proof: &[Sha256Digest],
    head: &SignedTreeHead,
) -> Result<(), LedgerError> {
    verify_inclusion(
        &line.computed_leaf_hash()?,
        line.index,
        head.head.tree_size,
        proof,
        &head.head.root_hash,
    )
}

/// What an agent checks on each new head: both heads are signed by the ledger key and `proof`
/// shows that the new tree extends the old one (no history rewritten or split).
pub fn verify_head_consistency(
    old: &SignedTreeHead,
    new: &SignedTreeHead,
    proof: &[Sha256Digest],
    ledger_key: &VerifyingKey,
) -> Result<(), LedgerError> {
    old.verify(ledger_key)?;
    new.verify(ledger_key)?;
    verify_consistency(
        old.head.tree_size,
        new.head.tree_size,
        &old.head.root_hash,
        &new.head.root_hash,
        proof,
    )
}

/// Why a facility's countersignature of a tree head does not hold against a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CosignatureFailure {
    /// The signature does not verify with the facility's key.
    BadSignature,
    /// The facility saw a head that this ledger does not extend: it was shown another
    /// history (a split view), or this ledger was rewritten since.
    SplitView,
}

impl fmt::Display for CosignatureFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CosignatureFailure::BadSignature => f.write_str("the countersignature does not verify"),
            CosignatureFailure::SplitView => f.write_str(
                "it countersigned a head that this ledger does not extend (a split view)",
            ),
        }
    }
}

/// Checks that `cosignature` of `head` verifies with the facility's `key` and that `head` is
/// the root of a prefix of `entries`: what the facility saw is part of what the auditor sees.
pub fn verify_cosignature(
    entries: &[LedgerLine],
    head: &super::TreeHead,
    cosignature: &super::Cosignature,
    key: &VerifyingKey,
) -> Result<(), CosignatureFailure> {
    if cosignature.verify(head, key).is_err() {
        return Err(CosignatureFailure::BadSignature);
    }
    let Ok(size) = usize::try_from(head.tree_size) else {
        return Err(CosignatureFailure::SplitView);
    };
    if size > entries.len() {
        return Err(CosignatureFailure::SplitView);
    }
    let prefix: Vec<_> = entries[..size]
        .iter()
        .filter_map(|l| l.computed_leaf_hash().ok())
        .collect();
    if prefix.len() != size || MerkleTree::from_leaf_hashes(prefix).root() != head.root_hash {
        return Err(CosignatureFailure::SplitView);
    }
    Ok(())
}
