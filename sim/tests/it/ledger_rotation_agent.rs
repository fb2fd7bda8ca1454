//! Agents follow a rotation of the coordinator's ledger key, over real mTLS with real agents:
//! an agent that pinned the old key contributes, the operator rotates the key (coordinator
//! stopped, `ledger rotate-key`, restarted with the new key), and the agent's next
//! contribution is proven under the new key, checked through the ledgered rotation, recorded
//! in its privacy log (which a restart reads back) and countersigned.

use harambee_sim::harness as common;

use std::time::Duration;

use common::*;
use harambee_agent::config::AgentConfig;
use harambee_agent::privacy::PrivacyLog;
use harambee_coordinator::store::ledger_view;
use harambee_link::identity::Role;
use harambee_privacy::ledger::export::{HeadFile, head_path_for};
use harambee_privacy::ledger::{LedgerEvent, key_fingerprint};
use harambee_privacy::log::{LOG_FILE, LogLine, Record, parse_log};
use harambee_proto::pb;

fn privacy_log(config: &AgentConfig) -> Vec<LogLine> {
    parse_log(&std::fs::read_to_string(config.state_dir.join(LOG_FILE)).unwrap_or_default())
        .unwrap()
}

/// Waits until each agent has logged `n` ledger proofs (or any alarm, which fails the test).
async fn wait_for_proofs(configs: &[AgentConfig], n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs: Vec<Vec<LogLine>> = configs.iter().map(privacy_log).collect();
        for log in &logs {
            let alarms: Vec<&Record> = log
                .iter()
                .map(|l| &l.record)
                .filter(|r| matches!(r, Record::Alarm { .. }))
                .collect();
            assert!(alarms.is_empty(), "the agent raised an alarm: {alarms:?}");
        }
        let done = logs.iter().all(|log| {
            log.iter()
                .filter(|l| matches!(l.record, Record::Proof { .. }))
                .count()
                >= n
        });
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents did not receive their ledger proofs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ledger key (hex) of the last head the facility countersigned.
fn pinned_key(config: &AgentConfig) -> String {
    privacy_log(config)
        .iter()
        .rev()
        .find_map(|l| match &l.record {
            Record::Head { ledger_key, .. } => Some(ledger_key.clone()),
            _ => None,
        })
        .expect("a countersigned head")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_a_ledgered_key_rotation_and_countersign_under_the_new_key() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let configs: Vec<AgentConfig> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let spec = spec(&facilities, 2, 60);
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;
    let first = run_round(&mut admin, &spec.name).await;
    assert_eq!(first.state(), pb::RoundState::Committed, "{first:?}");
    wait_for_proofs(&configs, 1).await;
    let old_key = ledger_view::read_key(&h.storage.ledger_key)
        .unwrap()
        .unwrap()
        .verifying_key();
    for config in &configs {
        assert_eq!(pinned_key(config), hex::encode(old_key.as_bytes()));
    }

    // The operator rotates the key: coordinator stopped, rotated, restarted with the new key.
    h.stop_coordinator().await;
    let old_path = h.storage.ledger_key.clone();
    let new_path = h.dir.path().join("ledger-2.key");
    let rotated =
        harambee_coordinator::cli::rotate_ledger_key(&h.storage.database_url, &old_path, &new_path)
            .await
            .unwrap();
    let new_key = ledger_view::read_key(&new_path)
        .unwrap()
        .unwrap()
        .verifying_key();
    h.storage.ledger_key = new_path;
    h.start_coordinator().await;
    let mut admin = h.admin().await;
    wait_connected(&mut admin, &names).await;
    let second = run_round(&mut admin, &spec.name).await;
    assert_eq!(second.state(), pb::RoundState::Committed, "{second:?}");
    wait_for_proofs(&configs, 2).await;

    for config in &configs {
        // The rotation is in the log, from the old key to the new one, with the entry the
        // operator's command appended.
        let log = privacy_log(config);
        let rotations: Vec<&Record> = log
            .iter()
            .map(|l| &l.record)
            .filter(|r| matches!(r, Record::KeyRotation { .. }))
            .collect();
        assert_eq!(rotations.len(), 1, "{rotations:?}");
        let Record::KeyRotation {
            old_key: from,
            new_key: to,
            rotations: entries,
            ..
        } = rotations[0]
        else {
            unreachable!()
        };
        assert_eq!(*from, hex::encode(old_key.as_bytes()));
        assert_eq!(*to, hex::encode(new_key.as_bytes()));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].index, rotated.index);
        assert!(matches!(
            entries[0].event,
            LedgerEvent::LedgerKeyRotated { .. }
        ));
        // The new key is pinned, and stays pinned when the log is read again (a restart).
        assert_eq!(pinned_key(config), hex::encode(new_key.as_bytes()));
        let reopened = PrivacyLog::open(&config.state_dir.join(LOG_FILE)).unwrap();
        let (head, pinned) = reopened.last_head().unwrap();
        assert_eq!(pinned, new_key);
        assert!(head.head.tree_size > rotated.index);
        assert_eq!(
            key_fingerprint(&pinned),
            rotated.new_fingerprint,
            "the pin is the operator's new key"
        );
    }

    // The coordinator holds each facility's countersignature of a head after the rotation.
    let out = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &out)
        .await
        .unwrap();
    let heads: HeadFile =
        serde_json::from_str(&std::fs::read_to_string(head_path_for(&out)).unwrap()).unwrap();
    for f in &facilities {
        assert!(
            heads
                .cosignatures
                .iter()
                .any(|c| c.cosignature.facility == f.name && c.head.tree_size > rotated.index),
            "no countersignature of {} under the new key",
            f.name
        );
    }
    h.stop_agents().await;
}
