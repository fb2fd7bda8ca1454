//! A model of 10^7 parameters moves through every transfer path (download, chunked upload,
//! aggregation, candidate download, export) within the 2 MiB message limit.

use harambee_sim::harness as common;

use common::*;
use harambee_coordinator::federation::{KindName, ModelSection};
use harambee_proto::pb::{self, task::Kind};
use harambee_sim::harness::scripted::ScriptedAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_million_parameters_stream_in_chunks() {
    let h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 1, 120));
    spec.name = "large".into();
    spec.model = ModelSection {
        kind: KindName::Mlp,
        hidden: vec![4096, 2432],
        text: None,
    };
    spec.facilities = vec!["big-clinic".into()];
    let fed = create_federation(&mut admin, &spec).await;
    let n = fed.config.unwrap().model.unwrap().n_params;
    assert!(n >= 10_000_000, "{n} parameters");

    let mut clinic = ScriptedAgent::connect(&h, "big-clinic").await;
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: "large".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = clinic.next_train().await;

    let cache = h.dir.path().join("cache");
    let base = harambee_agent::transfer::download_model(
        &mut clinic.client,
        task.base.as_ref().unwrap(),
        &cache,
        4,
    )
    .await
    .unwrap();
    assert_eq!(base.len() as u64, n);
    let update: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-4).collect();
    clinic
        .upload("large", task.round_id, 10, &update)
        .await
        .unwrap();

    let Kind::Evaluate(eval) = clinic.next_task().await else {
        panic!("expected an evaluate task")
    };
    let candidate = harambee_agent::transfer::download_model(
        &mut clinic.client,
        eval.candidate.as_ref().unwrap(),
        &cache,
        1,
    )
    .await
    .unwrap();
    // A cache that keeps one model holds only the candidate now.
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        cached,
        vec![format!("{}.f32", eval.candidate.as_ref().unwrap().digest)]
    );
    for i in [0usize, 1, 4_999_999, n as usize - 1] {
        assert_eq!(
            candidate[i],
            base[i] + update[i],
            "parameter {i}: a single update is the mean"
        );
    }
    let metrics = pb::Metrics {
        n_samples: 5,
        loss: 0.5,
        accuracy: 0.5,
        auc: 0.5,
        n_positives: 2,
        sensitivity: 0.5,
        specificity: 0.5,
        ece: 0.1,
    };
    clinic
        .client
        .report_metrics(pb::ReportMetricsRequest {
            round_id: round.id,
            metrics: Some(metrics),
            withheld: false,
        })
        .await
        .unwrap();
    let round = wait_round(&mut admin, round.id).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert_eq!(export(&mut admin, "large", 1).await, candidate);
    clinic.disconnect();
}
