//! The round driver: one tokio task per running round. It owns a pure
//! [`harambee_core::Round`], feeds it what arrives (uploads, metrics, dropouts, timeouts),
//! and carries out its events: every stage is persisted before the tasks of that stage go
//! out, and the round ends in exactly one transaction (commit or fail).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use harambee_core::round::{
    Event, Participant, ParticipantStatus, RoundError, SecAggIn, SecAggOut, Stage,
};
use harambee_core::strategy::ServerOptimizer;
use harambee_core::{FacilityId, Round, UpdateError};
use harambee_models::metrics::Metrics;
use harambee_proto::pb;
use harambee_secagg::rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span, warn};

use crate::federation::{FederationSpec, Mechanism};
use crate::metrics::Outcome;
use crate::round::context::{ActiveRound, RoundContext};
use crate::store::{self, ModelVersionRow, ParticipantRow, RoundRow, RoundState};
use crate::wire;
use harambee_privacy::ledger::{Contribution, LedgerEvent, Sha256Digest, SignedReceipt};

/// A running round's state between its stored stages.
pub struct LiveRound {
    /// Each selected facility's state and reason now.
    pub participants: Vec<ParticipantRow>,
    /// While selecting: connected facilities not offered the round, and why.
    pub not_selected: BTreeMap<FacilityId, String>,
}

/// What the services tell a running round.
pub enum RoundInput {
    /// A facility (re)connected: retry selection, resend its pending task.
    Connected {
        agent: FacilityId,
    },
    /// A complete, checksummed upload.
    Update {
        agent: FacilityId,
        n_samples: u64,
        digest: String,
        values: Vec<f32>,
        receipt: SignedReceipt,
        reply: oneshot::Sender<Result<(), RoundError>>,
    },
    /// An upload refused on its header.
    Reject {
        agent: FacilityId,
        error: UpdateError,
        reply: oneshot::Sender<RoundError>,
    },
    /// Metrics, or `None` when the facility withholds them.
    Metrics {
        agent: FacilityId,
        metrics: Option<Metrics>,
        reply: oneshot::Sender<Result<(), RoundError>>,
    },
    Dropout {
        agent: FacilityId,
        reason: String,
    },
    /// Secure aggregation: a facility finished training and holds its update.
    Trained {
        agent: FacilityId,
        n_samples: u64,
        reply: oneshot::Sender<Result<(), RoundError>>,
    },
    /// Secure aggregation: a key-exchange or unmasking message.
    SecAgg {
        agent: FacilityId,
        msg: SecAggIn,
        /// With an advertisement: the size of the last ledger head the agent checked.
        known_tree_size: u64,
        reply: oneshot::Sender<Result<(), RoundError>>,
    },
    /// Each selected facility's state and reason now (they are stored at each stage's end),
    /// and while selecting, who is not selected and why.
    Participants {
        reply: oneshot::Sender<LiveRound>,
    },
    /// The operator ends the round: it fails with `reason`.
    Cancel {
        reason: String,
        reply: oneshot::Sender<()>,
    },
    /// Secure aggregation: a masked input (little-endian words).
    Masked {
        agent: FacilityId,
        /// Little-endian words, in the chunks they arrived in.
        pieces: Vec<bytes::Bytes>,
        receipt: SignedReceipt,
        reply: oneshot::Sender<Result<(), RoundError>>,
    },
}

/// Per agent, the ledger head of the peer-key stage; per facility, its enrolment entry and
/// audit path.
type PeerLedgerParts = (
    HashMap<FacilityId, pb::LedgerHead>,
    HashMap<FacilityId, (String, Vec<Sha256Digest>)>,
);

/// Storage faults that end a round as failed.
#[derive(Debug, thiserror::Error)]
enum DriverError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Blob(#[from] crate::store::blobs::BlobError),
    #[error(transparent)]
    Ledger(#[from] crate::store::ledger_view::LedgerError),
}

/// The longest pause between attempts to record a failed round on unwritable storage.
const MAX_STORAGE_RETRY: Duration = Duration::from_secs(10);

/// How often selection is retried while waiting for facilities to connect.
const SELECT_RETRY: Duration = Duration::from_secs(1);

/// Registers the round as active and spawns its driver.
pub fn spawn(
    coord: RoundContext,
    spec: FederationSpec,
    row: RoundRow,
    base: ModelVersionRow,
    mut base_params: Vec<f32>,
) -> Result<(), RoundError> {
    // Only the shared prefix is federated; with FedPer the output layer after it stays as
    // it was in the global model (each facility trains and keeps its own).
    let shared = spec.model_spec().shared_len().min(base_params.len());
    let head = base_params.split_off(shared);
    let n_params = base_params.len();
    // The server optimizer continues from the state saved with the base version.
    let optimizer = match base
        .server_state
        .as_deref()
        .map(serde_json::from_str::<ServerOptimizer>)
    {
        Some(Ok(optimizer)) if optimizer.config() == &spec.strategy => optimizer,
        Some(Err(e)) => {
            warn!(error = %e, "stored server optimizer state is unreadable; starting it afresh");
            ServerOptimizer::new(spec.strategy.clone())
                .map_err(|e| RoundError::Strategy(e.to_string()))?
        }
        _ => ServerOptimizer::new(spec.strategy.clone())
            .map_err(|e| RoundError::Strategy(e.to_string()))?,
    };
    let mut round = Round::<Metrics>::new(
        spec.round_config(row.id, n_params),
        base_params,
        coord.clock.now(),
    )?
    .with_optimizer(optimizer)
    // The unmasking runs off the async workers (`off_the_workers`) at the end of a round,
    // when little else needs the cores.
    .with_unmask_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    if spec.privacy.mechanism == Mechanism::Central {
        // One lattice Gaussian draw per parameter, from a CSPRNG seeded by the operating system's.
        let mut rng = harambee_secagg::ChaCha20Rng::from_seed(rand::random());
        let noise = harambee_privacy::mechanism::central_noise(
            &mut rng,
            n_params,
            spec.privacy.clip_norm,
            spec.privacy.noise_multiplier,
        )
        .map_err(|e| RoundError::Mechanism(format!("central noise: {e}")))?;
        round = round.with_central_noise(noise)?;
    }
    let (tx, rx) = mpsc::channel(256);
    coord.active.insert(ActiveRound {
        round_id: row.id,
        federation: spec.name.clone(),
        n_params,
        inputs: tx,
    });
    // A root span: the round outlives the StartRound RPC that began it.
    let span = info_span!(parent: None, "round", round_id = row.id, federation = %spec.name, number = row.number);
    let stage = (round.stage(), coord.clock.now());
    let driver = Driver {
        coord,
        spec,
        row,
        base,
        round,
        head,
        pending: HashMap::new(),
        candidate: None,
        certificates: HashMap::new(),
        known_tree_sizes: HashMap::new(),
        contributions: HashMap::new(),
        unacknowledged: Vec::new(),
        eligible: 0,
        revealed: false,
        stage,
        counted_dropouts: HashSet::new(),
    };
    tokio::spawn(driver.run(rx).instrument(span));
    Ok(())
}

struct Driver {
    coord: RoundContext,
    spec: FederationSpec,
    row: RoundRow,
    base: ModelVersionRow,
    round: Round<Metrics>,
    /// The parameters after the federated prefix (the FedPer head), carried unchanged.
    head: Vec<f32>,
    /// The task each facility still owes an answer to, resent when it reconnects.
    pending: HashMap<FacilityId, pb::Task>,
    /// The candidate model once stored: (digest, size in bytes).
    candidate: Option<(String, u64)>,
    /// Certificate chains of the selected facilities (secure aggregation forwards them).
    certificates: HashMap<FacilityId, Vec<Vec<u8>>>,
    /// The ledger head size each facility reported with its advertisement: the peer-key
    /// stage proves its head extends that one.
    known_tree_sizes: HashMap<FacilityId, u64>,
    /// Each accepted upload as the ledger will record it, with its facility's receipt.
    contributions: HashMap<FacilityId, Contribution>,
    /// Accepted uploads whose facilities have not been told yet: told once the uploads are
    /// recorded (see [`Driver::acknowledge`]).
    unacknowledged: Vec<(FacilityId, oneshot::Sender<Result<(), RoundError>>)>,
    /// How many facilities could have been selected at the last selection attempt.
    eligible: u64,
    /// Whether anything computed from the contributions may have left the round's secrecy:
    /// the coordinator asked for unmasking shares (it may reconstruct the sum), or a
    /// candidate model went to evaluators. A failed round then still counts in the
    /// facility-level ε.
    revealed: bool,
    /// The stage the metrics last saw the round enter, and when.
    stage: (Stage, Instant),
    /// Dropped facilities already counted in the metrics.
    counted_dropouts: HashSet<FacilityId>,
}

impl Driver {
    async fn run(mut self, mut inputs: mpsc::Receiver<RoundInput>) {
        info!("round started");
        self.select_now();
        loop {
            self.acknowledge().await;
            let result = self.carry_out_events().await;
            self.count_dropouts(self.round.stage());
            if let Err(e) = result {
                warn!(error = %e, "storage failed; failing the round");
                self.round.abort(format!("coordinator storage error: {e}"));
                if let Err(e) = self.carry_out_events().await {
                    warn!(error = %e, "could not record the failure; it is recovered at restart");
                }
            }
            if self.round.stage().is_terminal() {
                break;
            }
            let deadline = self
                .round
                .poll_timeout()
                .expect("non-terminal round has a deadline");
            let wake = if self.round.stage() == Stage::Selecting {
                deadline.min(self.coord.clock.now() + SELECT_RETRY)
            } else {
                deadline
            };
            let stage = self.round.stage();
            let started = Instant::now();
            tokio::select! {
                // Closing a secure stage (unmasking above all) is CPU work: keep it off the
                // async workers' backs.
                input = inputs.recv() => match input {
                    Some(input) => off_the_workers(|| {
                        self.handle(input);
                        // Uploads that arrived meanwhile are recorded with this one, in one
                        // transaction (within one stage: its events are carried out first).
                        while !self.unacknowledged.is_empty()
                            && self.round.stage() == stage
                            && let Ok(input) = inputs.try_recv()
                        {
                            self.handle(input);
                        }
                    }),
                    None => self.round.abort("coordinator shutting down"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    self.select_now();
                    let now = self.coord.clock.now();
                    off_the_workers(|| self.round.handle_timeout(now));
                }
            }
            if stage == Stage::Unmasking && self.round.stage() != Stage::Unmasking {
                self.coord.metrics.unmasked(started.elapsed());
            }
            self.count_dropouts(stage);
        }
        self.coord.active.remove(&self.spec.name);
        info!(stage = %self.round.stage(), "round ended");
    }

    /// Why a facility's last heartbeat says it would refuse this round's task (its policy
    /// does not allow the federation or model kind, or one more round does not fit its
    /// budget); `None` when it would accept. A facility that has not reported its status
    /// yet is not selected.
    fn refusal(&self, facility: &str) -> Option<String> {
        let Some(status) = self.coord.registry.privacy(facility) else {
            return Some("it has not reported its privacy policy yet".to_owned());
        };
        crate::round::eligibility::admits(&self.spec, &status).err()
    }

    fn select_now(&mut self) {
        if self.round.stage() == Stage::Selecting {
            let connected: Vec<FacilityId> = self
                .coord
                .registry
                .connected()
                .into_iter()
                .filter(|f| self.spec.admits(f))
                .collect();
            let mut eligible = Vec::new();
            let mut not_selected = BTreeMap::new();
            for facility in connected {
                match self.refusal(&facility) {
                    None => eligible.push(facility),
                    Some(reason) => {
                        if self.round.not_selected().get(&facility) != Some(&reason) {
                            info!(%facility, %reason, "facility not selected");
                        }
                        not_selected.insert(facility, reason);
                    }
                }
            }
            self.round.set_not_selected(not_selected);
            self.eligible = eligible.len() as u64;
            if self.round.is_secure() {
                let mut keys = Vec::new();
                for facility in &eligible {
                    let Some(chain) = self.coord.registry.certificate_chain(facility) else {
                        continue;
                    };
                    match harambee_link::identity::ed25519_key_of(&chain[0]) {
                        Ok(key) => {
                            keys.push((facility.clone(), key));
                            self.certificates.insert(facility.clone(), chain);
                        }
                        Err(e) => {
                            warn!(%facility, error = %e, "no Ed25519 identity key; cannot take part in secure aggregation")
                        }
                    }
                }
                self.round.provide_keys(keys);
            }
            let now = self.coord.clock.now();
            self.round.select(now, &eligible);
        }
    }

    fn handle(&mut self, input: RoundInput) {
        let now = self.coord.clock.now();
        match input {
            RoundInput::Connected { agent } => {
                self.select_now();
                if let Some(task) = self.pending.get(&agent) {
                    self.coord.registry.send(&agent, task.clone());
                }
            }
            RoundInput::Update {
                agent,
                n_samples,
                digest,
                values,
                receipt,
                reply,
            } => {
                if let Some(answer) = self.repeated_upload(&agent, &receipt) {
                    self.answer_upload(agent, answer, reply);
                    return;
                }
                let checked = self
                    .check_plain_update(&values)
                    .and_then(|()| self.check_receipt(&agent, values.len() as u64, receipt));
                let weight = if self.spec.privacy.mechanism == Mechanism::None {
                    n_samples
                } else {
                    1
                };
                let result = match checked {
                    Ok(contribution) => self
                        .round
                        .handle_update(now, &agent, weight, digest, &values)
                        .map(|()| {
                            self.contributions.insert(agent.clone(), contribution);
                        }),
                    Err(e) => Err(self.round.reject_update(now, &agent, e)),
                };
                match &result {
                    Ok(()) => info!(facility = %agent, n_samples, "update accepted"),
                    Err(e) => {
                        self.coord.metrics.rejected(e);
                        warn!(facility = %agent, error = %e, "update refused");
                    }
                }
                self.pending.remove(&agent);
                self.answer_upload(agent, result, reply);
            }
            RoundInput::Reject {
                agent,
                error,
                reply,
            } => {
                let err = self.round.reject_update(now, &agent, error);
                self.coord.metrics.rejected(&err);
                warn!(facility = %agent, error = %err, "update refused");
                self.pending.remove(&agent);
                let _ = reply.send(err);
            }
            RoundInput::Metrics {
                agent,
                metrics,
                reply,
            } => {
                let result = match metrics {
                    Some(metrics) => self.round.handle_metrics(now, &agent, metrics),
                    None => self.round.handle_metrics_withheld(now, &agent),
                };
                if result.is_ok() {
                    self.pending.remove(&agent);
                }
                let _ = reply.send(result);
            }
            RoundInput::Trained {
                agent,
                n_samples,
                reply,
            } => {
                let result = self.round.handle_trained(now, &agent, n_samples);
                if result.is_ok() {
                    info!(facility = %agent, n_samples, "facility trained");
                }
                self.pending.remove(&agent);
                let _ = reply.send(result);
            }
            RoundInput::Participants { reply } => {
                let not_selected = if self.round.stage() == Stage::Selecting {
                    self.round.not_selected().clone()
                } else {
                    BTreeMap::new()
                };
                let _ = reply.send(LiveRound {
                    participants: self.participant_rows(),
                    not_selected,
                });
            }
            RoundInput::Cancel { reason, reply } => {
                info!(%reason, "round cancelled");
                self.round.abort(reason);
                let _ = reply.send(());
            }
            RoundInput::SecAgg {
                agent,
                msg,
                known_tree_size,
                reply,
            } => {
                if matches!(msg, SecAggIn::Advertise(_)) {
                    self.known_tree_sizes.insert(agent.clone(), known_tree_size);
                }
                let result = self.round.handle_secagg(now, &agent, msg);
                if let Err(e) = &result {
                    self.coord.metrics.rejected(e);
                    warn!(facility = %agent, error = %e, "secure-aggregation message refused");
                }
                self.pending.remove(&agent);
                let _ = reply.send(result);
            }
            RoundInput::Masked {
                agent,
                pieces,
                receipt,
                reply,
            } => {
                if let Some(answer) = self.repeated_upload(&agent, &receipt) {
                    self.answer_upload(agent, answer, reply);
                    return;
                }
                let words = self.round.masked_input_shape().map_or(0, |(_, n)| n as u64);
                let result = self
                    .check_receipt(&agent, words, receipt)
                    .map_err(|source| RoundError::Invalid {
                        agent: agent.clone(),
                        source,
                    })
                    .and_then(|contribution| {
                        self.masked_input(now, &agent, pieces)?;
                        self.contributions.insert(agent.clone(), contribution);
                        Ok(())
                    });
                if let Err(e) = &result {
                    self.coord.metrics.rejected(e);
                    warn!(facility = %agent, error = %e, "masked input refused");
                }
                self.pending.remove(&agent);
                self.answer_upload(agent, result, reply);
            }
            RoundInput::Dropout { agent, reason } => {
                if self.round.participants().contains_key(agent.as_str()) {
                    info!(facility = %agent, %reason, "facility dropped");
                }
                self.round.handle_dropout(now, &agent, &reason);
            }
        }
    }

    async fn carry_out_events(&mut self) -> Result<(), DriverError> {
        while let Some(event) = self.round.poll_event() {
            match event {
                Event::Stage(stage) => {
                    info!(%stage, "stage");
                    self.enter_stage(stage);
                    if matches!(stage, Stage::Unmasking | Stage::Evaluating) {
                        self.revealed = true;
                    }
                    if let Some(state) = persisted_state(stage) {
                        if matches!(
                            stage,
                            Stage::Training | Stage::AdvertiseKeys | Stage::Evaluating
                        ) {
                            let ledger = if stage == Stage::Training {
                                vec![LedgerEvent::RoundStarted {
                                    federation: self.spec.name.clone(),
                                    round_id: self.row.id,
                                    selected: self
                                        .round
                                        .participants()
                                        .keys()
                                        .map(FacilityId::to_string)
                                        .collect(),
                                    eligible: self.eligible,
                                }]
                            } else {
                                Vec::new()
                            };
                            self.coord
                                .store
                                .save_participants(
                                    self.row.id,
                                    &self.participant_rows(),
                                    self.coord.clock.unix_ms(),
                                    ledger,
                                )
                                .await?;
                        }
                        self.coord
                            .store
                            .set_round_state(self.row.id, state, self.coord.clock.unix_ms())
                            .await?;
                    }
                }
                Event::Train { agents, deadline } => {
                    let task = wire::train_task(
                        &self.spec,
                        self.row.id,
                        self.round.base().len() + self.head.len(),
                        &self.base,
                        self.unix_ms(deadline),
                    );
                    for agent in agents {
                        self.coord.entitlements.entitle(&agent, &self.base.digest);
                        self.dispatch(agent, task.clone());
                    }
                }
                Event::Evaluate { agents, deadline } => {
                    let mut candidate = self
                        .round
                        .candidate()
                        .expect("evaluate follows aggregation")
                        .to_vec();
                    candidate.extend_from_slice(&self.head);
                    let bytes = harambee_core::params::to_le_bytes(&candidate);
                    let digest = self.coord.blobs.put(&bytes).await?;
                    let size = bytes.len() as u64;
                    self.candidate = Some((digest.clone(), size));
                    self.revealed = true;
                    let candidate_ref = pb::ModelRef {
                        digest: digest.clone(),
                        size_bytes: size,
                        version: self.base.version + 1,
                    };
                    let task = wire::evaluate_task(
                        &self.spec,
                        self.row.id,
                        candidate.len(),
                        candidate_ref,
                        self.unix_ms(deadline),
                    );
                    for agent in agents {
                        if !self.coord.registry.is_connected(&agent) {
                            // Metrics are optional: do not hold the round for a facility that is gone.
                            self.round.handle_dropout(
                                self.coord.clock.now(),
                                &agent,
                                "not connected",
                            );
                            continue;
                        }
                        self.coord.entitlements.entitle(&agent, &digest);
                        self.dispatch(agent, task.clone());
                    }
                }
                Event::SecAgg {
                    stage,
                    messages,
                    deadline,
                } => {
                    info!(%stage, n = messages.len(), "secure aggregation stage");
                    let deadline_ms = self.unix_ms(deadline);
                    let peer_keys = messages
                        .iter()
                        .any(|(_, out)| matches!(out, SecAggOut::PeerKeys { .. }));
                    let (mut heads, enrolments) = if peer_keys {
                        let agents: Vec<&str> = messages.iter().map(|(a, _)| a.as_str()).collect();
                        self.peer_ledger(&agents).await?
                    } else {
                        Default::default()
                    };
                    for (agent, out) in messages {
                        let ledger = heads.remove(agent.as_str()).map(|head| wire::PeerLedger {
                            head,
                            enrolments: &enrolments,
                        });
                        let task = wire::secagg_task(
                            self.row.id,
                            out,
                            &self.certificates,
                            ledger,
                            deadline_ms,
                        );
                        self.dispatch(agent, task);
                    }
                }
                Event::Cancel { agent, reason } => {
                    self.pending.remove(agent.as_str());
                    let task = wire::cancel_task(self.row.id, reason);
                    self.coord.registry.send(&agent, task);
                }
                Event::Commit => {
                    let (digest, size_bytes) =
                        self.candidate.clone().expect("commit follows evaluation");
                    let version = ModelVersionRow {
                        federation: self.spec.name.clone(),
                        version: self.base.version + 1,
                        digest,
                        size_bytes,
                        n_params: (self.round.base().len() + self.head.len()) as u64,
                        round_id: Some(self.row.id),
                        created_ms: self.coord.clock.unix_ms(),
                        server_state: Some(
                            serde_json::to_string(self.round.optimizer())
                                .expect("optimizer state serializes"),
                        ),
                    };
                    let model_sha256: Sha256Digest =
                        version.digest.parse().unwrap_or(Sha256Digest([0; 32]));
                    let mut ledger = self.contribution_events();
                    ledger.extend(self.dropout_events());
                    ledger.push(LedgerEvent::RoundCommitted {
                        federation: self.spec.name.clone(),
                        round_id: self.row.id,
                        model_version: u64::from(version.version),
                        model_sha256,
                    });
                    self.coord
                        .store
                        .commit_round(
                            self.row.id,
                            &version,
                            &self.participant_rows(),
                            self.coord.clock.unix_ms(),
                            ledger,
                        )
                        .await?;
                    self.pending.clear();
                    self.enter_stage(Stage::Committed);
                    self.count_ended(Outcome::Committed);
                    info!(version = version.version, "round committed");
                }
                Event::Fail { reason } => {
                    let mut ledger = self.contribution_events();
                    ledger.extend(self.dropout_events());
                    ledger.push(LedgerEvent::RoundFailed {
                        federation: self.spec.name.clone(),
                        round_id: self.row.id,
                        reason: reason.clone(),
                        revealed: self.revealed,
                    });
                    // A database that cannot be written now (a full disk) is waited for: the
                    // round stays running until its failure is recorded, so the next round
                    // starts as soon as storage is back, without a restart.
                    let mut pause = Duration::from_millis(250);
                    loop {
                        let recorded = self
                            .coord
                            .store
                            .fail_round(
                                self.row.id,
                                &reason,
                                &self.participant_rows(),
                                self.coord.clock.unix_ms(),
                                ledger.clone(),
                            )
                            .await;
                        match recorded {
                            Ok(()) => break,
                            Err(store::StoreError::Db(e)) => {
                                warn!(error = %e, ?pause, "could not record the round's failure; retrying");
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(MAX_STORAGE_RETRY);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    self.pending.clear();
                    self.enter_stage(Stage::Failed);
                    self.count_ended(Outcome::Failed);
                    warn!(%reason, "round failed");
                }
            }
        }
        Ok(())
    }

    /// Records how long the round spent in the stage it leaves for `next`.
    fn enter_stage(&mut self, next: Stage) {
        let (stage, since) = self.stage;
        if stage == next || stage.is_terminal() {
            return;
        }
        let now = self.coord.clock.now();
        self.coord
            .metrics
            .stage_ended(stage, now.saturating_duration_since(since));
        self.stage = (next, now);
    }

    /// Counts the facilities dropped since the last call, as dropped in `stage`.
    fn count_dropouts(&mut self, stage: Stage) {
        for (facility, p) in self.round.participants() {
            if p.status == ParticipantStatus::Dropped
                && self.counted_dropouts.insert(facility.clone())
            {
                self.coord.metrics.dropped(stage);
            }
        }
    }

    /// The round's outcome, and the ε its contributions' receipts state, once recorded.
    fn count_ended(&self, outcome: Outcome) {
        self.coord.metrics.round_ended(outcome);
        for (facility, contribution) in &self.contributions {
            self.coord
                .metrics
                .epsilon_spent(facility, contribution.epsilon_spent);
        }
    }

    fn masked_input(
        &mut self,
        now: Instant,
        agent: &str,
        pieces: Vec<bytes::Bytes>,
    ) -> Result<(), RoundError> {
        use harambee_core::round::{MaskedPieces, SecAggIn};
        let (word, _) = self
            .round
            .masked_input_shape()
            .ok_or(RoundError::WrongStage(self.round.stage()))?;
        let sender = self
            .round
            .secagg_id(agent)
            .ok_or_else(|| RoundError::NotSelected(agent.into()))?;
        let input = MaskedPieces {
            round_id: self.row.id,
            sender,
            word,
            pieces,
        };
        self.round
            .handle_secagg(now, agent, SecAggIn::MaskedPieces(input))
    }

    /// The ledger evidence of the peer-key stage: a head signed now; each participant's
    /// enrolment entry recording the key of its certificate, with its audit path in that
    /// head; and for each of `agents`, the head as it must see it: proven to extend the head
    /// it reported with its advertisement, with any ledger key rotations since.
    async fn peer_ledger(
        &self,
        agents: &[&str],
    ) -> Result<PeerLedgerParts, crate::store::ledger_view::LedgerError> {
        use crate::store::ledger_view::{enrolment_proofs, rotation_proofs};
        let keys: Vec<(FacilityId, ed25519_dalek::VerifyingKey)> = self
            .certificates
            .iter()
            .filter_map(|(facility, chain)| {
                let key = harambee_link::identity::ed25519_key_of(chain.first()?).ok()?;
                Some((facility.clone(), key))
            })
            .collect();
        let ledger = self.coord.ledger.synced(&self.coord.store).await?;
        let head = self.coord.ledger.sign(&ledger, self.coord.clock.unix_ms());
        let size = head.head.tree_size;
        let enrolments = enrolment_proofs(&ledger, &keys, size)?;
        let mut heads = HashMap::new();
        for &agent in agents {
            let known = self.known_tree_sizes.get(agent).copied().unwrap_or(0);
            // A size beyond the ledger's gets no proof: the agent refuses the head.
            let (consistency, rotations) = if known > size {
                (Vec::new(), Vec::new())
            } else {
                (
                    ledger.consistency_proof(known, size)?,
                    rotation_proofs(&ledger, known, size)?,
                )
            };
            heads.insert(
                agent.into(),
                pb::LedgerHead {
                    signed_tree_head: serde_json::to_string(&head).expect("a head serializes"),
                    ledger_key: self.coord.ledger.verifying_key().to_bytes().to_vec(),
                    from_tree_size: known,
                    consistency_proof: wire::hashes(consistency),
                    key_rotations: rotations
                        .into_iter()
                        .map(|(entry, proof)| pb::LedgerKeyRotationProof {
                            entry,
                            inclusion_proof: wire::hashes(proof),
                        })
                        .collect(),
                },
            );
        }
        Ok((heads, enrolments))
    }

    /// A deadline on the round's clock as wall-clock milliseconds since the Unix epoch.
    fn unix_ms(&self, deadline: Instant) -> i64 {
        let left = deadline.saturating_duration_since(self.coord.clock.now());
        self.coord
            .clock
            .unix_ms()
            .saturating_add(left.as_millis() as i64)
    }

    fn dispatch(&mut self, agent: FacilityId, task: pb::Task) {
        if !self.coord.registry.send(&agent, task.clone()) {
            info!(facility = %agent, "task queued until the facility reconnects");
        }
        self.pending.insert(agent, task);
    }

    /// Central mechanism on a plain round: the coordinator sees each update, so it checks
    /// the facility-level clipping that the noise is calibrated to.
    fn check_plain_update(&self, values: &[f32]) -> Result<(), UpdateError> {
        let p = &self.spec.privacy;
        if p.mechanism == Mechanism::None {
            return Ok(());
        }
        let norm = values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm > p.clip_norm * (1.0 + 1e-4) {
            return Err(UpdateError::Refused(format!(
                "update L2 norm {norm:.6} exceeds the federation's clipping norm {}",
                p.clip_norm
            )));
        }
        Ok(())
    }

    /// Answers an upload: a refusal at once, an acceptance once the upload is recorded.
    fn answer_upload(
        &mut self,
        agent: FacilityId,
        answer: Result<(), RoundError>,
        reply: oneshot::Sender<Result<(), RoundError>>,
    ) {
        match answer {
            Ok(()) => self.unacknowledged.push((agent, reply)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Records the uploads accepted since the last call, then tells their facilities: a
    /// facility never hears "accepted" for an upload that a coordinator killed at once would
    /// leave out of the ledger (start-up recovery writes recorded uploads with the round's
    /// failure). If they cannot be recorded the round fails (its failure, if it can be
    /// written, records them from memory) and the facilities hear that it failed.
    async fn acknowledge(&mut self) {
        if self.unacknowledged.is_empty() {
            return;
        }
        let mut facilities: Vec<&FacilityId> = self.unacknowledged.iter().map(|(f, _)| f).collect();
        facilities.sort();
        facilities.dedup();
        let uploads: Vec<Contribution> = facilities
            .into_iter()
            .map(|f| self.contributions[f].clone())
            .collect();
        let now_ms = self.coord.clock.unix_ms();
        let recorded = self
            .coord
            .store
            .record_accepted_uploads(&uploads, now_ms)
            .await;
        if let Err(e) = &recorded {
            warn!(error = %e, "could not record accepted uploads; failing the round");
            self.round.abort(format!("coordinator storage error: {e}"));
        }
        for (_, reply) in self.unacknowledged.drain(..) {
            let answer = match &recorded {
                Ok(()) => Ok(()),
                Err(_) => Err(RoundError::WrongStage(self.round.stage())),
            };
            let _ = reply.send(answer);
        }
    }

    /// An upload from a facility whose update this round already accepted: the same bytes
    /// (a retry after a lost response) are answered OK and change nothing; other bytes are
    /// refused as a duplicate. Either way the accepted contribution stays, because it is in
    /// the sum. `None` when the facility has no accepted update yet.
    fn repeated_upload(
        &self,
        agent: &str,
        receipt: &SignedReceipt,
    ) -> Option<Result<(), RoundError>> {
        let accepted = self.contributions.get(agent)?;
        if accepted.upload_sha256 == receipt.receipt.update_sha256 {
            info!(facility = %agent, "the same upload again (a retry); already accepted");
            Some(Ok(()))
        } else {
            warn!(facility = %agent, "another upload after an accepted one; refused");
            Some(Err(RoundError::Duplicate(agent.into())))
        }
    }

    /// Checks that an upload's receipt states the federation's privacy parameters, and
    /// returns the contribution the ledger records once the round accepts the upload. (Its
    /// signature and byte-level fields were checked on arrival.)
    fn check_receipt(
        &self,
        agent: &str,
        n_params: u64,
        signed: SignedReceipt,
    ) -> Result<Contribution, UpdateError> {
        let (clip, noise) = self.spec.privacy.receipt_clip_and_noise();
        let r = &signed.receipt;
        if r.clipping_norm.to_bits() != clip.to_bits()
            || r.noise_multiplier.to_bits() != noise.to_bits()
        {
            return Err(UpdateError::Refused(format!(
                "the egress receipt states clipping {} and noise multiplier {}; the federation trains with {clip} and {noise}",
                r.clipping_norm, r.noise_multiplier
            )));
        }
        let contribution = Contribution {
            facility: agent.to_owned(),
            federation: self.spec.name.clone(),
            round_id: self.row.id,
            n_params,
            bytes: r.bytes,
            upload_sha256: r.update_sha256,
            clipping_norm: r.clipping_norm,
            noise_multiplier: r.noise_multiplier,
            epsilon_spent: r.epsilon_spent,
            receipt: signed,
        };
        Ok(contribution)
    }

    /// Every update the round accepted (plain, or masked and so in the sum), by facility:
    /// recorded whether the round commits or fails, because the update left its facility.
    fn contribution_events(&self) -> Vec<LedgerEvent> {
        let mut facilities: Vec<&FacilityId> = self.contributions.keys().collect();
        facilities.sort();
        facilities
            .into_iter()
            .map(|f| LedgerEvent::Contribution(self.contributions[f].clone()))
            .collect()
    }

    fn dropout_events(&self) -> Vec<LedgerEvent> {
        self.round
            .participants()
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p.status,
                    ParticipantStatus::Dropped | ParticipantStatus::Rejected
                )
            })
            .map(|(name, p)| LedgerEvent::Dropout {
                federation: self.spec.name.clone(),
                round_id: self.row.id,
                facility: name.to_string(),
                stage: p
                    .detail
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", p.status).to_lowercase()),
            })
            .collect()
    }

    fn participant_rows(&self) -> Vec<ParticipantRow> {
        self.round
            .participants()
            .iter()
            .map(|(name, p)| participant_row(self.row.id, name, p))
            .collect()
    }
}

/// Runs CPU-heavy work where the runtime can move other tasks off this thread meanwhile
/// (multi-threaded runtimes); on a current-thread runtime it simply runs.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The stored state for a stage. Terminal stages are written by the commit or fail
/// transaction itself.
fn persisted_state(stage: Stage) -> Option<RoundState> {
    match stage {
        Stage::Selecting => Some(RoundState::Selecting),
        Stage::Training => Some(RoundState::Training),
        Stage::AdvertiseKeys => Some(RoundState::AdvertiseKeys),
        Stage::ShareKeys => Some(RoundState::ShareKeys),
        Stage::MaskedInput => Some(RoundState::MaskedInput),
        Stage::Unmasking => Some(RoundState::Unmasking),
        Stage::Evaluating => Some(RoundState::Evaluating),
        Stage::Committed | Stage::Failed => None,
    }
}

fn participant_row(round_id: u64, facility: &str, p: &Participant<Metrics>) -> ParticipantRow {
    ParticipantRow {
        round_id,
        facility: facility.to_owned(),
        status: match p.status {
            ParticipantStatus::Selected => store::ParticipantStatus::Selected,
            ParticipantStatus::Trained => store::ParticipantStatus::Trained,
            ParticipantStatus::Uploaded => store::ParticipantStatus::Uploaded,
            ParticipantStatus::Rejected => store::ParticipantStatus::Rejected,
            ParticipantStatus::Dropped => store::ParticipantStatus::Dropped,
        },
        n_samples: p.n_samples,
        update_sha256: p.update_digest.clone(),
        detail: p.detail.clone(),
        metrics: p.metrics.as_ref().map(wire::metrics_row),
    }
}
