//! Signed tree heads and agents' countersignatures.
//!
//! # Canonical byte encodings (what is signed)
//!
//! A tree head is signed, with Ed25519 (RFC 8032, no prehash, no context), over 70 bytes:
//!
//! ```text
//! "harambee/tree-head/v1\n"    22 bytes, ASCII (domain separation)
//! tree_size                     8 bytes, unsigned big-endian
//! timestamp_ms                  8 bytes, unsigned big-endian (Unix time in milliseconds)
//! root_hash                    32 bytes
//! ```
//!
//! An agent countersigns a head it has seen (and checked for consistency with the previous one)
//! over:
//!
//! ```text
//! "harambee/tree-head-cosign/v1\n"   29 bytes, ASCII
//! len(facility)                       4 bytes, unsigned big-endian
//! facility                            UTF-8 bytes
//! the 70-byte tree-head encoding above
//! ```
//!
//! The domain strings keep a signature over one kind of message from being valid for another.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{LedgerError, Sha256Digest, hexser};

const HEAD_DOMAIN: &[u8; 22] = b"harambee/tree-head/v1\n";
const COSIGN_DOMAIN: &[u8; 29] = b"harambee/tree-head-cosign/v1\n";

/// The state of the ledger at one moment: its size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    pub tree_size: u64,
    pub root_hash: Sha256Digest,
    /// When the coordinator signed the head, Unix milliseconds.
    pub timestamp_ms: u64,
}

impl TreeHead {
    /// The 70 bytes the coordinator signs (see the module docs).
    pub fn signing_bytes(&self) -> [u8; 70] {
        let mut out = [0u8; 70];
        out[..22].copy_from_slice(HEAD_DOMAIN);
        out[22..30].copy_from_slice(&self.tree_size.to_be_bytes());
        out[30..38].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[38..].copy_from_slice(&self.root_hash.0);
        out
    }

    /// Signs with the coordinator's ledger key.
    pub fn sign(self, ledger_key: &SigningKey) -> SignedTreeHead {
        let signature = ledger_key.sign(&self.signing_bytes());
        SignedTreeHead {
            head: self,
            signature,
        }
    }

    /// An agent's countersignature of this head, saying "facility saw this head".
    pub fn cosign(&self, facility: &str, facility_key: &SigningKey) -> Cosignature {
        let signature = facility_key.sign(&cosign_bytes(facility, self));
        Cosignature {
            facility: facility.to_string(),
            signature,
        }
    }
}

/// A tree head and the coordinator's signature over [`TreeHead::signing_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    pub head: TreeHead,
    #[serde(with = "hexser::signature")]
    pub signature: Signature,
}

impl SignedTreeHead {
    /// Checks the signature with the coordinator's ledger key (strict Ed25519 verification).
    pub fn verify(&self, ledger_key: &VerifyingKey) -> Result<(), LedgerError> {
        ledger_key
            .verify_strict(&self.head.signing_bytes(), &self.signature)
            .map_err(|_| LedgerError::BadSignature("tree head"))
    }
}

/// A facility's countersignature of a tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosignature {
    pub facility: String,
    #[serde(with = "hexser::signature")]
    pub signature: Signature,
}

impl Cosignature {
    /// Checks that `self.facility`'s key countersigned `head`.
    pub fn verify(&self, head: &TreeHead, facility_key: &VerifyingKey) -> Result<(), LedgerError> {
        facility_key
            .verify_strict(&cosign_bytes(&self.facility, head), &self.signature)
            .map_err(|_| LedgerError::BadSignature("tree head countersignature"))
    }
}

fn cosign_bytes(facility: &str, head: &TreeHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(29 + 4 + facility.len() + 70);
    out.extend_from_slice(COSIGN_DOMAIN);
    // A facility name longer than 4 GiB cannot exist; saturate rather than panic.
    out.extend_from_slice(
        &u32::try_from(facility.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(facility.as_bytes());
    out.extend_from_slice(&head.signing_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn head() -> TreeHead {
        TreeHead {
            tree_size: 3,
            root_hash: Sha256Digest([7; 32]),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn signing_bytes_layout() {
        let b = head().signing_bytes();
        assert_eq!(&b[..22], b"harambee/tree-head/v1\n");
        assert_eq!(b[22..30], 3u64.to_be_bytes());
        assert_eq!(b[30..38], 1_700_000_000_000u64.to_be_bytes());
        assert_eq!(b[38..], [7; 32]);
    }

    #[test]
    fn signed_head_verifies_and_any_change_breaks_it() {
        let signed = head().sign(&key(1));
        assert!(signed.verify(&key(1).verifying_key()).is_ok());
        assert!(signed.verify(&key(2).verifying_key()).is_err());
        for change in [
            |h: &mut TreeHead| h.tree_size += 1,
            |h: &mut TreeHead| h.timestamp_ms += 1,
            |h: &mut TreeHead| h.root_hash.0[31] ^= 1,
        ] {
            let mut bad = signed;
            change(&mut bad.head);
            assert_eq!(
                bad.verify(&key(1).verifying_key()),
                Err(LedgerError::BadSignature("tree head"))
            );
        }
        let json = serde_json::to_string(&signed).unwrap();
        assert_eq!(
            serde_json::from_str::<SignedTreeHead>(&json).unwrap(),
            signed
        );
    }

    #[test]
    fn cosignature_binds_facility_and_head() {
        let c = head().cosign("clinic-a", &key(3));
        assert!(c.verify(&head(), &key(3).verifying_key()).is_ok());
        let mut other = head();
        other.tree_size = 4;
        assert!(c.verify(&other, &key(3).verifying_key()).is_err());
        let renamed = Cosignature {
            facility: "clinic-b".into(),
            ..c.clone()
        };
        assert!(renamed.verify(&head(), &key(3).verifying_key()).is_err());
        // A countersignature is not a head signature, even with the same key.
        let as_head = SignedTreeHead {
            head: head(),
            signature: c.signature,
        };
        assert!(as_head.verify(&key(3).verifying_key()).is_err());
    }
}
