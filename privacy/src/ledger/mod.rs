//! The privacy ledger: an append-only, tamper-evident log of everything an auditor cares about.
//!
//! - [`merkle`]: the Merkle tree of RFC 9162 §2.1 over SHA-256 (leaf prefix `0x00`, node prefix
//!   `0x01`), its root, inclusion proofs and consistency proofs, and their verification.
//! - [`head`]: tree heads signed with the coordinator's Ed25519 ledger key, and agents'
//!   countersignatures of the heads they have seen.
//! - [`receipt`]: egress receipts, signed by an agent for each update that leaves its facility.
//! - [`event`]: what the ledger records ([`LedgerEvent`]), the canonical encoding of an entry
//!   (the bytes the leaf hash covers), the JSON-lines export ([`LedgerLine`]) and [`Ledger`],
//!   an in-memory ledger that appends entries and answers proofs.
//! - [`export`]: the file written next to an export: the head, the key, the countersignatures.
//! - [`rotation`]: the ledger key's fingerprint and its rotations, recorded in the ledger and
//!   signed by the key they replace.
//! - [`verify`]: the offline verifier ([`verify_ledger`]) and the facility-side cross-check
//!   ([`cross_check`]), which name each failing entry and what broke.
//!
//! # Call order for the coordinator
//! 1. At start-up, load the stored lines and rebuild with [`Ledger::from_lines`] (it refuses a
//!    store whose lines do not hash to their recorded leaf hashes).
//! 2. For each auditable event, [`Ledger::append`] (with the wall-clock time as an argument)
//!    and persist the returned [`LedgerLine`] in the same transaction as the state it describes.
//! 3. After appending, [`Ledger::sign_head`] and keep the newest [`SignedTreeHead`].
//! 4. Serve [`Ledger::inclusion_proof`] and [`Ledger::consistency_proof`] to auditors and, with
//!    the head, to each contributing agent.
//!
//! # Call order for an agent
//! Sign an [`EgressReceipt`] for each update before it leaves; when the coordinator answers with
//! the ledger line, an inclusion proof and a head, check them with
//! [`verify::verify_receipt_inclusion`]; check each new head against the last one seen with
//! [`verify::verify_head_consistency`], then countersign it ([`TreeHead::cosign`]).

pub mod event;
pub mod export;
pub mod head;
pub mod merkle;
pub mod receipt;
pub mod rotation;
pub mod verify;

pub(crate) mod canonical;
mod hexser;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use event::{
    Contribution, Ledger, LedgerEntry, LedgerEvent, LedgerLine, enrolled_receipt_keys,
    foreign_enrolments, parse_jsonl, to_jsonl,
};
pub use head::{Cosignature, SignedTreeHead, TreeHead};
pub use merkle::{MerkleTree, verify_consistency, verify_inclusion};
pub use receipt::{Aggregation, EgressReceipt, SignedReceipt};
pub use rotation::{KeyHistory, RotationFailure, key_fingerprint, rotation_event};
pub use verify::{
    CosignatureFailure, CrossCheckReport, Failure, HeadRole, VerificationReport, cross_check,
    verify_cosignature, verify_enrolment, verify_head_consistency, verify_ledger,
    verify_receipt_inclusion,
};

/// Errors of the ledger: bad proofs, bad signatures, bad input. Verification of a whole ledger
/// does not fail with these; it returns a [`VerificationReport`] listing every [`Failure`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    #[error("leaf index {index} is outside a tree of size {tree_size}")]
    IndexOutOfRange { index: u64, tree_size: u64 },
    #[error("tree size {tree_size} exceeds the {size} leaves held")]
    TreeSizeOutOfRange { tree_size: u64, size: u64 },
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    SizesOutOfOrder { old_size: u64, new_size: u64 },
    #[error("invalid proof: {0}")]
    InvalidProof(&'static str),
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    #[error("{field} must be finite")]
    NonFinite { field: &'static str },
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("entry {index}: {message}")]
    BadEntry { index: u64, message: String },
    #[error("could not encode: {0}")]
    Encode(String),
}

/// A SHA-256 digest: leaf and node hashes, roots, and digests of uploads, models and policies.
/// Written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The SHA-256 of `data` (plain, no prefix: for uploads, models and policy files).
    pub fn of(data: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(data).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = hex::FromHexError;

    /// Parses 64 hex digits (either case).
    fn from_str(s: &str) -> Result<Sha256Digest, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sha256Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("bad SHA-256 hex: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips() {
        let d = Sha256Digest::of(b"");
        assert_eq!(
            d.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_hex().parse::<Sha256Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
        assert!("abc".parse::<Sha256Digest>().is_err());
        assert!(serde_json::from_str::<Sha256Digest>("\"zz\"").is_err());
    }
}
