//! A model of 10^7 parameters moves through every transfer path (download, chunked upload,
//! aggregation, candidate download, export) within the 2 MiB message limit.

use harambee_sim::harness as common;

use common::*;
use harambee_coordinator::federation::{KindName, ModelSection};
use harambee_proto::pb::{self, task::Kind};
use sha2::{Digest, Sha256};

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
    };
    spec.facilities = vec!["big-clinic".into()];
    let fed = create_federation(&mut admin, &spec).await;
    let n = fed.config.unwrap().model.unwrap().n_params;
    assert!(n >= 10_000_000, "{n} parameters");

    let mut client = h.raw_agent("big-clinic").await;
    let mut tasks = client
        .open_task_stream(pb::OpenTaskStreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut hb = client.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            let _ = hb.heartbeat(open_heartbeat()).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: "large".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Kind::Train(task)) = tasks.message().await.unwrap().unwrap().kind else {
        panic!("expected a train task")
    };

    let cache = h.dir.path().join("cache");
    let base =
        harambee_agent::transfer::download_model(&mut client, task.base.as_ref().unwrap(), &cache)
            .await
            .unwrap();
    assert_eq!(base.len() as u64, n);
    let update: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-4).collect();
    let bytes = harambee_core::params::to_le_bytes(&update);
    let header = pb::UpdateHeader {
        round_id: task.round_id,
        n_params: n,
        n_samples: 10,
        sha256: hex::encode(Sha256::digest(&bytes)),
        train_loss: 0.1,
        masked: false,
        receipt: receipt_for(&h.pki, "big-clinic", "large", task.round_id, &bytes),
    };
    harambee_agent::transfer::upload_update(&mut client, header, std::sync::Arc::new(bytes))
        .await
        .unwrap();

    let Some(Kind::Evaluate(eval)) = tasks.message().await.unwrap().unwrap().kind else {
        panic!("expected an evaluate task")
    };
    let candidate = harambee_agent::transfer::download_model(
        &mut client,
        eval.candidate.as_ref().unwrap(),
        &cache,
    )
    .await
    .unwrap();
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
    client
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
    heartbeat.abort();
}
