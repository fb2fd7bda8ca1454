//! The adversarial-coordinator suite: a coordinator that deviates from the protocol on
//! purpose ([`harambee_sim::harness::rogue`], holding the real server certificate and CA)
//! against real agents over mTLS with their facility's policy. Each test asserts that
//! nothing left the agent that its policy forbids (what the rogue received, the agent's
//! egress log) and that the agent said why (its privacy log, its DeclineTask), and, where
//! cheap, that the same agents do answer an honest coordinator (a positive control).
//!
//! What each test shows:
//! - a plain upload asked of a facility that requires secure aggregation is declined;
//! - an evaluate task of a foreign federation or label is declined;
//! - a federation name that is a path (`../`) is declined and nothing is written outside;
//! - secure-aggregation parameters the agent does not recompute are refused at the
//!   advertise stage, before any key leaves: threshold 1, distributed noise stripped for a
//!   federation that declares the distributed mechanism, and the consistency check off
//!   against a policy that requires it (each with the refusal in the privacy log and the
//!   DeclineTask, and the same agent advertising keys for the honest offer);
//! - an unmask request below n_min, after an honest round with the real SecAgg+ server
//!   reached the masked inputs: no agent signs or reveals anything (the honest round
//!   before it unmasks);
//! - unmask requests split across neighbours, which without the consistency check would
//!   hand the rogue one facility's self-mask secret and every neighbour's mask key: every
//!   agent signs only its own story, no proof the rogue can build gets an answer, and the
//!   rogue ends up with no share at all;
//! - a peer certificate the rogue's CA minted without a ledgered enrolment of its key: no
//!   agent sends key shares (and, once the rogue ledgers the key, agents that never met the
//!   facility do: what is left, and why the facility's audit must find it).

use std::path::Path;
use std::time::Duration;

use harambee_agent::config::AgentConfig;
use harambee_coordinator::federation::{FederationSpec, Mechanism, PrivacySpec};
use harambee_coordinator::wire;
use harambee_core::round::SecAggOut;
use harambee_link::identity::{ed25519_key_of, signing_key_from_pem};
use harambee_privacy::ledger::key_fingerprint;
use harambee_privacy::log::{LOG_FILE, Record, parse_log};
use harambee_proto::pb::{self, sec_agg_submission::Part, task::Kind};
use harambee_secagg::ed25519_dalek::SigningKey;
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{
    AfterMaskedInputs, Aggregate, ChaCha20Rng, ClientRound, ConsistencyProof, Message, Params,
    ServerRound, SignedAdvertisement, UnmaskRequest,
};
use harambee_sim::demo::Facility;
use harambee_sim::harness::rogue::{Rogue, RogueRound, Seen};
use harambee_sim::harness::{self, Harness};

/// A facility's own policy, strict where it matters: the demo federation and label only,
/// and the defaults for everything else (secure aggregation with the consistency check,
/// distributed noise where declared, sums of at least 3, a strict-majority threshold,
/// metrics only on cohorts of 20 or more).
const POLICY: &str = "allowed_federations = [\"heart-disease\"]\nallowed_model_kinds = [\"*\"]\nallowed_labels = [\"target\"]\n";

/// How long an agent is given to answer a message it must not answer (it answers an
/// honest one in milliseconds).
const SILENCE: Duration = Duration::from_secs(3);

struct Setup {
    h: Harness,
    rogue: Rogue,
    facilities: Vec<Facility>,
    /// The first agent's state directory.
    state_dir: std::path::PathBuf,
    agents: Vec<AgentConfig>,
}

/// One agent, for the first of the demo's four facilities.
async fn setup(policy: &str) -> Setup {
    setup_agents(4, 1, policy).await
}

/// The demo data split into `n_facilities`, with agents for the first `n_agents`.
async fn setup_agents(n_facilities: usize, n_agents: usize, policy: &str) -> Setup {
    let mut h = Harness::prepare(None);
    let facilities = h.facilities(Some(n_facilities));
    let rogue = Rogue::start(&h.pki).await;
    let agents: Vec<AgentConfig> = facilities[..n_agents]
        .iter()
        .map(|f| h.spawn_agent_at(f, &rogue.endpoint(), policy))
        .collect();
    Setup {
        h,
        rogue,
        facilities,
        state_dir: agents[0].state_dir.clone(),
        agents,
    }
}

impl Setup {
    fn facility(&self) -> &str {
        &self.facilities[0].name
    }

    /// A train task of the demo federation (renamed `federation`), `secure` or plain.
    fn train(&self, round_id: u64, federation: &str, secure: bool) -> pb::Task {
        let mut spec = harness::spec(&self.facilities, 1, 60);
        spec.name = federation.to_owned();
        self.train_of(round_id, &spec, secure)
    }

    /// The demo federation for secure rounds: sums of at least 3 (n_min = 3, the
    /// policy's min_contributors), with the distributed mechanism if `distributed`.
    fn secure_spec(&self, distributed: bool) -> FederationSpec {
        let mut spec = harness::spec(&self.facilities, 3, 60);
        if distributed {
            spec.privacy = PrivacySpec {
                mechanism: Mechanism::Distributed,
                clip_norm: 1.0,
                noise_multiplier: 0.5,
                ..PrivacySpec::default()
            };
        }
        spec
    }

    /// A train task of `spec`, `secure` or plain.
    fn train_of(&self, round_id: u64, spec: &FederationSpec, secure: bool) -> pb::Task {
        let n = spec.model_spec().n_params();
        let task = pb::TrainTask {
            round_id,
            federation: spec.name.clone(),
            model: Some(wire::model_spec(spec, n)),
            base: Some(self.rogue.publish(&vec![0.0; n])),
            config: Some(wire::train_config(spec)),
            deadline_unix_ms: now_ms() + 60_000,
            secure: secure.then(|| pb::SecureAggregation {
                clip: spec.secure_aggregation.clip,
                max_weight: spec.effective_max_weight(),
                min_survivors: spec.min_agents,
                failure_probability: spec.secure_aggregation.failure_probability,
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

/// The secure-aggregation side of the suite.
impl Setup {
    /// The names of the facilities with an agent.
    fn names(&self) -> Vec<String> {
        self.facilities[..self.agents.len()]
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// Waits for `facility`'s training report of `round_id`: it holds its update.
    async fn trained(&self, round_id: u64, facility: &str) {
        self.rogue
            .wait_for(
                &format!("the training report of {facility} in round {round_id}"),
                |seen| {
                    matches!(seen, Seen::SecAgg { facility: f, submission }
                        if f == facility && submission.round_id == round_id
                            && matches!(submission.part, Some(Part::Trained(_))))
                },
            )
            .await;
    }

    /// Every agent trains for secure round `round_id` of `spec` and holds its update.
    async fn train_all(&self, round_id: u64, spec: &FederationSpec) {
        for name in self.names() {
            self.rogue
                .send(&name, self.train_of(round_id, spec, true))
                .await;
        }
        for name in self.names() {
            self.trained(round_id, &name).await;
        }
    }

    /// The kinds of the egress log lines of `round_id` of every agent.
    fn egress_kinds(&self, round_id: u64) -> Vec<String> {
        self.agents
            .iter()
            .flat_map(|a| egress_lines(&a.state_dir))
            .filter(|l| l["round_id"] == round_id)
            .map(|l| l["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// A whole secure round with an honest coordinator's messages, driven by the rogue
    /// with the real SecAgg+ server (consistency check on): the aggregate it unmasks.
    async fn honest_round(&self, round_id: u64, spec: &FederationSpec) -> Aggregate {
        self.train_all(round_id, spec).await;
        let round = RogueRound::new(&self.rogue, round_id, &self.names(), |ids| {
            honest(round_id, ids, spec)
        });
        let AfterMaskedInputs::ConsistencyCheck(mut server, requests) = round.up_to_unmask().await
        else {
            panic!("the honest offer runs the consistency check")
        };
        for (id, request) in requests {
            round.send(id, unmask(request, true)).await;
        }
        for &id in round.ids.values() {
            server.receive(id, round.signature_of(id).await).unwrap();
        }
        let (mut server, proofs) = server.finish().unwrap();
        for (id, proof) in proofs {
            round.send(id, SecAggOut::Consistency(proof)).await;
        }
        for &id in round.ids.values() {
            server.receive(id, round.unmask_of(id).await).unwrap();
        }
        server.finish().unwrap()
    }
}

/// What an honest coordinator offers participants `ids` for a round of `spec`: exactly
/// what each agent recomputes, with the consistency check (the policy's default).
fn honest(round_id: u64, ids: &[u32], spec: &FederationSpec) -> Params {
    let noise = match spec.privacy.mechanism {
        Mechanism::Distributed => spec.privacy.noise_multiplier * spec.privacy.clip_norm,
        _ => 0.0,
    };
    let mut params = Params::for_round(
        round_id,
        ids,
        spec.model_spec().shared_len(),
        spec.secure_aggregation.clip,
        spec.effective_max_weight(),
        noise,
        spec.min_agents as usize,
    )
    .unwrap();
    params.consistency_check = true;
    params
}

/// The advertise-keys task offering `params` to participant `my_id`.
fn advertise(params: &Params, my_id: u32) -> pb::Task {
    let out = SecAggOut::Advertise {
        params: params.clone(),
        my_id,
    };
    wire::secagg_task(
        params.round_id,
        out,
        &Default::default(),
        None,
        now_ms() + 60_000,
    )
}

/// The unmask-stage message carrying `request` (to sign first, under the consistency check).
fn unmask(request: UnmaskRequest, sign_first: bool) -> SecAggOut {
    SecAggOut::Unmask {
        request,
        sign_first,
    }
}

/// What left at the unmask stage, by participant, without the bytes.
fn kinds(answered: &[(u32, Part)]) -> Vec<(u32, &'static str)> {
    answered
        .iter()
        .map(|(id, part)| {
            let kind = match part {
                Part::ConsistencySignature(_) => "consistency signature",
                Part::Unmask(_) => "unmask shares",
                _ => "other",
            };
            (*id, kind)
        })
        .collect()
}

/// An unmask request naming `survivors` of `params`' participants; everyone else dropped.
fn request(params: &Params, survivors: &[u32]) -> UnmaskRequest {
    UnmaskRequest {
        round_id: params.round_id,
        survivors: survivors.to_vec(),
        dropouts: params
            .participants
            .iter()
            .copied()
            .filter(|id| !survivors.contains(id))
            .collect(),
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

/// Offers the one agent a round's parameters tampered by `tamper` (round 1), then the
/// honest ones (round 2): the first are refused at the advertise stage, before any key
/// leaves, with `why` in the DeclineTask and the privacy log; the second are answered.
async fn an_offer_is_refused(distributed: bool, tamper: impl Fn(&mut Params), why: &str) {
    let s = setup(POLICY).await;
    let spec = s.secure_spec(distributed);
    let me = s.facility().to_owned();
    // The agent is participant 1 of four; the others need not exist: the agent refuses
    // before anything reaches them.
    let ids = [1, 2, 3, 4];
    s.rogue.send(&me, s.train_of(1, &spec, true)).await;
    s.trained(1, &me).await;
    let mut offered = honest(1, &ids, &spec);
    tamper(&mut offered);
    assert_ne!(
        offered,
        honest(1, &ids, &spec),
        "the offer is tampered with"
    );
    s.rogue.send(&me, advertise(&offered, 1)).await;
    let reason = s.declined(1).await;
    assert!(
        reason.contains("refusing round 1's secure-aggregation parameters") && reason.contains(why),
        "{reason}"
    );

    // Positive control: the same agent advertises its keys for the honest offer.
    s.rogue.send(&me, s.train_of(2, &spec, true)).await;
    s.trained(2, &me).await;
    s.rogue
        .send(&me, advertise(&honest(2, &ids, &spec), 1))
        .await;
    s.rogue
        .wait_for("the advertisement of round 2", |seen| {
            matches!(seen, Seen::SecAgg { submission, .. }
                if submission.round_id == 2 && matches!(submission.part, Some(Part::Advertise(_))))
        })
        .await;

    // Of round 1 only the training report left (sample count and, without DP-SGD, the
    // loss): no advertisement, no share, no masked input.
    let sent = s.rogue.secagg_of(1, &me);
    assert!(
        sent.iter().all(|p| matches!(p, Part::Trained(_))),
        "round 1 sent {sent:?}"
    );
    assert!(
        s.sent_for(1)
            .iter()
            .all(|seen| matches!(seen, Seen::SecAgg { .. })),
        "{:?}",
        s.sent_for(1)
    );
    assert_eq!(s.egress_kinds(1), ["trained"], "nothing left in round 1");
    assert!(
        s.refusals()
            .iter()
            .any(|(r, reason)| *r == 1 && reason.contains(why)),
        "the privacy log says why: {:?}",
        s.refusals()
    );
    assert!(
        s.refusals().iter().all(|(r, _)| *r == 1),
        "the honest offer is not refused: {:?}",
        s.refusals()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_one_is_refused_before_any_key_leaves() {
    // With t = 1 every Shamir share is the secret: one neighbour told "survived" and
    // another told "dropped" hand over both secrets of a client.
    an_offer_is_refused(
        false,
        |p| p.threshold = 1,
        "threshold 1 is not a strict majority of 3 neighbours",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_noise_stripped_from_the_offer_is_refused() {
    // The federation declares the distributed mechanism; the rogue offers what an honest
    // coordinator would offer a federation without noise.
    an_offer_is_refused(
        true,
        |p| {
            let mut noiseless = Params::for_round(
                p.round_id,
                &p.participants,
                p.vector_len,
                p.clip,
                p.max_weight,
                0.0,
                p.n_min,
            )
            .unwrap();
            noiseless.consistency_check = true;
            assert!(p.noise_stddev > 0.0);
            *p = noiseless;
        },
        "the policy requires distributed noise and the offered round adds none",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_graph_weaker_than_the_policy_allows_is_refused_before_any_key_leaves() {
    // The coordinator declares a federation whose graph is sized for a 1-in-100 chance of
    // failure or exposure (fewer neighbours, less mask expansion); the facility's default
    // policy accepts at most 10⁻⁶.
    let s = setup(POLICY).await;
    let mut spec = s.secure_spec(false);
    spec.secure_aggregation.failure_probability = 1e-2;
    let me = s.facility().to_owned();
    let ids = [1, 2, 3, 4];
    s.rogue.send(&me, s.train_of(1, &spec, true)).await;
    s.trained(1, &me).await;
    s.rogue
        .send(&me, advertise(&honest(1, &ids, &spec), 1))
        .await;
    let reason = s.declined(1).await;
    assert!(
        reason.contains("refusing round 1's secure-aggregation parameters")
            && reason.contains("sized for a failure probability of 1e-2")
            && reason.contains("the policy accepts at most 1e-6"),
        "{reason}"
    );
    let sent = s.rogue.secagg_of(1, &me);
    assert!(
        sent.iter().all(|p| matches!(p, Part::Trained(_))),
        "only the training report left: {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_without_the_consistency_check_is_refused_by_the_default_policy() {
    an_offer_is_refused(
        false,
        |p| p.consistency_check = false,
        "the policy requires the consistency check and the offered round has none",
    )
    .await;
}

/// Four agents (ids 1..=4: complete graph, t = 2, n_min = 3, consistency quorum 3) run an
/// honest round (1), then train for round 2, which the rogue drives honestly up to the
/// masked inputs and then asks each agent to sign a survivor set of two: {1, 2} for
/// agents 1 and 2, {3, 4} for agents 3 and 4 (each at least t, below n_min).
async fn ask_below_n_min(s: &Setup) -> RogueRound<'_> {
    let spec = s.secure_spec(false);
    let control = s.honest_round(1, &spec).await;
    assert_eq!((control.survivors.len(), control.dropouts.len()), (4, 0));
    assert!(control.total_weight > 0);

    s.train_all(2, &spec).await;
    let round = RogueRound::new(&s.rogue, 2, &s.names(), |ids| honest(2, ids, &spec));
    let p = round.params.clone();
    assert_eq!((p.threshold, p.n_min, p.consistency_quorum()), (2, 3, 3));
    let AfterMaskedInputs::ConsistencyCheck(..) = round.up_to_unmask().await else {
        panic!("a consistency round")
    };
    for id in 1..=4 {
        let pair = if id <= 2 { [1, 2] } else { [3, 4] };
        round.send(id, unmask(request(&p, &pair), true)).await;
    }
    round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmask_request_below_n_min_gets_no_signature_and_no_share() {
    let s = setup_agents(4, 4, POLICY).await;
    let round = ask_below_n_min(&s).await;
    tokio::time::sleep(SILENCE).await;
    let answered = round.unmask_stage();
    assert!(
        answered.is_empty(),
        "a sum of two was asked for and {:?} left",
        kinds(&answered)
    );
    // What left in round 2, by each agent's own egress log: the key exchange and the
    // masked input, nothing after it.
    let mut kinds = s.egress_kinds(2);
    kinds.sort();
    assert_eq!(
        kinds,
        ["masked-update"; 4]
            .into_iter()
            .chain(["secagg-advertisement"; 4])
            .chain(["secagg-key-shares"; 4])
            .chain(["trained"; 4])
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmask_request_below_n_min_is_declined_with_the_reason() {
    let s = setup_agents(4, 4, POLICY).await;
    let p = ask_below_n_min(&s).await.params;
    for name in s.names() {
        let reason = match s
            .rogue
            .wait_for(&format!("a decline of round 2 by {name}"), |seen| {
                matches!(seen, Seen::Declined { round_id: 2, facility, .. } if *facility == name)
            })
            .await
        {
            Seen::Declined { reason, .. } => reason,
            _ => unreachable!(),
        };
        assert!(reason.contains(&format!("n_min = {}", p.n_min)), "{reason}");
    }
    for agent in &s.agents {
        let text = std::fs::read_to_string(agent.state_dir.join(LOG_FILE)).unwrap();
        let refused = parse_log(&text)
            .unwrap()
            .into_iter()
            .any(|l| matches!(l.record, Record::Refusal { round_id: 2, .. }));
        assert!(
            refused,
            "{} logged no refusal of round 2",
            agent.state_dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_unmask_requests_across_neighbours_reveal_nothing_under_the_consistency_check() {
    // Six facilities: complete graph, t = 3, n_min = 3, consistency quorum 5.
    let s = setup_agents(6, 6, POLICY).await;
    let spec = s.secure_spec(false);
    // Positive control: the same agents unmask an honest round.
    let control = s.honest_round(1, &spec).await;
    assert_eq!(control.survivors, [1, 2, 3, 4, 5, 6]);

    s.train_all(2, &spec).await;
    let round = RogueRound::new(&s.rogue, 2, &s.names(), |ids| honest(2, ids, &spec));
    let p = round.params.clone();
    let t = p.threshold;
    assert_eq!((t, p.n_min, p.consistency_quorum()), (3, 3, 5));
    let AfterMaskedInputs::ConsistencyCheck(..) = round.up_to_unmask().await else {
        panic!("a consistency round")
    };
    // The target is X = 1. Each other agent Z is told that X, Z and the next one (2..=6,
    // cyclically) survived and the other three dropped; X is told 1, 2, 3. Each request is
    // valid on its own (3 survivors, n_min = 3).
    const X: u32 = 1;
    let story = |id: u32| -> Vec<u32> {
        if id == X {
            vec![1, 2, 3]
        } else {
            let next = 2 + (id - 2 + 1) % 5;
            let mut s = vec![X, id, next];
            s.sort();
            s
        }
    };
    // Were the agents to answer these requests (as without the consistency check), the
    // rogue would hold t shares of X's self-mask secret (from every neighbour told X
    // survived) and t shares of every neighbour's mask key (from those told it dropped):
    // every mask on X's vector, and so X's update.
    let told = |owner: u32, survived: bool| {
        (1..=6)
            .filter(|&h| h != owner && story(h).contains(&owner) == survived)
            .count()
    };
    assert!(told(X, true) >= t);
    assert!((2..=6).all(|y| told(y, false) >= t));

    for id in 1..=6 {
        round.send(id, unmask(request(&p, &story(id)), true)).await;
    }
    // Each agent signs the story it was told (a signature reveals nothing) ...
    let mut signatures = Vec::new();
    for id in 1..=6 {
        signatures.push((id, round.signature_of(id).await.signature));
    }
    // ... and the rogue sends each the best proof it can build for that story: every
    // signature it holds from the story's survivors (made over other stories, most of
    // them), however few match.
    for id in 1..=6 {
        let survivors = story(id);
        let proof = ConsistencyProof {
            round_id: p.round_id,
            survivors: survivors.clone(),
            dropouts: request(&p, &survivors).dropouts,
            signatures: signatures
                .iter()
                .filter(|(signer, _)| survivors.contains(signer))
                .copied()
                .collect(),
        };
        round.send(id, SecAggOut::Consistency(proof)).await;
    }
    // And, once more, a plain unmask request of each story.
    for id in 1..=6 {
        round.send(id, unmask(request(&p, &story(id)), false)).await;
    }
    tokio::time::sleep(SILENCE).await;
    // No unmask share left any agent: the rogue holds no share of anyone's secrets, so it
    // can strip no mask, and every input stays hidden (it could not even unmask the sum).
    let answered = kinds(&round.unmask_stage());
    let signatures: Vec<_> = (1..=6).map(|id| (id, "consistency signature")).collect();
    assert_eq!(
        answered, signatures,
        "shares left for an inconsistent story"
    );
    // The agents' own egress logs agree: signatures on their survivor sets, no shares.
    let mut kinds = s.egress_kinds(2);
    kinds.sort();
    assert_eq!(
        kinds,
        ["masked-update"; 6]
            .into_iter()
            .chain(["secagg-advertisement"; 6])
            .chain(["secagg-key-shares"; 6])
            .chain(["secagg-signature"; 6])
            .chain(["trained"; 6])
            .collect::<Vec<_>>()
    );
}

/// A certificate for `facility` freshly minted by the federation's CA (which the rogue
/// holds), with a new key: the DER chain and the key's signing half.
fn mint(pki: &Path, facility: &str) -> (Vec<Vec<u8>>, SigningKey) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let (cert, key) =
        harambee_coordinator::pki::issue(pki, harambee_link::identity::Role::Agent, facility, 30)
            .unwrap();
    let chain = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect();
    let key = signing_key_from_pem(&std::fs::read(key).unwrap()).unwrap();
    (chain, key)
}

/// Three real agents and a fourth facility the rogue plays with a certificate its CA
/// minted for it. The ledger recorded that facility's real key (the rogue's honest
/// enrolment record); without a ledgered enrolment of the minted key, no agent accepts it,
/// and nothing of the round leaves after the advertisements. Then, as the control and to
/// show what is left, the rogue ledgers the minted key too: the same agents accept it
/// (they never saw the facility before), so a substituted key must be in the ledger for
/// good, where the facility's own audit finds it (`audit_finds_a_key_the_facility_never_held`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_certificate_minted_without_a_ledgered_enrolment_is_refused() {
    let s = setup_agents(4, 3, POLICY).await;
    let spec = s.secure_spec(false);
    let impostor = s.facilities[3].name.clone();
    s.rogue
        .enrol(&impostor, SigningKey::from_bytes(&[7; 32]).verifying_key());
    let (chain, key) = mint(&s.h.pki, &impostor);
    s.rogue.present(&impostor, chain);
    let mut everyone = s.names();
    everyone.push(impostor.clone());

    // Runs the key exchange of `round_id` up to the peer keys, with the impostor's
    // advertisement signed by the minted key.
    let exchange_keys = async |round_id: u64| {
        s.train_all(round_id, &spec).await;
        let round = RogueRound::new(&s.rogue, round_id, &everyone, |ids| {
            honest(round_id, ids, &spec)
        });
        let keys = round
            .ids
            .iter()
            .map(|(name, &id)| {
                let leaf = &s.rogue.certificates()[name][0];
                (id, ed25519_key_of(leaf).unwrap())
            })
            .collect();
        let mut server = ServerRound::new(round.params.clone(), keys).unwrap();
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let impostor_id = round.ids[&impostor];
        let (_client, ad) =
            ClientRound::new(round.params.clone(), impostor_id, key.clone(), &mut rng).unwrap();
        server.receive(impostor_id, ad).unwrap();
        for name in s.names() {
            let id = round.ids[&name];
            let advertise = SecAggOut::Advertise {
                params: round.params.clone(),
                my_id: id,
            };
            round.send(id, advertise).await;
            let Part::Advertise(ad) = round
                .answer(id, "the advertisement", |p| matches!(p, Part::Advertise(_)))
                .await
            else {
                unreachable!()
            };
            server
                .receive(id, SignedAdvertisement::decode(&ad).unwrap())
                .unwrap();
        }
        let (_server, routes) = server.finish().unwrap();
        let peers: Vec<(u32, harambee_core::FacilityId)> = round
            .ids
            .iter()
            .map(|(name, &id)| (id, name.as_str().into()))
            .collect();
        for (id, advertisements) in routes {
            if id != impostor_id {
                let peers = peers.clone();
                let out = SecAggOut::PeerKeys {
                    advertisements,
                    peers,
                };
                round.send(id, out).await;
            }
        }
    };

    exchange_keys(1).await;
    for name in s.names() {
        let reason = match s
            .rogue
            .wait_for(&format!("a decline of round 1 by {name}"), |seen| {
                matches!(seen, Seen::Declined { round_id: 1, facility, .. } if *facility == name)
            })
            .await
        {
            Seen::Declined { reason, .. } => reason,
            _ => unreachable!(),
        };
        assert!(
            reason.contains(&format!(
                "the ledger holds no enrolment of {impostor} under the key in its certificate ({})",
                key_fingerprint(&key.verifying_key())
            )),
            "{reason}"
        );
    }
    let mut kinds = s.egress_kinds(1);
    kinds.sort();
    assert_eq!(
        kinds,
        ["secagg-advertisement"; 3]
            .into_iter()
            .chain(["trained"; 3])
            .collect::<Vec<_>>(),
        "something left after the peer keys"
    );
    for agent in &s.agents {
        let text = std::fs::read_to_string(agent.state_dir.join(LOG_FILE)).unwrap();
        let lines = parse_log(&text).unwrap();
        assert!(
            lines.iter().any(|l| matches!(&l.record, Record::Refusal { round_id: 1, reason, .. } if reason.contains("not proven by the ledger"))),
            "{} logged no refusal of round 1",
            agent.state_dir.display()
        );
    }

    // Control: the minted key, ledgered, is accepted by agents that never saw the facility.
    s.rogue.enrol(&impostor, key.verifying_key());
    exchange_keys(2).await;
    for name in s.names() {
        let id_round = RogueRound::new(&s.rogue, 2, &everyone, |ids| honest(2, ids, &spec));
        id_round
            .answer(id_round.ids[&name], "the key shares", |p| {
                matches!(p, Part::Shares(_))
            })
            .await;
    }
    // The head each agent accepted the peer keys under is in its log, countersigned (the
    // head of round 1 went with the refusal).
    for agent in &s.agents {
        let text = std::fs::read_to_string(agent.state_dir.join(LOG_FILE)).unwrap();
        let heads = parse_log(&text)
            .unwrap()
            .into_iter()
            .filter(|l| matches!(l.record, Record::Head { .. }))
            .count();
        assert_eq!(heads, 1, "the head of round 2's peer keys");
    }
}
