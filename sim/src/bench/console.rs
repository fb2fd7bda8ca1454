//! `harambee-sim bench console`: how long the web console takes to render each page, and
//! how heavy the pages are, with many facilities and rounds.
//!
//! The pages are rendered from the answers the coordinator's RPCs give (built here: N
//! facilities, each in every round with its metrics), and the ledger page from a ledger of
//! every round's start, dropouts and commit, checked against its pinned key as the console
//! checks it (the whole check, and the page from the check the console keeps while the
//! signed head is the same). What is measured is the console's own work per request (the
//! gRPC and database time of `ListRounds` and friends is not in it, nor receipts: the
//! synthetic ledger holds none). Printed: median and worst milliseconds per page over the
//! repetitions, and the page's size in kB.

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Args;
use harambee_coordinator::console::ledger::{self, Snapshot};
use harambee_coordinator::console::pages::{self, Ctx, LedgerFilter, Role};
use harambee_privacy::ledger::export::{HeadFile, KeyPin};
use harambee_privacy::ledger::{Ledger, LedgerEvent, Sha256Digest, key_fingerprint, to_jsonl};
use harambee_proto::pb;
use serde_json::json;

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    #[arg(long, default_value_t = 100)]
    pub facilities: usize,
    #[arg(long, default_value_t = 1000)]
    pub rounds: u32,
    /// Renders of each page.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

fn facility_name(i: usize) -> String {
    format!("facility-{i:03}")
}

/// Every round of one federation: all facilities take part, with metrics that drift.
fn rounds(n_facilities: usize, n_rounds: u32) -> Vec<pb::Round> {
    (1..=n_rounds)
        .map(|number| {
            let participants = (0..n_facilities)
                .map(|i| {
                    let v = 0.6 + 0.3 * ((number as f64 + i as f64) * 0.37).sin().abs();
                    pb::Participant {
                        facility: facility_name(i),
                        status: pb::ParticipantStatus::Uploaded as i32,
                        n_samples: 500,
                        update_sha256: "ab".repeat(32),
                        detail: String::new(),
                        metrics: Some(pb::Metrics {
                            n_samples: 100,
                            loss: 0.5,
                            accuracy: v,
                            auc: v,
                            n_positives: 30,
                            sensitivity: v - 0.1,
                            specificity: v + 0.05,
                            ece: 0.05,
                        }),
                    }
                })
                .collect();
            let model = |version: u32| pb::ModelRef {
                digest: format!("{version:064x}"),
                size_bytes: 4 * 14,
                version,
            };
            pb::Round {
                id: u64::from(number),
                federation: "heart".into(),
                number,
                state: pb::RoundState::Committed as i32,
                base: Some(model(number - 1)),
                result: Some(model(number)),
                participants,
                created_unix_ms: 1_796_000_000_000 + i64::from(number) * 60_000,
                updated_unix_ms: 1_796_000_000_000 + i64::from(number) * 60_000 + 20_000,
                // Every stage of a secure round, 2 s apart.
                stages: [
                    pb::RoundState::Created,
                    pb::RoundState::Selecting,
                    pb::RoundState::Training,
                    pb::RoundState::AdvertiseKeys,
                    pb::RoundState::ShareKeys,
                    pb::RoundState::MaskedInput,
                    pb::RoundState::Unmasking,
                    pb::RoundState::Evaluating,
                    pb::RoundState::Committed,
                ]
                .into_iter()
                .zip(0..)
                .map(|(state, i)| pb::RoundStage {
                    state: state as i32,
                    started_unix_ms: 1_796_000_000_000 + i64::from(number) * 60_000 + i * 2_500,
                })
                .collect(),
                ..Default::default()
            }
        })
        .collect()
}

/// A signed ledger: enrolments, then each round's start, one dropout and its commit.
fn ledger_snapshot(n_facilities: usize, n_rounds: u32) -> (Snapshot, KeyPin) {
    let key = harambee_secagg::ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mut ledger = Ledger::new();
    let mut t = 1_796_000_000_000u64;
    for i in 0..n_facilities {
        ledger
            .append(
                t,
                LedgerEvent::FacilityEnrolled {
                    facility: facility_name(i),
                    receipt_key: None,
                },
            )
            .expect("appends");
    }
    for round in 1..=u64::from(n_rounds) {
        t += 60_000;
        let selected: Vec<String> = (0..n_facilities).map(facility_name).collect();
        let events = [
            LedgerEvent::RoundStarted {
                federation: "heart".into(),
                round_id: round,
                selected,
                eligible: n_facilities as u64,
            },
            LedgerEvent::Dropout {
                federation: "heart".into(),
                round_id: round,
                facility: facility_name(round as usize % n_facilities.max(1)),
                stage: "training".into(),
            },
            LedgerEvent::RoundCommitted {
                federation: "heart".into(),
                round_id: round,
                model_version: round,
                model_sha256: Sha256Digest::of(&round.to_le_bytes()),
            },
        ];
        for event in events {
            ledger.append(t, event).expect("appends");
        }
    }
    let head = HeadFile {
        signed_tree_head: ledger.sign_head(t, &key),
        ledger_key: hex::encode(key.verifying_key().as_bytes()),
        cosignatures: Vec::new(),
    };
    let text = to_jsonl(ledger.lines()).expect("encodes");
    let pin = KeyPin::parse(&key_fingerprint(&key.verifying_key())).expect("a fingerprint");
    (
        Snapshot {
            text,
            head,
            receipts: Vec::new(),
        },
        pin,
    )
}

/// Median and worst milliseconds of `render`, and the size of what it returns.
fn measure(repeat: usize, mut render: impl FnMut() -> String) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(repeat);
    let mut bytes = 0;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let page = render();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        bytes = page.len();
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() - 1], bytes)
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let n = args.facilities;
    let round_list = rounds(n, args.rounds);
    let by_federation: BTreeMap<String, Vec<pb::Round>> =
        [("heart".to_owned(), round_list.clone())].into();
    let federation = pb::Federation {
        config: Some(pb::FederationConfig {
            name: "heart".into(),
            min_agents: 2,
            ..Default::default()
        }),
        latest: round_list.last().and_then(|r| r.result.clone()),
        created_unix_ms: 1_796_000_000_000,
    };
    let agents: Vec<pb::Agent> = (0..n)
        .map(|i| pb::Agent {
            facility: facility_name(i),
            connected: i % 10 != 0,
            last_seen_unix_ms: 1_796_000_000_000,
            cert_sha256: "cd".repeat(32),
            epsilon_spent: Some(i as f64 * 0.05),
            max_epsilon: Some(8.0),
            delta: Some(1e-5),
            agent_version: "0.1.0".into(),
            cert_not_after_unix_ms: 1_800_000_000_000,
        })
        .collect();
    let facilities: Vec<pb::Facility> = (0..n)
        .map(|i| pb::Facility {
            name: facility_name(i),
            status: "enrolled".into(),
            enrolled_unix_ms: 1_796_000_000_000,
            cert_not_after_unix_ms: 1_800_000_000_000,
            connected: i % 10 != 0,
            ..Default::default()
        })
        .collect();
    let (snapshot, pin) = ledger_snapshot(n, args.rounds);
    let csrf = "0".repeat(64);
    let operator = Ctx {
        role: Role::Operator,
        acting_as: "operator admin",
        csrf: &csrf,
        now_ms: 1_796_100_000_000,
    };
    let auditor = Ctx {
        role: Role::Auditor,
        acting_as: "auditor moh-audit",
        csrf: &csrf,
        now_ms: 1_796_100_000_000,
    };
    let repeat = args.repeat;
    let mut figures = Vec::new();
    figures.push((
        "overview",
        measure(repeat, || {
            pages::overview(
                &operator,
                std::slice::from_ref(&federation),
                &by_federation,
                &agents,
                &facilities,
            )
        }),
    ));
    figures.push((
        "federation",
        measure(repeat, || {
            pages::federation(&operator, &federation, &round_list)
        }),
    ));
    figures.push((
        "facilities",
        measure(repeat, || {
            pages::facilities(
                &operator,
                &pages::facility_rows(&facilities, &agents, &[]),
                None,
            )
        }),
    ));
    figures.push((
        "ledger (parse, verify, render)",
        measure(repeat, || {
            let checked = ledger::check(&snapshot, Some(&pin));
            assert_eq!(checked.verdict, ledger::Verdict::Verifies);
            pages::ledger_page(&auditor, &checked, &LedgerFilter::default(), None)
        }),
    ));
    let checked = ledger::check(&snapshot, Some(&pin));
    figures.push((
        "ledger (check cached)",
        measure(repeat, || {
            pages::ledger_page(&auditor, &checked, &LedgerFilter::default(), None)
        }),
    ));
    figures.push((
        "metrics.csv",
        measure(repeat, || pages::metrics_csv(&by_federation)),
    ));
    let entries = snapshot.text.lines().count();
    if args.json {
        let pages: Vec<_> = figures
            .iter()
            .map(|(name, (median, worst, bytes))| {
                json!({"page": name, "median_ms": median, "worst_ms": worst, "bytes": bytes})
            })
            .collect();
        println!(
            "{}",
            json!({"facilities": n, "rounds": args.rounds, "ledger_entries": entries, "pages": pages})
        );
        return Ok(());
    }
    println!(
        "{n} facilities, {} rounds, {entries} ledger entries; {repeat} renders each",
        args.rounds
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10}",
        "page", "median ms", "worst ms", "kB"
    );
    for (name, (median, worst, bytes)) in figures {
        println!(
            "{name:<32} {median:>10.1} {worst:>10.1} {:>10.1}",
            bytes as f64 / 1000.0
        );
    }
    Ok(())
}
