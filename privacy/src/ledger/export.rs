//! The auditor's export of the ledger: the entries as JSON lines ([`super::to_jsonl`]) and,
//! next to them, a [`HeadFile`] with the signed tree head they add up to, the ledger key as
//! the coordinator states it, and the facilities' countersignatures.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::event::{LedgerEvent, LedgerLine};
use super::rotation::key_fingerprint;
use super::{Cosignature, SignedTreeHead, TreeHead, hexser};

/// The file `audit export` writes next to the entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadFile {
    pub signed_tree_head: SignedTreeHead,
    /// Hex of the coordinator's Ed25519 ledger key, as the coordinator states it.
    pub ledger_key: String,
    /// Facilities' countersignatures of heads they checked, as stored by the coordinator.
    #[serde(default)]
    pub cosignatures: Vec<CosignedHead>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignedHead {
    pub head: TreeHead,
    pub cosignature: Cosignature,
}

/// A ledger key an auditor obtained out of band: the public key itself, or its fingerprint
/// (`sha256:` and 64 hex digits, as `serve` logs it and the database records it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPin {
    Key(VerifyingKey),
    Fingerprint(String),
}

impl KeyPin {
    /// Parses 64 hex digits (a public key) or `sha256:` and 64 hex digits (a fingerprint).
    pub fn parse(text: &str) -> Result<KeyPin, String> {
        let text = text.trim();
        match text.strip_prefix("sha256:") {
            Some(hex_digits) => {
                if hex_digits.len() != 64 || hex::decode(hex_digits).is_err() {
                    return Err(format!(
                        "a ledger key fingerprint is sha256: and 64 hex digits, not {text:?}"
                    ));
                }
                Ok(KeyPin::Fingerprint(format!(
                    "sha256:{}",
                    hex_digits.to_ascii_lowercase()
                )))
            }
            None => hexser::verifying_key::parse(text)
                .map(KeyPin::Key)
                .map_err(|e| format!("a ledger key is 64 hex digits (or sha256:FINGERPRINT): {e}")),
        }
    }

    /// The pinned key. A fingerprint is looked up among the keys the export names (the head
    /// file's and those of recorded rotations); `None` when none has it.
    pub fn resolve(&self, head_file: &HeadFile, entries: &[LedgerLine]) -> Option<VerifyingKey> {
        let fingerprint = match self {
            KeyPin::Key(key) => return Some(*key),
            KeyPin::Fingerprint(f) => f,
        };
        let stated = hexser::verifying_key::parse(&head_file.ledger_key).ok();
        let rotated = entries.iter().flat_map(|l| match &l.event {
            LedgerEvent::LedgerKeyRotated {
                old_key, new_key, ..
            } => vec![*old_key, *new_key],
            _ => Vec::new(),
        });
        stated
            .into_iter()
            .chain(rotated)
            .find(|key| key_fingerprint(key) == *fingerprint)
    }
}

/// `ledger.jsonl` → `ledger.head.json`.
pub fn head_path_for(ledger: &Path) -> PathBuf {
    let stem = ledger
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ledger".into());
    ledger.with_file_name(format!("{stem}.head.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pins_parse_keys_and_fingerprints() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(
            KeyPin::parse(&hex::encode(key.as_bytes())),
            Ok(KeyPin::Key(key))
        );
        let fingerprint = key_fingerprint(&key);
        assert_eq!(
            KeyPin::parse(&fingerprint.to_ascii_uppercase().replace("SHA256", "sha256")),
            Ok(KeyPin::Fingerprint(fingerprint.clone()))
        );
        assert!(
            KeyPin::parse("sha256:zz")
                .unwrap_err()
                .contains("fingerprint")
        );
        assert!(KeyPin::parse("00").is_err());
        let head_file = HeadFile {
            signed_tree_head: crate::ledger::Ledger::new()
                .sign_head(0, &ed25519_dalek::SigningKey::from_bytes(&[7; 32])),
            ledger_key: hex::encode(key.as_bytes()),
            cosignatures: Vec::new(),
        };
        assert_eq!(
            KeyPin::Fingerprint(fingerprint).resolve(&head_file, &[]),
            Some(key)
        );
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(
            KeyPin::Fingerprint(key_fingerprint(&other)).resolve(&head_file, &[]),
            None
        );
    }

    #[test]
    fn head_file_sits_next_to_the_export() {
        assert_eq!(
            head_path_for(Path::new("/a/ledger.jsonl")),
            PathBuf::from("/a/ledger.head.json")
        );
        assert_eq!(
            head_path_for(Path::new("out")),
            PathBuf::from("out.head.json")
        );
    }
}
