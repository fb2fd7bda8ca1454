//! Personalization and the facility's say over its metrics, end to end: with FedPer only the
//! hidden layers leave a facility and each keeps its own head; a facility may fine-tune the
//! global model locally; a facility below its minimum cohort never reports metrics.

use harambee_sim::harness as common;

use common::*;
use harambee_coordinator::federation::{KindName, ModelSection};
use harambee_proto::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedper_keeps_heads_home_and_small_cohorts_keep_their_metrics() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let tuned = h.spawn_agent_with(&facilities[0], "\n[fine_tune]\nepochs = 2\n");
    let private = h.spawn_agent_with(&facilities[1], "\n[policy]\nmin_cohort = 100000\n");
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 2, 60));
    spec.model = ModelSection {
        kind: KindName::Personalized,
        hidden: vec![8],
        text: None,
    };
    let model = spec.model_spec();
    let (n, shared) = (model.n_params(), model.shared_len());
    assert!(shared < n);
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;

    for number in 1..=2u32 {
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
        let uploads: Vec<(u64, Vec<f32>)> = [&tuned, &private]
            .iter()
            .flat_map(|c| uploads_of(c, round.id))
            .collect();
        assert_eq!(uploads.len(), 2);
        assert!(
            uploads.iter().all(|(_, u)| u.len() == shared),
            "only the {shared} shared parameters of {n} leave"
        );
        let base = export(&mut admin, &spec.name, number - 1).await;
        let committed = export(&mut admin, &spec.name, number).await;
        assert_eq!(
            committed[shared..],
            base[shared..],
            "the global head is never federated"
        );
        let total: u64 = uploads.iter().map(|(w, _)| w).sum();
        for i in 0..shared {
            let mean = uploads
                .iter()
                .map(|(w, u)| *w as f64 * u[i] as f64)
                .sum::<f64>()
                / total as f64;
            assert!(
                (committed[i] as f64 - (base[i] as f64 + mean)).abs() < 1e-6,
                "param {i}"
            );
        }
        let small = round
            .participants
            .iter()
            .find(|p| p.facility == "group-2")
            .unwrap();
        assert!(
            small.metrics.is_none(),
            "a facility below its minimum cohort reports no metrics"
        );
        assert!(small.detail.contains("withheld"), "{}", small.detail);
        assert!(
            round
                .participants
                .iter()
                .find(|p| p.facility == "group-1")
                .unwrap()
                .metrics
                .is_some()
        );
    }
    let log = std::fs::read_to_string(private.state_dir.join("egress.jsonl")).unwrap();
    assert!(
        !log.contains("\"metrics\""),
        "no metrics left the small facility"
    );

    // Each facility keeps a personal model; the fine-tuned one differs from the global model.
    let global = export(&mut admin, &spec.name, 2).await;
    for config in [&tuned, &private] {
        let personal = harambee_models::checkpoint::load_file(
            &config.state_dir.join("personal/heart-disease.safetensors"),
        )
        .unwrap();
        personal.expect_spec(&model).unwrap();
        assert_eq!(personal.version, 2);
        assert_ne!(
            personal.params[shared..],
            global[shared..],
            "the head is the facility's own"
        );
    }
    h.stop_agents().await;
    h.stop_coordinator().await;
}
