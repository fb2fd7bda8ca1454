//! The offline verifier on honest and tampered ledgers: every tampering is caught and named.

use std::collections::BTreeMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_privacy::ledger::verify::{verify_head_consistency, verify_receipt_inclusion};
use harambee_privacy::ledger::{
    Contribution, EgressReceipt, Failure, HeadRole, Ledger, LedgerError, LedgerEvent, LedgerLine,
    Sha256Digest, SignedReceipt, SignedTreeHead, cross_check, enrolled_receipt_keys, parse_jsonl,
    to_jsonl, verify_ledger,
};
use harambee_privacy::ledger::{CosignatureFailure, verify_cosignature};

const FACILITIES: [&str; 3] = ["clinic-a", "clinic-b", "hospital-c"];
const T0: u64 = 1_700_000_000_000;

fn ledger_key() -> SigningKey {
    SigningKey::from_bytes(&[0xC0; 32])
}

fn facility_key(facility: &str) -> SigningKey {
    let idx = FACILITIES
        .iter()
        .position(|f| *f == facility)
        .expect("known facility") as u8;
    SigningKey::from_bytes(&[idx + 1; 32])
}

fn facility_keys() -> BTreeMap<String, VerifyingKey> {
    FACILITIES
        .iter()
        .map(|f| (f.to_string(), facility_key(f).verifying_key()))
        .collect()
}

fn receipt(facility: &str, round_id: u64, epsilon: f64) -> SignedReceipt {
    EgressReceipt {
        facility: facility.into(),
        federation: "sepsis".into(),
        round_id,
        update_sha256: Sha256Digest::of(format!("{facility} update {round_id}").as_bytes()),
        bytes: 40_000 + round_id,
        policy_sha256: Sha256Digest::of(format!("{facility} policy").as_bytes()),
        clipping_norm: 1.0,
        noise_multiplier: 1.1,
        epsilon_spent: epsilon,
        delta: 1e-5,
        aggregation: None,
        secagg_params: None,
        dp_sgd: None,
    }
    .sign(&facility_key(facility))
    .unwrap()
}

fn contribution(signed: SignedReceipt) -> LedgerEvent {
    let r = &signed.receipt;
    LedgerEvent::Contribution(Contribution {
        facility: r.facility.clone(),
        federation: r.federation.clone(),
        round_id: r.round_id,
        n_params: 10_000,
        bytes: r.bytes,
        upload_sha256: r.update_sha256,
        clipping_norm: r.clipping_norm,
        noise_multiplier: r.noise_multiplier,
        epsilon_spent: r.epsilon_spent,
        receipt: signed,
    })
}

/// Every kind of event, in a plausible order, then rounds until `n` entries. Returns the ledger
/// and each facility's own log of receipts.
fn build(n: usize) -> (Ledger, BTreeMap<String, Vec<SignedReceipt>>) {
    let mut events = vec![LedgerEvent::FederationCreated {
        name: "sepsis".into(),
        privacy: serde_json::json!({"mechanism": "distributed", "clipping_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5}),
    }];
    for f in FACILITIES {
        events.push(LedgerEvent::FacilityEnrolled {
            facility: f.into(),
            receipt_key: Some(facility_key(f).verifying_key()),
        });
    }
    let mut logs: BTreeMap<String, Vec<SignedReceipt>> = FACILITIES
        .iter()
        .map(|f| (f.to_string(), Vec::new()))
        .collect();
    let mut round_id = 0;
    while events.len() < n {
        round_id += 1;
        events.push(LedgerEvent::RoundStarted {
            federation: "sepsis".into(),
            round_id,
            selected: FACILITIES.iter().map(|f| f.to_string()).collect(),
            eligible: FACILITIES.len() as u64,
        });
        for (i, f) in FACILITIES.iter().enumerate() {
            if (round_id as usize + i).is_multiple_of(4) {
                events.push(LedgerEvent::Dropout {
                    federation: "sepsis".into(),
                    round_id,
                    facility: f.to_string(),
                    stage: "training".into(),
                });
                continue;
            }
            let signed = receipt(f, round_id, 0.1 * round_id as f64 + 0.01 * i as f64);
            logs.get_mut(*f).unwrap().push(signed.clone());
            events.push(contribution(signed));
        }
        events.push(LedgerEvent::RoundCommitted {
            federation: "sepsis".into(),
            round_id,
            model_version: round_id,
            model_sha256: Sha256Digest::of(&round_id.to_be_bytes()),
        });
        if round_id % 3 == 0 {
            events.push(LedgerEvent::ModelExported {
                federation: "sepsis".into(),
                model_version: round_id,
                model_sha256: Sha256Digest::of(&round_id.to_be_bytes()),
                actor: "operator".into(),
                model_card_sha256: None,
            });
            events.push(LedgerEvent::AdminAction {
                actor: "operator".into(),
                action: "export".into(),
                detail: format!("version {round_id} \"to\" ministry\n"),
            });
        }
    }
    events.truncate(n);
    let mut ledger = Ledger::new();
    for (i, event) in events.into_iter().enumerate() {
        ledger.append(T0 + 1000 * i as u64, event).unwrap();
    }
    // Logs hold only receipts whose contribution made it into the first n entries.
    let kept: Vec<SignedReceipt> = ledger
        .lines()
        .iter()
        .filter_map(|l| match &l.event {
            LedgerEvent::Contribution(c) => Some(c.receipt.clone()),
            _ => None,
        })
        .collect();
    for log in logs.values_mut() {
        log.retain(|r| kept.contains(r));
    }
    (ledger, logs)
}

fn head(ledger: &Ledger) -> SignedTreeHead {
    ledger.sign_head(T0 + 10_000_000, &ledger_key())
}

fn verify(
    lines: &[LedgerLine],
    head: &SignedTreeHead,
    previous: Option<&SignedTreeHead>,
) -> harambee_privacy::ledger::VerificationReport {
    verify_ledger(
        lines,
        head,
        &ledger_key().verifying_key(),
        previous,
        &facility_keys(),
    )
}

/// Re-signs a head over tampered lines, as a coordinator that rewrites history would.
fn resign(lines: &[LedgerLine]) -> SignedTreeHead {
    let rebuilt: Vec<LedgerLine> = lines
        .iter()
        .map(|l| LedgerLine::from_entry(l.entry()).unwrap())
        .collect();
    head(&Ledger::from_lines(rebuilt).unwrap())
}

fn n_contributions(lines: &[LedgerLine]) -> u64 {
    lines
        .iter()
        .filter(|l| matches!(l.event, LedgerEvent::Contribution(_)))
        .count() as u64
}

#[test]
fn honest_ledgers_of_many_sizes_verify() {
    let (full, logs) = build(300);
    for n in (0..=40).chain([63, 64, 65, 127, 128, 129, 255, 256, 257, 300]) {
        let ledger = Ledger::from_lines(full.lines()[..n].to_vec()).unwrap();
        let h = head(&ledger);
        let report = verify(ledger.lines(), &h, None);
        assert!(report.is_ok(), "size {n}:\n{report}");
        assert_eq!(report.receipts_verified, n_contributions(ledger.lines()));
        assert!(report.receipts_unchecked.is_empty());
        // With an earlier head, taken at any size up to this one.
        for old in [0, n / 3, n / 2, n.saturating_sub(1), n] {
            let old_head = head(&Ledger::from_lines(full.lines()[..old].to_vec()).unwrap());
            let report = verify(ledger.lines(), &h, Some(&old_head));
            assert!(report.is_ok(), "size {n} after {old}:\n{report}");
        }
    }
    let h = head(&full);
    for f in FACILITIES {
        let report = cross_check(full.lines(), f, &logs[f], &[]);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.matched, logs[f].len() as u64);
        assert!(report.matched > 10);
    }
    // The export round-trips and still verifies.
    let text = to_jsonl(full.lines()).unwrap();
    assert_eq!(
        verify(&parse_jsonl(&text).unwrap(), &h, None).failures,
        vec![]
    );
    assert!(format!("{}", verify(full.lines(), &h, None)).contains("OK"));
}

/// Flip one bit in any byte of any line of the export: either the line no longer parses (the
/// error names the line) or the verifier names the entry.
#[test]
fn flipping_any_byte_of_any_entry_is_caught_and_named() {
    let (ledger, _) = build(14);
    let h = head(&ledger);
    let text = to_jsonl(ledger.lines()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (mut parse_errors, mut named) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        for at in 0..line.len() {
            let mut bytes = line.as_bytes().to_vec();
            bytes[at] ^= 0x01;
            let Ok(tampered_line) = String::from_utf8(bytes) else {
                parse_errors += 1;
                continue;
            };
            let mut all = lines.clone();
            all[i] = &tampered_line;
            let tampered = all.join("\n");
            match parse_jsonl(&tampered) {
                Err(LedgerError::Parse { line, .. }) => {
                    assert_eq!(line, i + 1, "entry {i} byte {at}: error names line {line}");
                    parse_errors += 1;
                }
                Err(e) => panic!("entry {i} byte {at}: unexpected error {e}"),
                Ok(parsed) => {
                    let report = verify(&parsed, &h, None);
                    assert!(
                        !report.is_ok(),
                        "entry {i} byte {at} flipped yet the ledger verifies: {tampered_line}"
                    );
                    assert!(
                        report.failures.iter().any(|f| f.index() == Some(i as u64)),
                        "entry {i} byte {at}: not named:\n{report}"
                    );
                    named += 1;
                }
            }
        }
    }
    // Both paths are exercised.
    assert!(
        parse_errors > 100 && named > 100,
        "parse errors {parse_errors}, named {named}"
    );
}

#[test]
fn altered_entry_with_recomputed_leaf_hash_breaks_the_root() {
    let (ledger, _) = build(20);
    let h = head(&ledger);
    let mut lines = ledger.lines().to_vec();
    lines[7].timestamp_ms += 1;
    lines[7] = LedgerLine::from_entry(lines[7].entry()).unwrap();
    let report = verify(&lines, &h, None);
    assert!(
        matches!(
            report.failures.as_slice(),
            [Failure::RootMismatch { tree_size: 20, .. }]
        ),
        "{report}"
    );
}

#[test]
fn deleting_any_entry_is_named() {
    let (ledger, _) = build(17);
    let h = head(&ledger);
    for i in 0..17u64 {
        let mut lines = ledger.lines().to_vec();
        lines.remove(i as usize);
        let report = verify(&lines, &h, None);
        assert!(
            report
                .failures
                .contains(&Failure::Missing { from: i, to: i + 1 }),
            "deleted {i}:\n{report}"
        );
        assert!(
            format!("{report}").contains(&format!("entry {i}: missing")),
            "{report}"
        );
    }
}

#[test]
fn reordering_two_entries_is_named() {
    let (ledger, _) = build(12);
    let h = head(&ledger);
    for (a, b) in [(0, 1), (3, 9), (10, 11), (0, 11)] {
        let mut lines = ledger.lines().to_vec();
        lines.swap(a, b);
        let report = verify(&lines, &h, None);
        assert!(
            report.failures.contains(&Failure::Reordered {
                position: a as u64,
                index: b as u64
            }),
            "{report}"
        );
        assert!(
            report.failures.contains(&Failure::Reordered {
                position: b as u64,
                index: a as u64
            }),
            "{report}"
        );
        assert!(
            report
                .failures
                .iter()
                .any(|f| matches!(f, Failure::RootMismatch { .. })),
            "{report}"
        );
        // Renumbering and re-signing hides nothing from a facility that saw an earlier head.
        let mut renumbered = lines.clone();
        for (i, l) in renumbered.iter_mut().enumerate() {
            l.index = i as u64;
            *l = LedgerLine::from_entry(l.entry()).unwrap();
        }
        let forged = resign(&renumbered);
        let report = verify(&renumbered, &forged, Some(&h));
        assert!(
            matches!(
                report.failures.as_slice(),
                [Failure::Fork {
                    previous_size: 12,
                    ..
                }]
            ),
            "{report}"
        );
    }
}

#[test]
fn fork_between_two_heads_is_named() {
    let (honest, _) = build(30);
    let seen = head(&Ledger::from_lines(honest.lines()[..18].to_vec()).unwrap());

    // A second history that shares the first 10 entries and then differs, signed by the same key.
    let mut forked = Ledger::from_lines(honest.lines()[..10].to_vec()).unwrap();
    for line in &honest.lines()[10..] {
        let event = match &line.event {
            LedgerEvent::AdminAction { actor, action, .. } => LedgerEvent::AdminAction {
                actor: actor.clone(),
                action: action.clone(),
                detail: "rewritten".into(),
            },
            LedgerEvent::Contribution(_) => continue,
            other => other.clone(),
        };
        forked.append(line.timestamp_ms, event).unwrap();
    }
    let fork_head = head(&forked);
    let report = verify(forked.lines(), &fork_head, Some(&seen));
    assert!(
        report.failures.iter().any(|f| matches!(
            f,
            Failure::Fork {
                previous_size: 18,
                ..
            }
        )),
        "{report}"
    );
    assert!(format!("{report}").contains("fork"), "{report}");
    // Each history verifies on its own: only the earlier head shows the split view.
    assert!(verify(forked.lines(), &fork_head, None).is_ok());

    // An agent holding only heads catches it too: no consistency proof from the forked ledger
    // connects the head it saw to the forked head.
    let proof = forked.consistency_proof(18, forked.size()).unwrap();
    assert_eq!(
        verify_head_consistency(&seen, &fork_head, &proof, &ledger_key().verifying_key()),
        Err(LedgerError::RootMismatch)
    );
    let honest_head = head(&honest);
    let proof = honest.consistency_proof(18, 30).unwrap();
    verify_head_consistency(&seen, &honest_head, &proof, &ledger_key().verifying_key()).unwrap();

    // A ledger shorter than a head seen before has rolled back.
    let report = verify(&honest.lines()[..18], &seen, Some(&honest_head));
    assert!(
        report.failures.contains(&Failure::Rollback {
            previous_size: 30,
            current_size: 18
        }),
        "{report}"
    );
}

#[test]
fn a_countersigned_head_of_another_history_is_a_split_view() {
    let (honest, _) = build(30);
    let mut forked = Ledger::from_lines(honest.lines()[..10].to_vec()).unwrap();
    for line in &honest.lines()[10..20] {
        forked
            .append(line.timestamp_ms + 1, line.event.clone())
            .unwrap();
    }
    let clinic = facility_key("clinic-a");
    let key = clinic.verifying_key();

    // What the facility was shown is a prefix of what the auditor holds: it holds.
    let shown = head(&Ledger::from_lines(honest.lines()[..20].to_vec()).unwrap()).head;
    let cosignature = shown.cosign("clinic-a", &clinic);
    assert_eq!(
        verify_cosignature(honest.lines(), &shown, &cosignature, &key),
        Ok(())
    );

    // The coordinator showed the facility a forked history and the auditor the honest one.
    let forked_head = head(&forked).head;
    let cosignature = forked_head.cosign("clinic-a", &clinic);
    assert_eq!(
        verify_cosignature(honest.lines(), &forked_head, &cosignature, &key),
        Err(CosignatureFailure::SplitView)
    );
    // Or a longer history than the export holds (entries withheld from the auditor).
    let longer = head(&honest).head;
    let cosignature = longer.cosign("clinic-a", &clinic);
    assert_eq!(
        verify_cosignature(&honest.lines()[..25], &longer, &cosignature, &key),
        Err(CosignatureFailure::SplitView)
    );
    // A countersignature the coordinator made up does not verify under the facility's key.
    let forged = shown.cosign("clinic-a", &facility_key("clinic-b"));
    assert_eq!(
        verify_cosignature(honest.lines(), &shown, &forged, &key),
        Err(CosignatureFailure::BadSignature)
    );
}

#[test]
fn tampered_receipt_is_named() {
    let (ledger, logs) = build(20);
    let index = ledger
        .lines()
        .iter()
        .position(|l| matches!(l.event, LedgerEvent::Contribution(_)))
        .unwrap();
    let mut lines = ledger.lines().to_vec();
    let LedgerEvent::Contribution(c) = &mut lines[index].event else {
        unreachable!()
    };
    let facility = c.facility.clone();
    // The coordinator understates the ε spent, in the contribution and in the receipt, and
    // re-signs the ledger so that hashes and root are consistent.
    c.epsilon_spent = 0.0;
    c.receipt.receipt.epsilon_spent = 0.0;
    let forged = resign(&lines);
    let lines: Vec<LedgerLine> = lines
        .iter()
        .map(|l| LedgerLine::from_entry(l.entry()).unwrap())
        .collect();
    let report = verify(&lines, &forged, None);
    assert_eq!(
        report.failures,
        vec![Failure::BadReceiptSignature {
            index: index as u64,
            facility: facility.clone()
        }],
        "{report}"
    );
    let cross = cross_check(&lines, &facility, &logs[&facility], &[]);
    assert_eq!(
        cross.failures,
        vec![Failure::ReceiptDiffers {
            index: index as u64,
            federation: "sepsis".into(),
            round_id: 1
        }],
        "{cross}"
    );

    // Changing only the contribution's own fields leaves the receipt intact but disagreeing.
    let mut lines = ledger.lines().to_vec();
    let LedgerEvent::Contribution(c) = &mut lines[index].event else {
        unreachable!()
    };
    c.epsilon_spent = 0.0;
    c.bytes += 1;
    let forged = resign(&lines);
    let lines: Vec<LedgerLine> = lines
        .iter()
        .map(|l| LedgerLine::from_entry(l.entry()).unwrap())
        .collect();
    let report = verify(&lines, &forged, None);
    assert_eq!(
        report.failures,
        vec![
            Failure::ReceiptMismatch {
                index: index as u64,
                field: "bytes"
            },
            Failure::ReceiptMismatch {
                index: index as u64,
                field: "epsilon_spent"
            }
        ],
        "{report}"
    );
}

#[test]
fn receipt_missing_from_the_ledger_is_named() {
    let (ledger, logs) = build(25);
    let facility = "clinic-b";
    let dropped = logs[facility][1].clone();
    // The coordinator leaves one contribution out and signs the shorter history.
    let kept: Vec<LedgerEvent> = ledger
        .lines()
        .iter()
        .filter(|l| !matches!(&l.event, LedgerEvent::Contribution(c) if c.receipt == dropped))
        .map(|l| l.event.clone())
        .collect();
    let mut rewritten = Ledger::new();
    for (i, e) in kept.into_iter().enumerate() {
        rewritten.append(T0 + i as u64, e).unwrap();
    }
    assert!(verify(rewritten.lines(), &head(&rewritten), None).is_ok());
    let cross = cross_check(rewritten.lines(), facility, &logs[facility], &[]);
    assert_eq!(
        cross.failures,
        vec![Failure::MissingFromLedger {
            federation: "sepsis".into(),
            round_id: dropped.receipt.round_id,
            update_sha256: dropped.receipt.update_sha256
        }],
        "{cross}"
    );
    assert!(format!("{cross}").contains("missing"), "{cross}");
    // The other facilities' logs still agree.
    assert!(cross_check(rewritten.lines(), "clinic-a", &logs["clinic-a"], &[]).is_ok());
}

#[test]
fn extra_contribution_in_the_ledger_is_named() {
    let (mut ledger, logs) = build(25);
    let facility = "hospital-c";
    // A contribution the facility never made: the receipt cannot carry its signature.
    let mut forged = receipt(facility, 99, 0.5);
    forged.signature = receipt("clinic-a", 99, 0.5).signature;
    ledger.append(T0 + 99_000, contribution(forged)).unwrap();
    let index = ledger.size() - 1;
    let report = verify(ledger.lines(), &head(&ledger), None);
    assert_eq!(
        report.failures,
        vec![Failure::BadReceiptSignature {
            index,
            facility: facility.into()
        }],
        "{report}"
    );
    let cross = cross_check(ledger.lines(), facility, &logs[facility], &[]);
    assert_eq!(
        cross.failures,
        vec![Failure::ExtraInLedger {
            index,
            federation: "sepsis".into(),
            round_id: 99
        }],
        "{cross}"
    );

    // A genuine receipt replayed as a second contribution in its round is extra too.
    let (mut ledger, logs) = build(25);
    let replayed = logs[facility][0].clone();
    ledger.append(T0 + 99_000, contribution(replayed)).unwrap();
    let index = ledger.size() - 1;
    assert!(verify(ledger.lines(), &head(&ledger), None).is_ok());
    let cross = cross_check(ledger.lines(), facility, &logs[facility], &[]);
    assert_eq!(
        cross.failures,
        vec![Failure::ExtraInLedger {
            index,
            federation: "sepsis".into(),
            round_id: 1
        }],
        "{cross}"
    );
}

/// An upload recorded by the coordinator whose acknowledgement the facility never received
/// (the coordinator was killed in between) is no alarm; one it never signed still is, and an
/// unacknowledged upload the ledger lacks is no failure either.
#[test]
fn an_upload_recorded_but_never_acknowledged_agrees_with_the_log() {
    let (mut ledger, logs) = build(25);
    let facility = "hospital-c";
    let sent = receipt(facility, 99, 0.5);
    ledger
        .append(T0 + 99_000, contribution(sent.clone()))
        .unwrap();
    let index = ledger.size() - 1;
    let acknowledged = &logs[facility];
    let cross = cross_check(ledger.lines(), facility, acknowledged, &[]);
    assert_eq!(
        cross.failures,
        vec![Failure::ExtraInLedger {
            index,
            federation: "sepsis".into(),
            round_id: 99
        }],
        "{cross}"
    );
    let cross = cross_check(
        ledger.lines(),
        facility,
        acknowledged,
        std::slice::from_ref(&sent),
    );
    assert!(cross.is_ok(), "{cross}");
    assert_eq!(cross.unacknowledged, 1);
    assert_eq!(cross.matched, acknowledged.len() as u64 + 1);
    assert!(
        format!("{cross}").contains("never heard them accepted"),
        "{cross}"
    );

    // Not recorded at all: the upload never completed, nothing to say.
    let (ledger, _) = build(25);
    let cross = cross_check(
        ledger.lines(),
        facility,
        acknowledged,
        std::slice::from_ref(&sent),
    );
    assert!(cross.is_ok(), "{cross}");
    assert_eq!(cross.unacknowledged, 0);

    // Recorded with other contents than the facility signed: named.
    let (mut ledger, _) = build(25);
    let mut altered = sent.clone();
    altered.receipt.epsilon_spent = 0.1;
    ledger.append(T0 + 99_000, contribution(altered)).unwrap();
    let index = ledger.size() - 1;
    let cross = cross_check(ledger.lines(), facility, acknowledged, &[sent]);
    assert_eq!(
        cross.failures,
        vec![Failure::ReceiptDiffers {
            index,
            federation: "sepsis".into(),
            round_id: 99
        }],
        "{cross}"
    );
}

#[test]
fn head_problems_are_named() {
    let (ledger, _) = build(15);
    let mut h = head(&ledger);
    // Signed by another key.
    let other = ledger.sign_head(T0, &SigningKey::from_bytes(&[0xEE; 32]));
    assert_eq!(
        verify(ledger.lines(), &other, None).failures,
        vec![Failure::BadHeadSignature {
            head: HeadRole::Current
        }]
    );
    let report = verify(ledger.lines(), &h, Some(&other));
    assert_eq!(
        report.failures,
        vec![Failure::BadHeadSignature {
            head: HeadRole::Previous
        }]
    );
    // A head for fewer entries than the export holds leaves the rest unsigned.
    let short = head(&Ledger::from_lines(ledger.lines()[..10].to_vec()).unwrap());
    assert_eq!(
        verify(ledger.lines(), &short, None).failures,
        vec![Failure::Unsigned {
            head_size: 10,
            n_entries: 15
        }]
    );
    // A head claiming more entries than the export holds: the tail is missing.
    assert_eq!(
        verify(&ledger.lines()[..12], &h, None).failures,
        vec![Failure::Missing { from: 12, to: 15 }]
    );
    // A head whose root was altered after signing.
    h.head.root_hash.0[0] ^= 1;
    let report = verify(ledger.lines(), &h, None);
    assert!(report.failures.contains(&Failure::BadHeadSignature {
        head: HeadRole::Current
    }));
    assert!(
        report
            .failures
            .iter()
            .any(|f| matches!(f, Failure::RootMismatch { .. }))
    );
}

#[test]
fn receipts_without_a_key_are_listed_not_failed() {
    let (ledger, _) = build(20);
    let only_a: BTreeMap<String, VerifyingKey> = [(
        "clinic-a".to_string(),
        facility_key("clinic-a").verifying_key(),
    )]
    .into();
    let report = verify_ledger(
        ledger.lines(),
        &head(&ledger),
        &ledger_key().verifying_key(),
        None,
        &only_a,
    );
    assert!(report.is_ok(), "{report}");
    assert!(report.receipts_verified > 0);
    assert!(!report.receipts_unchecked.is_empty());
    assert!(
        report
            .receipts_unchecked
            .iter()
            .all(|(_, f)| f != "clinic-a")
    );
    // The enrolment entries hold every facility's key.
    assert_eq!(enrolled_receipt_keys(ledger.lines()), facility_keys());
}

#[test]
fn agent_checks_its_contribution_and_heads() {
    let (mut ledger, logs) = build(10);
    let key = ledger_key().verifying_key();
    let first_head = head(&ledger);
    let mine = receipt("clinic-a", 50, 0.9);
    ledger
        .append(T0 + 50_000, contribution(mine.clone()))
        .unwrap();
    ledger
        .append(
            T0 + 50_001,
            LedgerEvent::AdminAction {
                actor: "op".into(),
                action: "noop".into(),
                detail: String::new(),
            },
        )
        .unwrap();
    let index = ledger.size() - 2;
    let h = head(&ledger);
    let line = &ledger.lines()[index as usize];
    let proof = ledger.inclusion_proof(index, h.head.tree_size).unwrap();
    verify_receipt_inclusion(line, &mine, &proof, &h, &key).unwrap();
    // Someone else's receipt, a wrong proof, or a head from another key: refused.
    assert!(verify_receipt_inclusion(line, &logs["clinic-a"][0], &proof, &h, &key).is_err());
    assert!(verify_receipt_inclusion(line, &mine, &proof[1..], &h, &key).is_err());
    assert!(verify_receipt_inclusion(line, &mine, &proof, &first_head, &key).is_err());
    assert!(
        verify_receipt_inclusion(
            line,
            &mine,
            &proof,
            &h,
            &SigningKey::from_bytes(&[1; 32]).verifying_key()
        )
        .is_err()
    );
    // Consistency with the head seen before, then countersign.
    let proof = ledger
        .consistency_proof(first_head.head.tree_size, h.head.tree_size)
        .unwrap();
    verify_head_consistency(&first_head, &h, &proof, &key).unwrap();
    let cosig = h.head.cosign("clinic-a", &facility_key("clinic-a"));
    cosig
        .verify(&h.head, &facility_key("clinic-a").verifying_key())
        .unwrap();
}

/// An enrolment proof holds for exactly its facility and key, in the head it was made for;
/// a key enrolled under a facility's name that the facility never held is named.
#[test]
fn enrolments_prove_one_facility_and_key_and_a_foreign_key_is_named() {
    use harambee_privacy::ledger::{foreign_enrolments, verify_enrolment};
    let (real, minted) = (
        facility_key("clinic-b").verifying_key(),
        SigningKey::from_bytes(&[0x77; 32]).verifying_key(),
    );
    let mut ledger = Ledger::new();
    let enrolled = |facility: &str, key| LedgerEvent::FacilityEnrolled {
        facility: facility.into(),
        receipt_key: Some(key),
    };
    ledger.append(T0, enrolled("clinic-a", real)).unwrap();
    let b = ledger
        .append(T0, enrolled("clinic-b", real))
        .unwrap()
        .clone();
    ledger.append(T0, enrolled("clinic-b", minted)).unwrap();
    ledger.append(T0, enrolled("clinic-b", real)).unwrap();
    let head = ledger.sign_head(T0, &ledger_key());
    let proof = ledger.inclusion_proof(b.index, ledger.size()).unwrap();

    verify_enrolment(&b, "clinic-b", &real, &proof, &head).unwrap();
    for (facility, key) in [("clinic-a", real), ("clinic-b", minted)] {
        let err = verify_enrolment(&b, facility, &key, &proof, &head).unwrap_err();
        assert!(err.to_string().contains("is not the enrolment of"), "{err}");
    }
    // The same entry under a head of another tree.
    let mut other = ledger.clone();
    other.append(T0, enrolled("clinic-a", minted)).unwrap();
    let other_head = other.sign_head(T0, &ledger_key());
    assert!(verify_enrolment(&b, "clinic-b", &real, &proof, &other_head).is_err());

    assert_eq!(
        foreign_enrolments(ledger.lines(), "clinic-b", &[real]),
        [(2, minted)]
    );
    assert!(foreign_enrolments(ledger.lines(), "clinic-b", &[real, minted]).is_empty());
    assert!(foreign_enrolments(ledger.lines(), "clinic-a", &[real]).is_empty());
}
