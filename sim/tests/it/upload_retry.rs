//! Uploads are idempotent: an agent that lost the answer to an accepted upload sends it
//! again, is answered OK (while the round runs and after it ended), and the ledger keeps
//! the contribution that is in the model.

use harambee_sim::harness as common;

use std::sync::Arc;

use common::*;
use harambee_agent::transfer::upload_update;
use harambee_link::identity::Role;
use harambee_privacy::ledger::{LedgerEvent, parse_jsonl};
use harambee_proto::pb::{self, task::Kind};
use sha2::{Digest, Sha256};
use tonic::Code;

fn header(
    h: &Harness,
    round_id: u64,
    n_params: u64,
    federation: &str,
    bytes: &[u8],
) -> pb::UpdateHeader {
    pb::UpdateHeader {
        round_id,
        n_params,
        n_samples: 40,
        sha256: hex::encode(Sha256::digest(bytes)),
        train_loss: 0.5,
        masked: false,
        receipt: receipt_for(&h.pki, "clinic", federation, round_id, bytes),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_upload_after_a_lost_response_is_ok_and_stays_in_the_ledger() {
    let h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 1, 60));
    spec.facilities = vec!["clinic".into()];
    create_federation(&mut admin, &spec).await;

    let mut client = h.raw_agent("clinic").await;
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
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Kind::Train(task)) = tasks.message().await.unwrap().unwrap().kind else {
        panic!("expected a train task")
    };
    let n = task.model.as_ref().unwrap().n_params;
    let bytes = Arc::new(harambee_core::params::to_le_bytes(&vec![
        0.01f32;
        n as usize
    ]));
    let digest = hex::encode(Sha256::digest(bytes.as_slice()));
    let upload = header(&h, round.id, n, &spec.name, &bytes);

    // Accepted; the answer is "lost" and the agent sends the same bytes again. The round has
    // meanwhile closed training (its only facility uploaded) and is evaluating.
    upload_update(&mut client, upload.clone(), bytes.clone())
        .await
        .unwrap();
    upload_update(&mut client, upload.clone(), bytes.clone())
        .await
        .expect("a retried upload of the same bytes is answered OK");
    // Other bytes for the same round are still refused.
    let other = Arc::new(harambee_core::params::to_le_bytes(&vec![
        0.02f32;
        n as usize
    ]));
    let err = upload_update(
        &mut client,
        header(&h, round.id, n, &spec.name, &other),
        other.clone(),
    )
    .await
    .unwrap_err();
    assert_ne!(err.code(), Code::Ok);

    let Some(Kind::Evaluate(_)) = tasks.message().await.unwrap().unwrap().kind else {
        panic!("expected an evaluate task")
    };
    client
        .report_metrics(pb::ReportMetricsRequest {
            round_id: round.id,
            withheld: true,
            metrics: None,
        })
        .await
        .unwrap();
    let ended = wait_round(&mut admin, round.id).await;
    assert_eq!(ended.state(), pb::RoundState::Committed, "{ended:?}");

    // After the round ended: the same bytes are still OK, other bytes are not.
    upload_update(&mut client, upload.clone(), bytes.clone())
        .await
        .expect("a retry after the round ended is answered OK");
    let err = upload_update(
        &mut client,
        header(&h, round.id, n, &spec.name, &other),
        other,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    heartbeat.abort();

    // The ledger holds the contribution that is in the model, once.
    let out = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &out)
        .await
        .unwrap();
    let lines = parse_jsonl(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let contributions: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.event {
            LedgerEvent::Contribution(c) if c.facility == "clinic" && c.round_id == round.id => {
                Some(c.upload_sha256.to_hex())
            }
            _ => None,
        })
        .collect();
    assert_eq!(contributions, vec![digest], "{lines:#?}");
}
