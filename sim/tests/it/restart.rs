//! The coordinator as a real process, killed with SIGKILL mid-round and restarted: history
//! and the latest model are intact, the interrupted round is failed with nothing applied,
//! agents reconnect by themselves, every upload it had accepted is in the ledger (each
//! facility's `audit verify` stays clean), and the round is retried when the federation
//! asks.

use harambee_sim::harness as common;

use std::time::Duration;

use common::*;
use harambee_agent::audit::{VerifyArgs, verify_report};
use harambee_agent::config::AgentConfig;
use harambee_coordinator::federation::DpSgdSpec;
use harambee_link::identity::Role;
use harambee_privacy::ledger::{LedgerEvent, parse_jsonl};
use harambee_privacy::log::{LOG_FILE, LogLine, Record, parse_log};
use harambee_proto::pb;
use rand::{Rng, SeedableRng};
use tokio::process::Child;

use crate::serve_process::{serve_config, spawn_serve};

fn spawn_coordinator(h: &Harness, config: &std::path::Path) -> Child {
    spawn_serve(h, config, "coordinator.log", &[])
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

/// A harness whose coordinator runs as its own process (`spawn_coordinator`), configured
/// in the returned file.
fn coordinator_process(h: &mut Harness) -> std::path::PathBuf {
    serve_config(h, "liveness_timeout_s = 3\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_loses_nothing_and_agents_come_back() {
    let mut h = Harness::prepare(None);
    let config = coordinator_process(&mut h);
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

fn privacy_log(config: &AgentConfig) -> Vec<LogLine> {
    parse_log(&std::fs::read_to_string(config.state_dir.join(LOG_FILE)).unwrap_or_default())
        .unwrap()
}

/// Rounds whose upload the coordinator acknowledged to this facility.
fn accepted_rounds(log: &[LogLine]) -> Vec<u64> {
    log.iter()
        .filter_map(|l| match &l.record {
            Record::Accepted { round_id, .. } => Some(*round_id),
            _ => None,
        })
        .collect()
}

/// The federation's round that has not ended, if any.
async fn running_round(
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    federation: &str,
) -> Option<pb::Round> {
    admin
        .list_rounds(pb::ListRoundsRequest {
            federation: federation.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rounds
        .into_iter()
        .find(|r| {
            !matches!(
                r.state(),
                pb::RoundState::Committed | pb::RoundState::Failed
            )
        })
}

/// SIGKILL at a random moment of each of several consecutive rounds (secure and plain in
/// turn, DP-SGD on): every upload the coordinator had acknowledged is in the ledger after
/// the restart, so every facility's `audit verify` is clean, its proofs arrive (no alarm, no
/// endless asking), the ledger's ε per facility is the one its last accepted receipt
/// states, and each interrupted round is retried by the coordinator itself
/// (`retry_interrupted`). `HARAMBEE_CHAOS_ROUNDS` (default 4) and `HARAMBEE_CHAOS_SEED`
/// replay a run; the seed is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_at_random_moments_leaves_every_facility_audit_clean() {
    let rounds: usize = std::env::var("HARAMBEE_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("HARAMBEE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: {rounds} rounds, HARAMBEE_CHAOS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut h = Harness::prepare(None);
    let config = coordinator_process(&mut h);
    let mut coordinator = spawn_coordinator(&h, &config);
    let mut admin = admin_when_up(&h).await;
    let facilities = h.facilities(Some(3));
    let configs: Vec<AgentConfig> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let mut federations = Vec::new();
    for (name, secure) in [("secure", true), ("plain", false)] {
        let mut spec = spec(&facilities, 3, 60);
        spec.name = name.into();
        spec.secure_aggregation.enabled = secure;
        spec.retry_interrupted = true;
        spec.privacy.dp_sgd = Some(DpSgdSpec {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            sampling_rate: 0.2,
        });
        create_federation(&mut admin, &spec).await;
        federations.push(spec.name);
    }
    wait_connected(&mut admin, &names).await;

    let mut kills = 0;
    for i in 0..rounds {
        let federation = &federations[i % 2];
        let round = match running_round(&mut admin, federation).await {
            Some(round) => round,
            None => admin
                .start_round(pb::StartRoundRequest {
                    federation: federation.clone(),
                })
                .await
                .unwrap()
                .into_inner(),
        };
        // A round here takes 100 to 300 ms: the kill lands anywhere in it, or just after.
        let delay = Duration::from_millis(rng.random_range(0..250));
        tokio::time::sleep(delay).await;
        let state = admin
            .get_round(pb::GetRoundRequest { round_id: round.id })
            .await
            .unwrap()
            .into_inner()
            .state();
        eprintln!(
            "chaos: round {} of {federation}: kill after {delay:?} ({state:?})",
            round.id
        );
        coordinator.kill().await.unwrap();
        kills += 1;
        coordinator = spawn_coordinator(&h, &config);
        admin = admin_when_up(&h).await;
        let after = admin
            .get_round(pb::GetRoundRequest { round_id: round.id })
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(
                after.state(),
                pb::RoundState::Committed | pb::RoundState::Failed
            ),
            "{after:?}"
        );
        // An interrupted round comes back by itself, as a new round that then runs through.
        wait_connected(&mut admin, &names).await;
        if after.state() == pb::RoundState::Failed {
            let retried = running_round(&mut admin, federation)
                .await
                .unwrap_or_else(|| panic!("round {} was not retried", round.id));
            let retried = wait_round(&mut admin, retried.id).await;
            assert_eq!(retried.state(), pb::RoundState::Committed, "{retried:?}");
        }
    }
    assert_eq!(kills, rounds);

    // Every facility hears its proofs: each accepted upload is proven or (never here)
    // alarmed about, and none is left asking.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (f, config) in facilities.iter().zip(&configs) {
        loop {
            let log = privacy_log(config);
            let alarms: Vec<_> = log
                .iter()
                .filter(|l| matches!(l.record, Record::Alarm { .. }))
                .collect();
            assert!(alarms.is_empty(), "{}: {alarms:?}", f.name);
            let proven = |round: u64| {
                log.iter().any(
                    |l| matches!(&l.record, Record::Proof { round_id, .. } if *round_id == round),
                )
            };
            if accepted_rounds(&log).into_iter().all(proven) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: accepted uploads without a ledger proof",
                f.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The auditor's export agrees with every facility's log, and with its ε.
    let ledger = h.export_ledger("ledger.jsonl").await;
    let entries = parse_jsonl(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    let spend =
        harambee_coordinator::cli::audit::privacy_spend(h.channel(Role::Auditor, "auditor").await)
            .await
            .unwrap();
    for (f, config) in facilities.iter().zip(&configs) {
        let (report, ok) = audit_facility(&ledger, config);
        assert!(ok, "{}: {report}", f.name);
        let log = privacy_log(config);
        let accepted = accepted_rounds(&log);
        let recorded: Vec<u64> = entries
            .iter()
            .filter_map(|l| match &l.event {
                LedgerEvent::Contribution(c) if c.facility == f.name => Some(c.round_id),
                _ => None,
            })
            .collect();
        assert_eq!(recorded, accepted, "{}", f.name);
        let last = harambee_privacy::log::accepted_receipts(&log)
            .last()
            .map(|r| r.receipt.epsilon_spent)
            .unwrap();
        let ledger_eps = spend
            .iter()
            .find(|s| s.facility == f.name)
            .unwrap()
            .epsilon_spent;
        assert!(
            (ledger_eps - last).abs() < 1e-9,
            "{}: {ledger_eps} vs {last}",
            f.name
        );
    }
    h.stop_agents().await;
    coordinator.kill().await.unwrap();
}

/// Two coordinators on one PostgreSQL database: a second one started plainly refuses with
/// the reason; one started with `--standby` waits, and when the active one is killed with
/// SIGKILL mid-round it takes the lease, fails the interrupted round with its accepted
/// uploads in the ledger, retries it, and the agents (reconnecting to the same address)
/// commit it. Both keep their model blobs in the database: they share no directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_coordinator_on_postgres() {
    let db = PgDatabase::create().await;
    let mut h = Harness::prepare(Some(db.url.clone()));
    let config = coordinator_process(&mut h);
    let in_db = "--blobs-in-database";
    let mut active = spawn_serve(&h, &config, "active.log", &[in_db]);
    let mut admin = admin_when_up(&h).await;

    let second = spawn_serve(&h, &config, "second.log", &[in_db]);
    let status = second.wait_with_output().await.unwrap().status;
    assert!(!status.success());
    let said = std::fs::read_to_string(h.dir.path().join("second.log")).unwrap();
    assert!(
        said.contains("another coordinator holds the database lease"),
        "{said}"
    );
    let mut standby = spawn_serve(&h, &config, "standby.log", &["--standby", in_db]);

    let facilities = h.facilities(Some(3));
    let configs: Vec<AgentConfig> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let mut spec = spec(&facilities, 3, 60);
    spec.retry_interrupted = true;
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;
    let first = run_round(&mut admin, &spec.name).await;
    assert_eq!(first.state(), pb::RoundState::Committed, "{first:?}");

    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // Past selection, with work in flight.
    loop {
        let now = admin
            .get_round(pb::GetRoundRequest { round_id: round.id })
            .await
            .unwrap()
            .into_inner();
        if now.state() != pb::RoundState::Selecting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(standby.try_wait().unwrap().is_none(), "the standby stopped");
    active.kill().await.unwrap();

    let mut admin = admin_when_up(&h).await;
    let interrupted = admin
        .get_round(pb::GetRoundRequest { round_id: round.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        interrupted.state(),
        pb::RoundState::Failed,
        "{interrupted:?}"
    );
    let retried = running_round(&mut admin, &spec.name)
        .await
        .expect("the interrupted round is retried");
    let retried = wait_round(&mut admin, retried.id).await;
    assert_eq!(retried.state(), pb::RoundState::Committed, "{retried:?}");
    assert_eq!(retried.base.unwrap().version, 1);
    let took = std::fs::read_to_string(h.dir.path().join("standby.log")).unwrap();
    assert!(took.contains("standing by"), "{took}");
    assert!(took.contains("took the database lease"), "{took}");
    // The standby served the models the killed coordinator stored, from the database.
    let blob_files = walkdir(&h.storage.blob_dir);
    assert!(blob_files.is_empty(), "blob files written: {blob_files:?}");

    let ledger = h.export_ledger("ledger.jsonl").await;
    for (f, config) in facilities.iter().zip(&configs) {
        let (report, ok) = audit_facility(&ledger, config);
        assert!(ok, "{}: {report}", f.name);
    }
    h.stop_agents().await;
    standby.kill().await.unwrap();
    db.drop_now().await;
}

/// `backup` while the coordinator serves, then `restore` with it stopped: history up to the
/// backup is back and the ledger verifies under the pinned key; a facility that saw a later
/// head names the rollback in its audit. `restore` refuses while a coordinator serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_and_facilities_name_the_rollback() {
    let mut h = Harness::prepare(None);
    let config = coordinator_process(&mut h);
    let mut coordinator = spawn_coordinator(&h, &config);
    let mut admin = admin_when_up(&h).await;
    let facilities = h.facilities(Some(3));
    let configs: Vec<AgentConfig> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let spec = plain(spec(&facilities, 3, 60));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;
    let first = run_round(&mut admin, &spec.name).await;
    assert_eq!(first.state(), pb::RoundState::Committed, "{first:?}");
    let v1 = export(&mut admin, &spec.name, 1).await;

    let backup = h.dir.path().join("backup");
    let tool = |command: &str, dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
            .args(["coordinator", command, "--database-url"])
            .arg(&h.storage.database_url)
            .arg("--blob-dir")
            .arg(&h.storage.blob_dir)
            .arg("--out")
            .arg(dir)
            .output()
            .unwrap()
    };
    let made = tool("backup", &backup);
    assert!(made.status.success(), "{made:?}");
    let refused = tool("restore", &backup);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("database lease"),
        "{refused:?}"
    );

    // A second round, whose heads every facility checks and countersigns.
    let second = run_round(&mut admin, &spec.name).await;
    assert_eq!(second.state(), pb::RoundState::Committed, "{second:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for config in &configs {
        while !privacy_log(config)
            .iter()
            .any(|l| matches!(&l.record, Record::Proof { round_id, .. } if *round_id == second.id))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no proof of round 2"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    coordinator.kill().await.unwrap();
    let restored = tool("restore", &backup);
    assert!(restored.status.success(), "{restored:?}");
    let mut coordinator = spawn_coordinator(&h, &config);
    let mut admin = admin_when_up(&h).await;
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert_eq!(rounds.len(), 1, "{rounds:?}");
    assert_eq!(export(&mut admin, &spec.name, 1).await, v1);

    let ledger = h.export_ledger("ledger.jsonl").await;
    let pem = std::fs::read_to_string(&h.storage.ledger_key).unwrap();
    let key =
        <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem)
            .unwrap();
    let (report, ok) = verify_report(&VerifyArgs {
        ledger: ledger.clone(),
        head: None,
        ledger_key: Some(hex::encode(key.verifying_key().as_bytes())),
        receipts: None,
        model_card: None,
    })
    .unwrap();
    assert!(ok, "{report}");
    for config in &configs {
        let (report, ok) = audit_facility(&ledger, config);
        // The ledger is shorter than the head the facility countersigned, and its second
        // contribution is gone: both named.
        assert!(!ok, "{report}");
        assert!(report.contains("the previous head has"), "{report}");
        assert!(
            report.contains("round 2") && report.contains("is not in the ledger"),
            "{report}"
        );
    }
    h.stop_agents().await;
    coordinator.kill().await.unwrap();
}

/// The same on PostgreSQL with the model blobs in the database: `pg_dump` while serving,
/// `pg_restore` with the coordinator stopped, and the history up to the backup is back,
/// models included, without a blob directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_restores() {
    let db = PgDatabase::create().await;
    let mut h = Harness::prepare(Some(db.url.clone()));
    h.storage.blobs_in_database = true;
    h.start_coordinator().await;
    let facilities = h.facilities(Some(2));
    for f in &facilities {
        h.spawn_agent(f);
    }
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 2, 60));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;
    assert_eq!(
        run_round(&mut admin, &spec.name).await.state(),
        pb::RoundState::Committed
    );
    let v1 = export(&mut admin, &spec.name, 1).await;
    let backup = h.dir.path().join("pg-backup");
    let tool = |command: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
            .args([
                "coordinator",
                command,
                "--database-url",
                &db.url,
                "--blobs-in-database",
            ])
            .arg("--out")
            .arg(&backup)
            .output()
            .unwrap()
    };
    let made = tool("backup");
    assert!(made.status.success(), "{made:?}");
    assert_eq!(
        run_round(&mut admin, &spec.name).await.state(),
        pb::RoundState::Committed
    );
    h.stop_agents().await;
    h.stop_coordinator().await;
    let restored = tool("restore");
    assert!(restored.status.success(), "{restored:?}");
    h.start_coordinator().await;
    let mut admin = h.admin().await;
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert_eq!(rounds.len(), 1, "{rounds:?}");
    assert_eq!(export(&mut admin, &spec.name, 1).await, v1);
    let said = String::from_utf8_lossy(&restored.stdout);
    assert!(said.contains("model blob(s)"), "{said}");
    let blob_files = walkdir(&h.storage.blob_dir);
    assert!(blob_files.is_empty(), "blob files written: {blob_files:?}");
    h.stop_coordinator().await;
    db.drop_now().await;
}

/// Every file under `dir` (none when it does not exist).
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walkdir(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}
