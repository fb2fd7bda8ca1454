//! `harambee-sim demo`: a whole federation on one machine, on a bundled multi-site data set
//! (`--dataset heart`, the default: UCI heart disease, 4 hospitals; `--dataset
//! preterm-birth`: a periodontal-therapy trial, 4 clinics, with binary and categorical
//! columns; see data/README.md).
//!
//! It plays every part a real deployment has: a national unit (PKI, federation, rounds),
//! a coordinator (in this process, on a loopback port, SQLite under the demo directory),
//! and one agent per facility as a separate OS process holding only its own CSV file.
//! At the end it trains the same model on all data pooled in one place, the reference a
//! federation is measured against, and evaluates both on the same held-out rows.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use harambee_models::data::{Dataset, load_csv, split_holdout};
use harambee_models::metrics::Metrics;
use harambee_proto::pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::process::{Child, Command};

use harambee_coordinator::cli::{AdminArgs, admin_client, export_safetensors, wait_for_round};
use harambee_coordinator::federation::{
    Deadlines, FederationSpec, KindName, ModelSection, OptimizerName, TrainSpec,
};
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_coordinator::server::{self, Storage};
use harambee_coordinator::state::Settings;
use harambee_coordinator::wire;
use harambee_link::identity::Role;

pub mod text;

/// The bundled multi-site data set (CC BY 4.0; provenance in data/README.md).
const HEART_CSV: &str = include_str!("../../data/heart_disease_uci_4sites.csv");
/// The second bundled multi-site data set, with binary and categorical columns (MIT, via
/// the R package medicaldata; provenance in data/README.md).
const OPT_CSV: &str = include_str!("../../data/opt_periodontal_4clinics.csv");

/// A bundled multi-site data set the demo can run on (`--dataset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoDataset {
    /// UCI Heart Disease, 4 hospitals (920 rows, numeric codes): angiographic disease.
    Heart,
    /// Obstetrics and Periodontal Therapy trial, 4 clinics (823 rows, binary and
    /// categorical columns): preterm birth.
    PretermBirth,
}

impl DemoDataset {
    /// The CSV and the name of its site column.
    fn csv(self) -> (&'static str, &'static str) {
        match self {
            DemoDataset::Heart => (HEART_CSV, "site"),
            DemoDataset::PretermBirth => (OPT_CSV, "Clinic"),
        }
    }

    /// The demo federation's name.
    pub fn federation(self) -> &'static str {
        match self {
            DemoDataset::Heart => "heart-disease",
            DemoDataset::PretermBirth => "preterm-birth",
        }
    }

    /// The federation's schema, fixed in `harambee_models::presets`.
    pub fn schema(self) -> harambee_models::data::Schema {
        match self {
            DemoDataset::Heart => harambee_models::presets::heart_disease(),
            DemoDataset::PretermBirth => harambee_models::presets::preterm_birth(),
        }
    }

    /// Each demo facility's policy for this data set: [`DEMO_POLICY`] with its federations
    /// and label.
    pub fn policy(self) -> String {
        let schema = self.schema();
        let federation = self.federation();
        DEMO_POLICY
            .replace(
                "[\"heart-disease\", \"heart-disease-plain\"]",
                &format!("[{federation:?}, \"{federation}-plain\"]"),
            )
            .replace("[\"target\"]", &format!("[{:?}]", schema.label))
    }
}
/// Share of each facility's rows held out for evaluation, and the split's seed.
pub const HOLDOUT: f64 = 0.25;
pub const SPLIT_SEED: u64 = 7;
/// Each demo facility's own policy: the two demo federations, linear and MLP models, the
/// data set's label, at least 20 training rows, and a patient-level budget of ε = 10 at
/// δ = 1e-5. Plain uploads are allowed only because the demo runs a plain federation as the
/// baseline the secure one is compared with; a facility keeps the default (refuse them).
pub const DEMO_POLICY: &str = "allowed_federations = [\"heart-disease\", \"heart-disease-plain\"]\nallowed_model_kinds = [\"logistic_regression\", \"mlp\"]\nallowed_labels = [\"target\"]\nrequire_secure_aggregation = false\nmin_samples = 20\nmax_epsilon = 10.0\ndelta = 1e-5\n";
/// The demo federation's patient-level DP-SGD: per-example clipping norm, noise multiplier,
/// Poisson sampling rate.
pub const DEMO_DP_SGD: (f64, f64, f64) = (1.0, 1.5, 0.1);
/// Marks a directory as the demo's own, so that re-running may wipe it.
const MARKER: &str = ".harambee-demo";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of facilities (agent processes); default one per hospital of the data set.
    /// More splits hospitals into several facilities; fewer groups hospitals together.
    #[arg(long)]
    pub agents: Option<usize>,
    /// Rounds (default 5; 3 with `--model minilm-lora`).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Write a JSON summary of the run here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Working directory (wiped and recreated).
    #[arg(long, default_value = "harambee-demo")]
    pub dir: PathBuf,
    /// `logistic_regression`, `mlp`, or `minilm-lora` (LoRA fine-tuning of a pretrained text
    /// encoder on patient drug reviews; needs models/text/fetch-minilm.sh and
    /// models/text/fetch-drugreview.sh first).
    #[arg(long, default_value = "logistic_regression")]
    pub model: String,
    /// Local epochs per round (default 5; 2 with `--model minilm-lora`).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Store state in this database instead of SQLite under the demo directory.
    #[arg(long, hide_env_values = true, env = "HARAMBEE_DEMO_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The bundled multi-site data set: `heart` (UCI Heart Disease, 4 hospitals) or
    /// `preterm-birth` (periodontal therapy trial, 4 clinics, categorical columns).
    #[arg(long, value_enum, default_value = "heart")]
    pub dataset: DemoDataset,
    /// With `--model minilm-lora`: train with text-level DP-SGD (each review is the unit of
    /// privacy; parameters in `demo::text::DP_SGD`) and print each facility's ε from the
    /// ledger. The tabular demo always trains with DP-SGD.
    #[arg(long)]
    pub dp: bool,
}

/// One facility of the demo: its name and the directory holding its own `data.csv`.
pub struct Facility {
    pub name: String,
    pub dir: PathBuf,
}

impl DemoArgs {
    /// `--rounds`, once [`run`] has filled in the default.
    pub fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(5)
    }

    /// `--epochs`, once [`run`] has filled in the default.
    pub fn epochs(&self) -> u32 {
        self.epochs.unwrap_or(5)
    }
}

pub async fn run(mut args: DemoArgs) -> anyhow::Result<()> {
    if matches!(args.model.as_str(), "minilm-lora" | "minilm_lora") {
        // The text model's rounds cost far more CPU than the tables' (see demo/text.rs).
        args.rounds.get_or_insert(3);
        args.epochs.get_or_insert(2);
        return text::run(args).await;
    }
    if args.dp {
        bail!("--dp applies to --model minilm-lora (the tabular demo always trains with DP-SGD)");
    }
    let _telemetry =
        harambee_coordinator::server::telemetry::init("harambee-coordinator", None, "warn")?;
    let kind = KindName::parse(&args.model)
        .with_context(|| format!("unknown --model {:?}", args.model))?;
    if args.rounds() == 0 {
        bail!("--rounds must be at least 1");
    }
    let dir = prepare_dir(&args.dir)?;
    let facilities = write_dataset_facilities(&dir, args.dataset, args.agents)?;
    println!(
        "harambee demo: {} data, {} facilities, {} rounds, model {}, in {}",
        args.dataset.federation(),
        facilities.len(),
        args.rounds(),
        kind.as_str(),
        dir.display()
    );

    // The national unit's PKI: a CA, the coordinator's certificate, an operator, one per agent.
    let pki_dir = dir.join("pki");
    pki::init(&pki_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    pki::issue(&pki_dir, Role::Operator, "admin", 1)?;
    pki::issue(&pki_dir, Role::Auditor, "auditor", 1)?;
    for f in &facilities {
        pki::issue(&pki_dir, Role::Agent, &f.name, 1)?;
    }

    // The coordinator, in this process, on an ephemeral loopback port.
    let storage = Storage {
        database_url: args.database_url.clone().unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", dir.join("coordinator.db").display())
        }),
        blob_dir: dir.join("blobs"),
        blobs_in_database: false,
        ledger_key: dir.join("ledger.key"),
    };
    let settings = Settings {
        heartbeat_interval: Duration::from_secs(1),
        liveness_timeout: Duration::from_secs(5),
        reconnect_grace: Duration::from_secs(5),
        blob_retention: None,
        ..Settings::default()
    };
    let coord = server::open(&storage, settings).await?;
    let tls = harambee_coordinator::server::tls::load_server_config(&PkiPaths::new(&pki_dir))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(coord, listener, tls, async {
        let _ = stop_rx.await;
    }));
    let endpoint = format!("https://127.0.0.1:{}", addr.port());

    // One agent process per facility.
    let mut children = Vec::new();
    let policy = args.dataset.policy();
    for f in &facilities {
        children.push(spawn_agent(f, &endpoint, &pki_dir, &policy)?);
    }
    let result = drive(&args, kind, &dir, &facilities, &endpoint, &pki_dir).await;

    for child in &mut children {
        let _ = child.start_kill();
    }
    for child in &mut children {
        let _ = child.wait().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    result
}

async fn drive(
    args: &DemoArgs,
    kind: KindName,
    dir: &Path,
    facilities: &[Facility],
    endpoint: &str,
    pki_dir: &Path,
) -> anyhow::Result<()> {
    let admin = AdminArgs {
        coordinator: endpoint.to_owned(),
        server_name: "localhost".to_owned(),
        pki: pki_dir.to_owned(),
        operator: "admin".to_owned(),
    };
    let mut client = admin_client(&admin).await?;
    let mut spec = federation_spec(kind, args.epochs(), facilities);
    spec.name = args.dataset.federation().to_owned();
    spec.schema = args.dataset.schema();
    let (clip_norm, noise_multiplier, sampling_rate) = DEMO_DP_SGD;
    spec.privacy.dp_sgd = Some(harambee_coordinator::federation::DpSgdSpec {
        clip_norm,
        noise_multiplier,
        sampling_rate,
    });
    spec.validate()?;
    client
        .create_federation(pb::CreateFederationRequest {
            config: Some(wire::federation_config(&spec, 0)),
            init_from: None,
        })
        .await?;

    wait_for_agents(&mut client, facilities.len()).await?;
    let mut last = None;
    for number in 1..=args.rounds() {
        let started = Instant::now();
        let round = client
            .start_round(pb::StartRoundRequest {
                federation: spec.name.clone(),
            })
            .await?
            .into_inner();
        let bar = ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
        bar.enable_steady_tick(Duration::from_millis(100));
        let round = wait_for_round(&mut client, round.id, |r| {
            let uploaded = r
                .participants
                .iter()
                .filter(|p| p.status() == pb::ParticipantStatus::Uploaded)
                .count();
            let state = r
                .state()
                .as_str_name()
                .trim_start_matches("ROUND_STATE_")
                .to_lowercase();
            bar.set_message(format!(
                "round {number}/{}: {state} ({uploaded}/{} updates)",
                args.rounds(),
                r.participants.len()
            ));
        })
        .await?;
        bar.finish_and_clear();
        if round.state() != pb::RoundState::Committed {
            bail!(
                "round {number} failed: {} (agent logs: {}/facilities/*/agent.log)",
                round.failure_reason,
                dir.display()
            );
        }
        print_round_table(number, &round, started.elapsed());
        last = Some(round);
    }
    let last = last.expect("at least one round");

    let model_path = dir.join("model.safetensors");
    let meta = export_safetensors(&mut client, &spec.name, None, &model_path).await?;
    let card = harambee_coordinator::cli::write_model_card(&meta, &model_path)?;
    println!(
        "final model: version {} saved to {} (sha256 {})",
        meta.version,
        model_path.display(),
        meta.model.unwrap_or_default().digest
    );
    if let Some((_, md)) = &card {
        println!("model card: {}", md.display());
    }

    // The same federation with plain aggregation, to show that secure aggregation costs
    // no model quality.
    let mut plain_spec = spec.clone();
    plain_spec.name = format!("{}-plain", spec.name);
    plain_spec.secure_aggregation.enabled = false;
    client
        .create_federation(pb::CreateFederationRequest {
            config: Some(wire::federation_config(&plain_spec, 0)),
            init_from: None,
        })
        .await?;
    let bar = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    for number in 1..=args.rounds() {
        bar.set_message(format!(
            "reference federation with plain aggregation: round {number}/{}",
            args.rounds()
        ));
        let round = client
            .start_round(pb::StartRoundRequest {
                federation: plain_spec.name.clone(),
            })
            .await?
            .into_inner();
        let round = wait_for_round(&mut client, round.id, |_| {}).await?;
        if round.state() != pb::RoundState::Committed {
            bail!("plain round {number} failed: {}", round.failure_reason);
        }
    }
    bar.finish_and_clear();
    let plain_path = dir.join("model-plain.safetensors");
    export_safetensors(&mut client, &plain_spec.name, None, &plain_path).await?;

    // The reference: one model trained on every facility's training rows in one place,
    // and both models evaluated on the union of the held-out rows.
    let model = spec.model_spec();
    let mut trains = Vec::new();
    let mut tests = Vec::new();
    for f in facilities {
        let data = load_csv(&f.dir.join("data.csv"), &spec.schema)?;
        let (train, test) = split_holdout(&data, HOLDOUT, SPLIT_SEED);
        trains.push(train);
        tests.push(test);
    }
    let pooled_train = Dataset::concat(&trains.iter().collect::<Vec<_>>());
    let pooled_test = Dataset::concat(&tests.iter().collect::<Vec<_>>());
    let global_params = harambee_models::checkpoint::load_file(&model_path)?.params;
    let global = harambee_models::train::evaluate(&model, &global_params, &pooled_test)?;
    let plain_params = harambee_models::checkpoint::load_file(&plain_path)?.params;
    let plain = harambee_models::train::evaluate(&model, &plain_params, &pooled_test)?;
    let mut pooled_config = spec.train_config();
    pooled_config.epochs *= args.rounds() as usize;
    let init = model.init_params(spec.init_seed);
    let pooled_model = tokio::task::spawn_blocking({
        let model = model.clone();
        move || harambee_models::train::train(&model, &init, &pooled_train, &pooled_config)
    })
    .await??;
    let pooled = harambee_models::train::evaluate(&model, &pooled_model.params, &pooled_test)?;
    println!();
    println!("on all {} held-out rows:", pooled_test.n_rows());
    println!(
        "  federated, secure aggregation (the global model)  auc {:.4}  accuracy {:.4}  loss {:.4}",
        global.auc, global.accuracy, global.loss
    );
    println!(
        "  federated, plain aggregation (comparison)         auc {:.4}  accuracy {:.4}  loss {:.4}",
        plain.auc, plain.accuracy, plain.loss
    );
    println!(
        "  pooled, all data in one place (reference)        auc {:.4}  accuracy {:.4}  loss {:.4}",
        pooled.auc, pooled.accuracy, pooled.loss
    );
    println!(
        "  auc gap (pooled - federated): {:+.4}",
        pooled.auc - global.auc
    );
    println!(
        "  (both federations train with patient-level DP-SGD: clip {clip_norm}, noise multiplier {noise_multiplier}, sampling rate {sampling_rate}; pooled training has none)"
    );

    // The auditor's view: ε per facility from the ledger, then an export that each
    // facility checks offline against its own privacy log.
    let card_json = card.as_ref().map(|(json, _)| json.as_path());
    let audit = audit_and_verify(&admin, dir, facilities, card_json).await?;

    if let Some(path) = &args.summary_json {
        let mut summary = summary(args.rounds(), &global, &pooled, &last);
        summary["secure_aggregation"] = json!(spec.secure_aggregation.enabled);
        summary["plain"] = json!({ "auc": finite_or_null(plain.auc), "accuracy": plain.accuracy, "loss": plain.loss });
        summary["privacy"] = audit;
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("summary written to {}", path.display());
    }
    Ok(())
}

/// Prints each facility's ε from the ledger, exports the ledger as the auditor, and runs
/// the offline verifier with each facility's privacy log. Fails unless all verify.
async fn audit_and_verify(
    admin: &AdminArgs,
    dir: &Path,
    facilities: &[Facility],
    model_card: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let paths = PkiPaths::new(&admin.pki);
    let tls = harambee_link::tls::ClientTls::from_files(
        &paths.ca_cert(),
        &paths.issued_cert(Role::Auditor, "auditor"),
        &paths.issued_key(Role::Auditor, "auditor"),
        &admin.server_name,
    )?;
    let channel =
        harambee_link::tls::connect(&admin.coordinator, &tls, Duration::from_secs(10)).await?;
    // The agents fetch the proof of their last contribution at their next heartbeat.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!();
    println!("patient-level privacy spent (from the agents' signed receipts in the ledger):");
    let mut spend = serde_json::Map::new();
    for f in harambee_coordinator::cli::audit::privacy_spend(channel.clone()).await? {
        let budget = f
            .max_epsilon
            .map_or_else(|| "none".to_owned(), |m| format!("{m}"));
        println!(
            "  {:<14} ε = {:>7.3} at δ = {:e}  ({} contributions; budget {budget})",
            f.facility, f.epsilon_spent, f.delta, f.contributions
        );
        spend.insert(f.facility.clone(), json!({ "epsilon": f.epsilon_spent, "delta": f.delta, "contributions": f.contributions }));
    }
    let ledger_path = dir.join("ledger.jsonl");
    let exported = harambee_coordinator::cli::audit::export(channel, &ledger_path).await?;
    println!(
        "privacy ledger: {} entries exported to {}",
        exported.entries,
        ledger_path.display()
    );
    let mut verified = 0;
    for (i, f) in facilities.iter().enumerate() {
        // The first facility also checks the model card, with the key its log pinned.
        let args = harambee_agent::audit::VerifyArgs {
            ledger: ledger_path.clone(),
            head: None,
            ledger_key: None,
            receipts: Some(f.dir.join("state").join(harambee_privacy::log::LOG_FILE)),
            model_card: model_card.filter(|_| i == 0).map(Path::to_owned),
        };
        let (report, ok) = harambee_agent::audit::verify_report(&args)?;
        if !ok {
            bail!("audit verify failed for {}:\n{report}", f.name);
        }
        verified += 1;
    }
    let (card_claim, card_arg) = match model_card {
        Some(_) => (
            ", and so does the model card",
            " --model-card model.card.json",
        ),
        None => ("", ""),
    };
    println!(
        "audit verify: the ledger verifies and agrees with all {verified} facilities' privacy logs{card_claim} \
         (harambee-agent audit verify --ledger {} --receipts \
         {}/facilities/NAME/state/{}{card_arg})",
        ledger_path.display(),
        dir.display(),
        harambee_privacy::log::LOG_FILE
    );
    Ok(
        json!({ "epsilon": spend, "ledger_entries": exported.entries, "facilities_verified": verified }),
    )
}

/// The demo's federation: the heart-disease preset schema over the given facilities.
pub fn federation_spec(kind: KindName, epochs: u32, facilities: &[Facility]) -> FederationSpec {
    FederationSpec {
        name: "heart-disease".to_owned(),
        model: ModelSection {
            kind,
            hidden: if kind == KindName::Mlp {
                vec![16]
            } else {
                vec![]
            },
            text: None,
        },
        schema: harambee_models::presets::heart_disease(),
        train: TrainSpec {
            epochs,
            batch_size: 16,
            learning_rate: 0.01,
            optimizer: OptimizerName::Adam,
            seed: 1,
            frozen_layers: 0,
        },
        // Sums of at least 3 (the facilities' default policy.min_contributors), one
        // dropout tolerated among 4.
        min_agents: (facilities.len() as u32 * 3)
            .div_ceil(4)
            .max(3)
            .min(facilities.len() as u32),
        facilities: facilities.iter().map(|f| f.name.clone()).collect(),
        deadlines: Deadlines {
            selecting_s: 60,
            training_s: 300,
            evaluating_s: 120,
        },
        init_seed: 42,
        secure_aggregation: Default::default(),
        strategy: Default::default(),
        privacy: Default::default(),
        retry_interrupted: false,
        intended_use: "Demonstration of federated training on a public research data set; \
                       not for clinical use"
            .to_owned(),
    }
}

fn summary(rounds: u32, global: &Metrics, pooled: &Metrics, last: &pb::Round) -> serde_json::Value {
    let facilities: Vec<_> = last
        .participants
        .iter()
        .map(|p| {
            let m = p.metrics.unwrap_or_default();
            json!({
                "name": p.facility,
                "auc": finite_or_null(m.auc),
                "accuracy": m.accuracy,
                "loss": m.loss,
                "samples": p.n_samples,
                "test_samples": m.n_samples,
            })
        })
        .collect();
    json!({
        "rounds_committed": rounds,
        "global": { "auc": finite_or_null(global.auc), "accuracy": global.accuracy, "loss": global.loss, "test_samples": global.n_samples },
        "pooled": { "auc": finite_or_null(pooled.auc), "accuracy": pooled.accuracy, "loss": pooled.loss, "test_samples": pooled.n_samples },
        "facilities": facilities,
    })
}

fn finite_or_null(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn print_round_table(number: u32, round: &pb::Round, took: Duration) {
    let contributed = round
        .participants
        .iter()
        .filter(|p| p.status() == pb::ParticipantStatus::Uploaded)
        .count();
    println!(
        "round {number}: committed model version {} in {:.1}s, {contributed}/{} facilities contributed{}",
        round.result.as_ref().map_or(0, |r| r.version),
        took.as_secs_f64(),
        round.participants.len(),
        if round.secure_aggregation {
            " (secure aggregation)"
        } else {
            ""
        }
    );
    harambee_coordinator::cli::print_metrics_table(round);
}

async fn wait_for_agents(
    client: &mut harambee_proto::pb::admin_service_client::AdminServiceClient<
        tonic::transport::Channel,
    >,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agents = client
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        let connected = agents.iter().filter(|a| a.connected).count();
        if connected >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {connected} of {n} agents connected within 60 s; see the agent logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a demo directory; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "created by harambee-sim demo; safe to delete\n",
    )?;
    Ok(std::path::absolute(dir)?)
}

/// Splits the bundled heart data into one CSV file per facility, under
/// `dir/facilities/NAME/`.
pub fn write_facilities(dir: &Path, n_agents: Option<usize>) -> anyhow::Result<Vec<Facility>> {
    write_dataset_facilities(dir, DemoDataset::Heart, n_agents)
}

/// Splits a bundled data set into one CSV file per facility, under `dir/facilities/NAME/`:
/// by default one facility per site (named after it, in lower case).
pub fn write_dataset_facilities(
    dir: &Path,
    dataset: DemoDataset,
    n_agents: Option<usize>,
) -> anyhow::Result<Vec<Facility>> {
    let (text, site_column) = dataset.csv();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers()?.clone();
    let site_col = header
        .iter()
        .position(|h| h == site_column)
        .with_context(|| format!("bundled data has no {site_column} column"))?;
    let mut sites: Vec<(String, Vec<csv::StringRecord>)> = Vec::new();
    for record in reader.records() {
        let record = record?;
        let site = record[site_col].to_owned();
        match sites.iter_mut().find(|(s, _)| *s == site) {
            Some((_, rows)) => rows.push(record),
            None => sites.push((site, vec![record])),
        }
    }
    let n = n_agents.unwrap_or(sites.len());
    if n == 0 || n > 100 {
        bail!("--agents must be between 1 and 100");
    }
    // Facility names and rows.
    let mut groups: Vec<(String, Vec<csv::StringRecord>)> = Vec::new();
    if n >= sites.len() {
        // Facility i belongs to site i % n_sites; a site's rows are dealt among its facilities.
        for (s, (site, rows)) in sites.iter().enumerate() {
            let k = (s..n).step_by(sites.len()).count();
            for j in 0..k {
                let name = if k == 1 {
                    site.clone()
                } else {
                    format!("{site}-{}", j + 1)
                };
                let part = rows.iter().skip(j).step_by(k).cloned().collect();
                groups.push((name.replace('_', "-").to_lowercase(), part));
            }
        }
    } else {
        for i in 0..n {
            let rows = sites
                .iter()
                .skip(i)
                .step_by(n)
                .flat_map(|(_, r)| r.iter().cloned())
                .collect();
            groups.push((format!("group-{}", i + 1), rows));
        }
    }
    let mut facilities = Vec::new();
    for (name, rows) in groups {
        let fdir = dir.join("facilities").join(&name);
        std::fs::create_dir_all(&fdir)?;
        let mut writer = csv::Writer::from_path(fdir.join("data.csv"))?;
        writer.write_record(&header)?;
        for row in &rows {
            writer.write_record(row)?;
        }
        writer.flush()?;
        facilities.push(Facility { name, dir: fdir });
    }
    Ok(facilities)
}

/// Writes `agent.toml` for a facility, with its certificate from `pki_dir`.
/// Writes `f`'s agent.toml; `policy` is the body of its `[policy]` table.
pub fn write_agent_config(
    f: &Facility,
    endpoint: &str,
    pki_dir: &Path,
    policy: &str,
) -> anyhow::Result<PathBuf> {
    let paths = PkiPaths::new(pki_dir);
    let config = format!(
        "coordinator = {endpoint:?}\nserver_name = \"localhost\"\nstate_dir = \"state\"\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[data]\ncsv = \"data.csv\"\nholdout_fraction = {HOLDOUT}\nsplit_seed = {SPLIT_SEED}\n\n[network]\nconnect_timeout_s = 5\nmax_backoff_s = 2\n\n[policy]\n{policy}\n",
        paths.ca_cert().display().to_string(),
        paths
            .issued_cert(Role::Agent, &f.name)
            .display()
            .to_string(),
        paths.issued_key(Role::Agent, &f.name).display().to_string(),
    );
    let config_path = f.dir.join("agent.toml");
    std::fs::write(&config_path, config)?;
    Ok(config_path)
}

fn spawn_agent(
    f: &Facility,
    endpoint: &str,
    pki_dir: &Path,
    policy: &str,
) -> anyhow::Result<Child> {
    let config_path = write_agent_config(f, endpoint, pki_dir, policy)?;
    let log = std::fs::File::create(f.dir.join("agent.log"))?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let child = Command::new(exe)
        .args(["agent", "run", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the agent of {}", f.name))?;
    Ok(child)
}
