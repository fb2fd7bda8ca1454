//! Egress receipts as the coordinator reads them from an upload's header and the verifier
//! reads them from ledger lines: `SignedReceipt` from JSON, then what is signed, the
//! RFC 8785 canonical JSON written by the ledger's own number formatter. Whatever parses
//! re-encodes to JSON that parses back to the same receipt, and its canonical form (with
//! the domain string removed) parses back to the same receipt too, bit for bit.

#![no_main]

use harambee_privacy::ledger::{EgressReceipt, SignedReceipt};
use libfuzzer_sys::fuzz_target;

fn key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()
}

const DOMAIN: &[u8] = b"harambee/egress-receipt/v1\n";

fuzz_target!(|data: &[u8]| {
    let Ok(signed) = serde_json::from_slice::<SignedReceipt>(data) else {
        return;
    };
    let json = serde_json::to_string(&signed).expect("a parsed receipt serializes");
    let again: SignedReceipt = serde_json::from_str(&json).expect("its JSON parses back");
    assert_eq!(bits(&again.receipt), bits(&signed.receipt));
    assert_eq!(again.signature, signed.signature);
    let _ = signed.verify(&key());
    match signed.receipt.signing_bytes() {
        Ok(bytes) => {
            let canonical = bytes
                .strip_prefix(DOMAIN)
                .expect("signing bytes start with the domain");
            let back: EgressReceipt =
                serde_json::from_slice(canonical).expect("canonical JSON parses back");
            assert_eq!(
                bits(&back),
                bits(&signed.receipt),
                "{}",
                String::from_utf8_lossy(canonical)
            );
        }
        Err(_) => {
            // Only a non-finite float has no canonical form; JSON cannot carry one.
            panic!("a receipt read from JSON has no canonical form");
        }
    }
});

/// The receipt with its floats as bits (`-0.0` is written `0`, as JCS requires).
fn bits(r: &EgressReceipt) -> String {
    let f = |x: f64| if x == 0.0 { 0 } else { x.to_bits() };
    format!(
        "{} {} {} {} {} {} {} {} {} {} {:?} {:?} {:?}",
        r.facility,
        r.federation,
        r.round_id,
        r.update_sha256,
        r.bytes,
        r.policy_sha256,
        f(r.clipping_norm),
        f(r.noise_multiplier),
        f(r.epsilon_spent),
        f(r.delta),
        r.aggregation,
        r.secagg_params,
        r.dp_sgd
            .map(|d| (f(d.noise_multiplier), f(d.sampling_rate), d.steps)),
    )
}
