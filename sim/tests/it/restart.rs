//! The coordinator as a real process, killed with SIGKILL mid-round and restarted: history
//! and the latest model are intact, the interrupted round is failed with nothing applied,
//! and agents reconnect by themselves.

use harambee_sim::harness as common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use harambee_proto::pb;
use tokio::process::{Child, Command};

fn spawn_coordinator(h: &Harness, config: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.dir.path().join("coordinator.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args(["coordinator", "serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn admin_when_up(
    h: &Harness,
) -> pb::admin_service_client::AdminServiceClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", h.port))
            .await
            .is_ok()
        {
            return h.admin().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "coordinator did not come up; log:\n{}",
        std::fs::read_to_string(h.dir.path().join("coordinator.log")).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_loses_nothing_and_agents_come_back() {
    let mut h = Harness::prepare(None);
    h.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = h.dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndatabase_url = {:?}\nblob_dir = {:?}\npki = {:?}\nledger_key = {:?}\nheartbeat_interval_s = 1\nliveness_timeout_s = 3\n",
            h.port,
            h.storage.database_url,
            path_str(&h.storage.blob_dir),
            path_str(&h.pki),
            path_str(&h.storage.ledger_key)
        ),
    )
    .unwrap();
    let mut coordinator = spawn_coordinator(&h, &config);
    let mut admin = admin_when_up(&h).await;

    let facilities = h.facilities(Some(2));
    for f in &facilities {
        h.spawn_agent(f);
    }
    let spec = spec(&facilities, 2, 60);
    create_federation(&mut admin, &spec).await;
    let mut stuck = spec.clone();
    stuck.name = "stuck".into();
    stuck.facilities = vec!["nobody".into()];
    stuck.min_agents = 1;
    stuck.deadlines.selecting_s = 600;
    create_federation(&mut admin, &stuck).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;

    let first = run_round(&mut admin, &spec.name).await;
    assert_eq!(first.state(), pb::RoundState::Committed);
    let v1 = export(&mut admin, &spec.name, 1).await;
    let hanging = admin
        .start_round(pb::StartRoundRequest {
            federation: "stuck".into(),
        })
        .await
        .unwrap()
        .into_inner();

    coordinator.kill().await.unwrap();
    let mut coordinator = spawn_coordinator(&h, &config);
    let mut admin = admin_when_up(&h).await;

    // The interrupted round failed cleanly; it does not block the federation.
    let hanging = admin
        .get_round(pb::GetRoundRequest {
            round_id: hanging.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hanging.state(), pb::RoundState::Failed);
    assert_eq!(
        hanging.failure_reason,
        "coordinator restarted during the round"
    );
    assert!(hanging.result.is_none());
    let again = admin
        .start_round(pb::StartRoundRequest {
            federation: "stuck".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.number, 2);

    // History and the latest model survived.
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0].state(), pb::RoundState::Committed);
    assert_eq!(export(&mut admin, &spec.name, 1).await, v1);

    // The agents reconnect by themselves and the federation goes on from version 1.
    wait_connected(&mut admin, &["group-1", "group-2"]).await;
    let second = run_round(&mut admin, &spec.name).await;
    assert_eq!(second.state(), pb::RoundState::Committed, "{second:?}");
    assert_eq!(second.base.unwrap().version, 1);
    assert_eq!(second.result.unwrap().version, 2);

    h.stop_agents().await;
    coordinator.kill().await.unwrap();
}
