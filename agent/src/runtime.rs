//! The agent's life: connect out, hold the task stream, heartbeat, carry out tasks, and
//! reconnect with backoff whenever the link drops. Training runs on a blocking thread so the
//! stream and heartbeats stay responsive however long it takes.
//!
//! Every decision is the [`Core`]'s. It has one owner, a task that applies calls to it in
//! the order they arrive (`Agent::with_core`); the rest of this module is IO: it feeds the
//! core tasks and outcomes with the time from its [`Clock`], and carries out the core's
//! [`Action`]s. Nobody holds the core across an await.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use harambee_link::clock::Clock;
use harambee_link::convert as wire;
use harambee_link::identity::{PeerVerifier, signing_key_from_pem};
use harambee_link::tls::{self, ClientTls};
use harambee_models::data::{Dataset, Schema, split_holdout};
use harambee_models::model::ModelSpec;
use harambee_privacy::ledger::Aggregation;
use harambee_privacy::policy::DpSteps;
use harambee_proto::pb::{self, agent_service_client::AgentServiceClient};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tonic::transport::Channel;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::AgentConfig;
use crate::core::{Action, Core, ProofOutcome, TaskKind};
use crate::egress::{EgressLog, EgressRecord};
use crate::privacy::{Privacy, ReceiptTerms};
use crate::secure::{self, Reply, SecureClients};
use crate::status::StatusFiles;
use crate::transfer;

/// What an agent has done, for benchmarks and the ops port (`crate::ops`).
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Bytes of updates, masked inputs, secure-aggregation messages and metrics sent.
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// When the coordinator last answered a heartbeat.
    last_contact: std::sync::Mutex<Option<std::time::Instant>>,
    /// ε spent and the budget (if any), as the last heartbeat reported them.
    privacy: std::sync::Mutex<Option<(f64, Option<f64>)>>,
    /// Where training times go, when the ops port is on.
    pub(crate) training_seconds: std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>>,
}

impl AgentStats {
    fn add(&self, bytes: usize) {
        self.bytes_sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn contact(&self) {
        *self.last_contact.lock().unwrap() = Some(std::time::Instant::now());
    }

    fn trained(&self, spent: Duration) {
        if let Some(histogram) = self.training_seconds.get() {
            histogram.record(spent.as_secs_f64(), &[]);
        }
    }

    /// How long ago the coordinator last answered; `None` before it ever did.
    pub fn since_contact(&self) -> Option<Duration> {
        self.last_contact.lock().unwrap().map(|at| at.elapsed())
    }

    #[cfg(test)]
    pub(crate) fn record_for_test(&self, privacy: Option<(f64, Option<f64>)>, bytes: usize) {
        *self.privacy.lock().unwrap() = privacy;
        self.add(bytes);
        self.contact();
    }

    /// Patient-level ε spent and the facility's budget, from the last heartbeat.
    pub fn privacy(&self) -> Option<(f64, Option<f64>)> {
        *self.privacy.lock().unwrap()
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_stats(config, shutdown, Arc::default()).await
}

/// What a facility tells the coordinator when it cannot train (the details stay in its log).
const NO_DATA: &str = "this facility's data could not be read";
const NO_TRAINING: &str = "local training failed at this facility";
const NO_BASE_MODEL: &str =
    "this facility's base model is missing or is not the one the federation pins";

/// [`run`], counting what is sent into `stats`.
pub async fn run_with_stats(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    stats: Arc<AgentStats>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    // One facility identity, one agent: a second process on the same state would fork the
    // privacy log and fight the first for the task stream.
    let _state_lock = harambee_link::files::lock_dir(&config.state_dir).context(
        "another agent is running with this state directory (one agent per facility; stop the other first)",
    )?;
    let clock = Clock::system();
    let tls = ClientTls::from_files(
        &config.tls.ca,
        &config.tls.cert,
        &config.tls.key,
        &config.server_name(),
    )?;
    let verifier = PeerVerifier::from_ca_pem(&std::fs::read(&config.tls.ca)?)?;
    let signing_key = signing_key_from_pem(&std::fs::read(&config.tls.key)?)
        .context("the facility key must be Ed25519: it signs egress receipts and secure-aggregation messages")?;
    let facility = harambee_link::identity::facility_of_pem(&std::fs::read(&config.tls.cert)?)
        .context("reading the facility's certificate")?;
    let privacy = Privacy::open(
        clock.unix_ms(),
        &config.state_dir,
        facility,
        config.policy.clone(),
        signing_key.clone(),
    )?;
    info!(
        facility = %privacy.facility,
        epsilon_spent = privacy.epsilon_spent(),
        max_epsilon = ?privacy.policy.max_epsilon,
        allowed_federations = ?privacy.policy.allowed_federations,
        "privacy policy loaded"
    );
    let core = Core::new(
        privacy,
        SecureClients::new(Some(signing_key), verifier),
        config.testing.crash_at.clone(),
    );
    let egress = EgressLog::new(&config.state_dir, config.egress.keep_payloads);
    let removed = egress.repair()?;
    if removed > 0 {
        warn!(
            bytes = removed,
            "the egress log's last line was torn (an interrupted write) and was removed"
        );
    }
    let _ops = match config.ops.listen {
        Some(addr) => Some(crate::ops::start(addr, stats.clone()).await?),
        None => None,
    };
    let (calls, owner) = spawn_owner(core);
    let agent = Arc::new(Agent {
        instance: format!("{:016x}", rand::random::<u64>()),
        status: StatusFiles::new(&config.state_dir),
        egress,
        config,
        tls,
        clock,
        calls,
        crashed: tokio::sync::Notify::new(),
        stats,
        texts: Arc::default(),
    });
    let proxy = agent.config.proxies.proxy().map_or_else(
        || "none".to_owned(),
        |p| format!("{p} (from {})", agent.config.proxies.source()),
    );
    info!(coordinator = %agent.config.coordinator, %proxy, data = %agent.config.data.path().display(), instance = %agent.instance, "agent starting");
    let _renewal = crate::renew::spawn(agent.config.clone());
    let _owner = AbortOnDrop(owner.abort_handle());
    let span = tracing::info_span!("agent", instance = %agent.instance);
    tokio::select! {
        result = agent.connection_loop().instrument(span) => result,
        () = agent.crashed.notified() => {
            agent.with_owner(Owner::abort_all).await;
            Err(anyhow::anyhow!("simulated crash (testing.crash_at)"))
        }
        () = shutdown => {
            info!("agent stopping");
            Ok(())
        }
    }
}

/// The core and the tasks carrying out its work, owned by one task.
struct Owner {
    core: Core,
    /// Running work by round, to abort on a cancel or a crash.
    jobs: HashMap<u64, Vec<AbortHandle>>,
}

impl Owner {
    fn abort_round(&mut self, round_id: u64) {
        for job in self.jobs.remove(&round_id).unwrap_or_default() {
            job.abort();
        }
    }

    fn abort_all(&mut self) {
        for (_, jobs) in self.jobs.drain() {
            for job in jobs {
                job.abort();
            }
        }
    }
}

type Call = Box<dyn FnOnce(&mut Owner) + Send>;

/// Starts the core's owner: it applies calls in order until every sender is gone.
fn spawn_owner(core: Core) -> (mpsc::UnboundedSender<Call>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
    let owner = tokio::spawn(async move {
        let mut owner = Owner {
            core,
            jobs: HashMap::new(),
        };
        while let Some(call) = rx.recv().await {
            call(&mut owner);
        }
    });
    (tx, owner)
}

struct Agent {
    /// This process's random name, so that the coordinator tells a reconnection from a
    /// second process with the same identity (a cloned machine), which it refuses.
    instance: String,
    config: AgentConfig,
    tls: ClientTls,
    egress: EgressLog,
    /// Last contact and federation schemas, for `doctor`.
    status: StatusFiles,
    clock: Arc<Clock>,
    /// To the core's owner.
    calls: mpsc::UnboundedSender<Call>,
    /// Signalled by `testing.crash_at`.
    crashed: tokio::sync::Notify,
    stats: Arc<AgentStats>,
    /// `minilm_lora` federations' base model and encoded texts.
    texts: Arc<crate::text::TextCache>,
}

type Client = AgentServiceClient<Channel>;

impl Agent {
    /// Runs `f` on the owner, after every call sent before it.
    async fn with_owner<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Owner) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |owner| {
            let _ = tx.send(f(owner));
        });
        if self.calls.send(call).is_err() {
            // The owner stops only when the agent does.
            std::future::pending::<()>().await;
        }
        match rx.await {
            Ok(value) => value,
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `f` on the core (see `Agent::with_owner`).
    async fn with_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> T + Send + 'static,
    ) -> T {
        self.with_owner(move |owner| f(&mut owner.core)).await
    }

    async fn connection_loop(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.session(&mut backoff).await {
                Ok(()) => info!("the coordinator closed the task stream; reconnecting"),
                Err(e) => {
                    // Revoked, or a certificate past its end: no retry will change that.
                    if let Some(status) = e.downcast_ref::<tonic::Status>()
                        && matches!(
                            status.code(),
                            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                        )
                    {
                        let reason = status.message().to_owned();
                        error!(%reason, "the coordinator refuses this facility; stopping");
                        return Err(harambee_link::process::Refused(format!(
                            "the coordinator refuses this facility: {reason}; the agent stops (re-enrol, or ask the national unit)"
                        ))
                        .into());
                    }
                    warn!("connection to the coordinator failed: {e:#}; retrying in {backoff:?}")
                }
            }
            tokio::time::sleep(backoff + jitter(backoff)).await;
            backoff = (backoff * 2).min(self.config.max_backoff());
        }
    }

    async fn session(self: &Arc<Self>, backoff: &mut Duration) -> anyhow::Result<()> {
        // The certificate may have been renewed since start-up (see `crate::renew`).
        let tls = crate::renew::current_tls(&self.config).unwrap_or_else(|_| self.tls.clone());
        let channel = tls::connect_via(
            &self.config.coordinator,
            &tls,
            &self.config.proxies,
            self.config.connect_timeout(),
        )
        .await?;
        let client = AgentServiceClient::new(channel)
            .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES);
        let request = pb::OpenTaskStreamRequest {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance: self.instance.clone(),
        };
        let mut tasks = client.clone().open_task_stream(request).await?.into_inner();
        self.status
            .contact(&self.config.coordinator, self.clock.unix_ms(), true);
        // Heartbeats on a connection of their own: on a slow link they would otherwise
        // queue behind an upload's bytes and the facility would be declared dead.
        let beats = tls::connect_via(
            &self.config.coordinator,
            &tls,
            &self.config.proxies,
            self.config.connect_timeout(),
        )
        .await?;
        *backoff = Duration::from_secs(1);
        info!("connected; waiting for tasks");
        let mut heartbeat =
            tokio::spawn(self.clone().heartbeat_loop(AgentServiceClient::new(beats)));
        let _stop_heartbeat = AbortOnDrop(heartbeat.abort_handle());
        let proofs = tokio::spawn(self.clone().proof_loop(client.clone()));
        let _stop_proofs = AbortOnDrop(proofs.abort_handle());
        loop {
            let task = tokio::select! {
                task = tasks.message() => match task? {
                    Some(task) => task,
                    None => break,
                },
                dead = &mut heartbeat => {
                    let silence = dead.unwrap_or_default();
                    anyhow::bail!("no heartbeat answered for {silence:.0?}: the link looks dead (a half-open connection?)");
                }
            };
            let now = self.clock.unix_ms();
            let actions = self
                .with_core(move |core| {
                    let handled = core.handle_task(now, task);
                    (
                        handled,
                        std::iter::from_fn(|| core.poll_action()).collect::<Vec<_>>(),
                    )
                })
                .await;
            let (handled, actions) = actions;
            // The privacy log could not be written: stop rather than act unrecorded.
            handled.context("writing the privacy log")?;
            for action in actions {
                self.carry_out(&client, action).await;
            }
        }
        Ok(())
    }

    /// Liveness, independent of task progress. The coordinator says how often. Returns
    /// when [`DEAD_LINK_BEATS`] heartbeats in a row failed (each waits at most twice the
    /// interval): how long nothing was answered.
    async fn heartbeat_loop(self: Arc<Self>, mut client: Client) -> Duration {
        let mut interval = Duration::from_secs(5);
        let mut failed = 0;
        let mut last_answer = tokio::time::Instant::now();
        loop {
            let (busy_round_id, privacy) = self
                .with_core(|core| (core.busy_round(), Some(core.privacy_status())))
                .await;
            if let Some(status) = &privacy {
                *self.stats.privacy.lock().unwrap() =
                    Some((status.epsilon_spent, status.max_epsilon));
            }
            let beat = client.heartbeat(pb::HeartbeatRequest {
                busy_round_id,
                privacy,
                instance: self.instance.clone(),
            });
            let answer = tokio::time::timeout((interval * 2).max(Duration::from_secs(1)), beat)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
            match answer {
                Ok(reply) => {
                    failed = 0;
                    last_answer = tokio::time::Instant::now();
                    self.stats.contact();
                    self.status
                        .contact(&self.config.coordinator, self.clock.unix_ms(), false);
                    let reply = reply.into_inner();
                    if !reply.notice.is_empty() {
                        warn!(notice = %reply.notice, "the coordinator says");
                    }
                    let ms = reply.interval_ms.clamp(100, 60_000);
                    interval = Duration::from_millis(ms.into());
                }
                Err(status) => {
                    warn!(%status, "heartbeat failed");
                    failed += 1;
                    if failed >= DEAD_LINK_BEATS {
                        return last_answer.elapsed();
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Apart from the heartbeats, so that a slow answer never delays liveness.
    async fn proof_loop(self: Arc<Self>, mut client: Client) {
        loop {
            self.fetch_ledger_proofs(&mut client).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// For each accepted update without a ledger proof yet, asks the coordinator for it,
    /// checks it (inclusion, signature, consistency with the last head seen), logs it and
    /// countersigns the head. A round not committed yet answers "not found": asked again at
    /// the next heartbeat.
    async fn fetch_ledger_proofs(&self, client: &mut Client) {
        let awaiting = self.with_core(|core| core.awaiting_proof()).await;
        for (federation, round_id) in awaiting {
            // The head checked last, which the one answered must extend.
            let known_tree_size = self.with_core(|core| core.known_tree_size()).await;
            let answer = match client
                .get_ledger_proof(pb::LedgerProofRequest {
                    round_id,
                    known_tree_size,
                })
                .await
            {
                Ok(answer) => answer.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                // The round ended without recording an upload the coordinator accepted.
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    let now = self.clock.unix_ms();
                    let problem = format!(
                        "the coordinator accepted this facility's upload but the ended round's ledger does not record it ({})",
                        status.message()
                    );
                    let logged = self
                        .with_core(move |core| core.alarm(now, &federation, round_id, problem))
                        .await;
                    if let Err(e) = logged {
                        error!("could not write the privacy log: {e:#}");
                    }
                    continue;
                }
                Err(status) => {
                    warn!(round_id, %status, "asking for the ledger proof failed; will retry");
                    continue;
                }
            };
            let now = self.clock.unix_ms();
            let checked = self
                .with_core(move |core| core.handle_proof(now, &federation, round_id, &answer))
                .await;
            match checked {
                Ok(ProofOutcome::Accepted(head, cosignature)) => {
                    info!(
                        round_id,
                        tree_size = head.head.tree_size,
                        "contribution found in the privacy ledger; tree head countersigned"
                    );
                    let request = cosign_request(&head, &cosignature);
                    if let Err(status) = client.cosign_tree_head(request).await {
                        warn!(round_id, %status, "sending the countersignature failed");
                    }
                }
                // Logged as an alarm by the core.
                Ok(ProofOutcome::Refused(_)) => {}
                // Asked again on the next pass.
                Ok(ProofOutcome::Deferred) => {}
                Err(e) => error!("could not write the privacy log: {e:#}"),
            }
        }
    }

    /// Asks the core whether the facility's policy admits training for `task` on `n_rows`
    /// rows; when it does not (the core logs why), tells the coordinator, so that the round
    /// does not wait for this facility. `None`: declined.
    async fn admit(
        &self,
        client: &mut Client,
        task: &pb::TrainTask,
        n_rows: usize,
        epochs: usize,
    ) -> anyhow::Result<Option<Option<DpSteps>>> {
        let now = self.clock.unix_ms();
        let asked = task.clone();
        let admitted = self
            .with_core(move |core| core.admit_training(now, &asked, n_rows, epochs))
            .await?;
        match admitted {
            Ok(dp) => Ok(Some(dp)),
            Err(refusal) => {
                client
                    .decline_task(pb::DeclineTaskRequest {
                        round_id: task.round_id,
                        reason: refusal.0,
                    })
                    .await?;
                Ok(None)
            }
        }
    }

    /// Carries out one of the core's actions.
    async fn carry_out(self: &Arc<Self>, client: &Client, action: Action) {
        match action {
            Action::Train(t) => {
                let round_id = t.round_id;
                let span = info_span!("train", round_id, federation = %t.federation);
                let agent = self.clone();
                let client = client.clone();
                self.start(
                    round_id,
                    TaskKind::Train,
                    async move { agent.train(client, t).await }.instrument(span),
                )
                .await;
            }
            Action::Evaluate(t) => {
                let round_id = t.round_id;
                let span = info_span!("evaluate", round_id, federation = %t.federation);
                let agent = self.clone();
                let client = client.clone();
                self.start(
                    round_id,
                    TaskKind::Evaluate,
                    async move { agent.evaluate(client, t).await }.instrument(span),
                )
                .await;
            }
            Action::Secure(stage) => self.secure_step(client.clone(), stage),
            Action::Decline { round_id, reason } => {
                let mut client = client.clone();
                tokio::spawn(async move {
                    if let Err(status) = client
                        .decline_task(pb::DeclineTaskRequest { round_id, reason })
                        .await
                    {
                        warn!(round_id, %status, "telling the coordinator of the refusal failed");
                    }
                });
            }
            Action::Abort { round_id } => {
                self.with_owner(move |owner| owner.abort_round(round_id))
                    .await;
            }
            Action::Crash { round_id, stage } => {
                error!(
                    round_id,
                    stage, "testing.crash_at: stopping dead as a crash would"
                );
                self.crashed.notify_one();
            }
        }
    }

    /// Runs a task's work; tells the core when it ends.
    async fn start(
        self: &Arc<Self>,
        round_id: u64,
        kind: TaskKind,
        job: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let agent = self.clone();
        let handle = tokio::spawn(async move {
            let result = job.await;
            if let Err(e) = &result {
                error!(round_id, task = ?kind, "task failed: {e:#}");
            }
            let succeeded = result.is_ok();
            agent
                .with_core(move |core| core.finished(round_id, kind, succeeded))
                .await;
        });
        let abort = handle.abort_handle();
        self.with_owner(move |owner| {
            owner.jobs.retain(|_, jobs| {
                jobs.retain(|j| !j.is_finished());
                !jobs.is_empty()
            });
            owner.jobs.entry(round_id).or_default().push(abort);
        })
        .await;
    }

    async fn train(self: Arc<Self>, mut client: Client, task: pb::TrainTask) -> anyhow::Result<()> {
        let (model, schema) = wire::model(task.model.as_ref())?;
        let epochs = task.config.as_ref().map_or(1, |c| c.epochs as usize);
        if let Some(synthetic) = self.config.testing.synthetic.clone() {
            let Some(dp) = self
                .admit(&mut client, &task, synthetic.n_samples as usize, epochs)
                .await?
            else {
                return Ok(());
            };
            let n = model.shared_len();
            let update = tokio::task::spawn_blocking(move || {
                synthetic_update(n, synthetic.seed ^ task.round_id)
            })
            .await?;
            let report = harambee_models::train::TrainReport {
                params: Vec::new(),
                mean_loss: 0.0,
                n_samples: synthetic.n_samples as usize,
            };
            return self
                .send_update(client, &task, update, report, dp, self.clock.now())
                .await;
        }
        let mut config = wire::train_config(task.config.as_ref())?;
        config.seed ^= task.round_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let base = self
            .download(&mut client, task.base.as_ref(), model.n_params())
            .await?;
        if let Some(text) = model.kind.text() {
            let text = text.clone();
            return self
                .train_text(client, task, model, text, config, base)
                .await;
        }
        // With a personalized model, train the global body under this facility's own head.
        let start = match self.with_own_head(&model, &task.federation, &base) {
            Ok(start) => start,
            Err(e) => return Err(self.decline_local(&mut client, &task, NO_TRAINING, e).await),
        };
        let (train, _) = match self.load_split(&task.federation, schema).await {
            Ok(split) => split,
            Err(e) => return Err(self.decline_local(&mut client, &task, NO_DATA, e).await),
        };
        let Some(dp) = self
            .admit(&mut client, &task, train.n_rows(), config.epochs)
            .await?
        else {
            return Ok(());
        };
        let dp_sgd = task.privacy.as_ref().and_then(|p| p.dp_sgd);
        info!(
            rows = train.n_rows(),
            epochs = config.epochs,
            dp_sgd = dp_sgd.is_some(),
            "training"
        );
        let started = self.clock.now();
        let timer = std::time::Instant::now();
        let trained = tokio::task::spawn_blocking({
            let start = start.clone();
            move || -> anyhow::Result<_> {
                let report = match dp_sgd {
                    Some(d) => {
                        let dp = harambee_models::dp::DpSgdConfig {
                            clip_norm: d.clip_norm,
                            noise_multiplier: d.noise_multiplier,
                            sampling_rate: d.sampling_rate,
                        };
                        // Batches and noise from a CSPRNG seeded by the operating system.
                        let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed(
                            rand::random(),
                        );
                        harambee_models::dp::train_dp(
                            &model, &start, &train, &config, &dp, &mut rng,
                        )?
                        .train
                    }
                    None => harambee_models::train::train(&model, &start, &train, &config)?,
                };
                Ok((report, model))
            }
        })
        .await?;
        self.stats.trained(timer.elapsed());
        let (report, model) = match trained {
            Ok(trained) => trained,
            Err(e) => return Err(self.decline_local(&mut client, &task, NO_TRAINING, e).await),
        };
        // Only the federated prefix leaves; the head stays here.
        let mut update = model.shared_update(&report.params, &start)?;
        clip_for_facility_dp(&mut update, task.privacy.as_ref());
        self.keep_head(&model, &task.federation, &report.params)?;
        self.send_update(client, &task, update, report, dp, started)
            .await
    }

    /// A local failure before anything left (the data cannot be read, training failed):
    /// logged here with its details and declined at once with `reason`, so that the round
    /// does not wait out its deadline for this facility. The details stay here: an error
    /// about a data row may quote the value in it.
    async fn decline_local(
        &self,
        client: &mut Client,
        task: &pb::TrainTask,
        reason: &str,
        error: anyhow::Error,
    ) -> anyhow::Error {
        error!(round_id = task.round_id, "{reason}: {error:#}");
        let request = pb::DeclineTaskRequest {
            round_id: task.round_id,
            reason: format!("{reason} (details in the facility's log)"),
        };
        if let Err(status) = client.decline_task(request).await {
            warn!(round_id = task.round_id, %status, "telling the coordinator failed");
        }
        error.context(reason.to_owned())
    }

    fn personal_path(&self, federation: &str, extension: &str) -> std::path::PathBuf {
        self.config
            .state_dir
            .join("personal")
            .join(format!("{federation}.{extension}"))
    }

    /// `global` with its head replaced by this facility's own, once it has one.
    fn with_own_head(
        &self,
        model: &ModelSpec,
        federation: &str,
        global: &[f32],
    ) -> anyhow::Result<Vec<f32>> {
        let shared = model.shared_len();
        if shared == model.n_params() {
            return Ok(global.to_vec());
        }
        match std::fs::read(self.personal_path(federation, "head.f32")) {
            Ok(bytes) => {
                let head = harambee_core::params::from_le_bytes(&bytes)?;
                match model.join_params(&global[..shared], &head) {
                    Ok(params) => Ok(params),
                    Err(e) => {
                        warn!("ignoring the stored head, which does not fit the model: {e}");
                        Ok(global.to_vec())
                    }
                }
            }
            Err(_) => Ok(global.to_vec()),
        }
    }

    fn keep_head(&self, model: &ModelSpec, federation: &str, params: &[f32]) -> anyhow::Result<()> {
        let (_, head) = model.split_params(params)?;
        if head.is_empty() {
            return Ok(());
        }
        let path = self.personal_path(federation, "head.f32");
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, harambee_core::params::to_le_bytes(head))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Sends a trained update: held for secure aggregation, or uploaded in plain.
    async fn send_update(
        &self,
        client: Client,
        task: &pb::TrainTask,
        update: Vec<f32>,
        report: harambee_models::train::TrainReport,
        dp: Option<DpSteps>,
        started: std::time::Instant,
    ) -> anyhow::Result<()> {
        let (clipping_norm, noise_multiplier) = task
            .privacy
            .as_ref()
            .and_then(|p| p.dp_sgd.as_ref())
            .map_or((0.0, 0.0), |d| (d.clip_norm, d.noise_multiplier));
        let terms = ReceiptTerms {
            federation: task.federation.clone(),
            aggregation: if task.secure.is_some() {
                Aggregation::Secure
            } else {
                Aggregation::Plain
            },
            secagg_params: None,
            dp,
            clipping_norm,
            noise_multiplier,
        };
        // The training loss is computed on the raw rows, outside DP-SGD's guarantee: under
        // DP it does not leave.
        let train_loss = if dp.is_some() { 0.0 } else { report.mean_loss };
        if let Some(secure) = &task.secure {
            // Secure aggregation: the update stays here until it leaves masked.
            let weight = (report.n_samples as u64).min(secure.max_weight.max(1));
            self.egress.keep_unmasked(task.round_id, &update)?;
            let round_id = task.round_id;
            let expectation = secure::expectation(task, secure, update.len(), &self.config.policy);
            self.with_core(move |core| core.hold(round_id, terms, update, weight, expectation))
                .await?;
            info!(
                loss = report.mean_loss,
                secs = started.elapsed().as_secs_f32(),
                "trained; holding the update for secure aggregation"
            );
            self.egress.append(&EgressRecord {
                unix_ms: self.clock.unix_ms(),
                kind: "trained",
                federation: &task.federation,
                round_id: task.round_id,
                bytes: 0,
                sha256: None,
                n_samples: report.n_samples as u64,
            })?;
            let trained = pb::Trained {
                n_samples: report.n_samples as u64,
                train_loss,
            };
            let submission = pb::SecAggSubmission {
                round_id: task.round_id,
                part: Some(pb::sec_agg_submission::Part::Trained(trained)),
                known_tree_size: 0,
            };
            return retry_until(
                &self.clock,
                task.deadline_unix_ms,
                "training report",
                || {
                    let mut client = client.clone();
                    let submission = submission.clone();
                    async move { client.submit_sec_agg(submission).await.map(|_| ()) }
                },
            )
            .await;
        }
        let payload = harambee_core::params::to_le_bytes(&update);
        let digest = harambee_privacy::ledger::Sha256Digest::of(&payload);
        let sha256 = digest.to_hex();
        info!(
            loss = report.mean_loss,
            secs = started.elapsed().as_secs_f32(),
            "trained; uploading update"
        );
        self.egress.keep_payload(&sha256, &payload)?;
        self.egress.append(&EgressRecord {
            unix_ms: self.clock.unix_ms(),
            kind: "update",
            federation: &task.federation,
            round_id: task.round_id,
            bytes: payload.len() as u64,
            sha256: Some(&sha256),
            n_samples: report.n_samples as u64,
        })?;
        let receipt = {
            let now = self.clock.unix_ms();
            let (round_id, bytes) = (task.round_id, payload.len() as u64);
            self.with_core(move |core| core.sign_egress(now, &terms, round_id, digest, bytes))
                .await?
        };
        let header = pb::UpdateHeader {
            round_id: task.round_id,
            n_params: update.len() as u64,
            n_samples: report.n_samples as u64,
            sha256,
            train_loss,
            masked: false,
            receipt: serde_json::to_string(&receipt)?,
        };
        self.stats.add(payload.len());
        let payload = Arc::new(payload);
        retry_until(&self.clock, task.deadline_unix_ms, "upload", || {
            let mut client = client.clone();
            let header = header.clone();
            let payload = payload.clone();
            async move { transfer::upload_update(&mut client, header, payload).await }
        })
        .await?;
        info!("update accepted");
        let now = self.clock.unix_ms();
        let (federation, round_id) = (task.federation.clone(), task.round_id);
        self.with_core(move |core| core.accepted(now, &federation, round_id))
            .await
    }

    async fn evaluate(
        self: Arc<Self>,
        mut client: Client,
        task: pb::EvaluateTask,
    ) -> anyhow::Result<()> {
        if self.config.testing.synthetic.is_some() {
            let metrics = wire::metrics(&harambee_models::metrics::Metrics {
                n_samples: 1,
                loss: 0.0,
                accuracy: 0.0,
                ..Default::default()
            });
            client
                .report_metrics(pb::ReportMetricsRequest {
                    round_id: task.round_id,
                    metrics: Some(metrics),
                    withheld: false,
                })
                .await?;
            return Ok(());
        }
        let (model, schema) = wire::model(task.model.as_ref())?;
        let candidate_ref = task
            .candidate
            .clone()
            .context("evaluate task names no model")?;
        let candidate = self
            .download(&mut client, Some(&candidate_ref), model.n_params())
            .await?;
        if let Some(text) = model.kind.text() {
            let text = text.clone();
            return self
                .evaluate_text(client, task, model, text, candidate)
                .await;
        }
        let params = self.with_own_head(&model, &task.federation, &candidate)?;
        let (train, test) = self.load_split(&task.federation, schema.clone()).await?;
        let fine_tune = self.config.fine_tune.clone();
        let train_config = wire::train_config(task.config.as_ref()).ok();
        let (metrics, personal) = tokio::task::spawn_blocking({
            let model = model.clone();
            let params = params.clone();
            move || -> anyhow::Result<_> {
                let metrics = harambee_models::train::evaluate(&model, &params, &test)?;
                let personal = match (fine_tune, train_config) {
                    (Some(fine), Some(federation)) => {
                        let tuned = harambee_models::train::fine_tune(
                            &model,
                            &params,
                            &train,
                            &federation,
                            &fine,
                        )?;
                        let local = harambee_models::train::evaluate(&model, &tuned.params, &test)?;
                        Some((tuned.params, local))
                    }
                    _ => None,
                };
                Ok((metrics, personal))
            }
        })
        .await??;
        info!(
            auc = metrics.auc,
            accuracy = metrics.accuracy,
            loss = metrics.loss,
            n = metrics.n_samples,
            "evaluated candidate"
        );
        // The facility's own model: fine-tuned when configured, else the global body under its
        // own head. It is kept here, never sent.
        let (personal_params, note) = match personal {
            Some((tuned, local)) => {
                info!(
                    auc = local.auc,
                    accuracy = local.accuracy,
                    "fine-tuned the global model locally"
                );
                (tuned, "fine-tuned")
            }
            None => (params, "global"),
        };
        let checkpoint = harambee_models::checkpoint::Checkpoint {
            spec: model,
            schema,
            params: personal_params,
            federation: task.federation.clone(),
            version: candidate_ref.version.into(),
        };
        let path = self.personal_path(&task.federation, "safetensors");
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        harambee_models::checkpoint::save_file(&path, &checkpoint)?;
        info!(path = %path.display(), model = note, "personal model saved");
        self.report_metrics(client, &task, metrics).await
    }

    /// Reports held-out metrics, or withholds them when the held-out cohort is below the
    /// policy's minimum.
    async fn report_metrics(
        &self,
        client: Client,
        task: &pb::EvaluateTask,
        metrics: harambee_models::metrics::Metrics,
    ) -> anyhow::Result<()> {
        let min_cohort = self.config.policy.min_cohort;
        let withheld = metrics.n_samples < min_cohort.max(1);
        if withheld {
            info!(
                rows = metrics.n_samples,
                min_cohort, "held-out cohort below the policy minimum; metrics withheld"
            );
        } else {
            self.egress.append(&EgressRecord {
                unix_ms: self.clock.unix_ms(),
                kind: "metrics",
                federation: &task.federation,
                round_id: task.round_id,
                bytes: 0,
                sha256: None,
                n_samples: metrics.n_samples,
            })?;
        }
        let request = pb::ReportMetricsRequest {
            round_id: task.round_id,
            metrics: (!withheld).then(|| wire::metrics(&metrics)),
            withheld,
        };
        retry_until(&self.clock, task.deadline_unix_ms, "metrics report", || {
            let mut client = client.clone();
            async move { client.report_metrics(request).await.map(|_| ()) }
        })
        .await
    }

    /// One secure-aggregation step: advance the round's client, send its answer.
    fn secure_step(self: &Arc<Self>, client: Client, stage: secure::Stage) {
        let agent = self.clone();
        let span = info_span!("secagg", round_id = stage.round_id(), stage = stage.name());
        tokio::spawn(
            async move {
                if let Err(e) = agent.run_secure_step(client, stage).await {
                    error!("secure aggregation step failed: {e:#}");
                }
            }
            .instrument(span),
        );
    }

    async fn run_secure_step(
        self: Arc<Self>,
        client: Client,
        stage: secure::Stage,
    ) -> anyhow::Result<()> {
        let round_id = stage.round_id();
        let deadline = stage.deadline_unix_ms();
        if let secure::Stage::ShareKeys(task) = &stage {
            // Every peer's key must be the one the ledger enrolled, in a head this facility
            // checks and countersigns, before its client sees any of them.
            let (task, now) = (task.clone(), self.clock.unix_ms());
            let checked = self
                .with_core(move |core| core.check_peer_keys(now, &task))
                .await?;
            match checked {
                Ok((head, cosignature)) => {
                    let request = cosign_request(&head, &cosignature);
                    let mut client = client.clone();
                    tokio::spawn(async move {
                        if let Err(status) = client.cosign_tree_head(request).await {
                            warn!(%status, "sending the countersignature failed");
                        }
                    });
                }
                Err(reason) => {
                    warn!(round_id, %reason, "secure-aggregation step refused");
                    let mut client = client.clone();
                    client
                        .decline_task(pb::DeclineTaskRequest {
                            round_id,
                            reason: reason.clone(),
                        })
                        .await?;
                    anyhow::bail!(reason);
                }
            }
        }
        // The step (mask expansion) runs away from the core, on a blocking thread.
        let mut clients = self
            .with_core(move |core| core.detach_secure(round_id))
            .await;
        let (clients, reply) = tokio::task::spawn_blocking(move || {
            let reply = clients.step(stage);
            (clients, reply)
        })
        .await?;
        let federation = clients.federation_of(round_id).unwrap_or_default();
        let accepted = clients
            .accepted_params(round_id)
            .map(harambee_privacy::ledger::Sha256Digest);
        let now = self.clock.unix_ms();
        self.with_core(move |core| core.attach_secure(now, clients))
            .await?;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                // Parameters the facility does not accept, or a request its client will not
                // answer (below n_min, a set it did not sign, a bad proof): the facility's
                // rule, not a fault. Say so in the privacy log and to the coordinator, so
                // that the round does not wait for this facility.
                let refused = e.chain().any(|c| {
                    c.downcast_ref::<harambee_secagg::ParamsMismatch>()
                        .is_some()
                        || c.downcast_ref::<harambee_secagg::ClientError>().is_some()
                        || c.downcast_ref::<secure::PeerKeyChanged>().is_some()
                });
                if refused {
                    let reason = format!("{e:#}");
                    warn!(round_id, %reason, "secure-aggregation step refused");
                    let now = self.clock.unix_ms();
                    let (f, r) = (federation.clone(), reason.clone());
                    self.with_core(move |core| core.refuse_secure(now, &f, round_id, &r))
                        .await?;
                    let mut client = client.clone();
                    client
                        .decline_task(pb::DeclineTaskRequest { round_id, reason })
                        .await?;
                }
                return Err(e);
            }
        };
        match reply {
            Reply::Submit(part) => {
                use pb::sec_agg_submission::Part;
                let (kind, encoded) = match &part {
                    Part::Advertise(b) => ("secagg-advertisement", b.clone()),
                    Part::ConsistencySignature(b) => ("secagg-signature", b.clone()),
                    Part::Unmask(b) => ("secagg-unmask-shares", b.clone()),
                    Part::Shares(s) => ("secagg-key-shares", prost::Message::encode_to_vec(s)),
                    Part::Trained(t) => ("trained", prost::Message::encode_to_vec(t)),
                };
                // Every protocol message that leaves is in the egress log too, with the
                // digest of its bytes: a facility can tell what it revealed in each round.
                let sha256 = hex::encode(Sha256::digest(&encoded));
                let (unix_ms, bytes) = (self.clock.unix_ms(), encoded.len() as u64);
                // Flushed to disk before the message leaves, off the async workers (many
                // agents in one process would otherwise queue behind each other's fsyncs).
                let agent = self.clone();
                let logged = federation.clone();
                tokio::task::spawn_blocking(move || {
                    let federation = logged;
                    agent.egress.append(&EgressRecord {
                        unix_ms,
                        kind,
                        federation: &federation,
                        round_id,
                        bytes,
                        sha256: Some(&sha256),
                        n_samples: 0,
                    })
                })
                .await??;
                // With the advertisement, the ledger head the peer-key stage must extend,
                // held there until then (a stage's deadline, and as long again, at most).
                let known_tree_size = if matches!(part, Part::Advertise(_)) {
                    let now = self.clock.unix_ms();
                    let until = deadline + (deadline - now).max(0);
                    let federation = federation.clone();
                    self.with_core(move |core| core.hold_head(now, &federation, round_id, until))
                        .await
                } else {
                    0
                };
                let submission = pb::SecAggSubmission {
                    round_id,
                    part: Some(part),
                    known_tree_size,
                };
                self.stats.add(prost::Message::encoded_len(&submission));
                retry_until(&self.clock, deadline, "secure-aggregation message", || {
                    let mut client = client.clone();
                    let submission = submission.clone();
                    async move { client.submit_sec_agg(submission).await.map(|_| ()) }
                })
                .await
            }
            Reply::Masked { words, n_words } => {
                let digest = harambee_privacy::ledger::Sha256Digest::of(&words);
                let sha256 = digest.to_hex();
                self.egress.keep_payload(&sha256, &words)?;
                self.egress.append(&EgressRecord {
                    unix_ms: self.clock.unix_ms(),
                    kind: "masked-update",
                    federation: &federation,
                    round_id,
                    bytes: words.len() as u64,
                    sha256: Some(&sha256),
                    n_samples: 0,
                })?;
                let now = self.clock.unix_ms();
                let words = Arc::new(words);
                let bytes = words.len() as u64;
                let (receipt, federation) = self
                    .with_core(move |core| {
                        let mut terms = core.held_terms(round_id).unwrap_or(ReceiptTerms {
                            federation,
                            aggregation: Aggregation::Secure,
                            secagg_params: None,
                            dp: None,
                            clipping_norm: 0.0,
                            noise_multiplier: 0.0,
                        });
                        terms.secagg_params = accepted;
                        core.sign_egress(now, &terms, round_id, digest, bytes)
                            .map(|receipt| (receipt, terms.federation))
                    })
                    .await?;
                let header = pb::UpdateHeader {
                    round_id,
                    n_params: n_words as u64,
                    n_samples: 0,
                    sha256,
                    train_loss: 0.0,
                    masked: true,
                    receipt: serde_json::to_string(&receipt)?,
                };
                self.stats.add(words.len());
                retry_until(&self.clock, deadline, "masked upload", || {
                    let mut client = client.clone();
                    let header = header.clone();
                    let payload = words.clone();
                    async move { transfer::upload_update(&mut client, header, payload).await }
                })
                .await?;
                info!("masked update accepted");
                let now = self.clock.unix_ms();
                self.with_core(move |core| core.accepted(now, &federation, round_id))
                    .await
            }
        }
    }

    /// Downloads the model `model_ref` names (through the cache) and checks its length.
    async fn download(
        &self,
        client: &mut Client,
        model_ref: Option<&pb::ModelRef>,
        n_params: usize,
    ) -> anyhow::Result<Vec<f32>> {
        let model_ref = model_ref.context("the task names no model")?;
        let params = transfer::download_model(
            client,
            model_ref,
            &self.cache_dir(),
            self.config.cache.keep_models,
        )
        .await?;
        if params.len() != n_params {
            bail!(
                "the model has {} parameters, the model spec {n_params}",
                params.len(),
            );
        }
        Ok(params)
    }

    /// A `minilm_lora` federation's base model and this facility's encoded texts; on failure,
    /// declines the task with the reason.
    async fn text_local(
        &self,
        client: &mut Client,
        federation: &str,
        round_id: u64,
        text: &harambee_models::text::TextTask,
    ) -> anyhow::Result<Arc<crate::text::TextLocal>> {
        let loaded = tokio::task::spawn_blocking({
            let (cache, federation, text, data) = (
                self.texts.clone(),
                federation.to_owned(),
                text.clone(),
                self.config.data.clone(),
            );
            move || cache.get(&federation, &text, &data)
        })
        .await?;
        let (reason, error) = match loaded {
            Ok(local) => return Ok(local),
            Err(crate::text::Unavailable::Base(e)) => (NO_BASE_MODEL, e),
            Err(crate::text::Unavailable::Data(e)) => (NO_DATA, e),
        };
        error!(round_id, "{reason}: {error:#}");
        let request = pb::DeclineTaskRequest {
            round_id,
            reason: format!("{reason} (details in the facility's log)"),
        };
        if let Err(status) = client.decline_task(request).await {
            warn!(round_id, %status, "telling the coordinator failed");
        }
        Err(error.context(reason))
    }

    /// [`Agent::train`] for a `minilm_lora` model: LoRA adapters and head trained on the
    /// facility's texts above the frozen layers, with text-level DP-SGD when the federation
    /// asks; only they travel, or only the adapters when the federation keeps heads local
    /// (this facility's head then stays here, as for a personalized model).
    async fn train_text(
        self: Arc<Self>,
        mut client: Client,
        task: pb::TrainTask,
        model: ModelSpec,
        text: harambee_models::text::TextTask,
        config: harambee_models::train::TrainConfig,
        base: Vec<f32>,
    ) -> anyhow::Result<()> {
        let local = self
            .text_local(&mut client, &task.federation, task.round_id, &text)
            .await?;
        // With local heads, train the global adapters under this facility's own head.
        let start = match self.with_own_head(&model, &task.federation, &base) {
            Ok(start) => start,
            Err(e) => return Err(self.decline_local(&mut client, &task, NO_TRAINING, e).await),
        };
        let n_train = local.train_labels.len();
        let Some(dp) = self
            .admit(&mut client, &task, n_train, config.epochs)
            .await?
        else {
            return Ok(());
        };
        let dp_sgd = task.privacy.as_ref().and_then(|p| p.dp_sgd);
        info!(
            texts = n_train,
            epochs = config.epochs,
            dp_sgd = dp_sgd.is_some(),
            local_head = text.local_head,
            "training LoRA adapters"
        );
        let started = self.clock.now();
        let timer = std::time::Instant::now();
        let trained = tokio::task::spawn_blocking({
            let (local, start) = (local.clone(), start.clone());
            move || match dp_sgd {
                Some(d) => {
                    let dp = harambee_models::dp::DpSgdConfig {
                        clip_norm: d.clip_norm,
                        noise_multiplier: d.noise_multiplier,
                        sampling_rate: d.sampling_rate,
                    };
                    // Batches and noise from a CSPRNG seeded by the operating system.
                    let mut rng = <chacha20::ChaCha20Rng as rand_core::SeedableRng>::from_seed(
                        rand::random(),
                    );
                    harambee_models::text::dp::train_features_dp(
                        &local.model,
                        &local.spec,
                        &start,
                        &local.train,
                        &local.train_labels,
                        &config,
                        false,
                        &dp,
                        &mut rng,
                    )
                    .map(|report| report.train)
                }
                None => harambee_models::text::train::train_features(
                    &local.model,
                    &local.spec,
                    &start,
                    &local.train,
                    &local.train_labels,
                    &config,
                    false,
                )
                .map(|report| harambee_models::train::TrainReport {
                    params: report.params,
                    mean_loss: report.mean_loss,
                    n_samples: report.n_samples,
                }),
            }
        })
        .await?;
        self.stats.trained(timer.elapsed());
        let report = match trained {
            Ok(report) => report,
            Err(e) => {
                return Err(self
                    .decline_local(&mut client, &task, NO_TRAINING, e.into())
                    .await);
            }
        };
        // Only the federated prefix leaves; with local heads, the head stays here.
        let mut update = model.shared_update(&report.params, &start)?;
        clip_for_facility_dp(&mut update, task.privacy.as_ref());
        self.keep_head(&model, &task.federation, &report.params)?;
        self.send_update(client, &task, update, report, dp, started)
            .await
    }

    /// [`Agent::evaluate`] for a `minilm_lora` model: accuracy and loss on the held-out
    /// texts (no AUC: the classes are many), of the candidate's adapters under this
    /// facility's own head when the federation keeps heads local. The classifier evaluated is
    /// kept here in PEFT's layout.
    async fn evaluate_text(
        self: Arc<Self>,
        mut client: Client,
        task: pb::EvaluateTask,
        model: ModelSpec,
        text: harambee_models::text::TextTask,
        candidate: Vec<f32>,
    ) -> anyhow::Result<()> {
        let params = self.with_own_head(&model, &task.federation, &candidate)?;
        let local = self
            .text_local(&mut client, &task.federation, task.round_id, &text)
            .await?;
        if local.test_labels.is_empty() {
            // Nothing held out: nothing to measure (withheld, as below any minimum cohort).
            let nothing = harambee_models::metrics::Metrics::default();
            return self.report_metrics(client, &task, nothing).await;
        }
        let adapter_dir = self.personal_path(&task.federation, "adapter");
        let metrics = tokio::task::spawn_blocking({
            let (local, adapter_dir) = (local.clone(), adapter_dir.clone());
            move || -> anyhow::Result<_> {
                let metrics = harambee_models::text::train::evaluate_features(
                    &local.model,
                    &local.spec,
                    &params,
                    &local.test,
                    &local.test_labels,
                )?;
                harambee_models::text::lora::export_peft(
                    &local.spec,
                    &params,
                    local.model.sha256(),
                    &adapter_dir,
                )?;
                Ok(metrics)
            }
        })
        .await??;
        info!(
            accuracy = metrics.accuracy,
            macro_f1 = metrics.macro_f1,
            loss = metrics.loss,
            n = metrics.n,
            adapter = %adapter_dir.display(),
            "evaluated candidate"
        );
        let metrics = harambee_models::metrics::Metrics {
            n_samples: metrics.n as u64,
            loss: metrics.loss,
            accuracy: metrics.accuracy,
            auc: f64::NAN,
            n_positives: 0,
            sensitivity: f64::NAN,
            specificity: f64::NAN,
            ece: f64::NAN,
        };
        self.report_metrics(client, &task, metrics).await
    }

    /// The facility's data, encoded by the federation's schema, split into (train, held-out).
    async fn load_split(
        &self,
        federation: &str,
        schema: Schema,
    ) -> anyhow::Result<(Dataset, Dataset)> {
        self.status.schema(federation, &schema);
        let data_config = self.config.data.clone();
        let fraction = self.config.data.holdout_fraction;
        let seed = self.config.data.split_seed;
        let federation = federation.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Dataset, Dataset)> {
            let loaded = data_config.load(&schema)?;
            // Counts only: where each problem is, with its value, is for `data check`.
            if loaded.report.issues_total > 0 {
                warn!(
                    %federation,
                    "{}; `harambee-agent data check` names each by file, line and column",
                    loaded.report.summary()
                );
            }
            Ok(split_holdout(&loaded.data, fraction, seed))
        })
        .await?
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.join("models")
    }
}

/// Retries a call on transient failures (the link, a checksum) until the task's deadline;
/// gives up at once when the coordinator refuses it for good.
async fn retry_until<F, Fut>(
    clock: &Clock,
    deadline_unix_ms: i64,
    what: &str,
    mut call: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut pause = Duration::from_millis(500);
    loop {
        let status = match call().await {
            Ok(()) => return Ok(()),
            Err(status) => status,
        };
        let transient = matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DataLoss
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
        );
        if !transient {
            bail!("coordinator refused the {what}: {}", status.message());
        }
        if clock.unix_ms() + pause.as_millis() as i64 > deadline_unix_ms {
            bail!(
                "{what} failed and the task's deadline has passed: {}",
                status.message()
            );
        }
        warn!(%status, "{what} failed; retrying in {pause:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Facility-level DP (distributed or central mechanism): the update is scaled down to the
/// federation's L2 clipping norm, the sensitivity the noise on the sum is calibrated to.
fn clip_for_facility_dp(update: &mut [f32], privacy: Option<&pb::PrivacyConfig>) {
    let Some(p) = privacy else { return };
    if matches!(p.mechanism.as_str(), "" | "none")
        || p.clip_norm.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return;
    }
    let norm = update
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if norm > p.clip_norm {
        // A hair under the norm, so rounding to f32 cannot land above it.
        let scale = (p.clip_norm / norm * (1.0 - 1e-6)) as f32;
        for v in update.iter_mut() {
            *v *= scale;
        }
    }
}

/// A random update with coordinates in [-0.01, 0.01], for benchmarks.
fn synthetic_update(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-0.01f32..0.01)).collect()
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The countersignature of a head this facility checked, as the coordinator takes it.
fn cosign_request(
    head: &harambee_privacy::ledger::SignedTreeHead,
    cosignature: &harambee_privacy::ledger::Cosignature,
) -> pb::CosignTreeHeadRequest {
    pb::CosignTreeHeadRequest {
        signed_tree_head: serde_json::to_string(head).expect("a head serializes"),
        cosignature: serde_json::to_string(cosignature).expect("a cosignature serializes"),
    }
}

/// Heartbeats failed in a row after which the session is dropped and opened again.
const DEAD_LINK_BEATS: u32 = 3;

fn jitter(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random::<f64>() * 0.25)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Under paused time: the backoff runs on the injected clock, so a minute of retries
    /// takes no real time, and the deadline on the task is honoured to the backoff step.
    #[tokio::test(start_paused = true)]
    async fn retries_back_off_until_the_task_deadline_then_give_up() {
        let clock = Clock::system();
        let started = clock.unix_ms();
        let calls = AtomicUsize::new(0);
        let err = retry_until(&clock, started + 60_000, "upload", || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(tonic::Status::unavailable("link down")) }
        })
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("deadline has passed"),
            "{err:#}"
        );
        let waited = clock.unix_ms() - started;
        // 0.5 + 1 + 2 + 4 + 8 + 16 s of backoff; the next pause (30 s) would pass it.
        assert_eq!(waited, 31_500);
        assert_eq!(calls.load(Ordering::Relaxed), 7);

        // A refusal for good is not retried.
        let calls = AtomicUsize::new(0);
        let err = retry_until(&clock, clock.unix_ms() + 60_000, "upload", || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(tonic::Status::permission_denied("revoked")) }
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("refused the upload"), "{err:#}");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
