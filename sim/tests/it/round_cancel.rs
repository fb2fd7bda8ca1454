//! An operator ends a round that cannot finish, instead of restarting the coordinator or
//! waiting out its deadlines: the round fails with the operator's name and reason, in the
//! round's record, the ledger and the admin-action log, and the federation can start the
//! next round at once. Only operators may do it.

use harambee_sim::harness as common;

use common::*;
use harambee_link::identity::Role;
use harambee_privacy::ledger::{LedgerEvent, parse_jsonl};
use harambee_proto::pb::{self, admin_service_client::AdminServiceClient};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_round_that_cannot_finish() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    h.spawn_agent(&facilities[0]);
    let mut admin = h.admin().await;
    // Two facilities needed, one connected: the round waits in selection.
    let mut spec = plain(spec(&facilities, 2, 60));
    spec.deadlines.selecting_s = 3600;
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &[facilities[0].name.as_str()]).await;
    let started = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let cancel = |reason: &str| pb::CancelRoundRequest {
        round_id: started.id,
        reason: reason.to_owned(),
    };

    let mut auditor = AdminServiceClient::new(h.channel(Role::Auditor, "auditor").await);
    let err = auditor.cancel_round(cancel("no")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let round = admin
        .cancel_round(cancel("the second site is closed this week"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(round.state(), pb::RoundState::Failed, "{round:?}");
    assert_eq!(
        round.failure_reason,
        "cancelled by operator admin: the second site is closed this week"
    );
    let err = admin.cancel_round(cancel("again")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is not running"), "{err:?}");

    // The next round starts at once.
    admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .expect("a cancelled round leaves no round running");

    // The ledger and the admin-action log say who ended it and why.
    let out = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &out)
        .await
        .unwrap();
    let lines = parse_jsonl(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(
        lines.iter().any(|l| matches!(&l.event,
            LedgerEvent::RoundFailed { round_id, reason, .. }
                if *round_id == started.id && reason.starts_with("cancelled by operator admin"))),
        "{lines:#?}"
    );
    let actions = pb::identity_service_client::IdentityServiceClient::new(
        h.channel(Role::Operator, "admin").await,
    )
    .list_admin_actions(pb::ListAdminActionsRequest::default())
    .await
    .unwrap()
    .into_inner()
    .actions;
    assert!(
        actions
            .iter()
            .any(|a| a.action == "round_cancelled" && a.subject == spec.name),
        "{actions:?}"
    );
    h.stop_agents().await;
}

/// While a round runs, its record shows each selected facility's state and reason as the
/// round sees it now (stored ones change only at a stage's end): here one uploaded, one
/// declined with its reason, one still training; the operator then cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_round_shows_each_facility_as_it_stands() {
    use harambee_sim::harness::scripted::ScriptedAgent;
    let h = Harness::start(None).await;
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&h.facilities(Some(1)), 3, 600));
    spec.facilities = vec!["uploads".into(), "declines".into(), "trains".into()];
    create_federation(&mut admin, &spec).await;
    let mut agents = Vec::new();
    for name in &spec.facilities {
        agents.push(ScriptedAgent::connect(&h, name).await);
    }
    wait_connected(&mut admin, &["uploads", "declines", "trains"]).await;
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut tasks = Vec::new();
    for agent in &mut agents {
        tasks.push(agent.next_train().await);
    }
    let n = tasks[0].model.as_ref().unwrap().n_params as usize;
    agents[0]
        .upload(&spec.name, round.id, 40, &vec![0.01; n])
        .await
        .unwrap();
    agents[1]
        .client
        .decline_task(pb::DeclineTaskRequest {
            round_id: round.id,
            reason: "this facility's data could not be read".into(),
        })
        .await
        .unwrap();

    let now = admin
        .get_round(pb::GetRoundRequest { round_id: round.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.state(), pb::RoundState::Training, "{now:?}");
    let status = |name: &str| {
        let p = now
            .participants
            .iter()
            .find(|p| p.facility == name)
            .unwrap_or_else(|| panic!("{name} not in {now:?}"));
        (p.status(), p.detail.clone())
    };
    assert_eq!(status("uploads").0, pb::ParticipantStatus::Uploaded);
    let (declined, why) = status("declines");
    assert_eq!(declined, pb::ParticipantStatus::Dropped, "{now:?}");
    assert!(why.contains("data could not be read"), "{why}");
    assert_eq!(status("trains").0, pb::ParticipantStatus::Selected);

    let ended = admin
        .cancel_round(pb::CancelRoundRequest {
            round_id: round.id,
            reason: "trains will not finish today".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state(), pb::RoundState::Failed);
}
