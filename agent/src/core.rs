//! The agent's decisions, with one owner: which tasks it takes (the facility's policy), which
//! it has already taken (a task resent after a reconnect is not done twice), the updates it
//! holds for secure aggregation and the terms they were trained under, its secure-aggregation
//! clients, and its privacy state (accountant, receipts, privacy log).
//!
//! The shape is quinn's `Endpoint`: the runtime feeds in what arrives with the time it
//! arrived ([`Core::handle_task`], and the outcome of the work it carried out), and carries
//! out what comes back from [`Core::poll_action`], in order. The core opens no connection,
//! reads no clock and spawns nothing; the one thing it writes is the privacy log, which must
//! be on disk before anything it records leaves.

use anyhow::Context as _;
use std::collections::{HashMap, VecDeque};

use harambee_privacy::ledger::{Cosignature, Sha256Digest, SignedReceipt, SignedTreeHead};
use harambee_privacy::log::Record;
use harambee_privacy::policy::DpSteps;
use harambee_proto::pb::{self, task::Kind};

use crate::privacy::{Privacy, ReceiptTerms, Refusal};
use crate::secure::{self, SecureClients};

/// What the runtime must do next.
#[derive(Debug)]
pub enum Action {
    /// Train for this task (download the base model, load the data, then ask
    /// [`Core::admit_training`] before training).
    Train(pb::TrainTask),
    /// Evaluate the candidate of this task.
    Evaluate(pb::EvaluateTask),
    /// Advance a secure-aggregation client: [`Core::detach_secure`], step it, and
    /// [`Core::attach_secure`] it back.
    Secure(secure::Stage),
    /// Tell the coordinator that the facility declines this round's task (already logged in
    /// the privacy log).
    Decline { round_id: u64, reason: String },
    /// Stop the round's running work.
    Abort { round_id: u64 },
    /// `testing.crash_at`: stop dead, as a crash would.
    Crash { round_id: u64, stage: &'static str },
}

/// Which kind of task a round's work is, for de-duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Train,
    Evaluate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Running,
    Done,
}

/// The agent's state and decisions (see the module docs).
pub struct Core {
    privacy: Privacy,
    secure: SecureClients,
    /// Tasks running or finished, by (round, kind). Failed tasks are forgotten so that a
    /// resend retries them.
    work: HashMap<(u64, TaskKind), Work>,
    /// The receipt terms of an update held for secure aggregation, fixed when it was
    /// trained, by round.
    held: HashMap<u64, ReceiptTerms>,
    /// `testing.crash_at`: the secure-aggregation stage at which to stop dead.
    crash_at: Option<String>,
    actions: VecDeque<Action>,
    /// Secure rounds between the advertisement, which told the coordinator the size of
    /// the last head this facility saw, and the peer-key stage, which must prove its head
    /// from exactly that one: until when (unix ms) each holds the last head where it is.
    /// Ledger proofs that arrive meanwhile wait. By round: its federation and the time.
    head_held: HashMap<u64, (String, i64)>,
}

/// What became of a ledger proof.
pub enum ProofOutcome {
    /// Checked and logged: countersign this head.
    Accepted(SignedTreeHead, Cosignature),
    /// It did not verify (logged as an alarm).
    Refused(String),
    /// Not looked at: a secure round holds the last head until its peer keys arrive.
    Deferred,
}

impl Core {
    pub fn new(privacy: Privacy, mut secure: SecureClients, crash_at: Option<String>) -> Core {
        // The peers' keys the log pinned on first sight.
        secure.pin_peers(privacy.log.lines().iter().filter_map(|l| match &l.record {
            Record::PeerKey { facility, key } => {
                let bytes: [u8; 32] = hex::decode(key).ok()?.try_into().ok()?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
                Some((facility.clone(), key))
            }
            _ => None,
        }));
        Core {
            privacy,
            secure,
            work: HashMap::new(),
            held: HashMap::new(),
            crash_at,
            actions: VecDeque::new(),
            head_held: HashMap::new(),
        }
    }

    /// A task from the coordinator's stream, received at `now_ms`.
    ///
    /// A train or evaluate task goes through the facility's policy before anything is
    /// downloaded or read; the row count is checked again once the data is read
    /// ([`Core::admit_training`]).
    pub fn handle_task(&mut self, now_ms: i64, task: pb::Task) -> anyhow::Result<()> {
        match task.kind {
            Some(Kind::Train(t)) => {
                // A newer round of a federation means its earlier ones ended (a coordinator
                // restarted, say): their held heads are released.
                self.head_held.retain(|round, (federation, _)| {
                    *federation != t.federation || *round >= t.round_id
                });
                if self.claim(t.round_id, TaskKind::Train) {
                    let epochs = t.config.as_ref().map_or(1, |c| c.epochs as usize);
                    match self.privacy.admit(&t, None, epochs) {
                        Ok(_) => self.actions.push_back(Action::Train(t)),
                        Err(refusal) => self.decline(
                            now_ms,
                            &t.federation,
                            t.round_id,
                            TaskKind::Train,
                            refusal,
                        )?,
                    }
                }
            }
            Some(Kind::Evaluate(t)) => {
                if self.claim(t.round_id, TaskKind::Evaluate) {
                    match self.privacy.admit_evaluation(&t) {
                        Ok(()) => self.actions.push_back(Action::Evaluate(t)),
                        Err(refusal) => self.decline(
                            now_ms,
                            &t.federation,
                            t.round_id,
                            TaskKind::Evaluate,
                            refusal,
                        )?,
                    }
                }
            }
            Some(Kind::SecaggAdvertise(t)) => self.secure_stage(secure::Stage::Advertise(t)),
            Some(Kind::SecaggShareKeys(t)) => self.secure_stage(secure::Stage::ShareKeys(t)),
            Some(Kind::SecaggMaskedInput(t)) => self.secure_stage(secure::Stage::MaskedInput(t)),
            Some(Kind::SecaggUnmask(t)) => self.secure_stage(secure::Stage::Unmask(t)),
            Some(Kind::SecaggConsistency(t)) => self.secure_stage(secure::Stage::Consistency(t)),
            Some(Kind::Cancel(c)) => {
                tracing::info!(round_id = c.round_id, reason = %c.reason, "coordinator cancelled the round's work");
                self.secure.forget(c.round_id);
                self.held.remove(&c.round_id);
                self.head_held.remove(&c.round_id);
                let mut running = false;
                for ((round, _), work) in self.work.iter_mut() {
                    if *round == c.round_id && *work == Work::Running {
                        *work = Work::Done;
                        running = true;
                    }
                }
                if running {
                    self.actions.push_back(Action::Abort {
                        round_id: c.round_id,
                    });
                }
            }
            None => tracing::warn!("ignoring a task of a kind this agent does not know"),
        }
        Ok(())
    }

    /// Refuses a task at arrival: logged, marked done (a resend is not reconsidered), and
    /// queued as [`Action::Decline`].
    fn decline(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        kind: TaskKind,
        refusal: Refusal,
    ) -> anyhow::Result<()> {
        self.log_refusal(now_ms, federation, round_id, &refusal.0)?;
        self.work.insert((round_id, kind), Work::Done);
        self.actions.push_back(Action::Decline {
            round_id,
            reason: refusal.0,
        });
        Ok(())
    }

    /// The next thing the runtime must do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Marks `(round_id, kind)` as running unless it is running or done already.
    fn claim(&mut self, round_id: u64, kind: TaskKind) -> bool {
        let key = (round_id, kind);
        if self.work.contains_key(&key) {
            return false;
        }
        self.work.insert(key, Work::Running);
        true
    }

    fn secure_stage(&mut self, stage: secure::Stage) {
        if self.crash_at.as_deref() == Some(stage.name()) {
            self.actions.push_back(Action::Crash {
                round_id: stage.round_id(),
                stage: stage.name(),
            });
            return;
        }
        self.actions.push_back(Action::Secure(stage));
    }

    /// The work of `(round_id, kind)` ended: done for good when it succeeded (or declined),
    /// forgotten when it failed, so that a resent task retries it.
    pub fn finished(&mut self, round_id: u64, kind: TaskKind, succeeded: bool) {
        let key = (round_id, kind);
        if succeeded {
            self.work.insert(key, Work::Done);
        } else {
            self.work.remove(&key);
        }
    }

    /// The newest round with work running, or 0: what the heartbeat reports.
    pub fn busy_round(&self) -> u64 {
        self.work
            .iter()
            .filter(|(_, w)| **w == Work::Running)
            .map(|((round, _), _)| *round)
            .max()
            .unwrap_or(0)
    }

    /// Whether the facility's policy lets it train for `task` on `n_rows` rows for `epochs`
    /// epochs. A refusal is logged in the privacy log; the caller tells the coordinator.
    pub fn admit_training(
        &mut self,
        now_ms: i64,
        task: &pb::TrainTask,
        n_rows: usize,
        epochs: usize,
    ) -> anyhow::Result<Result<Option<DpSteps>, Refusal>> {
        match self.privacy.admit(task, Some(n_rows), epochs) {
            Ok(dp) => Ok(Ok(dp)),
            Err(refusal) => {
                self.log_refusal(now_ms, &task.federation, task.round_id, &refusal.0)?;
                Ok(Err(refusal))
            }
        }
    }

    /// Logs a refusal of the round's secure-aggregation parameters and forgets the update
    /// held for it; the caller tells the coordinator.
    pub fn refuse_secure(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.held.remove(&round_id);
        self.head_held.remove(&round_id);
        self.secure.forget(round_id);
        self.log_refusal(now_ms, federation, round_id, reason)
    }

    /// Logs a refusal in the privacy log.
    fn log_refusal(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(round_id, federation, %reason, "task refused by the facility's policy");
        self.privacy.log.append(
            now_ms,
            Record::Refusal {
                federation: federation.to_owned(),
                round_id,
                reason: reason.to_owned(),
            },
        )?;
        Ok(())
    }

    /// Holds a trained update for the masked stages of `round_id`, with the terms its
    /// receipt will state.
    /// The secure-aggregation parameters the coordinator offers must match `expectation`
    /// (recomputed from the task and the facility's policy), or the update never leaves.
    pub fn hold(
        &mut self,
        round_id: u64,
        terms: ReceiptTerms,
        update: Vec<f32>,
        weight: u64,
        expectation: harambee_secagg::Expectation,
    ) -> anyhow::Result<()> {
        self.secure
            .trained(round_id, &terms.federation, update, weight, expectation)?;
        self.held.insert(round_id, terms);
        Ok(())
    }

    /// Takes the round's secure-aggregation client out, to step it off this owner (a step
    /// can take a while: mask expansion); give it back with [`Core::attach_secure`].
    pub fn detach_secure(&mut self, round_id: u64) -> SecureClients {
        self.secure.detach(round_id)
    }

    /// Puts a stepped client back; the peer keys it pinned on first sight go to the privacy
    /// log before its answer leaves.
    pub fn attach_secure(&mut self, now_ms: i64, clients: SecureClients) -> anyhow::Result<()> {
        self.secure.attach(clients);
        let pins = self
            .secure
            .take_new_peer_keys()
            .into_iter()
            .map(|(facility, key)| Record::PeerKey {
                facility,
                key: hex::encode(key.to_bytes()),
            });
        self.privacy.log.append_all(now_ms, pins)
    }

    /// The receipt terms of the update held for `round_id`.
    pub fn held_terms(&self, round_id: u64) -> Option<ReceiptTerms> {
        self.held.get(&round_id).cloned()
    }

    /// Composes the update's DP steps, signs its egress receipt and logs it; refused when it
    /// would overspend the budget: `digest` and `bytes` are the payload's SHA-256 and size.
    /// See [`Privacy::sign_egress`].
    pub fn sign_egress(
        &mut self,
        now_ms: i64,
        terms: &ReceiptTerms,
        round_id: u64,
        digest: Sha256Digest,
        bytes: u64,
    ) -> anyhow::Result<SignedReceipt> {
        self.privacy
            .sign_egress_of(now_ms, terms, round_id, digest, bytes)
    }

    /// The coordinator accepted the update of `round_id`: its ledger proof is now due.
    pub fn accepted(&mut self, now_ms: i64, federation: &str, round_id: u64) -> anyhow::Result<()> {
        self.held.remove(&round_id);
        self.privacy.log.append(
            now_ms,
            Record::Accepted {
                federation: federation.to_owned(),
                round_id,
            },
        )
    }

    /// What the heartbeat tells the coordinator.
    pub fn privacy_status(&self) -> pb::PrivacyStatus {
        self.privacy.status()
    }

    /// Contributions whose ledger proof is due.
    pub fn awaiting_proof(&self) -> Vec<(String, u64)> {
        self.privacy.awaiting_proof()
    }

    /// The size of the last tree head this facility checked, which it tells the
    /// coordinator with its advertisement for `round_id`: held there until that round's
    /// peer keys arrive or `until_ms`, whichever is first (see [`Core::handle_proof`]).
    pub fn hold_head(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        until_ms: i64,
    ) -> u64 {
        self.head_held.retain(|_, (_, until)| *until > now_ms);
        self.head_held
            .insert(round_id, (federation.to_owned(), until_ms));
        self.known_tree_size()
    }

    /// The size of the last tree head this facility checked and countersigned (0: none).
    pub fn known_tree_size(&self) -> u64 {
        self.privacy
            .log
            .last_head()
            .map_or(0, |(h, _)| h.head.tree_size)
    }

    /// Checks the ledger evidence for the peers of a secure round's key stage (see
    /// [`Privacy::accept_peer_keys`]) before the client sees their keys. A refusal forgets
    /// the round's client and update (nothing more leaves for it), is logged, and its reason
    /// returned for the coordinator.
    pub fn check_peer_keys(
        &mut self,
        now_ms: i64,
        task: &pb::SecAggShareKeys,
    ) -> anyhow::Result<Result<(SignedTreeHead, Cosignature), String>> {
        self.head_held.remove(&task.round_id);
        let peers = task
            .peers
            .iter()
            .map(|p| {
                harambee_link::identity::ed25519_key_of(&p.certificate)
                    .map(|key| (p.facility.clone(), key, p))
                    .with_context(|| format!("{}'s certificate carries no Ed25519 key", p.facility))
            })
            .collect::<anyhow::Result<Vec<_>>>();
        let checked = peers.and_then(|peers| {
            self.privacy
                .accept_peer_keys(now_ms, task.ledger.as_ref(), &peers)
        });
        match checked {
            Ok(cosigned) => Ok(Ok(cosigned)),
            Err(e) => {
                let reason = format!("peer keys not proven by the ledger: {e:#}");
                let federation = self.secure.federation_of(task.round_id).unwrap_or_default();
                self.refuse_secure(now_ms, &federation, task.round_id, &reason)?;
                Ok(Err(reason))
            }
        }
    }

    /// Checks a ledger proof (see [`Privacy::accept_proof`]); a proof that does not verify
    /// is logged as an alarm.
    pub fn handle_proof(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        answer: &pb::LedgerProof,
    ) -> anyhow::Result<ProofOutcome> {
        if self.head_held.values().any(|(_, until)| *until > now_ms) {
            return Ok(ProofOutcome::Deferred);
        }
        match self
            .privacy
            .accept_proof(now_ms, federation, round_id, answer)
        {
            Ok((head, cosignature)) => Ok(ProofOutcome::Accepted(head, cosignature)),
            Err(e) => {
                let problem = format!("{e:#}");
                self.alarm(now_ms, federation, round_id, problem.clone())?;
                Ok(ProofOutcome::Refused(problem))
            }
        }
    }

    /// Logs an alarm for the auditor about the coordinator's account of an accepted
    /// contribution; the contribution is then no longer awaiting a proof.
    pub fn alarm(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        problem: String,
    ) -> anyhow::Result<()> {
        tracing::error!(round_id, %problem, "the coordinator's ledger does not account for a contribution");
        self.privacy.log.append(
            now_ms,
            Record::Alarm {
                federation: federation.to_owned(),
                round_id,
                problem,
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;
    use ed25519_dalek::SigningKey;
    use harambee_link::identity::PeerVerifier;

    fn core(dir: &std::path::Path, crash_at: Option<&str>) -> Core {
        let policy = PolicyConfig {
            allowed_federations: vec!["heart".into()],
            allowed_model_kinds: vec!["*".into()],
            allowed_labels: vec!["disease".into()],
            min_samples: 10,
            ..PolicyConfig::default()
        };
        let key = SigningKey::from_bytes(&[3; 32]);
        let privacy = Privacy::open(1_000, dir, "clinic-a".into(), policy, key.clone()).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let verifier = PeerVerifier::from_ca_pem(ca.pem().as_bytes()).unwrap();
        Core::new(
            privacy,
            SecureClients::new(Some(key), verifier),
            crash_at.map(str::to_owned),
        )
    }

    #[test]
    fn peer_keys_pinned_in_the_log_are_pinned_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let peer = SigningKey::from_bytes(&[5; 32]).verifying_key();
        let mut first = core(dir.path(), None);
        assert_eq!(first.secure.pinned_key("site-2"), None);
        first
            .privacy
            .log
            .append(
                2_000,
                Record::PeerKey {
                    facility: "site-2".into(),
                    key: hex::encode(peer.to_bytes()),
                },
            )
            .unwrap();
        drop(first);
        let again = core(dir.path(), None);
        assert_eq!(again.secure.pinned_key("site-2"), Some(peer));
    }

    fn train(round_id: u64, federation: &str) -> pb::Task {
        pb::Task {
            kind: Some(Kind::Train(pb::TrainTask {
                round_id,
                federation: federation.into(),
                model: Some(pb::ModelSpec {
                    kind: "mlp".into(),
                    schema: Some(pb::FeatureSchema {
                        label: "disease".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                secure: Some(pb::SecureAggregation::default()),
                ..Default::default()
            })),
        }
    }

    fn actions(core: &mut Core) -> Vec<Action> {
        std::iter::from_fn(|| core.poll_action()).collect()
    }

    #[test]
    fn a_resent_task_is_not_done_twice_but_a_failed_one_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = core(dir.path(), None);
        core.handle_task(1, train(7, "heart")).unwrap();
        core.handle_task(2, train(7, "heart")).unwrap();
        assert!(matches!(&actions(&mut core)[..], [Action::Train(t)] if t.round_id == 7));
        assert_eq!(core.busy_round(), 7);
        core.finished(7, TaskKind::Train, false);
        assert_eq!(core.busy_round(), 0);
        core.handle_task(3, train(7, "heart")).unwrap();
        assert_eq!(actions(&mut core).len(), 1, "a failed task is retried");
        core.finished(7, TaskKind::Train, true);
        core.handle_task(4, train(7, "heart")).unwrap();
        assert!(
            actions(&mut core).is_empty(),
            "a finished task is not redone"
        );
    }

    #[test]
    fn a_refused_task_is_logged_and_declined() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = core(dir.path(), None);
        // Refused on arrival: nothing is downloaded or read.
        core.handle_task(5, train(8, "oncology")).unwrap();
        let declined = actions(&mut core);
        let [
            Action::Decline {
                round_id: 8,
                reason,
            },
        ] = &declined[..]
        else {
            panic!("expected a decline, got {declined:?}")
        };
        assert!(reason.contains("allowed_federations"), "{reason}");
        let logged = core.privacy.log.lines().last().unwrap();
        assert_eq!(logged.unix_ms, 5, "the log takes the time it is given");
        assert!(matches!(
            &logged.record,
            Record::Refusal { round_id: 8, .. }
        ));
        core.handle_task(6, train(8, "oncology")).unwrap();
        assert!(
            actions(&mut core).is_empty(),
            "a resend is not reconsidered"
        );

        // A plain upload, a foreign label, a path for a name.
        let mut plain = train(11, "heart");
        if let Some(Kind::Train(t)) = &mut plain.kind {
            t.secure = None;
        }
        core.handle_task(7, plain).unwrap();
        assert!(
            matches!(&actions(&mut core)[..], [Action::Decline { reason, .. }] if reason.contains("require_secure_aggregation"))
        );
        let evaluate = |round_id, federation: &str, label: &str| pb::Task {
            kind: Some(Kind::Evaluate(pb::EvaluateTask {
                round_id,
                federation: federation.into(),
                model: Some(pb::ModelSpec {
                    kind: "mlp".into(),
                    schema: Some(pb::FeatureSchema {
                        label: label.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        core.handle_task(8, evaluate(12, "heart", "hiv_status"))
            .unwrap();
        assert!(
            matches!(&actions(&mut core)[..], [Action::Decline { reason, .. }] if reason.contains("allowed_labels"))
        );
        core.handle_task(9, evaluate(13, "../../etc", "disease"))
            .unwrap();
        assert!(
            matches!(&actions(&mut core)[..], [Action::Decline { reason, .. }] if reason.contains("not a plain name"))
        );
        core.handle_task(10, evaluate(14, "heart", "disease"))
            .unwrap();
        assert!(matches!(&actions(&mut core)[..], [Action::Evaluate(_)]));

        // Rows are checked once the data is read.
        core.handle_task(11, train(15, "heart")).unwrap();
        let Some(Action::Train(task)) = core.poll_action() else {
            panic!("expected a train action")
        };
        let refusal = core.admit_training(12, &task, 9, 1).unwrap().unwrap_err();
        assert!(refusal.0.contains("min_samples"), "{}", refusal.0);
    }

    #[test]
    fn cancel_aborts_running_work_and_crash_at_stops_at_its_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = core(dir.path(), Some("unmasking"));
        core.handle_task(1, train(9, "heart")).unwrap();
        let _ = actions(&mut core);
        let cancel = pb::Task {
            kind: Some(Kind::Cancel(pb::CancelTask {
                round_id: 9,
                reason: "operator".into(),
            })),
        };
        core.handle_task(2, cancel.clone()).unwrap();
        assert!(matches!(
            &actions(&mut core)[..],
            [Action::Abort { round_id: 9 }]
        ));
        core.handle_task(3, cancel).unwrap();
        assert!(actions(&mut core).is_empty(), "nothing left to abort");
        core.handle_task(3, train(9, "heart")).unwrap();
        assert!(actions(&mut core).is_empty(), "a cancelled task stays done");

        let unmask = |round_id| pb::Task {
            kind: Some(Kind::SecaggUnmask(pb::SecAggUnmask {
                round_id,
                ..Default::default()
            })),
        };
        core.handle_task(4, unmask(10)).unwrap();
        assert!(matches!(
            &actions(&mut core)[..],
            [Action::Crash {
                round_id: 10,
                stage: "unmasking"
            }]
        ));
    }

    #[test]
    fn a_secure_round_holds_the_last_head_from_its_advertisement_to_its_peer_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = core(dir.path(), None);
        let answer = pb::LedgerProof::default();
        let deferred = |core: &mut Core, now| {
            matches!(
                core.handle_proof(now, "heart-disease", 1, &answer).unwrap(),
                ProofOutcome::Deferred
            )
        };
        assert_eq!(core.hold_head(1_000, "heart-disease", 7, 5_000), 0);
        // A proof arriving between the advertisement and the peer keys waits: the head the
        // coordinator proves the peer keys from stays the one the advertisement named.
        assert!(deferred(&mut core, 2_000));
        let keys = pb::SecAggShareKeys {
            round_id: 7,
            ..Default::default()
        };
        let _ = core.check_peer_keys(3_000, &keys).unwrap();
        assert!(!deferred(&mut core, 3_000), "released by the peer keys");
        // A round whose peer keys never come holds the head until its time is up.
        core.hold_head(10_000, "heart-disease", 8, 20_000);
        assert!(deferred(&mut core, 19_999));
        assert!(!deferred(&mut core, 20_000));
        // Or until a newer round of its federation starts (that one ended, e.g. with a
        // coordinator restart); another federation's round does not release it.
        core.hold_head(30_000, "heart-disease", 9, 90_000);
        let train = |federation: &str, round_id| pb::Task {
            kind: Some(pb::task::Kind::Train(pb::TrainTask {
                round_id,
                federation: federation.into(),
                ..Default::default()
            })),
        };
        core.handle_task(31_000, train("other", 12)).unwrap();
        assert!(deferred(&mut core, 32_000));
        core.handle_task(33_000, train("heart-disease", 10))
            .unwrap();
        assert!(!deferred(&mut core, 34_000));
    }
}
