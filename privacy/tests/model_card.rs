//! Model cards against the ledger: an honest card verifies; changing any one figure, or
//! presenting it with another key or a ledger that never recorded it, fails and says what.

use ed25519_dalek::SigningKey;
use harambee_privacy::card::{
    CARD_FORMAT, CardFacility, CardLedger, CardMetrics, CardModel, CardPrivacy, CardQuality,
    CardTraining, ModelCard, verify_card,
};
use harambee_privacy::ledger::{
    Contribution, EgressReceipt, Ledger, LedgerEvent, Sha256Digest, SignedReceipt,
};

const T0: u64 = 1_700_000_000_000;
const FACILITIES: [&str; 2] = ["clinic-a", "hospital-b"];

fn ledger_key() -> SigningKey {
    SigningKey::from_bytes(&[0xC0; 32])
}

fn contribution(facility: &str, i: u8, round_id: u64, epsilon: f64) -> LedgerEvent {
    let signed: SignedReceipt = EgressReceipt {
        facility: facility.into(),
        federation: "heart".into(),
        round_id,
        update_sha256: Sha256Digest::of(format!("{facility} {round_id}").as_bytes()),
        bytes: 60,
        policy_sha256: Sha256Digest::of(b"policy"),
        clipping_norm: 1.0,
        noise_multiplier: 1.1,
        epsilon_spent: epsilon,
        delta: 1e-5,
        aggregation: None,
        secagg_params: None,
        dp_sgd: None,
    }
    .sign(&SigningKey::from_bytes(&[i + 1; 32]))
    .unwrap();
    let r = &signed.receipt;
    LedgerEvent::Contribution(Contribution {
        facility: r.facility.clone(),
        federation: r.federation.clone(),
        round_id,
        n_params: 15,
        bytes: r.bytes,
        upload_sha256: r.update_sha256,
        clipping_norm: r.clipping_norm,
        noise_multiplier: r.noise_multiplier,
        epsilon_spent: r.epsilon_spent,
        receipt: signed,
    })
}

fn privacy() -> serde_json::Value {
    serde_json::json!({"dp_sgd": {"clip_norm": 1.0, "noise_multiplier": 1.1, "sampling_rate": 0.05}})
}

/// Two rounds (the first fails), version 1 committed by round 2, then the card and its export
/// entry, as the coordinator writes them.
fn honest() -> (Ledger, ModelCard) {
    let mut ledger = Ledger::new();
    let mut t = T0;
    let mut push = |ledger: &mut Ledger, event: LedgerEvent| {
        t += 1;
        ledger.append(t, event).unwrap().index
    };
    push(
        &mut ledger,
        LedgerEvent::FederationCreated {
            name: "heart".into(),
            privacy: privacy(),
        },
    );
    push(
        &mut ledger,
        LedgerEvent::RoundFailed {
            federation: "heart".into(),
            round_id: 1,
            reason: "too few".into(),
            revealed: false,
        },
    );
    for (i, f) in FACILITIES.iter().enumerate() {
        push(&mut ledger, contribution(f, i as u8, 2, 0.5 + i as f64));
    }
    let sha = Sha256Digest::of(b"model v1");
    let commit = push(
        &mut ledger,
        LedgerEvent::RoundCommitted {
            federation: "heart".into(),
            round_id: 2,
            model_version: 1,
            model_sha256: sha,
        },
    );
    let head = ledger.sign_head(T0 + 100, &ledger_key());
    let proof = ledger.inclusion_proof(commit, head.head.tree_size).unwrap();
    let metrics = |auc: f64| CardMetrics {
        n_samples: 40,
        auc: Some(auc),
        accuracy: Some(0.8),
        sensitivity: Some(0.7),
        specificity: None,
        ece: Some(0.05),
    };
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        federation: "heart".into(),
        intended_use: "testing".into(),
        model: CardModel {
            kind: "logistic_regression".into(),
            hidden: vec![],
            n_params: 15,
            version: 1,
            round_id: 2,
            sha256: sha,
            label: "target".into(),
            inputs: vec!["age".into()],
            schema: serde_json::json!({"label": "target"}),
        },
        training: CardTraining {
            rounds_committed: 1,
            rounds_failed: 1,
            strategy: serde_json::json!({"kind": "fedavg"}),
            train: serde_json::json!({"epochs": 1}),
            secure_aggregation: true,
            min_agents: 2,
        },
        facilities: FACILITIES
            .iter()
            .enumerate()
            .map(|(i, f)| CardFacility {
                facility: f.to_string(),
                rows: 100 + i as u64,
                rounds_contributed: 1,
                metrics: Some(metrics(0.8 + 0.05 * i as f64)),
                epsilon_spent: Some(0.5 + i as f64),
                delta: Some(1e-5),
            })
            .collect(),
        quality: CardQuality {
            pooled: Some(metrics(0.82)),
            worst_facility: Some("clinic-a".into()),
            worst_auc: Some(0.8),
            best_auc: Some(0.85),
            auc_gap: Some(0.05),
        },
        privacy: CardPrivacy {
            federation: privacy(),
            facility_epsilon: None,
            facility_delta: None,
        },
        ledger: CardLedger {
            commit_index: Some(commit),
            signed_tree_head: head,
            ledger_key: hex::encode(ledger_key().verifying_key().to_bytes()),
            inclusion_proof: proof,
        },
    };
    push(
        &mut ledger,
        LedgerEvent::ModelExported {
            federation: "heart".into(),
            model_version: 1,
            model_sha256: sha,
            actor: "harambee://operator/ops".into(),
            model_card_sha256: Some(card.sha256().unwrap()),
        },
    );
    (ledger, card)
}

#[test]
fn an_honest_card_verifies_and_survives_a_json_round_trip() {
    let (ledger, card) = honest();
    let key = ledger_key().verifying_key();
    let report = verify_card(&card, ledger.lines(), &key);
    assert!(report.ok(), "{:?}", report.failures);
    // Pretty-printed JSON is the same card: the hash is over the canonical form.
    let pretty = serde_json::to_string_pretty(&card).unwrap();
    let again = ModelCard::parse(&pretty).unwrap();
    assert!(verify_card(&again, ledger.lines(), &key).ok());
    let md = card.to_markdown();
    assert!(
        md.contains("hospital-b") && md.contains("Worst facility: **clinic-a**"),
        "{md}"
    );
    // Text from the configuration cannot inject markup into the Markdown (or its HTML).
    let mut hostile = card.clone();
    hostile.intended_use = "<script>alert(1)</script> [x](javascript:y)".into();
    let md = hostile.to_markdown();
    assert!(
        !md.contains("<script>") && !md.contains("[x](javascript"),
        "{md}"
    );
}

#[test]
fn changing_any_one_figure_fails_and_ledger_figures_are_named() {
    let (ledger, card) = honest();
    let key = ledger_key().verifying_key();
    type Edit = fn(&mut ModelCard);
    let edits: [(&str, Edit, Option<&str>); 11] = [
        (
            "auc",
            |c| c.facilities[0].metrics.as_mut().unwrap().auc = Some(0.99),
            None,
        ),
        ("rows", |c| c.facilities[1].rows += 1, None),
        (
            "pooled ece",
            |c| c.quality.pooled.as_mut().unwrap().ece = Some(0.0),
            None,
        ),
        (
            "worst",
            |c| c.quality.worst_facility = Some("hospital-b".into()),
            None,
        ),
        ("intended use", |c| c.intended_use = "anything".into(), None),
        (
            "epsilon",
            |c| c.facilities[0].epsilon_spent = Some(0.1),
            Some("clinic-a: ε spent"),
        ),
        (
            "rounds",
            |c| c.training.rounds_committed = 5,
            Some("rounds committed"),
        ),
        (
            "failed",
            |c| c.training.rounds_failed = 0,
            Some("rounds failed"),
        ),
        (
            "privacy",
            |c| c.privacy.federation = serde_json::json!({}),
            Some("privacy parameters"),
        ),
        (
            "sha",
            |c| c.model.sha256 = Sha256Digest::of(b"other"),
            Some("model SHA-256"),
        ),
        (
            "facility dropped",
            |c| {
                c.facilities.pop();
            },
            Some("facilities"),
        ),
    ];
    for (what, edit, named) in edits {
        let mut changed = card.clone();
        edit(&mut changed);
        let report = verify_card(&changed, ledger.lines(), &key);
        assert!(!report.ok(), "changing {what} went unnoticed");
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.contains("no ModelExported entry records")),
            "{what}: {:?}",
            report.failures
        );
        if let Some(named) = named {
            assert!(
                report.failures.iter().any(|f| f.contains(named)),
                "{what} is not named: {:?}",
                report.failures
            );
        }
    }
}

#[test]
fn another_key_or_a_ledger_without_the_export_fails() {
    let (ledger, card) = honest();
    let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let report = verify_card(&card, ledger.lines(), &other);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("not signed with the pinned"))
    );

    // The ledger up to the commit only: the card's hash is recorded nowhere.
    let key = ledger_key().verifying_key();
    let lines = &ledger.lines()[..ledger.lines().len() - 1];
    let report = verify_card(&card, lines, &key);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("no ModelExported entry"))
    );

    // A commit index pointing at another entry.
    let mut moved = card.clone();
    moved.ledger.commit_index = Some(1);
    let report = verify_card(&moved, ledger.lines(), &key);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("not a round commit")),
        "{:?}",
        report.failures
    );
}
