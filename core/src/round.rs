//! The round state machine, sans IO.
//!
//! A round moves `Selecting → Training → Evaluating → Committed`, or to `Failed` from any
//! non-terminal stage. With secure aggregation ([`RoundConfig::secure`]) facilities keep
//! their updates after training and the round passes through `AdvertiseKeys → ShareKeys →
//! MaskedInput → Unmasking` between `Training` and `Evaluating` (see [`secure`]). The driver
//! calls, in any order as things happen:
//!
//! - [`Round::select`] with the facilities connected and eligible right now, while `Selecting`;
//! - [`Round::handle_update`] when a facility's upload has arrived in full, or
//!   [`Round::reject_update`] when it was refused before it could be read;
//! - with secure aggregation, [`Round::handle_trained`] when a facility has trained, and
//!   [`Round::handle_secagg`] for each of its secure-aggregation messages (after
//!   [`Round::provide_keys`] with the facilities' certified identity keys);
//! - [`Round::handle_metrics`] when a facility reports its evaluation of the candidate;
//! - [`Round::handle_dropout`] when a facility's liveness is lost;
//! - [`Round::handle_timeout`] once [`Round::poll_timeout`] has passed;
//!
//! and after each call drains [`Round::poll_event`], persisting each [`Event::Stage`] before
//! acting on the events that follow it. The machine never reads a clock: `now` is an argument.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use harambee_privacy::mechanism::LatticeNoise;
use harambee_secagg::ed25519_dalek::VerifyingKey;
use harambee_secagg::{ServerError, Word};
use thiserror::Error;

use self::secure::{Advance, SecureRound};
pub use self::secure::{MaskedPieces, SecAggIn, SecAggOut, SecAggRefusal};
use crate::FacilityId;
use crate::aggregate::FedAvg;
use crate::params::{UpdateError, validate_update};
use crate::strategy::{ServerOptimizer, StrategyConfig};

pub mod secure;

/// Fixed parameters of one round.
#[derive(Debug, Clone)]
pub struct RoundConfig {
    /// Bound into every secure-aggregation message, so none can be replayed in another round.
    pub round_id: u64,
    pub n_params: usize,
    /// The round fails unless at least this many facilities contribute an update (at least 1).
    pub min_agents: usize,
    /// Upper bound on the sample count one update may claim (its FedAvg weight).
    pub max_samples: u64,
    pub selecting_timeout: Duration,
    pub training_timeout: Duration,
    pub evaluating_timeout: Duration,
    /// Secure aggregation; `None` only when an operator turned it off.
    pub secure: Option<SecureConfig>,
}

/// Secure aggregation settings of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureConfig {
    /// Each coordinate of an update is clipped to `[-clip, clip]` before quantization.
    pub clip: f32,
    /// Sample counts (the FedAvg weights) are capped at this.
    pub max_weight: u64,
    /// Deadline of each key-exchange stage.
    pub stage_timeout: Duration,
    /// The consistency-check round of the active-adversary variant.
    pub consistency_check: bool,
    /// Distributed DP: standard deviation (in update units) of the discrete Gaussian noise
    /// the sum must carry; each agent adds a share calibrated to n_min = max(`min_agents`,
    /// threshold) survivors, and no sum of fewer survivors is unmasked (server and agents
    /// refuse: `Params::n_min`). 0: none.
    pub noise_stddev: f64,
    /// The neighbour graph is sized so that a round fails, or some client is exposed, with
    /// at most this probability at 10% dropouts and 10% colluders
    /// (`harambee_secagg::GraphTargets`); agents bound it by their policy.
    pub failure_probability: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Selecting,
    Training,
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    Unmasking,
    Evaluating,
    Committed,
    Failed,
}

impl Stage {
    pub fn is_terminal(self) -> bool {
        matches!(self, Stage::Committed | Stage::Failed)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Selecting => "selecting",
            Stage::Training => "training",
            Stage::AdvertiseKeys => "advertise keys",
            Stage::ShareKeys => "share keys",
            Stage::MaskedInput => "masked input",
            Stage::Unmasking => "unmasking",
            Stage::Evaluating => "evaluating",
            Stage::Committed => "committed",
            Stage::Failed => "failed",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantStatus {
    /// Asked to train; no update yet.
    Selected,
    /// Secure aggregation: trained, holding its update for the masked stages.
    Trained,
    /// Its update is part of the aggregate.
    Uploaded,
    /// Sent an update that failed validation; the round goes on without it.
    Rejected,
    /// Lost liveness or missed the training deadline.
    Dropped,
}

/// One selected facility's part in the round.
#[derive(Clone, Debug, PartialEq)]
pub struct Participant<M> {
    pub status: ParticipantStatus,
    pub n_samples: u64,
    pub update_digest: Option<String>,
    /// Why it was rejected or dropped, or why its metrics are missing.
    pub detail: Option<String>,
    pub metrics: Option<M>,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The round entered this stage: persist it before acting on what follows.
    Stage(Stage),
    /// Send these facilities the training task, to be uploaded by `deadline`.
    Train {
        agents: Vec<FacilityId>,
        deadline: Instant,
    },
    /// The aggregate is ready ([`Round::candidate`]): store it, then ask these facilities to
    /// evaluate it by `deadline`.
    Evaluate {
        agents: Vec<FacilityId>,
        deadline: Instant,
    },
    /// Secure aggregation: the round entered `stage` (persisted by the preceding
    /// `Stage` event); send each facility its message, to be answered by `deadline`.
    SecAgg {
        stage: Stage,
        messages: Vec<(FacilityId, SecAggOut)>,
        deadline: Instant,
    },
    /// Tell a facility to stop working on this round.
    Cancel { agent: FacilityId, reason: String },
    /// Write the candidate as the new model version, with the participants and their
    /// metrics, in one transaction. Follows `Stage(Committed)`.
    Commit,
    /// Nothing of the round is applied. Follows `Stage(Failed)`.
    Fail { reason: String },
}

/// An input the round refused. The round itself is unchanged unless noted.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RoundError {
    #[error("round is {0}, not accepting this message")]
    WrongStage(Stage),
    #[error("facility {0} is not part of this round")]
    NotSelected(FacilityId),
    #[error("facility {0} already submitted")]
    Duplicate(FacilityId),
    /// The facility is now `Rejected`; the round continues without it.
    #[error("update from {agent} rejected: {source}")]
    Invalid {
        agent: FacilityId,
        source: UpdateError,
    },
    #[error("base model has {got} parameters, the round expects {expected}")]
    BaseLength { expected: usize, got: usize },
    #[error("invalid server strategy: {0}")]
    Strategy(String),
    #[error("invalid privacy mechanism: {0}")]
    Mechanism(String),
    #[error("this round uses secure aggregation: updates are sent masked, never in plain")]
    SecureOnly,
    #[error("this round does not use secure aggregation")]
    PlainOnly,
    #[error("secure-aggregation message from {agent} refused: {source}")]
    SecAgg {
        agent: FacilityId,
        source: SecAggRefusal,
    },
}

/// One federated round. `M` is the evaluation metrics type, opaque to the machine.
#[derive(Debug)]
pub struct Round<M> {
    config: RoundConfig,
    stage: Stage,
    deadline: Instant,
    base: Vec<f32>,
    aggregate: FedAvg,
    candidate: Option<Vec<f32>>,
    participants: BTreeMap<FacilityId, Participant<M>>,
    awaiting_metrics: BTreeSet<FacilityId>,
    failure: Option<String>,
    /// While selecting: connected facilities the driver did not offer, and why (their
    /// policy or budget, as their agents report them); named if selection fails.
    not_selected: BTreeMap<FacilityId, String>,
    events: VecDeque<Event>,
    /// Certified identity keys of the facilities (secure aggregation).
    keys: BTreeMap<FacilityId, VerifyingKey>,
    secure: Option<SecureRound>,
    /// Turns the weighted mean update into the new model (FedAvg, FedAdam, …).
    optimizer: ServerOptimizer,
    /// Central DP: noise to add to the sum of the updates before the mean is taken.
    central_noise: Option<LatticeNoise>,
    /// Threads the secure sum's unmasking may use ([`Round::with_unmask_threads`]).
    unmask_threads: usize,
}

impl<M: Clone> Round<M> {
    /// Starts a round in `Selecting` on the base model.
    pub fn new(config: RoundConfig, base: Vec<f32>, now: Instant) -> Result<Round<M>, RoundError> {
        if base.len() != config.n_params {
            return Err(RoundError::BaseLength {
                expected: config.n_params,
                got: base.len(),
            });
        }
        let deadline = now + config.selecting_timeout;
        let mut events = VecDeque::new();
        events.push_back(Event::Stage(Stage::Selecting));
        Ok(Round {
            aggregate: FedAvg::new(config.n_params),
            config,
            stage: Stage::Selecting,
            deadline,
            base,
            candidate: None,
            participants: BTreeMap::new(),
            awaiting_metrics: BTreeSet::new(),
            failure: None,
            not_selected: BTreeMap::new(),
            events,
            keys: BTreeMap::new(),
            secure: None,
            optimizer: ServerOptimizer::new(StrategyConfig::FedAvg).expect("FedAvg is valid"),
            central_noise: None,
            unmask_threads: 1,
        })
    }

    /// Lets the unmasking of a secure sum expand its masks on `threads` threads (each over
    /// its own part of the vector; the same result as one). The driver passes the cores it
    /// can spare; the round itself stays free of scheduling decisions.
    pub fn with_unmask_threads(mut self, threads: usize) -> Round<M> {
        self.unmask_threads = threads.max(1);
        self
    }

    /// Central differential privacy: `noise` (one discrete Gaussian draw per parameter on the
    /// lattice Gaussian's grid, drawn by the driver with
    /// `harambee_privacy::mechanism::central_noise`) is added to the sum of the updates, plain
    /// or unmasked, after the sum is snapped to the grid and before it is divided by the total
    /// weight. The round stays free of randomness; the driver owns the RNG. Fails on a wrong
    /// length.
    pub fn with_central_noise(mut self, noise: LatticeNoise) -> Result<Round<M>, RoundError> {
        if noise.len() != self.config.n_params {
            return Err(RoundError::BaseLength {
                expected: self.config.n_params,
                got: noise.len(),
            });
        }
        self.central_noise = Some(noise);
        Ok(self)
    }

    /// The mean update `sum / total_weight`; with central noise, the sum is first released
    /// by the lattice Gaussian (snapped, noised in integers, then converted).
    fn noised(&self, sum: &[f64], total_weight: f64) -> Vec<f32> {
        let inv = 1.0 / total_weight;
        match &self.central_noise {
            Some(noise) => noise
                .release(sum)
                .into_iter()
                .map(|s| (s * inv) as f32)
                .collect(),
            None => sum.iter().map(|&s| (s * inv) as f32).collect(),
        }
    }

    /// The server optimizer (with its state from earlier rounds); FedAvg by default.
    pub fn with_optimizer(mut self, optimizer: ServerOptimizer) -> Round<M> {
        self.optimizer = optimizer;
        self
    }

    /// The server optimizer, stepped once the round has a candidate; persist it with it.
    pub fn optimizer(&self) -> &ServerOptimizer {
        &self.optimizer
    }

    /// The facilities' identity keys, taken by the driver from their CA-signed certificates.
    /// Secure aggregation needs them to check signatures; a facility without one cannot
    /// take part in a secure round.
    pub fn provide_keys(&mut self, keys: impl IntoIterator<Item = (FacilityId, VerifyingKey)>) {
        self.keys.extend(keys);
    }

    pub fn is_secure(&self) -> bool {
        self.config.secure.is_some()
    }

    /// The word size and word count a masked input must have, once that stage is reached.
    pub fn masked_input_shape(&self) -> Option<(Word, usize)> {
        self.secure.as_ref().map(SecureRound::masked_shape)
    }

    /// `agent`'s id in this round's secure aggregation.
    pub fn secagg_id(&self, agent: &str) -> Option<u32> {
        self.secure.as_ref().and_then(|s| s.id_of(agent))
    }

    /// Bytes of `agent`'s secure-aggregation messages the coordinator holds right now.
    pub fn stored_bytes(&self, agent: &str) -> usize {
        self.secure.as_ref().map_or(0, |s| s.stored_bytes(agent))
    }

    /// Secure aggregation parameters, once training has closed.
    pub fn secagg_params(&self) -> Option<&harambee_secagg::Params> {
        self.secure.as_ref().map(SecureRound::params)
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn base(&self) -> &[f32] {
        &self.base
    }

    /// The aggregated model, once training has closed with enough updates.
    pub fn candidate(&self) -> Option<&[f32]> {
        self.candidate.as_deref()
    }

    pub fn participants(&self) -> &BTreeMap<FacilityId, Participant<M>> {
        &self.participants
    }

    pub fn failure_reason(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// When [`Round::handle_timeout`] should next be called; `None` once terminal.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.stage.is_terminal()).then_some(self.deadline)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// While selecting: the connected facilities that are not offered the round, each with
    /// the reason (replacing the last such list). A selection that times out names them, so
    /// the operator reads "refused by its policy" rather than "not connected".
    pub fn set_not_selected(&mut self, not_selected: BTreeMap<FacilityId, String>) {
        if self.stage == Stage::Selecting {
            self.not_selected = not_selected;
        }
    }

    /// The connected facilities last named by [`Round::set_not_selected`], with their reasons.
    pub fn not_selected(&self) -> &BTreeMap<FacilityId, String> {
        &self.not_selected
    }

    /// Offers the facilities that are connected and eligible now. Once at least
    /// `min_agents` are, all of them are selected and training starts.
    pub fn select(&mut self, now: Instant, connected: &[FacilityId]) {
        if self.stage != Stage::Selecting {
            return;
        }
        let candidates: BTreeSet<&FacilityId> = connected.iter().collect();
        if candidates.len() < self.config.min_agents.max(1) {
            return;
        }
        for agent in &candidates {
            self.participants.insert(
                (*agent).clone(),
                Participant {
                    status: ParticipantStatus::Selected,
                    n_samples: 0,
                    update_digest: None,
                    detail: None,
                    metrics: None,
                },
            );
        }
        self.enter(Stage::Training, now + self.config.training_timeout);
        self.events.push_back(Event::Train {
            agents: candidates.into_iter().cloned().collect(),
            deadline: self.deadline,
        });
    }

    /// A complete update from `agent`: validated, then folded into the aggregate.
    pub fn handle_update(
        &mut self,
        now: Instant,
        agent: &str,
        n_samples: u64,
        digest: String,
        update: &[f32],
    ) -> Result<(), RoundError> {
        if self.is_secure() {
            return Err(RoundError::SecureOnly);
        }
        if self.stage != Stage::Training {
            return Err(RoundError::WrongStage(self.stage));
        }
        let participant = self
            .participants
            .get_mut(agent)
            .ok_or_else(|| RoundError::NotSelected(agent.into()))?;
        if participant.status != ParticipantStatus::Selected {
            return Err(RoundError::Duplicate(agent.into()));
        }
        let checked = validate_update(
            self.config.n_params,
            n_samples,
            self.config.max_samples,
            update,
        );
        participant.n_samples = n_samples;
        participant.update_digest = Some(digest);
        let result = match checked {
            Ok(()) => {
                participant.status = ParticipantStatus::Uploaded;
                self.aggregate.add(n_samples, update);
                Ok(())
            }
            Err(source) => {
                participant.status = ParticipantStatus::Rejected;
                participant.detail = Some(source.to_string());
                Err(RoundError::Invalid {
                    agent: agent.into(),
                    source,
                })
            }
        };
        self.close_training_if_done(now);
        result
    }

    /// Secure aggregation: `agent` has trained on `n_samples` rows and holds its update.
    pub fn handle_trained(
        &mut self,
        now: Instant,
        agent: &str,
        n_samples: u64,
    ) -> Result<(), RoundError> {
        if !self.is_secure() {
            return Err(RoundError::PlainOnly);
        }
        if self.stage != Stage::Training {
            return Err(RoundError::WrongStage(self.stage));
        }
        let max = self.config.max_samples;
        let participant = self
            .participants
            .get_mut(agent)
            .ok_or_else(|| RoundError::NotSelected(agent.into()))?;
        if participant.status != ParticipantStatus::Selected {
            return Err(RoundError::Duplicate(agent.into()));
        }
        let bad = if n_samples == 0 {
            Some(UpdateError::NoSamples(0))
        } else if n_samples > max {
            Some(UpdateError::TooManySamples {
                got: n_samples,
                limit: max,
            })
        } else {
            None
        };
        if let Some(source) = bad {
            participant.status = ParticipantStatus::Rejected;
            participant.detail = Some(source.to_string());
            self.close_training_if_done(now);
            return Err(RoundError::Invalid {
                agent: agent.into(),
                source,
            });
        }
        participant.status = ParticipantStatus::Trained;
        participant.n_samples = n_samples;
        self.close_training_if_done(now);
        Ok(())
    }

    /// Secure aggregation: one of `agent`'s messages for the current stage. A refused
    /// message takes the facility out of the stage (it becomes a dropout, recovered from
    /// shares when possible).
    pub fn handle_secagg(
        &mut self,
        now: Instant,
        agent: &str,
        msg: SecAggIn,
    ) -> Result<(), RoundError> {
        let stage = self.stage;
        let Some(secure) = self.secure.as_mut() else {
            return Err(if self.is_secure() {
                RoundError::WrongStage(stage)
            } else {
                RoundError::PlainOnly
            });
        };
        let result = secure.receive(stage, agent, msg);
        if let Err(source) = &result
            && let Some(p) = self.participants.get_mut(agent)
            && !matches!(
                source,
                SecAggRefusal::NotParticipant | SecAggRefusal::NotAwaited
            )
        {
            p.detail = Some(format!("refused at {stage}: {source}"));
        }
        if self
            .secure
            .as_ref()
            .is_some_and(SecureRound::stage_complete)
        {
            self.advance_secure(now);
        }
        result.map_err(|source| RoundError::SecAgg {
            agent: agent.into(),
            source,
        })
    }

    /// `agent`'s upload was refused before its values could be read (e.g. its header
    /// declared the wrong length). The facility is `Rejected`; the round continues.
    pub fn reject_update(&mut self, now: Instant, agent: &str, source: UpdateError) -> RoundError {
        let err = RoundError::Invalid {
            agent: agent.into(),
            source: source.clone(),
        };
        if self.stage != Stage::Training {
            return RoundError::WrongStage(self.stage);
        }
        match self.participants.get_mut(agent) {
            None => return RoundError::NotSelected(agent.into()),
            Some(p) if p.status != ParticipantStatus::Selected => {
                return RoundError::Duplicate(agent.into());
            }
            Some(p) => {
                p.status = ParticipantStatus::Rejected;
                p.detail = Some(source.to_string());
            }
        }
        self.close_training_if_done(now);
        err
    }

    /// `agent`'s evaluation of the candidate.
    pub fn handle_metrics(
        &mut self,
        now: Instant,
        agent: &str,
        metrics: M,
    ) -> Result<(), RoundError> {
        if self.stage != Stage::Evaluating {
            return Err(RoundError::WrongStage(self.stage));
        }
        if !self.awaiting_metrics.remove(agent) {
            return match self.participants.get(agent) {
                Some(p) if p.metrics.is_some() => Err(RoundError::Duplicate(agent.into())),
                _ => Err(RoundError::NotSelected(agent.into())),
            };
        }
        if let Some(p) = self.participants.get_mut(agent) {
            p.metrics = Some(metrics);
        }
        self.commit_if_evaluated(now);
        Ok(())
    }

    /// `agent` will not report metrics (its cohort is below its policy's minimum).
    pub fn handle_metrics_withheld(&mut self, now: Instant, agent: &str) -> Result<(), RoundError> {
        if self.stage != Stage::Evaluating {
            return Err(RoundError::WrongStage(self.stage));
        }
        if !self.awaiting_metrics.remove(agent) {
            return Err(RoundError::NotSelected(agent.into()));
        }
        if let Some(p) = self.participants.get_mut(agent) {
            p.detail =
                Some("metrics withheld: held-out cohort below the facility's minimum".to_owned());
        }
        self.commit_if_evaluated(now);
        Ok(())
    }

    /// `agent` lost liveness (its stream closed or heartbeats stopped).
    pub fn handle_dropout(&mut self, now: Instant, agent: &str, reason: &str) {
        match self.stage {
            Stage::Training => {
                if let Some(p) = self.participants.get_mut(agent)
                    && matches!(
                        p.status,
                        ParticipantStatus::Selected | ParticipantStatus::Trained
                    )
                {
                    p.status = ParticipantStatus::Dropped;
                    p.detail = Some(reason.to_owned());
                    self.close_training_if_done(now);
                }
            }
            Stage::AdvertiseKeys | Stage::ShareKeys | Stage::MaskedInput | Stage::Unmasking => {
                let stage = self.stage;
                if let Some(secure) = self.secure.as_mut()
                    && secure.id_of(agent).is_some()
                {
                    secure.give_up_on(agent);
                    if let Some(p) = self.participants.get_mut(agent)
                        && p.detail.is_none()
                    {
                        p.detail = Some(format!("{reason} during {stage}"));
                    }
                    if secure.stage_complete() {
                        self.advance_secure(now);
                    }
                }
            }
            Stage::Evaluating => {
                if self.awaiting_metrics.remove(agent) {
                    if let Some(p) = self.participants.get_mut(agent) {
                        p.detail = Some(format!("no metrics: {reason}"));
                    }
                    self.commit_if_evaluated(now);
                }
            }
            Stage::Selecting | Stage::Committed | Stage::Failed => {}
        }
    }

    /// Call when [`Round::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stage.is_terminal() || now < self.deadline {
            return;
        }
        match self.stage {
            Stage::Selecting => {
                let mut reason = format!(
                    "fewer than min_agents ({}) facilities connected and willing within the selection deadline",
                    self.config.min_agents
                );
                if !self.not_selected.is_empty() {
                    let named: Vec<String> = self
                        .not_selected
                        .iter()
                        .map(|(facility, why)| format!("{facility}: {why}"))
                        .collect();
                    reason += &format!("; connected but not selected: {}", named.join("; "));
                }
                self.fail(reason);
            }
            Stage::Training => {
                let late: Vec<FacilityId> = self
                    .participants
                    .iter()
                    .filter(|(_, p)| p.status == ParticipantStatus::Selected)
                    .map(|(a, _)| a.clone())
                    .collect();
                for agent in late {
                    let p = self.participants.get_mut(&agent).expect("listed above");
                    p.status = ParticipantStatus::Dropped;
                    p.detail = Some("missed the training deadline".to_owned());
                    self.events.push_back(Event::Cancel {
                        agent,
                        reason: "missed the training deadline".into(),
                    });
                }
                self.close_training_if_done(now);
            }
            // Whoever has not answered is a dropout; the aggregate names them.
            Stage::AdvertiseKeys | Stage::ShareKeys | Stage::MaskedInput | Stage::Unmasking => {
                self.advance_secure(now)
            }
            Stage::Evaluating => {
                for agent in std::mem::take(&mut self.awaiting_metrics) {
                    if let Some(p) = self.participants.get_mut(&agent) {
                        p.detail = Some("no metrics: missed the evaluation deadline".to_owned());
                    }
                }
                self.commit_if_evaluated(now);
            }
            Stage::Committed | Stage::Failed => {}
        }
    }

    /// Fails the round from outside (operator cancel, driver fault). No-op once terminal.
    pub fn abort(&mut self, reason: impl Into<String>) {
        if !self.stage.is_terminal() {
            self.fail(reason.into());
        }
    }

    fn close_training_if_done(&mut self, now: Instant) {
        if self.stage != Stage::Training
            || self
                .participants
                .values()
                .any(|p| p.status == ParticipantStatus::Selected)
        {
            return;
        }
        if let Some(secure) = self.config.secure.clone() {
            self.start_secure(now, &secure);
            return;
        }
        let contributed: Vec<FacilityId> = self
            .participants
            .iter()
            .filter(|(_, p)| p.status == ParticipantStatus::Uploaded)
            .map(|(a, _)| a.clone())
            .collect();
        let min = self.config.min_agents.max(1);
        if contributed.len() < min {
            self.fail(format!(
                "only {} of {} selected facilities contributed a valid update; min_agents is {min}",
                contributed.len(),
                self.participants.len()
            ));
            return;
        }
        let mean = self.noised(self.aggregate.sum(), self.aggregate.total_weight());
        self.candidate = Some(self.optimizer.step(&self.base, &mean));
        self.awaiting_metrics = contributed.iter().cloned().collect();
        self.enter(Stage::Evaluating, now + self.config.evaluating_timeout);
        self.events.push_back(Event::Evaluate {
            agents: contributed,
            deadline: self.deadline,
        });
    }

    /// Training closed in a secure round: start SecAgg+ with the facilities that trained.
    fn start_secure(&mut self, now: Instant, config: &SecureConfig) {
        let min = self.config.min_agents.max(1);
        let mut trained = BTreeMap::new();
        for (name, p) in self
            .participants
            .iter_mut()
            .filter(|(_, p)| p.status == ParticipantStatus::Trained)
        {
            match self.keys.get(name) {
                Some(key) => {
                    trained.insert(name.clone(), *key);
                }
                None => {
                    p.status = ParticipantStatus::Dropped;
                    p.detail =
                        Some("no certified Ed25519 identity key for secure aggregation".to_owned());
                }
            }
        }
        if trained.len() < min.max(2) {
            self.fail(format!(
                "only {} of {} selected facilities trained; secure aggregation needs at least {}",
                trained.len(),
                self.participants.len(),
                min.max(2)
            ));
            return;
        }
        let started = SecureRound::start(
            self.config.round_id,
            &trained,
            self.config.n_params,
            config,
            min,
        );
        match started {
            Ok((secure, messages)) => {
                self.secure = Some(secure);
                self.enter(Stage::AdvertiseKeys, now + config.stage_timeout);
                self.events.push_back(Event::SecAgg {
                    stage: Stage::AdvertiseKeys,
                    messages,
                    deadline: self.deadline,
                });
            }
            Err(e) => self.fail(format!("secure aggregation could not start: {e}")),
        }
    }

    /// A secure-aggregation stage closed: route the next stage's messages, or take the sum.
    fn advance_secure(&mut self, now: Instant) {
        let Some(secure) = self.secure.as_mut() else {
            return;
        };
        let stage_timeout = self
            .config
            .secure
            .as_ref()
            .map_or(Duration::from_secs(60), |s| s.stage_timeout);
        match secure.advance(self.unmask_threads) {
            Ok(Advance::Next { stage, messages }) => {
                self.enter(stage, now + stage_timeout);
                self.events.push_back(Event::SecAgg {
                    stage,
                    messages,
                    deadline: self.deadline,
                });
            }
            Ok(Advance::Done(aggregate)) => self.finish_secure(now, aggregate),
            Err(e) => self.fail(secure_failure(&e)),
        }
    }

    fn finish_secure(&mut self, now: Instant, aggregate: harambee_secagg::Aggregate) {
        let secure = self.secure.as_ref().expect("secure round");
        let mut survivors = Vec::new();
        for &id in &aggregate.survivors {
            let name = secure.name_of(id).clone();
            if let Some(p) = self.participants.get_mut(&name) {
                p.status = ParticipantStatus::Uploaded;
            }
            survivors.push(name);
        }
        for &id in &aggregate.dropouts {
            let name = secure.name_of(id).clone();
            if let Some(p) = self.participants.get_mut(&name) {
                p.status = ParticipantStatus::Dropped;
                let at = aggregate
                    .dropped_at
                    .get(&id)
                    .map_or_else(|| "secure aggregation".to_owned(), |s| s.to_string());
                let why = p
                    .detail
                    .take()
                    .unwrap_or_else(|| "missed the stage deadline".to_owned());
                p.detail = Some(format!("dropped at {at}: {why}"));
            }
        }
        if survivors.len() < self.config.min_agents.max(1) || aggregate.total_weight == 0 {
            self.fail(format!(
                "only {} facilities' inputs were aggregated; min_agents is {}",
                survivors.len(),
                self.config.min_agents
            ));
            return;
        }
        let sum: Vec<f64> = aggregate.sum.iter().map(|&s| f64::from(s)).collect();
        let mean = self.noised(&sum, aggregate.total_weight as f64);
        self.candidate = Some(self.optimizer.step(&self.base, &mean));
        self.awaiting_metrics = survivors.iter().cloned().collect();
        self.enter(Stage::Evaluating, now + self.config.evaluating_timeout);
        self.events.push_back(Event::Evaluate {
            agents: survivors,
            deadline: self.deadline,
        });
    }

    fn commit_if_evaluated(&mut self, now: Instant) {
        if self.stage == Stage::Evaluating && self.awaiting_metrics.is_empty() {
            self.enter(Stage::Committed, now);
            self.events.push_back(Event::Commit);
        }
    }

    fn fail(&mut self, reason: String) {
        for (agent, p) in &self.participants {
            if matches!(
                p.status,
                ParticipantStatus::Selected | ParticipantStatus::Trained
            ) || self.awaiting_metrics.contains(agent)
            {
                self.events.push_back(Event::Cancel {
                    agent: agent.clone(),
                    reason: reason.clone(),
                });
            }
        }
        self.awaiting_metrics.clear();
        self.candidate = None;
        self.failure = Some(reason.clone());
        self.stage = Stage::Failed;
        self.events.push_back(Event::Stage(Stage::Failed));
        self.events.push_back(Event::Fail { reason });
    }

    fn enter(&mut self, stage: Stage, deadline: Instant) {
        self.stage = stage;
        self.deadline = deadline;
        self.events.push_back(Event::Stage(stage));
    }
}

fn secure_failure(e: &ServerError) -> String {
    format!("secure aggregation failed: {e}")
}

#[cfg(test)]
mod tests;
