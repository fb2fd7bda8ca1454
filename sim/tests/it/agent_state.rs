//! Faults at one facility stay there and are said out loud: an agent's state directory has
//! one owner (a second agent process for the same facility refuses to start: it would fork
//! the privacy log and fight the first for the task stream); a clone with its own state
//! directory (a cloned machine) is refused by the coordinator while the first lives; a last log line torn by a crash
//! or a full disk is repaired at start-up instead of stopping the agent or raising a false
//! alarm; and a facility that cannot read its data declines the round at once instead of
//! leaving it to wait out its training deadline.

use harambee_sim::harness as common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use harambee_privacy::log::{LOG_FILE, parse_log};
use harambee_proto::pb;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_for_the_same_state_refuses_to_start_and_the_first_goes_on() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    h.spawn_agent(&facilities[0]);
    let mut admin = h.admin().await;
    wait_connected(&mut admin, &[facilities[0].name.as_str()]).await;

    // The same configuration, as a second process: refused at once, with the reason.
    let path = facilities[0].dir.join("second.toml");
    let text = std::fs::read_dir(facilities[0].dir.as_path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .expect("the agent's configuration file");
    std::fs::write(&path, text).unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
            .args(["agent", "run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the second agent exits instead of running")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another agent is running with this state directory")
            && stderr.contains(&format!("locked by process {}", std::process::id())),
        "{stderr}"
    );
    // The first agent still has its stream and takes part in a round.
    let spec = plain(spec(&facilities, 1, 60));
    create_federation(&mut admin, &spec).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    h.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_in_the_logs_is_repaired_and_the_agent_goes_on() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let config = h.spawn_agent(&facilities[0]);
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 1, 60));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &[facilities[0].name.as_str()]).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    h.stop_agents().await;

    // A crash (or a full disk) in the middle of writing a line of each log.
    let log = config.state_dir.join(LOG_FILE);
    let egress = config.state_dir.join("egress.jsonl");
    let whole = std::fs::read_to_string(&log).unwrap();
    let n_lines = whole.lines().count();
    let torn = |path: &std::path::Path, tail: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(tail.as_bytes()).unwrap();
    };
    torn(&log, "{\"seq\":99,\"unix_ms\":1,\"rec");
    torn(&egress, "{\"unix_ms\":1,\"kind\":\"upd");

    // The agent starts, says what it removed, and the next round goes through.
    let config = h.spawn_agent(&facilities[0]);
    wait_connected(&mut admin, &[facilities[0].name.as_str()]).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    h.stop_agents().await;
    let text = std::fs::read_to_string(config.state_dir.join(LOG_FILE)).unwrap();
    let lines = parse_log(&text).expect("the repaired log's chain verifies");
    assert!(
        lines.len() > n_lines,
        "the next round was logged after the repair"
    );
    assert!(
        text.starts_with(&whole),
        "nothing before the torn line changed"
    );
    for line in std::fs::read_to_string(&egress).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every egress line is whole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_facility_whose_data_cannot_be_read_declines_at_once() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    for f in &facilities {
        h.spawn_agent(f);
    }
    let mut admin = h.admin().await;
    // A training deadline no test waits out: the round can only end early if the broken
    // facility says it cannot train.
    let spec = plain(spec(&facilities, 2, 3600));
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;
    let csv = facilities[1].dir.join("data.csv");
    std::fs::rename(&csv, csv.with_extension("moved")).unwrap();

    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Failed, "{round:?}");
    let broken = round
        .participants
        .iter()
        .find(|p| p.facility == facilities[1].name)
        .unwrap();
    assert_eq!(
        broken.status(),
        pb::ParticipantStatus::Dropped,
        "{broken:?}"
    );
    assert_eq!(
        broken.detail,
        "declined: this facility's data could not be read (details in the facility's log)"
    );
    // Nothing about the file (its path, a row) reached the coordinator.
    assert!(!round.failure_reason.contains("data.csv"), "{round:?}");
    h.stop_agents().await;
}

/// A cloned machine: a second agent process with the facility's identity and a state
/// directory of its own. While the first heartbeats the coordinator refuses the clone's
/// stream, so nothing flaps: a secure round commits with the first at once and the clone
/// sends nothing. When the first stops, the clone takes over within the liveness timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_agent_is_refused_while_the_first_lives_and_takes_over_after() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(3));
    let first = h.spawn_agent(&facilities[0]);
    for f in &facilities[1..] {
        h.spawn_agent(f);
    }
    let mut admin = h.admin().await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;

    let mut clone_config = first.clone();
    clone_config.state_dir = h.dir.path().join("clone-state");
    let (stop_clone, stopped) = tokio::sync::oneshot::channel::<()>();
    let clone = tokio::spawn(harambee_agent::runtime::run(clone_config.clone(), async {
        let _ = stopped.await;
    }));
    // Long enough for the clone to try (and, before, to replace the stream) many times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spec = spec(&facilities, 3, 60);
    create_federation(&mut admin, &spec).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    let receipts = |dir: &std::path::Path| -> Vec<u64> {
        parse_log(&std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default())
            .unwrap()
            .into_iter()
            .filter_map(|l| match l.record {
                harambee_privacy::log::Record::Receipt { receipt, .. } => {
                    Some(receipt.receipt.round_id)
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(receipts(&first.state_dir), vec![round.id]);
    assert_eq!(receipts(&clone_config.state_dir), Vec::<u64>::new());

    // The first stops: the clone is the facility's agent now.
    h.stop_agent(0).await;
    let again = run_round(&mut admin, &spec.name).await;
    assert_eq!(again.state(), pb::RoundState::Committed, "{again:?}");
    assert_eq!(receipts(&clone_config.state_dir), vec![again.id]);
    assert_eq!(receipts(&first.state_dir), vec![round.id]);
    let _ = stop_clone.send(());
    let _ = clone.await;
    h.stop_agents().await;
}
