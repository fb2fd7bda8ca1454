//! `harambee-sim demo --model minilm-lora`: federated LoRA fine-tuning of a pretrained text
//! encoder (all-MiniLM-L6-v2) on real patient-written text, the UCI Drug Review sample
//! (data/README.md §5), over real mTLS with SecAgg+.
//!
//! Task: the condition a patient's review is about, among the 4 most frequent in the sample
//! ([`CLASSES`]). The reviews are dealt to 3 facilities with a skewed condition mix
//! ([`FACILITIES`]), as a family-planning clinic, a mental-health clinic and a general
//! outpatient clinic would see them: each facility has most of one or two conditions and few
//! of the others. A review's facility is drawn from its condition's row of [`FACILITIES`] by
//! a hash of the review's UCI id, so the split is fixed by this code, not by hand.
//!
//! Cost (2 CPU cores): the adapters sit on the top encoder layer only
//! ([`TOP_LAYERS`]), so each agent runs the 5 frozen layers once per review, keeps their
//! output in memory, and trains only the top layer, the adapters and the head; texts are
//! cut at [`MAX_TOKENS`] tokens.
//!
//! At the end the demo compares, on each facility's own held-out reviews: the federated model;
//! local-only fine-tuning (each facility alone, the same epochs in total); and pooled
//! fine-tuning (all training reviews in one place).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use harambee_coordinator::cli::{AdminArgs, admin_client, export_model, wait_for_round};
use harambee_coordinator::federation::{FederationSpec, KindName, ModelSection};
use harambee_coordinator::pki;
use harambee_coordinator::server::{self, Storage};
use harambee_coordinator::state::Settings;
use harambee_coordinator::wire;
use harambee_link::identity::Role;
use harambee_models::text::train::{self as text_train, ClassMetrics, Features, TextDataset};
use harambee_models::text::{LoraConfig, LoraTarget, MINILM_SHA256, Minilm, TextTask};
use harambee_proto::pb;
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    DemoArgs, Facility, HOLDOUT, SPLIT_SEED, federation_spec, prepare_dir, print_round_table,
    spawn_agent, wait_for_agents,
};

/// The classes: the 4 most frequent conditions of the sample (332 of its 979 reviews).
pub const CLASSES: [&str; 4] = ["Birth Control", "Depression", "Pain", "Acne"];
/// The facilities and, per class of [`CLASSES`], the share of its reviews each receives.
pub const FACILITIES: [(&str, [f64; 4]); 3] = [
    ("family-planning", [0.70, 0.10, 0.15, 0.15]),
    ("mental-health", [0.15, 0.75, 0.15, 0.15]),
    ("outpatient", [0.15, 0.15, 0.70, 0.70]),
];
/// Texts are cut at this many tokens (special tokens included).
pub const MAX_TOKENS: usize = 128;
/// Adapters on the last encoder layer only.
pub const TOP_LAYERS: usize = 1;
/// The demo's federation name.
pub const FEDERATION: &str = "drug-reviews";
/// Text-level DP-SGD with `--dp`: (clip norm, noise multiplier, sampling rate). At 0.15 a
/// Poisson batch holds 10 to 17 of a facility's 69 to 111 training reviews on average, about
/// the non-private batch size (16).
pub const DP_SGD: (f64, f64, f64) = (1.0, 1.0, 0.15);
/// Each facility's policy: this federation, this model kind and label, secure aggregation
/// required, metrics reported from 10 held-out reviews (the mental-health clinic holds out
/// fewer than the default 20).
pub const POLICY: &str = "allowed_federations = [\"drug-reviews\"]\nallowed_model_kinds = [\"minilm_lora\"]\nallowed_labels = [\"condition\"]\nrequire_secure_aggregation = true\nmin_samples = 20\nmin_cohort = 10\n";

/// The federation's text task.
pub fn task() -> TextTask {
    TextTask {
        base_sha256: MINILM_SHA256.to_owned(),
        text_column: "review".to_owned(),
        label_column: "condition".to_owned(),
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        max_tokens: MAX_TOKENS,
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec![
                LoraTarget::Query,
                LoraTarget::Value,
                LoraTarget::Intermediate,
                LoraTarget::Output,
            ],
            top_layers: Some(TOP_LAYERS),
        },
        local_head: false,
    }
}

/// The demo's text federation over `facilities`.
pub fn text_federation_spec(epochs: u32, facilities: &[Facility]) -> FederationSpec {
    let mut spec = federation_spec(KindName::MinilmLora, epochs, facilities);
    spec.name = FEDERATION.to_owned();
    spec.model = ModelSection {
        kind: KindName::MinilmLora,
        hidden: Vec::new(),
        text: Some(task()),
    };
    spec.schema = Default::default();
    spec.train.batch_size = 16;
    spec.train.learning_rate = 3e-3;
    spec.min_agents = facilities.len() as u32;
    spec.intended_use = "Demonstration of federated fine-tuning of a pretrained text model on \
                         public patient reviews; not for clinical use"
        .to_owned();
    spec
}

/// Where `models/text/fetch-drugreview.sh` puts the sample.
pub fn drugreview_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HARAMBEE_DRUGREVIEW_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("set HARAMBEE_DRUGREVIEW_DIR (or HOME)")?;
    Ok(cache.join("harambee").join("drugreview"))
}

/// A review of the sample: UCI id, drug, condition, text, date.
#[derive(Clone, Debug)]
pub struct Review {
    pub id: String,
    pub drug: String,
    pub condition: String,
    pub text: String,
    pub date: String,
}

/// Reads both files of the sample (`drugsComTrain.tsv`, `drugsComTest.tsv`).
pub fn read_reviews(dir: &Path) -> anyhow::Result<Vec<Review>> {
    let mut reviews = Vec::new();
    for file in ["drugsComTrain.tsv", "drugsComTest.tsv"] {
        let path = dir.join(file);
        if !path.exists() {
            bail!(
                "{} not found: fetch the drug review sample with models/text/fetch-drugreview.sh",
                path.display()
            );
        }
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b'\t')
            .from_path(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let headers = reader.headers()?.clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("{}: no column {name:?}", path.display()))
        };
        let (id, drug, condition, review, date) = (
            column("")?,
            column("drugName")?,
            column("condition")?,
            column("review")?,
            column("date")?,
        );
        for record in reader.records() {
            let record = record?;
            reviews.push(Review {
                id: record[id].to_owned(),
                drug: record[drug].to_owned(),
                condition: record[condition].to_owned(),
                text: unescape(&record[review]),
                date: record[date].to_owned(),
            });
        }
    }
    Ok(reviews)
}

/// The source keeps a few HTML entities and wraps each review in quotes.
fn unescape(text: &str) -> String {
    text.trim()
        .trim_matches('"')
        .replace("&#039;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// A value in `[0, 1)` from a review's id (SplitMix64 of the id's bytes).
fn unit(id: &str) -> f64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in id.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
    }
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The facility (index into [`FACILITIES`]) of a review of class `class`.
pub fn facility_of(review: &Review, class: usize) -> usize {
    let u = unit(&review.id);
    let mut acc = 0.0;
    for (i, (_, shares)) in FACILITIES.iter().enumerate() {
        acc += shares[class];
        if u < acc {
            return i;
        }
    }
    FACILITIES.len() - 1
}

/// Writes each facility's reviews of the [`CLASSES`] to `dir/facilities/NAME/data.csv`
/// (columns id, drug, condition, review, date).
pub fn write_text_facilities(dir: &Path, reviews: &[Review]) -> anyhow::Result<Vec<Facility>> {
    let mut parts: Vec<Vec<&Review>> = vec![Vec::new(); FACILITIES.len()];
    for review in reviews {
        if let Some(class) = CLASSES.iter().position(|c| *c == review.condition) {
            parts[facility_of(review, class)].push(review);
        }
    }
    let mut facilities = Vec::new();
    for ((name, _), rows) in FACILITIES.iter().zip(parts) {
        let fdir = dir.join("facilities").join(name);
        std::fs::create_dir_all(&fdir)?;
        let mut writer = csv::Writer::from_path(fdir.join("data.csv"))?;
        writer.write_record(["id", "drug", "condition", "review", "date"])?;
        for r in rows {
            writer.write_record([&r.id, &r.drug, &r.condition, &r.text, &r.date])?;
        }
        writer.flush()?;
        facilities.push(Facility {
            name: (*name).to_owned(),
            dir: fdir,
        });
    }
    Ok(facilities)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let _telemetry =
        harambee_coordinator::server::telemetry::init("harambee-coordinator", None, "warn")?;
    if args.rounds() == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.agents.is_some() {
        bail!("--agents does not apply to --model minilm-lora (its 3 facilities are fixed)");
    }
    let reviews = read_reviews(&drugreview_dir()?)?;
    let model_dir = harambee_models::text::default_dir()
        .context("set HARAMBEE_MINILM_DIR to the MiniLM directory")?;
    let base = Minilm::load_pinned(&model_dir, MINILM_SHA256).with_context(|| {
        format!(
            "the MiniLM weights in {} (models/text/fetch-minilm.sh)",
            model_dir.display()
        )
    })?;
    let dir = prepare_dir(&args.dir)?;
    let facilities = write_text_facilities(&dir, &reviews)?;
    let mut spec = text_federation_spec(args.epochs(), &facilities);
    if args.dp {
        let (clip_norm, noise_multiplier, sampling_rate) = DP_SGD;
        spec.privacy.dp_sgd = Some(harambee_coordinator::federation::DpSgdSpec {
            clip_norm,
            noise_multiplier,
            sampling_rate,
        });
    }
    spec.validate()?;
    let classifier = task().classifier();
    println!(
        "harambee demo: {FEDERATION} ({} conditions of the UCI drug review sample), {} facilities, {} rounds x {} epochs, model minilm_lora in {}",
        CLASSES.len(),
        facilities.len(),
        args.rounds(),
        args.epochs(),
        dir.display()
    );
    println!(
        "  base model all-MiniLM-L6-v2 ({} parameters, frozen, sha256 {}…); adapters on the top {TOP_LAYERS} layer(s) + head: {} values travel per update ({:.3}% of the model)",
        base.n_params(),
        &MINILM_SHA256[..12],
        classifier.n_params(),
        100.0 * classifier.n_params() as f64 / base.n_params() as f64
    );

    let pki_dir = dir.join("pki");
    pki::init(&pki_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    pki::issue(&pki_dir, Role::Operator, "admin", 1)?;
    pki::issue(&pki_dir, Role::Auditor, "auditor", 1)?;
    for f in &facilities {
        pki::issue(&pki_dir, Role::Agent, &f.name, 1)?;
    }
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
        liveness_timeout: Duration::from_secs(10),
        reconnect_grace: Duration::from_secs(10),
        blob_retention: None,
        ..Settings::default()
    };
    let coord = server::open(&storage, settings).await?;
    let tls = server::tls::load_server_config(&pki::PkiPaths::new(&pki_dir))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(coord, listener, tls, async {
        let _ = stop_rx.await;
    }));
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let mut children = Vec::new();
    for f in &facilities {
        children.push(spawn_agent(f, &endpoint, &pki_dir, POLICY)?);
    }
    let result = drive(&args, &spec, base, &dir, &facilities, &endpoint, &pki_dir).await;
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

/// One facility's held-out results of the three ways of training.
struct Row {
    name: String,
    n_train: usize,
    n_test: usize,
    federated: ClassMetrics,
    local: ClassMetrics,
    pooled: ClassMetrics,
}

async fn drive(
    args: &DemoArgs,
    spec: &FederationSpec,
    base: Minilm,
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
    client
        .create_federation(pb::CreateFederationRequest {
            config: Some(wire::federation_config(spec, 0)),
            init_from: None,
        })
        .await?;
    wait_for_agents(&mut client, facilities.len()).await?;
    let began = Instant::now();
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
            let state = r
                .state()
                .as_str_name()
                .trim_start_matches("ROUND_STATE_")
                .to_lowercase();
            bar.set_message(format!("round {number}/{}: {state}", args.rounds()));
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
    }
    println!(
        "federated fine-tuning: {} rounds in {:.1}s",
        args.rounds(),
        began.elapsed().as_secs_f64()
    );
    let privacy = match &spec.privacy.dp_sgd {
        Some(dp) => {
            println!(
                "  with text-level DP-SGD: clip {}, noise multiplier {}, sampling rate {}",
                dp.clip_norm, dp.noise_multiplier, dp.sampling_rate
            );
            Some(super::audit_and_verify(&admin, dir, facilities, None).await?)
        }
        None => None,
    };
    let raw = dir.join("model.f32");
    let meta = export_model(&mut client, &spec.name, None, &raw).await?;
    let global = harambee_core::params::from_le_bytes(&std::fs::read(&raw)?)?;
    let task = task();
    let classifier = task.classifier();
    let adapter = dir.join("adapter");
    harambee_models::text::lora::export_peft(&classifier, &global, base.sha256(), &adapter)?;
    println!(
        "final model: version {}; adapters and head in PEFT's layout in {}",
        meta.version,
        adapter.display()
    );

    // The comparisons, in this process: each facility's split exactly as its agent makes it.
    let bar = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message("local-only and pooled fine-tuning for comparison");
    let epochs = (args.rounds() * args.epochs()) as usize;
    let init = classifier.init_params(spec.init_seed);
    let mut config = spec.train_config();
    let facilities_data: Vec<(String, TextDataset, TextDataset)> = facilities
        .iter()
        .map(|f| {
            let (data, _) = task.load(&f.dir.join("data.csv"))?;
            let (train, test) = data.split_holdout(HOLDOUT, SPLIT_SEED);
            Ok((f.name.clone(), train, test))
        })
        .collect::<anyhow::Result<_>>()?;
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Row>> {
        let mut encoded = Vec::new();
        for (name, train, test) in &facilities_data {
            let tr = Features::compute(&base, &classifier, &train.texts, MAX_TOKENS)?;
            let te = Features::compute(&base, &classifier, &test.texts, MAX_TOKENS)?;
            encoded.push((name, tr, train.labels.clone(), te, test.labels.clone()));
        }
        config.epochs = epochs;
        let pooled_features = Features::concat(&encoded.iter().map(|e| &e.1).collect::<Vec<_>>())?;
        let pooled_labels: Vec<usize> = encoded.iter().flat_map(|e| e.2.clone()).collect();
        let pooled = text_train::train_features(
            &base,
            &classifier,
            &init,
            &pooled_features,
            &pooled_labels,
            &config,
            false,
        )?;
        let mut rows = Vec::new();
        for (name, tr, tr_labels, te, te_labels) in &encoded {
            let local = text_train::train_features(
                &base,
                &classifier,
                &init,
                tr,
                tr_labels,
                &config,
                false,
            )?;
            let eval = |params: &[f32]| {
                text_train::evaluate_features(&base, &classifier, params, te, te_labels)
            };
            rows.push(Row {
                name: (*name).clone(),
                n_train: tr.len(),
                n_test: te.len(),
                federated: eval(&global)?,
                local: eval(&local.params)?,
                pooled: eval(&pooled.params)?,
            });
        }
        Ok(rows)
    })
    .await??;
    bar.finish_and_clear();
    println!();
    println!(
        "held-out reviews of each facility (accuracy / macro-F1 over the {} conditions):",
        CLASSES.len()
    );
    println!(
        "  {:<16} {:>5} {:>5}   {:>15}   {:>15}   {:>15}",
        "facility", "train", "test", "federated", "local-only", "pooled"
    );
    for r in &rows {
        println!(
            "  {:<16} {:>5} {:>5}   {:.3} / {:.3}   {:.3} / {:.3}   {:.3} / {:.3}",
            r.name,
            r.n_train,
            r.n_test,
            r.federated.accuracy,
            r.federated.macro_f1,
            r.local.accuracy,
            r.local.macro_f1,
            r.pooled.accuracy,
            r.pooled.macro_f1
        );
    }
    if let Some(worst) = rows
        .iter()
        .min_by(|a, b| a.local.macro_f1.total_cmp(&b.local.macro_f1))
    {
        println!(
            "  worst facility alone: {} (macro-F1 {:.3} local-only, {:.3} federated: {})",
            worst.name,
            worst.local.macro_f1,
            worst.federated.macro_f1,
            if worst.federated.macro_f1 > worst.local.macro_f1 {
                "federation helps"
            } else {
                "federation does not help here"
            }
        );
    }
    println!(
        "  (local-only and pooled: {epochs} epochs from the same initial adapters, as many as the federation's rounds x epochs; no DP-SGD)"
    );
    if let Some(path) = &args.summary_json {
        let facility = |r: &Row| {
            let m = |c: &ClassMetrics| serde_json::json!({"accuracy": c.accuracy, "macro_f1": c.macro_f1});
            serde_json::json!({
                "name": r.name, "train": r.n_train, "test": r.n_test,
                "federated": m(&r.federated), "local": m(&r.local), "pooled": m(&r.pooled),
            })
        };
        let mut summary = serde_json::json!({
            "model": "minilm_lora",
            "rounds_committed": args.rounds(),
            "facilities": rows.iter().map(facility).collect::<Vec<_>>(),
        });
        if let Some(privacy) = privacy {
            summary["privacy"] = privacy;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("summary written to {}", path.display());
    }
    Ok(())
}
