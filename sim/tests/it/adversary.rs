//! The adversarial-coordinator suite: a coordinator that deviates from the protocol on
//! purpose ([`harambee_sim::harness::rogue`], holding the real server certificate and CA)
//! against real agents over mTLS with their facility's policy. Each test asserts that
//! nothing left the agent that its policy forbids (what the rogue received, the agent's
//! egress log) and that the agent said why (its privacy log, its DeclineTask).

use std::path::Path;

use harambee_coordinator::wire;
use harambee_privacy::log::{LOG_FILE, Record, parse_log};
use harambee_proto::pb::{self, task::Kind};
use harambee_sim::demo::Facility;
use harambee_sim::harness::rogue::{Rogue, Seen};
use harambee_sim::harness::{self, Harness};

/// A facility's own policy, strict where it matters: the demo federation and label only,
/// and the defaults for everything else (secure aggregation required, sums of at least 3,
/// metrics only on cohorts of 20 or more).
const POLICY: &str = "allowed_federations = [\"heart-disease\"]\nallowed_model_kinds = [\"*\"]\nallowed_labels = [\"target\"]\n";

struct Setup {
    h: Harness,
    rogue: Rogue,
    facilities: Vec<Facility>,
    state_dir: std::path::PathBuf,
}

async fn setup(policy: &str) -> Setup {
    let mut h = Harness::prepare(None);
    let facilities = h.facilities(None);
    let rogue = Rogue::start(&h.pki).await;
    let config = h.spawn_agent_at(&facilities[0], &rogue.endpoint(), policy);
    Setup {
        h,
        rogue,
        facilities,
        state_dir: config.state_dir,
    }
}

impl Setup {
    fn facility(&self) -> &str {
        &self.facilities[0].name
    }

    /// A train task of the demo federation (renamed `federation`), `secure` or plain.
    fn train(&self, round_id: u64, federation: &str, secure: bool) -> pb::Task {
        let spec = harness::spec(&self.facilities, 1, 60);
        let n = spec.model_spec().n_params();
        let task = pb::TrainTask {
            round_id,
            federation: federation.to_owned(),
            model: Some(wire::model_spec(&spec, n)),
            base: Some(self.rogue.publish(&vec![0.0; n])),
            config: Some(wire::train_config(&spec)),
            deadline_unix_ms: now_ms() + 60_000,
            secure: secure.then(|| pb::SecureAggregation {
                clip: spec.secure_aggregation.clip,
                max_weight: spec.effective_max_weight(),
                min_survivors: spec.min_agents,
            }),
            privacy: wire::privacy_config(&spec.privacy),
        };
        pb::Task {
            kind: Some(Kind::Train(task)),
        }
    }

    /// An evaluate task of the demo federation (renamed `federation`, label `label`).
    fn evaluate(&self, round_id: u64, federation: &str, label: &str) -> pb::Task {
        let spec = harness::spec(&self.facilities, 1, 60);
        let n = spec.model_spec().n_params();
        let mut model = wire::model_spec(&spec, n);
        if let Some(schema) = &mut model.schema {
            schema.label = label.to_owned();
        }
        let task = pb::EvaluateTask {
            round_id,
            federation: federation.to_owned(),
            model: Some(model),
            candidate: Some(self.rogue.publish(&vec![0.0; n])),
            deadline_unix_ms: now_ms() + 60_000,
            config: Some(wire::train_config(&spec)),
        };
        pb::Task {
            kind: Some(Kind::Evaluate(task)),
        }
    }

    async fn declined(&self, round_id: u64) -> String {
        let facility = self.facility().to_owned();
        match self
            .rogue
            .wait_for(&format!("a decline of round {round_id}"), |s| {
                matches!(s, Seen::Declined { round_id: r, facility: f, .. } if *r == round_id && *f == facility)
            })
            .await
        {
            Seen::Declined { reason, .. } => reason,
            _ => unreachable!(),
        }
    }

    /// What the rogue received of `round_id` other than declines.
    fn sent_for(&self, round_id: u64) -> Vec<Seen> {
        self.rogue
            .seen()
            .into_iter()
            .filter(|s| match s {
                Seen::Upload { header, .. } => header.round_id == round_id,
                Seen::SecAgg { submission, .. } => submission.round_id == round_id,
                Seen::Metrics { request, .. } => request.round_id == round_id,
                Seen::Declined { .. } => false,
            })
            .collect()
    }

    /// The agent's egress log lines of `round_id`.
    fn egress_of(&self, round_id: u64) -> Vec<serde_json::Value> {
        egress_lines(&self.state_dir)
            .into_iter()
            .filter(|l| l["round_id"] == round_id)
            .collect()
    }

    /// The refusals in the agent's privacy log, by round.
    fn refusals(&self) -> Vec<(u64, String)> {
        let text = std::fs::read_to_string(self.state_dir.join(LOG_FILE)).unwrap();
        parse_log(&text)
            .unwrap()
            .into_iter()
            .filter_map(|l| match l.record {
                Record::Refusal {
                    round_id, reason, ..
                } => Some((round_id, reason)),
                _ => None,
            })
            .collect()
    }
}

fn egress_lines(state_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state_dir.join("egress.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_upload_asked_of_a_facility_that_requires_secure_aggregation_is_declined() {
    let s = setup(POLICY).await;
    s.rogue
        .send(s.facility(), s.train(1, "heart-disease", false))
        .await;
    let reason = s.declined(1).await;
    assert!(reason.contains("require_secure_aggregation"), "{reason}");

    // The same agent does train when asked properly, and then holds its update for
    // secure aggregation: the refusal above is the policy, not a broken agent.
    s.rogue
        .send(s.facility(), s.train(2, "heart-disease", true))
        .await;
    s.rogue
        .wait_for(
            "the training report of round 2",
            |seen| matches!(seen, Seen::SecAgg { submission, .. } if submission.round_id == 2),
        )
        .await;

    assert!(s.sent_for(1).is_empty(), "round 1 sent {:?}", s.sent_for(1));
    assert!(
        s.rogue
            .seen()
            .iter()
            .all(|seen| !matches!(seen, Seen::Upload { .. })),
        "no update left in plain (nor yet masked)"
    );
    assert!(s.egress_of(1).is_empty(), "{:?}", s.egress_of(1));
    assert!(
        s.refusals()
            .iter()
            .any(|(r, why)| *r == 1 && why.contains("require_secure_aggregation")),
        "the privacy log says why: {:?}",
        s.refusals()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluate_task_for_a_foreign_federation_or_label_is_declined() {
    let s = setup(POLICY).await;
    // A federation the facility never joined, and its own federation with another column
    // (one of the data set's features) as the label.
    s.rogue
        .send(s.facility(), s.evaluate(1, "hiv-cohort", "target"))
        .await;
    s.rogue
        .send(s.facility(), s.evaluate(2, "heart-disease", "sex"))
        .await;
    assert!(s.declined(1).await.contains("allowed_federations"));
    assert!(s.declined(2).await.contains("allowed_labels"));
    // The facility's own federation and label: metrics are reported.
    s.rogue
        .send(s.facility(), s.evaluate(3, "heart-disease", "target"))
        .await;
    s.rogue
        .wait_for(
            "the metrics of round 3",
            |seen| matches!(seen, Seen::Metrics { request, .. } if request.round_id == 3),
        )
        .await;
    for round in [1, 2] {
        assert!(s.sent_for(round).is_empty(), "{:?}", s.sent_for(round));
        assert!(s.egress_of(round).is_empty(), "{:?}", s.egress_of(round));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_name_that_is_a_path_is_declined_and_nothing_is_written_outside() {
    // Even a facility that takes part in any federation: the name becomes a file name.
    let s = setup(
        "allowed_federations = [\"*\"]\nallowed_model_kinds = [\"*\"]\nallowed_labels = [\"*\"]\n",
    )
    .await;
    let escape = "../../escaped";
    s.rogue
        .send(s.facility(), s.evaluate(1, escape, "target"))
        .await;
    s.rogue.send(s.facility(), s.train(2, escape, true)).await;
    assert!(s.declined(1).await.contains("not a plain name"));
    assert!(s.declined(2).await.contains("not a plain name"));
    assert!(s.sent_for(1).is_empty() && s.sent_for(2).is_empty());
    let written: Vec<_> = walk(s.h.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("escaped"))
        .collect();
    assert!(written.is_empty(), "{written:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
