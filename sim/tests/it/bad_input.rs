//! Bad input over the real wire: each is refused with a clear gRPC status, and the round
//! goes on without it.

use harambee_sim::harness as common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use harambee_agent::transfer::upload_update;
use harambee_link::identity::Role;
use harambee_proto::pb::{self, agent_service_client::AgentServiceClient, task::Kind};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

/// A hand-driven agent: opens its task stream and heartbeats, and does what the test says.
struct Rogue {
    name: String,
    pki: std::path::PathBuf,
    federation: String,
    client: AgentServiceClient<Channel>,
    tasks: tonic::Streaming<pb::Task>,
    _heartbeat: tokio::task::JoinHandle<()>,
}

impl Rogue {
    async fn connect(h: &Harness, name: &str) -> Rogue {
        let mut client = h.raw_agent(name).await;
        let tasks = client
            .open_task_stream(pb::OpenTaskStreamRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut hb = client.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                let _ = hb.heartbeat(open_heartbeat()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Rogue {
            name: name.to_owned(),
            pki: h.pki.clone(),
            federation: String::new(),
            client,
            tasks,
            _heartbeat: heartbeat,
        }
    }

    async fn next_train(&mut self) -> pb::TrainTask {
        loop {
            match self.tasks.message().await.unwrap().unwrap().kind {
                Some(Kind::Train(t)) => {
                    self.federation = t.federation.clone();
                    return t;
                }
                _ => continue,
            }
        }
    }

    async fn upload(
        &mut self,
        round_id: u64,
        n_params: u64,
        values: &[f32],
    ) -> Result<(), tonic::Status> {
        let bytes = harambee_core::params::to_le_bytes(values);
        let header = pb::UpdateHeader {
            round_id,
            n_params,
            n_samples: 50,
            sha256: hex::encode(Sha256::digest(&bytes)),
            train_loss: 0.5,
            masked: false,
            receipt: receipt_for(&self.pki, &self.name, &self.federation, round_id, &bytes),
        };
        upload_update(&mut self.client, header, Arc::new(bytes)).await
    }
}

fn participant<'a>(round: &'a pb::Round, name: &str) -> &'a pb::Participant {
    round
        .participants
        .iter()
        .find(|p| p.facility == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_the_round_goes_on() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    for f in &facilities {
        h.spawn_agent(f);
    }
    let mut rogue = Rogue::connect(&h, "rogue").await;
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 2, 3));
    spec.facilities.push("rogue".into());
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2", "rogue"]).await;

    // A NaN in an update of the right length.
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = rogue.next_train().await;
    let n = task.model.as_ref().unwrap().n_params;
    let mut values = vec![0.1f32; n as usize];
    values[3] = f32::NAN;
    let err = rogue.upload(task.round_id, n, &values).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("index 3 is not finite"),
        "{}",
        err.message()
    );
    let round = wait_round(&mut admin, round.id).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert_eq!(
        participant(&round, "rogue").status(),
        pb::ParticipantStatus::Rejected
    );
    assert!(participant(&round, "rogue").detail.contains("not finite"));
    assert_eq!(
        participant(&round, "group-1").status(),
        pb::ParticipantStatus::Uploaded
    );

    // An update of the wrong length: refused on its header.
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = rogue.next_train().await;
    let err = rogue
        .upload(task.round_id, n + 1, &vec![0.0; n as usize + 1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains(&format!("the model has {n}")),
        "{}",
        err.message()
    );
    // A second try within the same round is refused too: the facility is out of it (or,
    // if the others were quicker, training has already closed).
    let err = rogue
        .upload(task.round_id, n, &vec![0.0; n as usize])
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::AlreadyExists | Code::FailedPrecondition),
        "{err:?}"
    );
    let round = wait_round(&mut admin, round.id).await;
    assert_eq!(round.state(), pb::RoundState::Committed);
    assert_eq!(
        participant(&round, "rogue").status(),
        pb::ParticipantStatus::Rejected
    );

    // Silence: alive (heartbeating) but never uploading; dropped at the training deadline.
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = rogue.next_train().await;
    let round = wait_round(&mut admin, round.id).await;
    assert_eq!(round.state(), pb::RoundState::Committed);
    let silent = participant(&round, "rogue");
    assert_eq!(silent.status(), pb::ParticipantStatus::Dropped);
    assert_eq!(silent.detail, "missed the training deadline");
    // A late upload for a finished round.
    let err = rogue
        .upload(task.round_id, n, &vec![0.0; n as usize])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Unknown ids.
    let err = rogue
        .upload(999_999, n, &vec![0.0; n as usize])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("round 999999 is not running"));
    let err = admin
        .get_round(pb::GetRoundRequest { round_id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .start_round(pb::StartRoundRequest {
            federation: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no federation named \"nope\""));
    let err = admin
        .list_rounds(pb::ListRoundsRequest {
            federation: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Three rounds committed, the model moved on each.
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert!(
        rounds
            .iter()
            .all(|r| r.state() == pb::RoundState::Committed)
    );
    assert_eq!(rounds.len(), 3);
    h.stop_agents().await;
    h.stop_coordinator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_misdirected_messages_are_refused() {
    let h = Harness::start(None).await;
    let mut admin = h.admin().await;
    let mut agent = h.raw_agent("clinic").await;

    // Over the 2 MiB message limit: refused before it is decoded.
    let facilities = h.facilities(Some(1));
    let mut spec = spec(&facilities, 1, 10);
    spec.facilities = (0..100_000)
        .map(|i| format!("facility-with-a-long-name-{i:08}"))
        .collect();
    let request = pb::CreateFederationRequest {
        config: Some(harambee_coordinator::wire::federation_config(&spec, 0)),
        init_from: None,
    };
    let err = admin.create_federation(request).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    // An agent may not call operator RPCs, nor download a model it was not offered.
    let channel = h.channel(Role::Agent, "clinic").await;
    let mut as_admin = pb::admin_service_client::AdminServiceClient::new(channel);
    let err = as_admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = agent
        .download_model(pb::DownloadModelRequest {
            digest: "ab".repeat(32),
            offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // An operator may not act as an agent.
    let err = h
        .admin()
        .await
        .get_round(pb::GetRoundRequest { round_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let channel = h.channel(Role::Operator, "admin").await;
    let err = AgentServiceClient::new(channel)
        .heartbeat(pb::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A heartbeat without a task stream says what to do.
    let err = agent
        .heartbeat(pb::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("open one first"));
}
