//! Tree heads and countersignatures as they arrive in JSON (the coordinator's
//! `CosignTreeHead`, an agent's task stream and `GetLedgerProof` answers, the auditor's
//! `ledger.head.json`), the ledger-key pin an auditor types, and the offline verifier run
//! on an export and head file as `audit verify` reads them. The first byte picks the
//! decoder. Whatever parses re-encodes to JSON that parses back to the same value, and
//! checking signatures and proofs on it never panics.

#![no_main]

use std::collections::BTreeMap;

use harambee_privacy::ledger::export::{CosignedHead, HeadFile, KeyPin};
use harambee_privacy::ledger::{
    Cosignature, SignedTreeHead, TreeHead, parse_jsonl, verify_cosignature, verify_ledger,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned>(text: &str) -> Option<T> {
    let value: T = serde_json::from_str(text).ok()?;
    let json = serde_json::to_string(&value).expect("a parsed value serializes");
    let again: T = serde_json::from_str(&json).expect("serialized JSON parses back");
    assert_eq!(
        serde_json::to_value(&again).expect("serializes"),
        serde_json::to_value(&value).expect("serializes"),
    );
    Some(value)
}

fn key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match kind % 7 {
        0 => {
            if let Some(head) = round_trip::<SignedTreeHead>(text) {
                let _ = head.verify(&key());
            }
        }
        1 => {
            if let Some(cosignature) = round_trip::<Cosignature>(text) {
                let head = TreeHead {
                    tree_size: 1,
                    root_hash: harambee_privacy::ledger::Sha256Digest([0; 32]),
                    timestamp_ms: 0,
                };
                let _ = cosignature.verify(&head, &key());
            }
        }
        2 => {
            if let Some(file) = round_trip::<HeadFile>(text) {
                let _ = KeyPin::parse(&file.ledger_key);
                for c in &file.cosignatures {
                    let _ = c.cosignature.verify(&c.head, &key());
                }
            }
        }
        3 => {
            let _ = round_trip::<CosignedHead>(text);
        }
        4 => {
            if let Some(head) = round_trip::<TreeHead>(text) {
                let _ = head.signing_bytes();
            }
        }
        5 => {
            if let Ok(KeyPin::Fingerprint(f)) = KeyPin::parse(text) {
                assert!(f.starts_with("sha256:") && f.len() == 71);
            }
        }
        _ => {
            // `audit verify`: the export's lines, then the head file, split at the first
            // NUL byte.
            let Some((lines, head)) = text.split_once('\0') else {
                return;
            };
            let Ok(entries) = parse_jsonl(lines) else {
                return;
            };
            let Ok(file) = serde_json::from_str::<HeadFile>(head) else {
                return;
            };
            let pinned = KeyPin::parse(&file.ledger_key)
                .ok()
                .and_then(|pin| pin.resolve(&file, &entries))
                .unwrap_or_else(key);
            let report = verify_ledger(
                &entries,
                &file.signed_tree_head,
                &pinned,
                None,
                &BTreeMap::new(),
            );
            let _ = report.is_ok();
            let _ = report.to_string();
            for c in &file.cosignatures {
                if let Err(e) = verify_cosignature(&entries, &c.head, &c.cosignature, &pinned) {
                    let _ = e.to_string();
                }
            }
        }
    }
});
