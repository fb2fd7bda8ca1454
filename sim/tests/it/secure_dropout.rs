//! Secure aggregation survives facilities dying mid-protocol: agents run as real processes
//! over mTLS; one crashes when asked for its masked input, another when asked to help
//! unmask. The round commits the sum of the survivors and its record names the dropouts.

use harambee_sim::harness as common;

use std::process::Stdio;

use common::*;
use harambee_agent::config::AgentConfig;
use harambee_proto::pb;
use harambee_sim::demo;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_survives_crashes_during_masked_input_and_unmasking() {
    let h = Harness::start(None).await;
    let facilities = h.facilities(Some(6));
    let crash = |name: &str| match name {
        "cleveland-1" => Some("masked-input"),
        "hungary-1" => Some("unmasking"),
        _ => None,
    };
    let mut children = Vec::new();
    let mut configs = Vec::new();
    for f in &facilities {
        let path = demo::write_agent_config(f, &h.endpoint(), &h.pki, OPEN_POLICY).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[egress]\nkeep_payloads = true\n");
        if let Some(stage) = crash(&f.name) {
            text.push_str(&format!("\n[testing]\ncrash_at = \"{stage}\"\n"));
        }
        std::fs::write(&path, text).unwrap();
        configs.push((f.name.clone(), AgentConfig::load(&path).unwrap()));
        let log = std::fs::File::create(f.dir.join("agent.log")).unwrap();
        children.push(
            Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
                .args(["agent", "run", "--config"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let mut admin = h.admin().await;
    let mut spec = spec(&facilities, 3, 60);
    spec.secure_aggregation.stage_s = 30;
    // The semi-honest variant: with the consistency check, a crash while signing the
    // survivor set leaves fewer signatures than the check's quorum.
    spec.secure_aggregation.consistency_check = false;
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;

    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:#?}");
    let status = |name: &str| {
        round
            .participants
            .iter()
            .find(|p| p.facility == name)
            .unwrap()
    };
    let masked_crash = status("cleveland-1");
    assert_eq!(
        masked_crash.status(),
        pb::ParticipantStatus::Dropped,
        "{masked_crash:?}"
    );
    assert!(
        masked_crash.detail.contains("masked input"),
        "{}",
        masked_crash.detail
    );
    // Its masked input was in before it crashed: its update is in the sum; it reports no metrics.
    let unmask_crash = status("hungary-1");
    assert_eq!(
        unmask_crash.status(),
        pb::ParticipantStatus::Uploaded,
        "{unmask_crash:?}"
    );
    assert!(unmask_crash.metrics.is_none());
    let survivors: Vec<&str> = round
        .participants
        .iter()
        .filter(|p| p.status() == pb::ParticipantStatus::Uploaded)
        .map(|p| p.facility.as_str())
        .collect();
    assert_eq!(survivors.len(), 5);

    // The committed model is the weighted mean over exactly the survivors.
    let base = export(&mut admin, &spec.name, 0).await;
    let committed = export(&mut admin, &spec.name, 1).await;
    let clip = spec.secure_aggregation.clip;
    let held: Vec<(u64, Vec<f32>)> = configs
        .iter()
        .filter(|(n, _)| survivors.contains(&n.as_str()))
        .map(|(_, c)| unmasked_of(c, round.id).unwrap())
        .collect();
    let total: u64 = held.iter().map(|(n, _)| n).sum();
    for i in 0..base.len() {
        let sum: f64 = held
            .iter()
            .map(|(n, u)| *n as f64 * u[i].clamp(-clip, clip) as f64)
            .sum();
        let want = base[i] as f64 + sum / total as f64;
        assert!(
            (committed[i] as f64 - want).abs() < 1e-3,
            "param {i}: committed {}, expected {want}",
            committed[i]
        );
    }
    for mut child in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
