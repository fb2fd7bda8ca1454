//! The round driver: one tokio task per running round. It owns a pure
//! [`harambee_core::Round`], feeds it what arrives (uploads, metrics, dropouts, timeouts),
//! and carries out its events: every stage is persisted before the tasks of that stage go
//! out, and the round ends in exactly one transaction (commit or fail).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harambee_core::round::{Event, Participant, ParticipantStatus, RoundError, SecAggIn, SecAggOut, Stage};
use harambee_core::strategy::ServerOptimizer;
use harambee_core::{Round, UpdateError};
use harambee_models::metrics::Metrics;
use harambee_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span, warn};

use crate::federation::FederationSpec;
use crate::state::{ActiveRound, Coordinator, now_ms};
use crate::store::{self, ModelVersionRow, ParticipantRow, RoundRow, RoundState};
use crate::wire;

/// What the services tell a running round.
pub enum RoundInput {
    /// A facility (re)connected: retry selection, resend its pending task.
    Connected { agent: String },
    /// A complete, checksummed upload.
    Update { agent: String, n_samples: u64, digest: String, values: Vec<f32>, reply: oneshot::Sender<Result<(), RoundError>> },
    /// An upload refused on its header.
    Reject { agent: String, error: UpdateError, reply: oneshot::Sender<RoundError> },
    /// Metrics, or `None` when the facility withholds them.
    Metrics { agent: String, metrics: Option<Metrics>, reply: oneshot::Sender<Result<(), RoundError>> },
    Dropout { agent: String, reason: String },
    /// Secure aggregation: a facility finished training and holds its update.
    Trained { agent: String, n_samples: u64, reply: oneshot::Sender<Result<(), RoundError>> },
    /// Secure aggregation: a key-exchange or unmasking message.
    SecAgg { agent: String, msg: SecAggIn, reply: oneshot::Sender<Result<(), RoundError>> },
    /// Secure aggregation: a masked input (little-endian words).
    Masked { agent: String, bytes: Vec<u8>, reply: oneshot::Sender<Result<(), RoundError>> },
}

/// Storage faults that end a round as failed.
#[derive(Debug, thiserror::Error)]
enum DriverError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
}

/// How often selection is retried while waiting for facilities to connect.
const SELECT_RETRY: Duration = Duration::from_secs(1);

/// Registers the round as active and spawns its driver.
pub fn spawn(coord: Coordinator, spec: FederationSpec, row: RoundRow, base: ModelVersionRow, mut base_params: Vec<f32>) -> Result<(), RoundError> {
    // Only the shared prefix is federated; with FedPer the output layer after it stays as
    // it was in the global model (each facility trains and keeps its own).
    let shared = spec.model_spec().shared_len().min(base_params.len());
    let head = base_params.split_off(shared);
    let n_params = base_params.len();
    // The server optimizer continues from the state saved with the base version.
    let optimizer = match base.server_state.as_deref().map(serde_json::from_str::<ServerOptimizer>) {
        Some(Ok(optimizer)) if optimizer.config() == &spec.strategy => optimizer,
        Some(Err(e)) => {
            warn!(error = %e, "stored server optimizer state is unreadable; starting it afresh");
            ServerOptimizer::new(spec.strategy.clone()).map_err(|e| RoundError::Strategy(e.to_string()))?
        }
        _ => ServerOptimizer::new(spec.strategy.clone()).map_err(|e| RoundError::Strategy(e.to_string()))?,
    };
    let round = Round::<Metrics>::new(spec.round_config(row.id, n_params), base_params, Instant::now())?.with_optimizer(optimizer);
    let (tx, rx) = mpsc::channel(256);
    coord.active.lock().unwrap().insert(spec.name.clone(), ActiveRound {
        round_id: row.id,
        federation: spec.name.clone(),
        n_params,
        inputs: tx,
    });
    // A root span: the round outlives the StartRound RPC that began it.
    let span = info_span!(parent: None, "round", round_id = row.id, federation = %spec.name, number = row.number);
    let driver = Driver { coord, spec, row, base, round, head, pending: HashMap::new(), candidate: None, certificates: HashMap::new() };
    tokio::spawn(driver.run(rx).instrument(span));
    Ok(())
}

struct Driver {
    coord: Coordinator,
    spec: FederationSpec,
    row: RoundRow,
    base: ModelVersionRow,
    round: Round<Metrics>,
    /// The parameters after the federated prefix (the FedPer head), carried unchanged.
    head: Vec<f32>,
    /// The task each facility still owes an answer to, resent when it reconnects.
    pending: HashMap<String, pb::Task>,
    /// The candidate model once stored: (digest, size in bytes).
    candidate: Option<(String, u64)>,
    /// Certificate chains of the selected facilities (secure aggregation forwards them).
    certificates: HashMap<String, Vec<Vec<u8>>>,
}

impl Driver {
    async fn run(mut self, mut inputs: mpsc::Receiver<RoundInput>) {
        info!("round started");
        self.select_now();
        loop {
            if let Err(e) = self.carry_out_events().await {
                warn!(error = %e, "storage failed; failing the round");
                self.round.abort(format!("coordinator storage error: {e}"));
                if let Err(e) = self.carry_out_events().await {
                    warn!(error = %e, "could not record the failure; it is recovered at restart");
                }
            }
            if self.round.stage().is_terminal() {
                break;
            }
            let deadline = self.round.poll_timeout().expect("non-terminal round has a deadline");
            let wake = if self.round.stage() == Stage::Selecting { deadline.min(Instant::now() + SELECT_RETRY) } else { deadline };
            tokio::select! {
                // Closing a secure stage (unmasking above all) is CPU work: keep it off the
                // async workers' backs.
                input = inputs.recv() => match input {
                    Some(input) => off_the_workers(|| self.handle(input)),
                    None => self.round.abort("coordinator shutting down"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    self.select_now();
                    off_the_workers(|| self.round.handle_timeout(Instant::now()));
                }
            }
        }
        self.coord.active.lock().unwrap().remove(&self.spec.name);
        info!(stage = %self.round.stage(), "round ended");
    }

    fn select_now(&mut self) {
        if self.round.stage() == Stage::Selecting {
            let eligible: Vec<String> =
                self.coord.registry.connected().into_iter().filter(|f| self.spec.admits(f)).collect();
            if self.round.is_secure() {
                let mut keys = Vec::new();
                for facility in &eligible {
                    let Some(chain) = self.coord.registry.certificate_chain(facility) else { continue };
                    match harambee_agent::peers::ed25519_key_of(&chain[0]) {
                        Ok(key) => {
                            keys.push((facility.clone(), key));
                            self.certificates.insert(facility.clone(), chain);
                        }
                        Err(e) => warn!(%facility, error = %e, "no Ed25519 identity key; cannot take part in secure aggregation"),
                    }
                }
                self.round.provide_keys(keys);
            }
            self.round.select(Instant::now(), &eligible);
        }
    }

    fn handle(&mut self, input: RoundInput) {
        let now = Instant::now();
        match input {
            RoundInput::Connected { agent } => {
                self.select_now();
                if let Some(task) = self.pending.get(&agent) {
                    self.coord.registry.send(&agent, task.clone());
                }
            }
            RoundInput::Update { agent, n_samples, digest, values, reply } => {
                let result = self.round.handle_update(now, &agent, n_samples, digest, &values);
                match &result {
                    Ok(()) => info!(facility = %agent, n_samples, "update accepted"),
                    Err(e) => warn!(facility = %agent, error = %e, "update refused"),
                }
                self.pending.remove(&agent);
                let _ = reply.send(result);
            }
            RoundInput::Reject { agent, error, reply } => {
                let err = self.round.reject_update(now, &agent, error);
                warn!(facility = %agent, error = %err, "update refused");
                self.pending.remove(&agent);
                let _ = reply.send(err);
            }
            RoundInput::Metrics { agent, metrics, reply } => {
                let result = match metrics {
                    Some(metrics) => self.round.handle_metrics(now, &agent, metrics),
                    None => self.round.handle_metrics_withheld(now, &agent),
                };
                if result.is_ok() {
                    self.pending.remove(&agent);
                }
                let _ = reply.send(result);
            }
            RoundInput::Trained { agent, n_samples, reply } => {
                let result = self.round.handle_trained(now, &agent, n_samples);
                if result.is_ok() {
                    info!(facility = %agent, n_samples, "facility trained");
                }
                self.pending.remove(&agent);
                let _ = reply.send(result);
            }
            RoundInput::SecAgg { agent, msg, reply } => {
                let result = self.round.handle_secagg(now, &agent, msg);
                if let Err(e) = &result {
                    warn!(facility = %agent, error = %e, "secure-aggregation message refused");
                }
                self.pending.remove(&agent);
                let _ = reply.send(result);
            }
            RoundInput::Masked { agent, bytes, reply } => {
                let result = self.masked_input(now, &agent, &bytes);
                if let Err(e) = &result {
                    warn!(facility = %agent, error = %e, "masked input refused");
                }
                self.pending.remove(&agent);
                let _ = reply.send(result);
            }
            RoundInput::Dropout { agent, reason } => {
                if self.round.participants().contains_key(&agent) {
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
                    if let Some(state) = persisted_state(stage) {
                        if matches!(stage, Stage::Training | Stage::AdvertiseKeys | Stage::Evaluating) {
                            self.coord.store.save_participants(self.row.id, &self.participant_rows()).await?;
                        }
                        self.coord.store.set_round_state(self.row.id, state, now_ms()).await?;
                    }
                }
                Event::Train { agents, deadline } => {
                    let task = pb::Task {
                        kind: Some(pb::task::Kind::Train(pb::TrainTask {
                            round_id: self.row.id,
                            federation: self.spec.name.clone(),
                            model: Some(wire::model_spec(&self.spec, self.round.base().len() + self.head.len())),
                            base: Some(wire::model_ref(&self.base)),
                            config: Some(wire::train_config(&self.spec)),
                            deadline_unix_ms: wire::deadline_ms(deadline),
                            secure: self.spec.secure_aggregation.enabled.then(|| pb::SecureAggregation {
                                clip: self.spec.secure_aggregation.clip,
                                max_weight: self.spec.secure_aggregation.max_weight,
                            }),
                        })),
                    };
                    for agent in agents {
                        self.coord.entitle(&agent, &self.base.digest);
                        self.dispatch(agent, task.clone());
                    }
                }
                Event::Evaluate { agents, deadline } => {
                    let mut candidate = self.round.candidate().expect("evaluate follows aggregation").to_vec();
                    candidate.extend_from_slice(&self.head);
                    let bytes = harambee_core::params::to_le_bytes(&candidate);
                    let digest = self.coord.blobs.put(&bytes).await?;
                    let size = bytes.len() as u64;
                    self.candidate = Some((digest.clone(), size));
                    let task = pb::Task {
                        kind: Some(pb::task::Kind::Evaluate(pb::EvaluateTask {
                            round_id: self.row.id,
                            federation: self.spec.name.clone(),
                            model: Some(wire::model_spec(&self.spec, candidate.len())),
                            candidate: Some(pb::ModelRef { digest: digest.clone(), size_bytes: size, version: self.base.version + 1 }),
                            deadline_unix_ms: wire::deadline_ms(deadline),
                            config: Some(wire::train_config(&self.spec)),
                        })),
                    };
                    for agent in agents {
                        if !self.coord.registry.is_connected(&agent) {
                            // Metrics are optional: do not hold the round for a facility that is gone.
                            self.round.handle_dropout(Instant::now(), &agent, "not connected");
                            continue;
                        }
                        self.coord.entitle(&agent, &digest);
                        self.dispatch(agent, task.clone());
                    }
                }
                Event::SecAgg { stage, messages, deadline } => {
                    info!(%stage, n = messages.len(), "secure aggregation stage");
                    let deadline_ms = wire::deadline_ms(deadline);
                    for (agent, out) in messages {
                        let task = self.secagg_task(out, deadline_ms);
                        self.dispatch(agent, task);
                    }
                }
                Event::Cancel { agent, reason } => {
                    self.pending.remove(&agent);
                    let task = pb::Task {
                        kind: Some(pb::task::Kind::Cancel(pb::CancelTask { round_id: self.row.id, reason })),
                    };
                    self.coord.registry.send(&agent, task);
                }
                Event::Commit => {
                    let (digest, size_bytes) = self.candidate.clone().expect("commit follows evaluation");
                    let version = ModelVersionRow {
                        federation: self.spec.name.clone(),
                        version: self.base.version + 1,
                        digest,
                        size_bytes,
                        n_params: (self.round.base().len() + self.head.len()) as u64,
                        round_id: Some(self.row.id),
                        created_ms: now_ms(),
                        server_state: Some(serde_json::to_string(self.round.optimizer()).expect("optimizer state serializes")),
                    };
                    self.coord.store.commit_round(self.row.id, &version, &self.participant_rows(), now_ms()).await?;
                    self.pending.clear();
                    info!(version = version.version, "round committed");
                }
                Event::Fail { reason } => {
                    self.coord.store.fail_round(self.row.id, &reason, &self.participant_rows(), now_ms()).await?;
                    self.pending.clear();
                    warn!(%reason, "round failed");
                }
            }
        }
        Ok(())
    }

    fn masked_input(&mut self, now: Instant, agent: &str, bytes: &[u8]) -> Result<(), RoundError> {
        use harambee_core::round::{SecAggIn, SecAggRefusal};
        let refuse = |e: harambee_secagg::DecodeError| RoundError::SecAgg {
            agent: agent.to_owned(),
            source: SecAggRefusal::Malformed(e.to_string()),
        };
        let (word, _) = self.round.masked_input_shape().ok_or(RoundError::WrongStage(self.round.stage()))?;
        let sender = self.round.secagg_id(agent).ok_or_else(|| RoundError::NotSelected(agent.to_owned()))?;
        let words = harambee_secagg::MaskedWords::from_le_bytes(word, bytes).map_err(refuse)?;
        let input = harambee_secagg::MaskedInput { round_id: self.row.id, sender, words };
        self.round.handle_secagg(now, agent, SecAggIn::Masked(input))
    }

    /// Turns one secure-aggregation message into the facility's task.
    fn secagg_task(&self, out: SecAggOut, deadline_unix_ms: i64) -> pb::Task {
        use harambee_secagg::Message;
        let round_id = self.row.id;
        let kind = match out {
            SecAggOut::Advertise { params, my_id } => pb::task::Kind::SecaggAdvertise(pb::SecAggAdvertise {
                round_id,
                params: Some(harambee_agent::secure::params_to_pb(&params)),
                my_id,
                deadline_unix_ms,
            }),
            SecAggOut::PeerKeys { advertisements, peers } => pb::task::Kind::SecaggShareKeys(pb::SecAggShareKeys {
                round_id,
                advertisements: advertisements.iter().map(Message::encode).collect(),
                peers: peers
                    .into_iter()
                    .map(|(id, facility)| {
                        let chain = self.certificates.get(&facility).cloned().unwrap_or_default();
                        let mut chain = chain.into_iter();
                        pb::SecAggPeer { id, certificate: chain.next().unwrap_or_default(), intermediates: chain.collect(), facility }
                    })
                    .collect(),
                deadline_unix_ms,
            }),
            SecAggOut::Shares(shares) => pb::task::Kind::SecaggMaskedInput(pb::SecAggMaskedInput {
                round_id,
                shares: shares.iter().map(Message::encode).collect(),
                deadline_unix_ms,
            }),
            SecAggOut::Unmask { request, sign_first } => {
                pb::task::Kind::SecaggUnmask(pb::SecAggUnmask { round_id, request: request.encode(), sign_first, deadline_unix_ms })
            }
            SecAggOut::Consistency(proof) => {
                pb::task::Kind::SecaggConsistency(pb::SecAggConsistency { round_id, proof: proof.encode(), deadline_unix_ms })
            }
        };
        pb::Task { kind: Some(kind) }
    }

    fn dispatch(&mut self, agent: String, task: pb::Task) {
        if !self.coord.registry.send(&agent, task.clone()) {
            info!(facility = %agent, "task queued until the facility reconnects");
        }
        self.pending.insert(agent, task);
    }

    fn participant_rows(&self) -> Vec<ParticipantRow> {
        self.round.participants().iter().map(|(name, p)| participant_row(self.row.id, name, p)).collect()
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
