//! The ledger key: its fingerprint, and rotations recorded in the ledger itself.
//!
//! A rotation is the entry [`LedgerEvent::LedgerKeyRotated`] at index `i`: the old key signs,
//! with Ed25519, the bytes
//!
//! ```text
//! "harambee/ledger-key-rotation/v1\n"   32 bytes, ASCII (domain separation)
//! old public key                         32 bytes
//! new public key                         32 bytes
//! ```
//!
//! Heads of size at most `i` are signed with the old key, heads of size `i + 1` or more (which
//! cover the rotation) with the new one. An auditor who pinned any key of the chain follows
//! it with [`KeyHistory::follow`]: each rotation after the pinned key must be signed by the
//! key before it, so a coordinator cannot swap keys without the old key's consent.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::LedgerError;
use super::event::{LedgerEvent, LedgerLine};

const ROTATION_DOMAIN: &[u8; 32] = b"harambee/ledger-key-rotation/v1\n";

/// The fingerprint of a ledger key: `sha256:` and the hex SHA-256 of its 32 bytes.
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The bytes the old key signs to hand over to `new` (see the module docs).
pub fn rotation_bytes(old: &VerifyingKey, new: &VerifyingKey) -> [u8; 96] {
    let mut out = [0u8; 96];
    out[..32].copy_from_slice(ROTATION_DOMAIN);
    out[32..64].copy_from_slice(old.as_bytes());
    out[64..].copy_from_slice(new.as_bytes());
    out
}

/// The ledger entry that hands the ledger over from `old` to `new`, signed by `old`.
pub fn rotation_event(old: &SigningKey, new: &VerifyingKey) -> LedgerEvent {
    let old_key = old.verifying_key();
    let signature = old.sign(&rotation_bytes(&old_key, new));
    LedgerEvent::LedgerKeyRotated {
        old_key,
        new_key: *new,
        signature,
    }
}

/// Checks a rotation's signature with its old key (strict Ed25519 verification).
pub fn verify_rotation(
    old: &VerifyingKey,
    new: &VerifyingKey,
    signature: &Signature,
) -> Result<(), LedgerError> {
    old.verify_strict(&rotation_bytes(old, new), signature)
        .map_err(|_| LedgerError::BadSignature("ledger key rotation"))
}

/// Why a facility does not follow the rotations a coordinator offers with a head signed by
/// another key than the one it pinned (see [`follow_proven_rotations`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationProofError {
    #[error(
        "the coordinator signs with another ledger key ({offered}) than the one pinned in the privacy log ({pinned}) and proves no rotation to it"
    )]
    NoRotation { pinned: String, offered: String },
    #[error("ledger key rotation {n}: {source}")]
    Malformed { n: usize, source: LedgerError },
    #[error("ledger entry {index} is not a ledger key rotation")]
    NotARotation { index: u64 },
    #[error(
        "the ledger key rotation at index {index} is not after the last head this facility saw ({seen_size} entries) or not in ledger order"
    )]
    OutOfOrder { index: u64, seen_size: u64 },
    #[error("the ledger key rotation at index {index} is not in the signed tree head: {source}")]
    NotIncluded { index: u64, source: LedgerError },
    #[error(
        "forged ledger key rotation at index {index}: it hands over from key {from}, not from the key in force {current}"
    )]
    NotFromCurrentKey {
        index: u64,
        from: String,
        current: String,
    },
    #[error(
        "forged ledger key rotation at index {index}: the new key is not signed by the old key {from}"
    )]
    BadSignature { index: u64, from: String },
    #[error(
        "the ledger key rotations lead to key {reached}, but the tree head is signed with {offered}"
    )]
    WrongEnd { reached: String, offered: String },
    #[error("the tree head does not verify with the rotated-to key: {0}")]
    BadHead(LedgerError),
}

/// What a facility checks before it follows a ledger key rotation: `rotations` (export
/// lines and their audit paths, in ledger order) are `LedgerKeyRotated` entries at index
/// `seen_size` or later, each included in `head`'s tree; they chain from `pinned`, each signed
/// by the key before it, to `offered`; and `head` is signed with `offered`. Returns the
/// parsed rotation lines. The consistency of `head` with the last head seen is the caller's.
pub fn follow_proven_rotations(
    pinned: &VerifyingKey,
    offered: &VerifyingKey,
    seen_size: u64,
    rotations: &[(&str, Vec<crate::ledger::Sha256Digest>)],
    head: &crate::ledger::SignedTreeHead,
) -> Result<Vec<LedgerLine>, RotationProofError> {
    if rotations.is_empty() {
        return Err(RotationProofError::NoRotation {
            pinned: key_fingerprint(pinned),
            offered: key_fingerprint(offered),
        });
    }
    let mut lines = Vec::with_capacity(rotations.len());
    let mut current = *pinned;
    let mut next_index = seen_size;
    for (n, (text, proof)) in rotations.iter().enumerate() {
        let line = LedgerLine::parse(n + 1, text)
            .map_err(|source| RotationProofError::Malformed { n: n + 1, source })?;
        let index = line.index;
        let LedgerEvent::LedgerKeyRotated {
            old_key,
            new_key,
            signature,
        } = &line.event
        else {
            return Err(RotationProofError::NotARotation { index });
        };
        if index < next_index {
            return Err(RotationProofError::OutOfOrder { index, seen_size });
        }
        next_index = index.saturating_add(1);
        let leaf = line
            .computed_leaf_hash()
            .map_err(|source| RotationProofError::NotIncluded { index, source })?;
        super::verify_inclusion(
            &leaf,
            index,
            head.head.tree_size,
            proof,
            &head.head.root_hash,
        )
        .map_err(|source| RotationProofError::NotIncluded { index, source })?;
        if *old_key != current {
            return Err(RotationProofError::NotFromCurrentKey {
                index,
                from: key_fingerprint(old_key),
                current: key_fingerprint(&current),
            });
        }
        verify_rotation(old_key, new_key, signature).map_err(|_| {
            RotationProofError::BadSignature {
                index,
                from: key_fingerprint(old_key),
            }
        })?;
        current = *new_key;
        lines.push(line);
    }
    if current != *offered {
        return Err(RotationProofError::WrongEnd {
            reached: key_fingerprint(&current),
            offered: key_fingerprint(offered),
        });
    }
    head.verify(offered).map_err(RotationProofError::BadHead)?;
    Ok(lines)
}

/// Why a recorded rotation cannot be followed from the pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationFailure {
    /// The rotation's signature does not verify with the old key it names.
    BadSignature { index: u64 },
    /// The rotation starts from another key than the one in force: the chain is broken.
    NotFromCurrentKey { index: u64 },
}

/// The ledger key in force at each tree size, followed from a pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHistory {
    /// Tree heads of size at least `from_size` are signed with `key`, until the next change.
    changes: Vec<(u64, VerifyingKey)>,
}

impl KeyHistory {
    /// Follows the rotations in `entries` from `pinned`. When `pinned` is the new key of a
    /// rotation, the chain starts there (earlier heads have no known key); otherwise it
    /// starts at the first entry. Every later rotation must start from the key in force and
    /// be signed by it; one that is not is reported, and the key does not change.
    pub fn follow(
        entries: &[LedgerLine],
        pinned: &VerifyingKey,
    ) -> (KeyHistory, Vec<RotationFailure>) {
        let rotations: Vec<(u64, &VerifyingKey, &VerifyingKey, &Signature)> = entries
            .iter()
            .filter_map(|l| match &l.event {
                LedgerEvent::LedgerKeyRotated {
                    old_key,
                    new_key,
                    signature,
                } => Some((l.index, old_key, new_key, signature)),
                _ => None,
            })
            .collect();
        let start = rotations
            .iter()
            .rposition(|(_, _, new, _)| *new == pinned)
            .map_or(0, |p| p + 1);
        let mut changes = vec![(
            start
                .checked_sub(1)
                .map_or(0, |p| rotations[p].0.saturating_add(1)),
            *pinned,
        )];
        let mut failures = Vec::new();
        let mut current = *pinned;
        for &(index, old, new, signature) in &rotations[start..] {
            if *old != current {
                failures.push(RotationFailure::NotFromCurrentKey { index });
            } else if verify_rotation(old, new, signature).is_err() {
                failures.push(RotationFailure::BadSignature { index });
            } else {
                current = *new;
                changes.push((index.saturating_add(1), current));
            }
        }
        (KeyHistory { changes }, failures)
    }

    /// The key heads of `tree_size` entries are signed with, if the chain reaches back there.
    pub fn key_at(&self, tree_size: u64) -> Option<VerifyingKey> {
        self.changes
            .iter()
            .rev()
            .find(|(from, _)| *from <= tree_size)
            .map(|(_, key)| *key)
    }

    /// The pinned key's place: heads smaller than this have no key known from the pin.
    pub fn first_size(&self) -> u64 {
        self.changes.first().map_or(0, |(from, _)| *from)
    }

    /// Every key of the chain, the pinned one first.
    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.changes.iter().map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn admin(ledger: &mut Ledger, t: u64) {
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

    #[test]
    fn a_rotation_is_followed_from_the_old_or_the_new_key() {
        let (a, b) = (key(1), key(2));
        let mut ledger = Ledger::new();
        admin(&mut ledger, 0);
        ledger
            .append(1, rotation_event(&a, &b.verifying_key()))
            .unwrap();
        admin(&mut ledger, 2);
        let (history, failures) = KeyHistory::follow(ledger.lines(), &a.verifying_key());
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(history.key_at(1), Some(a.verifying_key()));
        assert_eq!(history.key_at(2), Some(b.verifying_key()));
        assert_eq!(history.key_at(3), Some(b.verifying_key()));
        let (history, failures) = KeyHistory::follow(ledger.lines(), &b.verifying_key());
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(history.key_at(1), None);
        assert_eq!(history.key_at(3), Some(b.verifying_key()));
        assert!(key_fingerprint(&a.verifying_key()).starts_with("sha256:"));
        assert_eq!(key_fingerprint(&a.verifying_key()).len(), 7 + 64);
    }

    #[test]
    fn a_rotation_not_signed_by_the_key_in_force_is_refused() {
        let (a, b, c) = (key(1), key(2), key(3));
        let mut ledger = Ledger::new();
        // Signed by c, which is not the pinned key a.
        ledger
            .append(1, rotation_event(&c, &b.verifying_key()))
            .unwrap();
        let (history, failures) = KeyHistory::follow(ledger.lines(), &a.verifying_key());
        assert_eq!(failures, [RotationFailure::NotFromCurrentKey { index: 0 }]);
        assert_eq!(history.key_at(1), Some(a.verifying_key()));
        // A rotation claiming a as its old key without a's signature.
        let forged = LedgerEvent::LedgerKeyRotated {
            old_key: a.verifying_key(),
            new_key: b.verifying_key(),
            signature: c.sign(&rotation_bytes(&a.verifying_key(), &b.verifying_key())),
        };
        let mut ledger = Ledger::new();
        ledger.append(1, forged).unwrap();
        let (_, failures) = KeyHistory::follow(ledger.lines(), &a.verifying_key());
        assert_eq!(failures, [RotationFailure::BadSignature { index: 0 }]);
    }

    #[test]
    fn the_verifier_follows_a_signed_rotation_and_names_a_forged_one() {
        use crate::ledger::verify::{Failure, verify_ledger};
        use std::collections::BTreeMap;
        let (old, new, intruder) = (key(1), key(2), key(3));
        let mut ledger = Ledger::new();
        admin(&mut ledger, 0);
        ledger
            .append(1, rotation_event(&old, &new.verifying_key()))
            .unwrap();
        admin(&mut ledger, 2);
        let head = ledger.sign_head(3, &new);
        let report = verify_ledger(
            ledger.lines(),
            &head,
            &old.verifying_key(),
            None,
            &BTreeMap::new(),
        );
        assert!(report.is_ok(), "{report}");

        // A coordinator that lost (or never had) the old key cannot hand over by itself.
        let mut forged = Ledger::new();
        admin(&mut forged, 0);
        forged
            .append(1, rotation_event(&intruder, &new.verifying_key()))
            .unwrap();
        let head = forged.sign_head(3, &new);
        let report = verify_ledger(
            forged.lines(),
            &head,
            &old.verifying_key(),
            None,
            &BTreeMap::new(),
        );
        assert!(
            report
                .failures
                .contains(&Failure::KeyRotation(RotationFailure::NotFromCurrentKey {
                    index: 1
                })),
            "{report}"
        );
        assert!(
            report.to_string().contains("tree head: bad signature"),
            "{report}"
        );
    }

    #[test]
    fn a_proven_chain_of_two_rotations_is_followed_to_the_key_of_the_head() {
        let (a, b, c) = (key(1), key(2), key(3));
        let mut ledger = Ledger::new();
        admin(&mut ledger, 0);
        let seen = ledger.size();
        ledger
            .append(1, rotation_event(&a, &b.verifying_key()))
            .unwrap();
        admin(&mut ledger, 2);
        ledger
            .append(3, rotation_event(&b, &c.verifying_key()))
            .unwrap();
        let head = ledger.sign_head(4, &c);
        let proofs: Vec<(String, Vec<crate::ledger::Sha256Digest>)> = [1, 3]
            .iter()
            .map(|&i| {
                (
                    ledger.lines()[i as usize].to_json().unwrap(),
                    ledger.inclusion_proof(i, ledger.size()).unwrap(),
                )
            })
            .collect();
        let refs: Vec<(&str, Vec<crate::ledger::Sha256Digest>)> = proofs
            .iter()
            .map(|(t, p)| (t.as_str(), p.clone()))
            .collect();
        let lines =
            follow_proven_rotations(&a.verifying_key(), &c.verifying_key(), seen, &refs, &head)
                .unwrap();
        assert_eq!(lines.len(), 2);
        // Half the chain does not reach the head's key.
        let err = follow_proven_rotations(
            &a.verifying_key(),
            &c.verifying_key(),
            seen,
            &refs[..1],
            &head,
        )
        .unwrap_err();
        assert!(matches!(err, RotationProofError::WrongEnd { .. }), "{err}");
        // The same rotation twice (not in ledger order).
        let swapped = [refs[0].clone(), refs[0].clone()];
        let err = follow_proven_rotations(
            &a.verifying_key(),
            &c.verifying_key(),
            seen,
            &swapped,
            &head,
        )
        .unwrap_err();
        assert!(
            matches!(err, RotationProofError::OutOfOrder { .. }),
            "{err}"
        );
        // Starting from b skips the rotation b already covers.
        let err =
            follow_proven_rotations(&b.verifying_key(), &c.verifying_key(), seen, &refs, &head)
                .unwrap_err();
        assert!(err.to_string().contains("forged"), "{err}");
    }
}
