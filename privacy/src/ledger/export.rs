//! The auditor's export of the ledger: the entries as JSON lines ([`super::to_jsonl`]) and,
//! next to them, a [`HeadFile`] with the signed tree head they add up to, the ledger key as
//! the coordinator states it, and the facilities' countersignatures.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Cosignature, SignedTreeHead, TreeHead};

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
