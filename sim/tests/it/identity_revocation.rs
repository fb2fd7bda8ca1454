//! Revocation with real agents: an open task stream is closed within seconds, the facility
//! is refused on every call from then on (also after a coordinator restart), it is never
//! selected for a round again, and its agent stops with an exit code of its own instead of
//! retrying forever.

use harambee_sim::harness as common;
use harambee_sim::harness::identity as identity_common;

use std::time::Duration;

use common::*;
use harambee_coordinator::service::error::ACCESS_DENIED;
use harambee_link::identity::Role;
use harambee_proto::pb;
use identity_common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_revocation_closes_an_open_task_stream_within_seconds() {
    let mut c = Coord::start(NINETY_DAYS).await;
    // One facility with a certificate from `pki issue`, one enrolled with a token.
    let facilities = c.h.facilities(Some(1));
    let issued = facilities[0].name.clone();
    c.h.spawn_agent(&facilities[0]);
    let enrolled = c.enrol_agent("enrolled-site").await;
    c.spawn_agent(&enrolled);
    let mut admin = c.h.admin().await;
    wait_connected(&mut admin, &[&issued, "enrolled-site"]).await;

    // A task stream held open by hand, to watch it end.
    let mut watched = c.h.raw_agent("watched").await;
    let mut stream = watched
        .open_task_stream(pb::OpenTaskStreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    wait_connected(&mut admin, &["watched"]).await;
    c.revoke("watched").await;
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the open task stream is closed within 5 s");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "no task after revocation: {ended:?}"
    );
    let err = watched
        .heartbeat(pb::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        format!("{ACCESS_DENIED}facility \"watched\" has been revoked")
    );

    // The real agent of the enrolled facility: dropped at once and kept out (it stops, see
    // `identity_a_revoked_agent_stops_with_its_own_exit_code`); the other facility is
    // untouched.
    let revoked = c.revoke("enrolled-site").await;
    assert_eq!(revoked.status, "revoked");
    assert_eq!(revoked.revoked_by, "harambee://operator/admin");
    eventually(
        Duration::from_secs(10),
        "the revoked agent is disconnected",
        || async {
            agents(&c)
                .await
                .iter()
                .any(|a| a.facility == "enrolled-site" && !a.connected)
        },
    )
    .await;
    for _ in 0..30 {
        let now = agents(&c).await;
        assert!(
            now.iter()
                .any(|a| a.facility == "enrolled-site" && !a.connected),
            "{now:?}"
        );
        assert!(
            now.iter().any(|a| a.facility == issued && a.connected),
            "{now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Never selected again: a federation naming both runs with the other one only.
    let mut spec = spec(&facilities, 1, 30);
    spec.facilities = vec![issued.clone(), "enrolled-site".to_owned()];
    // Plain aggregation: this is about selection, and one facility is enough for it.
    spec.secure_aggregation.enabled = false;
    create_federation(&mut admin, &spec).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    let participants: Vec<&str> = round
        .participants
        .iter()
        .map(|p| p.facility.as_str())
        .collect();
    assert_eq!(participants, [issued.as_str()]);

    // Revocation is durable: after a restart the facility is still refused.
    c.h.stop_agents().await;
    c.stop_agents().await;
    c.restart().await;
    let err =
        c.h.raw_agent("watched")
            .await
            .heartbeat(pb::HeartbeatRequest::default())
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err =
        c.h.raw_agent("enrolled-site")
            .await
            .open_task_stream(pb::OpenTaskStreamRequest::default())
            .await
            .unwrap_err();
    assert!(err.message().contains("has been revoked"), "{err:?}");
    let listed = c
        .identity(Role::Auditor, "audit")
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let revoked: Vec<&str> = listed
        .facilities
        .iter()
        .filter(|f| f.status == "revoked")
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(revoked, ["enrolled-site", "watched"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_only_known_facilities_can_be_revoked() {
    let c = Coord::start(NINETY_DAYS).await;
    let err = c
        .operator()
        .await
        .revoke_facility(pb::RevokeFacilityRequest {
            name: "never-heard-of".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Revoking twice records it once.
    c.add_facility("twice", 60).await;
    let first = c.revoke("twice").await;
    let second = c.revoke("twice").await;
    assert_eq!(first.revoked_unix_ms, second.revoked_unix_ms);
    let actions = c
        .operator()
        .await
        .list_admin_actions(pb::ListAdminActionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .actions;
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.action == "facility_revoked")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_revoked_agent_stops_with_its_own_exit_code() {
    let c = Coord::start(NINETY_DAYS).await;
    c.enrol_agent("closing-site").await;
    let config = c.site_dir("closing-site").join("agent.toml");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args(["agent", "run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut admin = c.h.admin().await;
    wait_connected(&mut admin, &["closing-site"]).await;
    c.revoke("closing-site").await;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("a revoked agent stops instead of retrying")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(harambee_link::process::REFUSED_EXIT)),
        "{stderr}"
    );
    assert!(
        stderr.contains("the coordinator refuses this facility")
            && stderr.contains("has been revoked")
            && stderr.contains("re-enrol"),
        "{stderr}"
    );
}
