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
use harambee_sim::harness::scripted::ScriptedAgent;
use sha2::{Digest, Sha256};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_upload_after_a_lost_response_is_ok_and_stays_in_the_ledger() {
    let h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 1, 60));
    spec.facilities = vec!["clinic".into()];
    create_federation(&mut admin, &spec).await;

    let mut clinic = ScriptedAgent::connect(&h, "clinic").await;
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = clinic.next_train().await;
    let n = task.model.as_ref().unwrap().n_params;
    let bytes = Arc::new(harambee_core::params::to_le_bytes(&vec![
        0.01f32;
        n as usize
    ]));
    let digest = hex::encode(Sha256::digest(bytes.as_slice()));
    let upload = clinic.header(&spec.name, round.id, 40, &bytes);

    // Accepted; the answer is "lost" and the agent sends the same bytes again. The round has
    // meanwhile closed training (its only facility uploaded) and is evaluating.
    upload_update(&mut clinic.client, upload.clone(), bytes.clone())
        .await
        .unwrap();
    upload_update(&mut clinic.client, upload.clone(), bytes.clone())
        .await
        .expect("a retried upload of the same bytes is answered OK");
    // Other bytes for the same round are still refused.
    let other = Arc::new(harambee_core::params::to_le_bytes(&vec![
        0.02f32;
        n as usize
    ]));
    let other_header = clinic.header(&spec.name, round.id, 40, &other);
    let err = upload_update(&mut clinic.client, other_header.clone(), other.clone())
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);

    let Kind::Evaluate(_) = clinic.next_task().await else {
        panic!("expected an evaluate task")
    };
    clinic
        .client
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
    upload_update(&mut clinic.client, upload.clone(), bytes.clone())
        .await
        .expect("a retry after the round ended is answered OK");
    let err = upload_update(&mut clinic.client, other_header, other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    clinic.disconnect();

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
