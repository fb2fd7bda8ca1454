//! Bad input over the real wire: each is refused with a clear gRPC status, and the round
//! goes on without it.

use harambee_sim::harness as common;

use common::*;
use harambee_link::identity::Role;
use harambee_proto::pb::{self, agent_service_client::AgentServiceClient};
use harambee_sim::harness::scripted::ScriptedAgent;
use tonic::Code;

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
    let mut rogue = ScriptedAgent::connect(&h, "rogue").await;
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
    let err = rogue
        .upload(&task.federation, task.round_id, 50, &values)
        .await
        .unwrap_err();
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
        .upload(
            &task.federation,
            task.round_id,
            50,
            &vec![0.0; n as usize + 1],
        )
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
        .upload(&task.federation, task.round_id, 50, &vec![0.0; n as usize])
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
        .upload(&task.federation, task.round_id, 50, &vec![0.0; n as usize])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Unknown ids.
    let err = rogue
        .upload(&task.federation, 999_999, 50, &vec![0.0; n as usize])
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

/// A command whose reader goes away (`… | head`) ends quietly with the status of a process
/// ended by SIGPIPE, not with a panic.
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args([
            "coordinator",
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.0",
        ])
        .args([
            "--sampling-rate",
            "0.1",
            "--steps",
            "100",
            "--delta",
            "1e-5",
        ])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(harambee_link::process::BROKEN_PIPE_EXIT),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
