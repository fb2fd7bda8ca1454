//! Differential privacy and the privacy ledger end to end, over real mTLS with real agents:
//! DP-SGD federations whose every contribution is in the ledger with its agent-signed
//! receipt; an auditor's export that verifies offline and agrees with each facility's
//! privacy log; tampering in the database (a flipped byte, a deleted entry, two entries
//! swapped) and a forked history caught and named; budgets that stop selection; policies
//! that make an agent decline; facility-level noise, distributed and central.

use harambee_sim::harness as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use harambee_agent::audit::{VerifyArgs, verify_report};
use harambee_agent::config::AgentConfig;
use harambee_coordinator::federation::{DpSgdSpec, FederationSpec, Mechanism};
use harambee_link::identity::Role;
use harambee_privacy::ledger::export::{HeadFile, head_path_for};
use harambee_privacy::ledger::{Ledger, LedgerEvent, parse_jsonl};
use harambee_privacy::log::{LOG_FILE, Record, parse_log};
use harambee_proto::pb;
use harambee_sim::demo::Facility;
use sea_orm::ConnectionTrait;

fn dp_spec(facilities: &[Facility], min_agents: u32) -> FederationSpec {
    let mut spec = spec(facilities, min_agents, 60);
    spec.privacy.dp_sgd = Some(DpSgdSpec {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        sampling_rate: 0.2,
    });
    spec
}

/// Exports the ledger as an auditor into `dir/name`.
async fn export_ledger(h: &Harness, name: &str) -> PathBuf {
    let out = h.dir.path().join(name);
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &out)
        .await
        .unwrap();
    out
}

/// `audit verify` of an export, with the facility's log and the ledger key (or its
/// fingerprint) an auditor pinned out of band, if given.
fn verify_with(
    ledger: &Path,
    receipts: Option<&AgentConfig>,
    ledger_key: Option<&str>,
) -> (String, bool) {
    let args = VerifyArgs {
        ledger: ledger.to_owned(),
        head: None,
        ledger_key: ledger_key.map(str::to_owned),
        receipts: receipts.map(|c| c.state_dir.join(LOG_FILE)),
        model_card: None,
    };
    verify_report(&args).unwrap()
}

/// `audit verify` with the facility's log, or without a pinned key at all.
fn verify(ledger: &Path, receipts: Option<&AgentConfig>) -> (String, bool) {
    verify_with(ledger, receipts, None)
}

/// The coordinator's ledger key, as an operator would hand it to auditors out of band.
fn ledger_signing_key(h: &Harness) -> ed25519_dalek::SigningKey {
    let pem = std::fs::read_to_string(&h.storage.ledger_key).unwrap();
    <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&pem)
        .unwrap()
}

fn ledger_key_hex(h: &Harness) -> String {
    hex::encode(ledger_signing_key(h).verifying_key().as_bytes())
}

fn privacy_log(config: &AgentConfig) -> Vec<harambee_privacy::log::LogLine> {
    parse_log(&std::fs::read_to_string(config.state_dir.join(LOG_FILE)).unwrap_or_default())
        .unwrap()
}

/// Waits until each agent has checked the ledger proof of `n` contributions.
async fn wait_for_proofs(configs: &[AgentConfig], n: usize) {
    // Generous: under a loaded machine (parallel tests) heartbeats carrying the proofs slow down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let done = configs.iter().all(|c| {
            privacy_log(c)
                .iter()
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

async fn dp_federation_is_ledgered_and_verifies(database_url: Option<String>) {
    let mut h = Harness::start(database_url).await;
    let facilities = h.facilities(Some(3));
    let configs: Vec<_> = facilities
        .iter()
        .map(|f| h.spawn_agent_with(f, "\n[policy]\nmax_epsilon = 100.0\n"))
        .collect();
    let mut admin = h.admin().await;
    let spec = dp_spec(&facilities, 3);
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;
    for _ in 0..2 {
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    }
    wait_for_proofs(&configs, 2).await;

    let ledger = export_ledger(&h, "ledger.jsonl").await;
    let lines = parse_jsonl(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    // The federation with its privacy parameters, two rounds started and committed, three
    // contributions per round with the DP-SGD parameters and a growing ε per facility.
    let created = lines.iter().find_map(|l| match &l.event {
        LedgerEvent::FederationCreated { name, privacy } if *name == spec.name => {
            Some(privacy.clone())
        }
        _ => None,
    });
    assert_eq!(created.unwrap()["dp_sgd"]["noise_multiplier"], 1.0);
    let count =
        |pred: &dyn Fn(&LedgerEvent) -> bool| lines.iter().filter(|l| pred(&l.event)).count();
    assert_eq!(
        count(&|e| matches!(e, LedgerEvent::RoundStarted { selected, .. } if selected.len() == 3)),
        2
    );
    assert_eq!(
        count(&|e| matches!(e, LedgerEvent::RoundCommitted { .. })),
        2
    );
    assert!(
        count(
            &|e| matches!(e, LedgerEvent::AdminAction { action, .. } if action == "round_started")
        ) >= 2,
        "{lines:?}"
    );
    for f in &facilities {
        let eps: Vec<f64> = lines
            .iter()
            .filter_map(|l| match &l.event {
                LedgerEvent::Contribution(c) if c.facility == f.name => {
                    assert_eq!((c.clipping_norm, c.noise_multiplier), (1.0, 1.0));
                    // The signed receipt says how the update left and under which terms:
                    // masked, under the SecAgg+ parameters the agent checked, with the
                    // DP-SGD steps an auditor needs to recompute ε.
                    let r = &c.receipt.receipt;
                    assert_eq!(
                        r.aggregation,
                        Some(harambee_privacy::ledger::Aggregation::Secure)
                    );
                    assert!(r.secagg_params.is_some(), "{r:?}");
                    assert_eq!(
                        r.dp_sgd,
                        Some(harambee_privacy::policy::DpSteps {
                            noise_multiplier: 1.0,
                            sampling_rate: 0.2,
                            steps: harambee_models::dp::dp_steps(2, 0.2),
                        })
                    );
                    Some(c.epsilon_spent)
                }
                _ => None,
            })
            .collect();
        assert_eq!(eps.len(), 2, "{}: {eps:?}", f.name);
        let one_round = harambee_privacy::accountant::epsilon(
            1.0,
            0.2,
            harambee_models::dp::dp_steps(2, 0.2),
            1e-5,
        )
        .unwrap()
        .epsilon;
        assert!(
            (eps[0] - one_round).abs() < 1e-9,
            "{} after one round: {} vs {one_round}",
            f.name,
            eps[0]
        );
        assert!(eps[1] > eps[0], "{eps:?}");
    }

    // The whole ledger verifies, and agrees with every facility's own log.
    let (report, ok) = verify_with(&ledger, None, Some(&ledger_key_hex(&h)));
    assert!(ok, "{report}");
    // Every facility's key is in the ledger, so every receipt's signature was checked.
    assert!(
        report.contains("receipts: 6 verified, 0 without a known facility key"),
        "{report}"
    );
    for config in &configs {
        let (report, ok) = verify(&ledger, Some(config));
        assert!(ok, "{report}");
        assert!(
            report.contains("2 receipt(s) found in the ledger"),
            "{report}"
        );
        assert!(
            report.contains("pinned in the facility's privacy log"),
            "{report}"
        );
    }
    // Every agent countersigned the heads it checked.
    let head: HeadFile =
        serde_json::from_str(&std::fs::read_to_string(head_path_for(&ledger)).unwrap()).unwrap();
    for f in &facilities {
        assert!(
            head.cosignatures
                .iter()
                .any(|c| c.cosignature.facility == f.name),
            "no countersignature of {}",
            f.name
        );
    }

    // ε per facility is queryable by an auditor.
    let spend =
        harambee_coordinator::cli::audit::privacy_spend(h.channel(Role::Auditor, "auditor").await)
            .await
            .unwrap();
    assert_eq!(spend.len(), 3, "{spend:?}");
    for s in &spend {
        assert_eq!(s.contributions, 2);
        assert_eq!(s.max_epsilon, Some(100.0));
        assert!(s.epsilon_spent > 0.0);
    }
    h.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_dp_federation_is_ledgered_and_verifies_on_sqlite() {
    dp_federation_is_ledgered_and_verifies(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_dp_federation_is_ledgered_and_verifies_on_postgres() {
    let pg = PgDatabase::create().await;
    dp_federation_is_ledgered_and_verifies(Some(pg.url.clone())).await;
    pg.drop_now().await;
}

/// Runs `sql` against the coordinator's database (as someone with database access would).
async fn tamper(h: &Harness, sql: &str) {
    let db = sea_orm::Database::connect(h.storage.database_url.as_str())
        .await
        .unwrap();
    db.execute_unprepared(sql).await.unwrap();
    db.close().await.unwrap();
}

async fn line_of(h: &Harness, idx: u64) -> String {
    let db = sea_orm::Database::connect(h.storage.database_url.as_str())
        .await
        .unwrap();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT line FROM ledger_entries WHERE idx = {idx}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<String>("", "line").unwrap()
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_tampering_and_forks_are_caught_and_named() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 2, 60));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;
    assert_eq!(
        run_round(&mut admin, &spec.name).await.state(),
        pb::RoundState::Committed
    );
    wait_for_proofs(&configs, 1).await;
    let good = export_ledger(&h, "good.jsonl").await;
    let (report, ok) = verify(&good, Some(&configs[0]));
    assert!(ok, "{report}");
    // The command itself: a report and exit code 0.
    let run_verify = |ledger: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
            .args(["agent", "audit", "verify", "--ledger"])
            .arg(ledger)
            .arg("--receipts")
            .arg(configs[0].state_dir.join(LOG_FILE))
            .output()
            .unwrap()
    };
    let output = run_verify(&good);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stdout).ends_with("VERIFIED\n"));
    let n = parse_jsonl(&std::fs::read_to_string(&good).unwrap())
        .unwrap()
        .len() as u64;
    assert!(n >= 6, "{n} entries");

    // One byte flipped in a stored entry.
    let original = line_of(&h, 2).await;
    let flipped = original.replacen("\"timestamp_ms\":1", "\"timestamp_ms\":2", 1);
    assert_ne!(flipped, original);
    tamper(
        &h,
        &format!(
            "UPDATE ledger_entries SET line = {} WHERE idx = 2",
            sql_str(&flipped)
        ),
    )
    .await;
    let flipped_path = export_ledger(&h, "flipped.jsonl").await;
    let (report, ok) = verify(&flipped_path, None);
    assert!(!ok, "{report}");
    assert!(report.contains("entry 2: bad hash"), "{report}");
    let output = run_verify(&flipped_path);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed verification exits 1"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("entry 2: bad hash"));
    // The coordinator itself refuses to start on it.
    h.stop_agents().await;
    h.stop_coordinator().await;
    let err = harambee_coordinator::server::open(&h.storage, test_settings())
        .await
        .err()
        .expect("a tampered ledger must not load");
    assert!(format!("{err:#}").contains("ledger"), "{err:#}");
    assert!(format!("{err:#}").contains('2'), "{err:#}");
    tamper(
        &h,
        &format!(
            "UPDATE ledger_entries SET line = {} WHERE idx = 2",
            sql_str(&original)
        ),
    )
    .await;
    h.start_coordinator().await;

    // One entry deleted.
    let kept = line_of(&h, 3).await;
    let kept_hash = {
        let db = sea_orm::Database::connect(h.storage.database_url.as_str())
            .await
            .unwrap();
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT leaf_hash, timestamp_ms FROM ledger_entries WHERE idx = 3",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get::<String>("", "leaf_hash").unwrap(),
            row.try_get::<i64>("", "timestamp_ms").unwrap(),
        )
    };
    tamper(&h, "DELETE FROM ledger_entries WHERE idx = 3").await;
    let (report, ok) = verify(&export_ledger(&h, "deleted.jsonl").await, None);
    assert!(!ok, "{report}");
    assert!(report.contains("entry 3: missing (deleted)"), "{report}");
    tamper(
        &h,
        &format!(
            "INSERT INTO ledger_entries (idx, timestamp_ms, line, leaf_hash) VALUES (3, {}, {}, {})",
            kept_hash.1,
            sql_str(&kept),
            sql_str(&kept_hash.0)
        ),
    )
    .await;

    // Two entries swapped.
    let (one, two) = (line_of(&h, 1).await, line_of(&h, 2).await);
    tamper(
        &h,
        &format!(
            "UPDATE ledger_entries SET line = {} WHERE idx = 1",
            sql_str(&two)
        ),
    )
    .await;
    tamper(
        &h,
        &format!(
            "UPDATE ledger_entries SET line = {} WHERE idx = 2",
            sql_str(&one)
        ),
    )
    .await;
    let (report, ok) = verify(&export_ledger(&h, "swapped.jsonl").await, None);
    assert!(!ok, "{report}");
    assert!(
        report.contains("entry 2: reordered: found at position 1"),
        "{report}"
    );
    tamper(
        &h,
        &format!(
            "UPDATE ledger_entries SET line = {} WHERE idx = 1",
            sql_str(&one)
        ),
    )
    .await;
    tamper(
        &h,
        &format!(
            "UPDATE ledger_entries SET line = {} WHERE idx = 2",
            sql_str(&two)
        ),
    )
    .await;
    let (report, ok) = verify(
        &export_ledger(&h, "restored.jsonl").await,
        Some(&configs[0]),
    );
    assert!(ok, "{report}");

    // A fork: the same history with one early entry rewritten, rehashed and signed with the
    // coordinator's own key, is consistent in itself, but not with the head a facility
    // countersigned.
    let lines = parse_jsonl(&std::fs::read_to_string(&good).unwrap()).unwrap();
    let rewritten = lines
        .iter()
        .position(|l| matches!(l.event, LedgerEvent::AdminAction { .. }))
        .unwrap();
    let mut forked = Ledger::new();
    for (i, line) in lines.iter().enumerate() {
        let mut event = line.event.clone();
        if let LedgerEvent::AdminAction { detail, .. } = &mut event
            && i == rewritten
        {
            detail.push_str(" (rewritten)");
        }
        forked.append(line.timestamp_ms, event).unwrap();
    }
    let key = ledger_signing_key(&h);
    let fork_path = h.dir.path().join("fork.jsonl");
    std::fs::write(
        &fork_path,
        harambee_privacy::ledger::to_jsonl(forked.lines()).unwrap(),
    )
    .unwrap();
    let mut head: HeadFile =
        serde_json::from_str(&std::fs::read_to_string(head_path_for(&good)).unwrap()).unwrap();
    head.signed_tree_head = forked.sign_head(head.signed_tree_head.head.timestamp_ms, &key);
    head.cosignatures.clear();
    std::fs::write(
        head_path_for(&fork_path),
        serde_json::to_string(&head).unwrap(),
    )
    .unwrap();
    let (report, ok) = verify_with(&fork_path, None, Some(&ledger_key_hex(&h)));
    assert!(
        ok,
        "on its own a rewritten history is well formed: {report}"
    );
    let (report, ok) = verify(&fork_path, Some(&configs[0]));
    assert!(!ok, "{report}");
    assert!(report.contains("fork: the previous head"), "{report}");
    h.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_audit_verify_fails_closed_and_names_a_swapped_ledger_key() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 2, 60));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;
    assert_eq!(
        run_round(&mut admin, &spec.name).await.state(),
        pb::RoundState::Committed
    );
    wait_for_proofs(&configs, 1).await;
    let good = export_ledger(&h, "good.jsonl").await;
    let key = ledger_signing_key(&h);
    let fingerprint = harambee_privacy::ledger::key_fingerprint(&key.verifying_key());

    // Without a key pinned out of band, an intact export is not VERIFIED, and the command
    // exits non-zero.
    let (report, ok) = verify(&good, None);
    assert!(!ok, "{report}");
    assert!(
        report.contains("UNVERIFIED: no ledger key pinned"),
        "{report}"
    );
    assert!(!report.trim_end().ends_with("\nVERIFIED"), "{report}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args(["agent", "audit", "verify", "--ledger"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "an unpinned verification exits 1"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("UNVERIFIED"));
    // Pinned by the key, by its fingerprint, or by the facility's own log: VERIFIED.
    for pin in [ledger_key_hex(&h), fingerprint.clone()] {
        let (report, ok) = verify_with(&good, None, Some(&pin));
        assert!(ok, "{report}");
        assert!(report.trim_end().ends_with("VERIFIED"), "{report}");
    }
    let (report, ok) = verify(&good, Some(&configs[0]));
    assert!(ok, "{report}");
    // With the facility's log, receipts are checked with the facility's own key only, not
    // with the keys the coordinator wrote into its ledger.
    assert!(
        report.contains("receipts: 1 verified, 1 without a known facility key"),
        "{report}"
    );

    // The same entries re-signed with another key, the head file stating that key.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let swapped = h.dir.path().join("swapped.jsonl");
    std::fs::copy(&good, &swapped).unwrap();
    let mut head: HeadFile =
        serde_json::from_str(&std::fs::read_to_string(head_path_for(&good)).unwrap()).unwrap();
    head.signed_tree_head = head.signed_tree_head.head.sign(&other);
    head.ledger_key = hex::encode(other.verifying_key().as_bytes());
    std::fs::write(
        head_path_for(&swapped),
        serde_json::to_string(&head).unwrap(),
    )
    .unwrap();
    for (receipts, pin) in [(Some(&configs[0]), None), (None, Some(ledger_key_hex(&h)))] {
        let (report, ok) = verify_with(&swapped, receipts, pin.as_deref());
        assert!(!ok, "{report}");
        assert!(
            report.contains("it was signed with another key"),
            "{report}"
        );
        assert!(report.contains("VERIFICATION FAILED"), "{report}");
    }
    let (report, ok) = verify_with(&swapped, None, Some(&fingerprint));
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "no ledger key in the export has the pinned fingerprint {fingerprint}"
        )),
        "{report}"
    );
    // Unpinned, the swap goes unnoticed by the signatures: which is why it is not VERIFIED.
    let (report, ok) = verify(&swapped, None);
    assert!(!ok && report.contains("UNVERIFIED"), "{report}");
    h.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_a_facility_at_its_budget_is_not_selected_and_a_policy_refusal_is_immediate() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(3));
    // DP-SGD with 2 epochs at q = 0.2: 10 steps per round. The budget fits one round, not two.
    let steps = harambee_models::dp::dp_steps(2, 0.2);
    let one = harambee_privacy::accountant::epsilon(1.0, 0.2, steps, 1e-5)
        .unwrap()
        .epsilon;
    let two = harambee_privacy::accountant::epsilon(1.0, 0.2, 2 * steps, 1e-5)
        .unwrap()
        .epsilon;
    let budget = (one + two) / 2.0;
    let limited = h.spawn_agent_with(
        &facilities[0],
        &format!("\n[policy]\nmax_epsilon = {budget}\n"),
    );
    h.spawn_agent(&facilities[1]);
    // This one holds too few rows for its own policy: the coordinator cannot know that.
    let refusing = h.spawn_agent_with(&facilities[2], "\n[policy]\nmin_samples = 100000\n");
    let mut admin = h.admin().await;
    // Plain aggregation: one facility may carry a round on its own.
    let spec = plain(dp_spec(&facilities, 1));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2", "group-3"]).await;

    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    let status = |name: &str| {
        round
            .participants
            .iter()
            .find(|p| p.facility == name)
            .map(|p| (p.status(), p.detail.clone()))
    };
    assert_eq!(
        status("group-1").unwrap().0,
        pb::ParticipantStatus::Uploaded
    );
    let (refused, why) = status("group-3").unwrap();
    assert_eq!(refused, pb::ParticipantStatus::Dropped);
    assert!(
        why.contains("declined") && why.contains("min_samples"),
        "{why}"
    );
    let refusals: Vec<_> = privacy_log(&refusing)
        .into_iter()
        .filter(|l| matches!(l.record, Record::Refusal { .. }))
        .collect();
    assert_eq!(refusals.len(), 1);

    // Once group-1 reports what it spent, it is left out: one more round would exceed it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        let spent = agents
            .iter()
            .find(|a| a.facility == "group-1")
            .and_then(|a| a.epsilon_spent)
            .unwrap_or(0.0);
        if (spent - one).abs() < 1e-9 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group-1 never reported ε = {one}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert!(
        round.participants.iter().all(|p| p.facility != "group-1"),
        "{round:?}"
    );
    assert!(round.participants.iter().any(|p| p.facility == "group-2"));
    // Its privacy log holds exactly the one receipt, at the one-round ε.
    let receipts: Vec<_> = privacy_log(&limited)
        .into_iter()
        .filter_map(|l| match l.record {
            Record::Receipt { receipt, .. } => Some(receipt.receipt.epsilon_spent),
            _ => None,
        })
        .collect();
    assert_eq!(receipts, vec![one]);
    h.stop_agents().await;
}

/// The committed model minus the base, minus the mean of the (clipped) updates the agents
/// sent: the noise the mechanism added, divided by the number of contributions.
async fn residual_std(
    admin: &mut harambee_proto::pb::admin_service_client::AdminServiceClient<
        tonic::transport::Channel,
    >,
    spec: &FederationSpec,
    configs: &[AgentConfig],
    secure: bool,
) -> (f64, usize) {
    let round = run_round(admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    let base = export(admin, &spec.name, 0).await;
    let new = export(admin, &spec.name, 1).await;
    let updates: Vec<Vec<f32>> = configs
        .iter()
        .filter_map(|c| {
            if secure {
                unmasked_of(c, round.id).map(|(_, u)| u)
            } else {
                uploads_of(c, round.id).pop().map(|(_, u)| u)
            }
        })
        .collect();
    let n = updates.len();
    for u in &updates {
        let norm = u.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        assert!(
            norm <= spec.privacy.clip_norm * (1.0 + 1e-4),
            "an update of norm {norm} left unclipped"
        );
    }
    let residuals: Vec<f64> = (0..base.len())
        .map(|i| {
            f64::from(new[i])
                - f64::from(base[i])
                - updates.iter().map(|u| f64::from(u[i])).sum::<f64>() / n as f64
        })
        .collect();
    let mean = residuals.iter().sum::<f64>() / residuals.len() as f64;
    let var =
        residuals.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (residuals.len() - 1) as f64;
    (var.sqrt(), n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_distributed_and_central_noise_carry_the_configured_stddev() {
    for (mechanism, secure) in [(Mechanism::Distributed, true), (Mechanism::Central, false)] {
        let mut h = Harness::start(None).await;
        let facilities = h.facilities(Some(3));
        let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
        let mut admin = h.admin().await;
        let mut spec = spec(&facilities, 3, 60);
        spec.secure_aggregation.enabled = secure;
        spec.model = harambee_coordinator::federation::ModelSection {
            kind: harambee_coordinator::federation::KindName::Mlp,
            hidden: vec![16],
            text: None,
        };
        spec.privacy.mechanism = mechanism;
        spec.privacy.clip_norm = 0.5;
        spec.privacy.noise_multiplier = 0.3;
        create_federation(&mut admin, &spec).await;
        wait_connected(&mut admin, &["group-1", "group-2", "group-3"]).await;
        let (std, n) = residual_std(&mut admin, &spec, &configs, secure).await;
        assert_eq!(n, 3);
        // The sum carries noise of std z·C (the distributed shares are calibrated to
        // min_agents = 3 survivors); the mean divides it by n.
        let expected = 0.3 * 0.5 / n as f64;
        assert!(
            (std / expected - 1.0).abs() < 0.25,
            "{mechanism:?}: residual std {std}, expected {expected}"
        );
        // Facility-level ε: one committed round, all 3 eligible facilities selected (q = 1).
        let rounds = admin
            .list_rounds(pb::ListRoundsRequest {
                federation: spec.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rounds;
        let eps = rounds
            .last()
            .unwrap()
            .facility_epsilon
            .expect("a DP federation reports its facility-level ε");
        let want = harambee_privacy::accountant::epsilon(0.3, 1.0, 1, spec.privacy.delta)
            .unwrap()
            .epsilon;
        assert!((eps - want).abs() < 1e-9, "{eps} vs {want}");
        h.stop_agents().await;
    }
}

/// The coordinator host holds the CA, so it can mint a second certificate for an enrolled
/// facility; peers accept that key in secure aggregation only once the ledger records it
/// (`adversary::a_peer_certificate_minted_without_a_ledgered_enrolment_is_refused`), and the
/// ledger keeps it for good. The facility's own audit names the entry, even after the
/// facility's real key was ledgered again on top of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_a_key_minted_for_a_facility_is_named_by_its_audit() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 2, 60));
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;
    assert_eq!(
        run_round(&mut admin, &spec.name).await.state(),
        pb::RoundState::Committed
    );
    wait_for_proofs(&configs, 1).await;
    let (report, ok) = verify(&export_ledger(&h, "before.jsonl").await, Some(&configs[0]));
    assert!(ok, "{report}");

    // A second certificate for group-1 from the same CA, with a new key, used once: the
    // coordinator ledgers the key it has not seen. Then group-1's own key again.
    let minted = h.dir.path().join("minted-pki");
    std::fs::create_dir(&minted).unwrap();
    for entry in std::fs::read_dir(&h.pki).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), minted.join(entry.file_name())).unwrap();
        }
    }
    let (cert, key) = harambee_coordinator::pki::issue(&minted, Role::Agent, "group-1", 1).unwrap();
    let tls =
        harambee_link::tls::ClientTls::from_files(&minted.join("ca.pem"), &cert, &key, "localhost")
            .unwrap();
    let channel = harambee_link::tls::connect(&h.endpoint(), &tls, Duration::from_secs(5))
        .await
        .unwrap();
    let open = pb::OpenTaskStreamRequest::default();
    pb::agent_service_client::AgentServiceClient::new(channel)
        .open_task_stream(open.clone())
        .await
        .unwrap();
    h.raw_agent("group-1")
        .await
        .open_task_stream(open)
        .await
        .unwrap();
    let minted_key = harambee_link::identity::signing_key_from_pem(&std::fs::read(&key).unwrap())
        .unwrap()
        .verifying_key();

    let after = export_ledger(&h, "after.jsonl").await;
    let lines = parse_jsonl(&std::fs::read_to_string(&after).unwrap()).unwrap();
    let index = lines
        .iter()
        .find(|l| matches!(&l.event, LedgerEvent::FacilityEnrolled { facility, receipt_key: Some(k) } if facility == "group-1" && *k == minted_key))
        .expect("the minted key is in the ledger")
        .index;
    let (report, ok) = verify(&after, Some(&configs[0]));
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!(
            "entry {index}: the ledger enrols group-1 under key {}, which this facility never held",
            harambee_privacy::ledger::key_fingerprint(&minted_key)
        )),
        "{report}"
    );
    // The latest key the ledger states for group-1 is its own again: only the history
    // check sees the substitution.
    assert!(
        !report.contains("states another key for group-1"),
        "{report}"
    );
    // The other facility's audit has nothing to say about group-1's keys.
    let (report, ok) = verify(&after, Some(&configs[1]));
    assert!(ok, "{report}");
    h.stop_agents().await;
}
