//! Evidence for the people who answer for a model, over real mTLS with real agents: the model
//! card written with every export holds the database's figures and verifies against the
//! ledger, and fails verification after any one figure is changed; the auditor's compliance
//! report names every facility and every federation's privacy parameters.

use harambee_sim::harness as common;

use common::*;
use harambee_agent::audit::{VerifyArgs, verify_report};
use harambee_coordinator::federation::DpSgdSpec;
use harambee_link::identity::Role;
use harambee_privacy::card::ModelCard;
use harambee_proto::pb;

fn ledger_key_hex(h: &Harness) -> String {
    let pem = std::fs::read_to_string(&h.storage.ledger_key).unwrap();
    let key =
        <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem)
            .unwrap();
    hex::encode(key.verifying_key().as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evidence_model_card_matches_the_database_and_verifies_and_the_report_names_everyone() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(3));
    for f in &facilities {
        h.spawn_agent_with(f, "\n[policy]\nmax_epsilon = 100.0\n");
    }
    let mut admin = h.admin().await;
    let mut spec = spec(&facilities, 3, 60);
    spec.privacy.dp_sgd = Some(DpSgdSpec {
        clip_norm: 1.0,
        noise_multiplier: 1.3,
        sampling_rate: 0.2,
    });
    spec.intended_use = "Decision support: <b>estimated</b> risk of coronary artery disease".into();
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;
    let mut last = None;
    for _ in 0..2 {
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
        last = Some(round);
    }
    let last = last.unwrap();

    // The export writes the card beside the model.
    let out = h.dir.path().join("heart.safetensors");
    let meta = harambee_coordinator::cli::export_safetensors(&mut admin, &spec.name, None, &out)
        .await
        .unwrap();
    let (card_json, card_md) = harambee_coordinator::cli::write_model_card(&meta, &out)
        .unwrap()
        .expect("the coordinator sends a card with every export");
    let text = std::fs::read_to_string(&card_json).unwrap();
    let card = ModelCard::parse(&text).unwrap();

    // Its figures are the database's.
    let round = admin
        .get_round(pb::GetRoundRequest { round_id: last.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(card.model.version, u64::from(meta.version));
    assert_eq!(card.model.round_id, last.id);
    assert_eq!(
        card.model.sha256.to_hex(),
        meta.model.as_ref().unwrap().digest
    );
    assert_eq!(card.training.rounds_committed, 2);
    assert_eq!(card.training.rounds_failed, 0);
    assert_eq!(card.facilities.len(), 3);
    for p in &round.participants {
        let f = card
            .facilities
            .iter()
            .find(|f| f.facility == p.facility)
            .unwrap_or_else(|| panic!("{} is not on the card", p.facility));
        assert_eq!(f.rows, p.n_samples, "{}", p.facility);
        assert_eq!(f.rounds_contributed, 2, "{}", p.facility);
        assert_eq!(
            f.metrics.as_ref().map(|m| (m.n_samples, m.auc)),
            p.metrics
                .as_ref()
                .map(|m| (m.n_samples, m.auc.is_finite().then_some(m.auc))),
            "{}",
            p.facility
        );
        let eps = f.epsilon_spent.expect("a DP-SGD receipt states ε");
        assert!(eps > 0.0, "{}: ε {eps}", p.facility);
    }
    let pooled = round.global_metrics.as_ref().unwrap();
    assert_eq!(
        card.quality.pooled.as_ref().unwrap().n_samples,
        pooled.n_samples
    );
    assert_eq!(card.privacy.federation["dp_sgd"]["noise_multiplier"], 1.3);
    let md = std::fs::read_to_string(&card_md).unwrap();
    for f in &facilities {
        assert!(md.contains(&f.name), "{md}");
    }
    assert!(md.contains("Decision support"), "{md}");

    // It verifies against the auditor's export, with the ledger key pinned out of band.
    let ledger = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &ledger)
        .await
        .unwrap();
    let key = ledger_key_hex(&h);
    let verify = |card: &std::path::Path| {
        verify_report(&VerifyArgs {
            ledger: ledger.clone(),
            head: None,
            ledger_key: Some(key.clone()),
            receipts: None,
            model_card: Some(card.to_owned()),
        })
        .unwrap()
    };
    let (report, ok) = verify(&card_json);
    assert!(ok, "{report}");
    assert!(
        report.contains("is recorded by the export in entry"),
        "{report}"
    );

    // Any one figure changed: verification fails; a figure the ledger holds is named.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, Option<&str>); 5] = [
        (
            "rows",
            |v| {
                v["facilities"][0]["rows"] =
                    (v["facilities"][0]["rows"].as_u64().unwrap() + 1).into()
            },
            None,
        ),
        (
            "pooled AUC",
            |v| v["quality"]["pooled"]["auc"] = 0.999.into(),
            None,
        ),
        (
            "intended use",
            |v| v["intended_use"] = "anything at all".into(),
            None,
        ),
        (
            "ε",
            |v| v["facilities"][1]["epsilon_spent"] = 0.01.into(),
            Some("ε spent"),
        ),
        (
            "rounds",
            |v| v["training"]["rounds_committed"] = 7.into(),
            Some("rounds committed"),
        ),
    ];
    for (what, edit, named) in edits {
        let mut changed = value.clone();
        edit(&mut changed);
        let path = h.dir.path().join("changed.card.json");
        std::fs::write(&path, serde_json::to_string(&changed).unwrap()).unwrap();
        let (report, ok) = verify(&path);
        assert!(!ok, "changing {what} went unnoticed: {report}");
        assert!(
            report.contains("no ModelExported entry records"),
            "{what}: {report}"
        );
        if let Some(named) = named {
            assert!(report.contains(named), "{what}: {report}");
        }
    }

    // The compliance records: every facility and the federation's privacy parameters.
    let dir = h.dir.path().join("report");
    let written =
        harambee_coordinator::cli::audit::report(h.channel(Role::Auditor, "auditor").await, &dir)
            .await
            .unwrap();
    assert!(written.iter().all(|p| p.exists()));
    let art30 = std::fs::read_to_string(dir.join(format!("art30-{}.md", spec.name))).unwrap();
    for f in &facilities {
        assert!(art30.contains(&f.name), "{art30}");
    }
    assert!(
        art30.contains("noise multiplier 1.3") && art30.contains("sampling rate 0.2"),
        "{art30}"
    );
    assert!(art30.contains("verifies against that head"), "{art30}");
    assert!(art30.contains("TO COMPLETE"), "{art30}");
    let html = std::fs::read_to_string(dir.join(format!("art30-{}.html", spec.name))).unwrap();
    assert!(
        !html.contains("<b>estimated"),
        "the intended use is escaped: {html}"
    );
    let controls = std::fs::read_to_string(dir.join("audit-controls.md")).unwrap();
    assert!(controls.contains("model exported"), "{controls}");
    assert_eq!(
        controls.matches("facility enrolled").count(),
        3,
        "{controls}"
    );
    let svg = std::fs::read_to_string(dir.join("privacy-spend.svg")).unwrap();
    for f in &facilities {
        assert!(svg.contains(&f.name), "{svg}");
    }
    h.stop_agents().await;
}
