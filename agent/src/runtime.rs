//! The agent's life: connect out, hold the task stream, heartbeat, carry out tasks, and
//! reconnect with backoff whenever the link drops. Training runs on a blocking thread so the
//! stream and heartbeats stay responsive however long it takes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use harambee_link::convert as wire;
use harambee_link::identity::{PeerVerifier, signing_key_from_pem};
use harambee_link::tls::{self, ClientTls};
use harambee_models::data::{Dataset, Schema, load_csv, split_holdout};
use harambee_models::model::ModelSpec;
use harambee_privacy::log::Record;
use harambee_privacy::policy::DpSteps;
use harambee_proto::pb::{self, agent_service_client::AgentServiceClient, task::Kind};
use sha2::{Digest, Sha256};
use tokio::task::AbortHandle;
use tonic::transport::Channel;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::AgentConfig;
use crate::egress::{EgressLog, EgressRecord};
use crate::privacy::{Privacy, ReceiptTerms};
use crate::secure::{self, Reply, SecureClients};
use crate::transfer;

/// What an agent has sent, for benchmarks.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Bytes of updates, masked inputs, secure-aggregation messages and metrics sent.
    pub bytes_sent: std::sync::atomic::AtomicU64,
}

impl AgentStats {
    fn add(&self, bytes: usize) {
        self.bytes_sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_stats(config, shutdown, Arc::default()).await
}

/// [`run`], counting what is sent into `stats`.
pub async fn run_with_stats(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    stats: Arc<AgentStats>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
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
    let signing_key = Some(signing_key);
    let agent = Arc::new(Agent {
        egress: EgressLog::new(&config.state_dir, config.egress.keep_payloads),
        config,
        tls,
        work: Mutex::default(),
        secure: Arc::new(Mutex::new(SecureClients::new(signing_key, verifier))),
        crashed: tokio::sync::Notify::new(),
        stats,
        privacy: Mutex::new(privacy),
        held_terms: Mutex::default(),
    });
    info!(coordinator = %agent.config.coordinator, data = %agent.config.data.csv.display(), "agent starting");
    let _renewal = crate::renew::spawn(agent.config.clone());
    tokio::select! {
        result = agent.connection_loop() => result,
        () = agent.crashed.notified() => {
            agent.abort_all_work();
            Err(anyhow::anyhow!("simulated crash (testing.crash_at)"))
        }
        () = shutdown => {
            info!("agent stopping");
            Ok(())
        }
    }
}

struct Agent {
    config: AgentConfig,
    tls: ClientTls,
    egress: EgressLog,
    /// Tasks running or finished, by (round, kind): a task resent after a reconnect is not
    /// done twice. Failed tasks are forgotten so that a resend retries them.
    work: Mutex<HashMap<(u64, TaskKind), Work>>,
    /// Secure-aggregation clients by round.
    secure: Arc<Mutex<SecureClients>>,
    /// Signalled by `testing.crash_at`.
    crashed: tokio::sync::Notify,
    stats: Arc<AgentStats>,
    /// Policy, accountant, receipts and the privacy log.
    privacy: Mutex<Privacy>,
    /// The receipt terms of an update held for secure aggregation, fixed when it was
    /// trained, by round.
    held_terms: Mutex<HashMap<u64, ReceiptTerms>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TaskKind {
    Train,
    Evaluate,
}

enum Work {
    Running(AbortHandle),
    Done,
}

type Client = AgentServiceClient<Channel>;

impl Agent {
    async fn connection_loop(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.session(&mut backoff).await {
                Ok(()) => info!("the coordinator closed the task stream; reconnecting"),
                Err(e) => {
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
        let channel = tls::connect(
            &self.config.coordinator,
            &tls,
            self.config.connect_timeout(),
        )
        .await?;
        let client = AgentServiceClient::new(channel)
            .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES);
        let request = pb::OpenTaskStreamRequest {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let mut tasks = client.clone().open_task_stream(request).await?.into_inner();
        *backoff = Duration::from_secs(1);
        info!("connected; waiting for tasks");
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(client.clone()));
        let _stop_heartbeat = AbortOnDrop(heartbeat.abort_handle());
        let proofs = tokio::spawn(self.clone().proof_loop(client.clone()));
        let _stop_proofs = AbortOnDrop(proofs.abort_handle());
        while let Some(task) = tasks.message().await? {
            self.dispatch(client.clone(), task);
        }
        Ok(())
    }

    /// Liveness, independent of task progress. The coordinator says how often.
    async fn heartbeat_loop(self: Arc<Self>, mut client: Client) {
        let mut interval = Duration::from_secs(5);
        loop {
            let busy_round_id = self.busy_round();
            let privacy = Some(self.privacy.lock().unwrap().status());
            match client
                .heartbeat(pb::HeartbeatRequest {
                    busy_round_id,
                    privacy,
                })
                .await
            {
                Ok(reply) => {
                    let ms = reply.into_inner().interval_ms.clamp(100, 60_000);
                    interval = Duration::from_millis(ms.into());
                }
                Err(status) => warn!(%status, "heartbeat failed"),
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
        let awaiting = self.privacy.lock().unwrap().awaiting_proof();
        for (federation, round_id) in awaiting {
            let known_tree_size = self
                .privacy
                .lock()
                .unwrap()
                .log
                .last_head()
                .map_or(0, |(h, _)| h.head.tree_size);
            let answer = match client
                .get_ledger_proof(pb::LedgerProofRequest {
                    round_id,
                    known_tree_size,
                })
                .await
            {
                Ok(answer) => answer.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                Err(status) => {
                    warn!(round_id, %status, "asking for the ledger proof failed; will retry");
                    continue;
                }
            };
            let checked = self
                .privacy
                .lock()
                .unwrap()
                .accept_proof(&federation, round_id, &answer);
            match checked {
                Ok((head, cosignature)) => {
                    info!(
                        round_id,
                        tree_size = head.head.tree_size,
                        "contribution found in the privacy ledger; tree head countersigned"
                    );
                    let request = pb::CosignTreeHeadRequest {
                        signed_tree_head: serde_json::to_string(&head).expect("serializes"),
                        cosignature: serde_json::to_string(&cosignature).expect("serializes"),
                    };
                    if let Err(status) = client.cosign_tree_head(request).await {
                        warn!(round_id, %status, "sending the countersignature failed");
                    }
                }
                Err(e) => {
                    let problem = format!("{e:#}");
                    error!(round_id, %problem, "the coordinator's ledger proof does not verify");
                    let alarm = Record::Alarm {
                        federation: federation.clone(),
                        round_id,
                        problem,
                    };
                    if let Err(e) = self.privacy.lock().unwrap().log.append(now_ms(), alarm) {
                        error!("could not write the privacy log: {e:#}");
                    }
                }
            }
        }
    }

    /// Declines a task the facility's policy forbids: says why in the log and the privacy
    /// log, and tells the coordinator so that the round does not wait for it.
    async fn decline(
        &self,
        client: &mut Client,
        federation: &str,
        round_id: u64,
        reason: String,
    ) -> anyhow::Result<()> {
        warn!(round_id, federation, %reason, "task refused by the facility's policy");
        self.privacy.lock().unwrap().log.append(
            now_ms(),
            Record::Refusal {
                federation: federation.to_owned(),
                round_id,
                reason: reason.clone(),
            },
        )?;
        client
            .decline_task(pb::DeclineTaskRequest { round_id, reason })
            .await?;
        Ok(())
    }

    fn busy_round(&self) -> u64 {
        let work = self.work.lock().unwrap();
        work.iter()
            .filter(|(_, w)| matches!(w, Work::Running(_)))
            .map(|((round, _), _)| *round)
            .max()
            .unwrap_or(0)
    }

    fn dispatch(self: &Arc<Self>, client: Client, task: pb::Task) {
        match task.kind {
            Some(Kind::Train(t)) => {
                let round_id = t.round_id;
                let span = info_span!("train", round_id, federation = %t.federation);
                let agent = self.clone();
                self.start(
                    round_id,
                    TaskKind::Train,
                    async move { agent.train(client, t).await }.instrument(span),
                );
            }
            Some(Kind::Evaluate(t)) => {
                let round_id = t.round_id;
                let span = info_span!("evaluate", round_id, federation = %t.federation);
                let agent = self.clone();
                self.start(
                    round_id,
                    TaskKind::Evaluate,
                    async move { agent.evaluate(client, t).await }.instrument(span),
                );
            }
            Some(Kind::SecaggAdvertise(t)) => self.secure_step(client, secure::Stage::Advertise(t)),
            Some(Kind::SecaggShareKeys(t)) => self.secure_step(client, secure::Stage::ShareKeys(t)),
            Some(Kind::SecaggMaskedInput(t)) => {
                self.secure_step(client, secure::Stage::MaskedInput(t))
            }
            Some(Kind::SecaggUnmask(t)) => self.secure_step(client, secure::Stage::Unmask(t)),
            Some(Kind::SecaggConsistency(t)) => {
                self.secure_step(client, secure::Stage::Consistency(t))
            }
            Some(Kind::Cancel(c)) => {
                info!(round_id = c.round_id, reason = %c.reason, "coordinator cancelled the round's work");
                self.secure.lock().unwrap().forget(c.round_id);
                let mut work = self.work.lock().unwrap();
                for ((round, _), w) in work.iter_mut() {
                    if *round == c.round_id
                        && let Work::Running(handle) = w
                    {
                        handle.abort();
                        *w = Work::Done;
                    }
                }
            }
            None => warn!("ignoring a task of a kind this agent does not know"),
        }
    }

    fn start(
        self: &Arc<Self>,
        round_id: u64,
        kind: TaskKind,
        job: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let key = (round_id, kind);
        let mut work = self.work.lock().unwrap();
        if work.contains_key(&key) {
            return;
        }
        let agent = self.clone();
        let handle = tokio::spawn(async move {
            let result = job.await;
            let mut work = agent.work.lock().unwrap();
            match result {
                Ok(()) => {
                    work.insert(key, Work::Done);
                }
                Err(e) => {
                    error!(round_id, task = ?kind, "task failed: {e:#}");
                    work.remove(&key);
                }
            }
        });
        work.insert(key, Work::Running(handle.abort_handle()));
    }

    fn abort_all_work(&self) {
        for work in self.work.lock().unwrap().values() {
            if let Work::Running(handle) = work {
                handle.abort();
            }
        }
    }

    async fn train(self: Arc<Self>, mut client: Client, task: pb::TrainTask) -> anyhow::Result<()> {
        let (model, schema) = wire::model(task.model.as_ref())?;
        let kind = task
            .model
            .as_ref()
            .map(|m| m.kind.clone())
            .unwrap_or_default();
        let epochs = task.config.as_ref().map_or(1, |c| c.epochs as usize);
        if let Some(synthetic) = self.config.testing.synthetic.clone() {
            let admitted = self.privacy.lock().unwrap().admit(
                &task.federation,
                &kind,
                synthetic.n_samples as usize,
                epochs,
                task.privacy.as_ref(),
            );
            let dp = match admitted {
                Ok(dp) => dp,
                Err(refusal) => {
                    return self
                        .decline(&mut client, &task.federation, task.round_id, refusal.0)
                        .await;
                }
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
                .send_update(client, &task, update, report, dp, std::time::Instant::now())
                .await;
        }
        let mut config = wire::train_config(task.config.as_ref())?;
        config.seed ^= task.round_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let base_ref = task
            .base
            .clone()
            .context("train task names no base model")?;
        let base = transfer::download_model(&mut client, &base_ref, &self.cache_dir()).await?;
        if base.len() != model.n_params() {
            bail!(
                "base model has {} parameters, the model spec {}",
                base.len(),
                model.n_params()
            );
        }
        // With a personalized model, train the global body under this facility's own head.
        let start = self.with_own_head(&model, &task.federation, &base)?;
        let (train, _) = self.load_split(schema).await?;
        let admitted = self.privacy.lock().unwrap().admit(
            &task.federation,
            &kind,
            train.n_rows(),
            config.epochs,
            task.privacy.as_ref(),
        );
        let dp = match admitted {
            Ok(dp) => dp,
            Err(refusal) => {
                return self
                    .decline(&mut client, &task.federation, task.round_id, refusal.0)
                    .await;
            }
        };
        let dp_sgd = task.privacy.as_ref().and_then(|p| p.dp_sgd);
        info!(
            rows = train.n_rows(),
            epochs = config.epochs,
            dp_sgd = dp_sgd.is_some(),
            "training"
        );
        let started = std::time::Instant::now();
        let (report, model) = tokio::task::spawn_blocking({
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
        .await??;
        // Only the federated prefix leaves; the head stays here.
        let mut update = model.shared_update(&report.params, &start)?;
        clip_for_facility_dp(&mut update, task.privacy.as_ref());
        self.keep_head(&model, &task.federation, &report.params)?;
        self.send_update(client, &task, update, report, dp, started)
            .await
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
            dp,
            clipping_norm,
            noise_multiplier,
        };
        // The training loss is computed on the raw rows, outside DP-SGD's guarantee: under
        // DP it does not leave.
        let train_loss = if dp.is_some() { 0.0 } else { report.mean_loss };
        if let Some(secure) = &task.secure {
            self.held_terms.lock().unwrap().insert(task.round_id, terms);
            // Secure aggregation: the update stays here until it leaves masked.
            let weight = (report.n_samples as u64).min(secure.max_weight.max(1));
            self.egress.keep_unmasked(task.round_id, &update)?;
            let expectation = secure::expectation(task, secure, update.len());
            self.secure.lock().unwrap().trained(
                task.round_id,
                &task.federation,
                update,
                weight,
                expectation,
            )?;
            info!(
                loss = report.mean_loss,
                secs = started.elapsed().as_secs_f32(),
                "trained; holding the update for secure aggregation"
            );
            self.egress.append(&EgressRecord {
                unix_ms: now_ms(),
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
            };
            return retry_until(task.deadline_unix_ms, "training report", || {
                let mut client = client.clone();
                let submission = submission.clone();
                async move { client.submit_sec_agg(submission).await.map(|_| ()) }
            })
            .await;
        }
        let payload = harambee_core::params::to_le_bytes(&update);
        let sha256 = hex::encode(Sha256::digest(&payload));
        info!(
            loss = report.mean_loss,
            secs = started.elapsed().as_secs_f32(),
            "trained; uploading update"
        );
        self.egress.keep_payload(&sha256, &payload)?;
        self.egress.append(&EgressRecord {
            unix_ms: now_ms(),
            kind: "update",
            federation: &task.federation,
            round_id: task.round_id,
            bytes: payload.len() as u64,
            sha256: Some(&sha256),
            n_samples: report.n_samples as u64,
        })?;
        let receipt = self
            .privacy
            .lock()
            .unwrap()
            .sign_egress(&terms, task.round_id, &payload)?;
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
        retry_until(task.deadline_unix_ms, "upload", || {
            let mut client = client.clone();
            let header = header.clone();
            let payload = payload.clone();
            async move { transfer::upload_update(&mut client, header, payload).await }
        })
        .await?;
        info!("update accepted");
        self.privacy.lock().unwrap().log.append(
            now_ms(),
            Record::Accepted {
                federation: task.federation.clone(),
                round_id: task.round_id,
            },
        )?;
        Ok(())
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
        let candidate =
            transfer::download_model(&mut client, &candidate_ref, &self.cache_dir()).await?;
        let params = self.with_own_head(&model, &task.federation, &candidate)?;
        let (train, test) = self.load_split(schema.clone()).await?;
        let min_cohort = self.config.policy.min_cohort;
        let withheld = (test.n_rows() as u64) < min_cohort;
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
        if withheld {
            info!(
                rows = metrics.n_samples,
                min_cohort, "held-out cohort below the policy minimum; metrics withheld"
            );
        } else {
            self.egress.append(&EgressRecord {
                unix_ms: now_ms(),
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
        retry_until(task.deadline_unix_ms, "metrics report", || {
            let mut client = client.clone();
            async move { client.report_metrics(request).await.map(|_| ()) }
        })
        .await
    }

    /// One secure-aggregation step: advance the round's client, send its answer.
    fn secure_step(self: &Arc<Self>, client: Client, stage: secure::Stage) {
        let round_id = stage.round_id();
        if self.config.testing.crash_at.as_deref() == Some(stage.name()) {
            error!(
                round_id,
                stage = stage.name(),
                "testing.crash_at: stopping dead as a crash would"
            );
            self.crashed.notify_one();
            return;
        }
        let agent = self.clone();
        let span = info_span!("secagg", round_id, stage = stage.name());
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
        mut client: Client,
        stage: secure::Stage,
    ) -> anyhow::Result<()> {
        let round_id = stage.round_id();
        let deadline = stage.deadline_unix_ms();
        let clients = self.secure.clone();
        let reply =
            tokio::task::spawn_blocking(move || clients.lock().unwrap().step(stage)).await??;
        match reply {
            Reply::Submit(part) => {
                let submission = pb::SecAggSubmission {
                    round_id,
                    part: Some(part),
                };
                self.stats.add(prost::Message::encoded_len(&submission));
                retry_until(deadline, "secure-aggregation message", || {
                    let mut client = client.clone();
                    let submission = submission.clone();
                    async move { client.submit_sec_agg(submission).await.map(|_| ()) }
                })
                .await
            }
            Reply::Masked { words, n_words } => {
                let sha256 = hex::encode(Sha256::digest(&words));
                self.egress.keep_payload(&sha256, &words)?;
                let federation = self
                    .secure
                    .lock()
                    .unwrap()
                    .federation_of(round_id)
                    .unwrap_or_default();
                self.egress.append(&EgressRecord {
                    unix_ms: now_ms(),
                    kind: "masked-update",
                    federation: &federation,
                    round_id,
                    bytes: words.len() as u64,
                    sha256: Some(&sha256),
                    n_samples: 0,
                })?;
                let terms = self
                    .held_terms
                    .lock()
                    .unwrap()
                    .get(&round_id)
                    .cloned()
                    .unwrap_or(ReceiptTerms {
                        federation,
                        dp: None,
                        clipping_norm: 0.0,
                        noise_multiplier: 0.0,
                    });
                let receipt = self
                    .privacy
                    .lock()
                    .unwrap()
                    .sign_egress(&terms, round_id, &words)?;
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
                let payload = Arc::new(words);
                retry_until(deadline, "masked upload", || {
                    let mut client = client.clone();
                    let header = header.clone();
                    let payload = payload.clone();
                    async move { transfer::upload_update(&mut client, header, payload).await }
                })
                .await?;
                info!("masked update accepted");
                self.privacy.lock().unwrap().log.append(
                    now_ms(),
                    Record::Accepted {
                        federation: terms.federation,
                        round_id,
                    },
                )?;
                let _ = &mut client;
                Ok(())
            }
        }
    }

    /// The facility's data, encoded by the federation's schema, split into (train, held-out).
    async fn load_split(&self, schema: Schema) -> anyhow::Result<(Dataset, Dataset)> {
        let path = self.config.data.csv.clone();
        let fraction = self.config.data.holdout_fraction;
        let seed = self.config.data.split_seed;
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Dataset, Dataset)> {
            let data = load_csv(&path, &schema)?;
            Ok(split_holdout(&data, fraction, seed))
        })
        .await?
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.join("models")
    }
}

/// Retries a call on transient failures (the link, a checksum) until the task's deadline;
/// gives up at once when the coordinator refuses it for good.
async fn retry_until<F, Fut>(deadline_unix_ms: i64, what: &str, mut call: F) -> anyhow::Result<()>
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
        if now_ms() + pause.as_millis() as i64 > deadline_unix_ms {
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

fn jitter(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random::<f64>() * 0.25)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
