//! `bench quality`: how well each strategy serves each facility, on the bundled multi-site
//! heart-disease data (UCI, 4 hospitals), in one process and without the network.
//!
//! The data is split into its hospitals exactly as `demo` does ([`crate::demo::write_facilities`])
//! and each facility holds out the same rows ([`demo::HOLDOUT`], [`demo::SPLIT_SEED`]). Every
//! method trains the same network (an MLP with one hidden layer; FedPer's head is its output
//! layer) for the same number of passes over each facility's rows, and is scored by ROC AUC on
//! the held-out rows:
//!
//! - `local`: each facility trains alone on its own rows for `rounds × epochs` epochs.
//! - `pooled`: one model on every facility's training rows in one place (the upper reference).
//! - `fedavg`, `fedprox`, `fedadam`: `rounds` rounds; in each, every facility trains `epochs`
//!   local epochs from the global model, the sample-weighted mean delta is formed with
//!   [`harambee_core::FedAvg`] (all that secure aggregation reveals) and the server step is
//!   [`harambee_core::strategy::ServerOptimizer`]. FedProx adds the proximal term in local
//!   training.
//! - `fedper`: the body is federated as in FedAvg; each facility keeps and trains its own head
//!   and is scored with the final body and its head.
//! - `fedavg_finetune`: FedAvg's final model, then `finetune_epochs` local epochs at each facility.
//!
//! Per facility the table shows the AUC on its held-out rows (mean ± sd over seeds). `pooled`
//! is the AUC over the union of all held-out rows, each row scored by the model its facility
//! uses (the global model, or the facility's own for `local`, `fedper` and `fedavg_finetune`).
//! `worst` is the lowest facility AUC of a seed, averaged over seeds. A seed changes the initial
//! parameters and the mini-batch order; the held-out split is fixed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use harambee_core::FedAvg;
use harambee_core::strategy::{ServerOptimizer, StrategyConfig};
use harambee_models::data::{Dataset, load_csv, split_holdout};
use harambee_models::metrics;
use harambee_models::model::{ModelKind, ModelSpec};
use harambee_models::train::{FineTuneConfig, Optimizer, TrainConfig, fine_tune, predict, train};
use serde_json::{Value, json};

use crate::demo;

/// Options of `bench quality`.
#[derive(clap::Args, Debug, Clone)]
pub struct QualityArgs {
    /// Repetitions with different initial parameters and mini-batch orders.
    #[arg(long, default_value_t = 5)]
    pub seeds: u32,
    /// Federated rounds. Local-only and pooled training run `rounds × epochs` epochs.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Local epochs per round.
    #[arg(long, default_value_t = 2)]
    pub epochs: u32,
    /// Width of the hidden layer of the MLP every method trains.
    #[arg(long, default_value_t = 16)]
    pub hidden: usize,
    /// Local learning rate (Adam).
    #[arg(long, default_value_t = 0.003)]
    pub learning_rate: f64,
    /// FedProx's proximal weight μ.
    #[arg(long, default_value_t = 0.1)]
    pub mu: f64,
    /// FedAdam's server learning rate η (β1 0.9, β2 0.99, τ 1e-3).
    #[arg(long, default_value_t = 0.01)]
    pub server_lr: f64,
    /// Local epochs of fine-tuning after FedAvg's last round.
    #[arg(long, default_value_t = 2)]
    pub finetune_epochs: u32,
    /// Write the results as one JSON object keyed by method.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Method names, in table order; also the JSON keys.
const METHODS: [&str; 7] = [
    "local",
    "pooled",
    "fedavg",
    "fedprox",
    "fedadam",
    "fedper",
    "fedavg_finetune",
];

pub async fn run(args: QualityArgs) -> anyhow::Result<()> {
    if args.seeds == 0 || args.rounds == 0 || args.epochs == 0 || args.hidden == 0 {
        bail!("--seeds, --rounds, --epochs and --hidden must be at least 1");
    }
    let facilities = load_facilities()?;
    let json_path = args.json.clone();
    let results = tokio::task::spawn_blocking(move || bench(&args, &facilities)).await??;
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

/// One facility's training and held-out rows.
struct Facility {
    name: String,
    train: Dataset,
    test: Dataset,
}

/// The demo's facilities, via a scratch directory that is removed afterwards.
fn load_facilities() -> anyhow::Result<Vec<Facility>> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "harambee-bench-quality-{}-{nanos}",
        std::process::id()
    ));
    let loaded = load_from(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

fn load_from(dir: &Path) -> anyhow::Result<Vec<Facility>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let schema = harambee_models::presets::heart_disease();
    demo::write_facilities(dir, None)?
        .into_iter()
        .map(|f| {
            let data = load_csv(&f.dir.join("data.csv"), &schema)?;
            let (train, test) = split_holdout(&data, demo::HOLDOUT, demo::SPLIT_SEED);
            Ok(Facility {
                name: f.name,
                train,
                test,
            })
        })
        .collect()
}

/// AUCs of one method in one seed.
struct Scores {
    /// Per facility, in facility order.
    facilities: Vec<f64>,
    /// Over the union of the held-out rows.
    pooled: f64,
}

impl Scores {
    /// The lowest facility AUC; NaN if a facility's AUC is undefined.
    fn worst(&self) -> f64 {
        self.facilities.iter().copied().fold(f64::INFINITY, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        })
    }
}

fn bench(args: &QualityArgs, facilities: &[Facility]) -> anyhow::Result<Value> {
    let n_inputs = facilities[0].train.n_inputs;
    let mlp = ModelSpec {
        kind: ModelKind::Mlp {
            hidden: vec![args.hidden],
        },
        n_inputs,
    };
    let personalized = ModelSpec {
        kind: ModelKind::Personalized {
            hidden: vec![args.hidden],
        },
        n_inputs,
    };
    println!(
        "bench quality: UCI heart disease, {} facilities, mlp [{}], {} seeds, {} rounds x {} local epochs (Adam, lr {}, batch 16)",
        facilities.len(),
        args.hidden,
        args.seeds,
        args.rounds,
        args.epochs,
        args.learning_rate
    );
    println!(
        "fedprox mu {}; fedadam eta {} (beta1 0.9, beta2 0.99, tau 1e-3); fine-tuning {} epochs",
        args.mu, args.server_lr, args.finetune_epochs
    );
    let sizes: Vec<String> = facilities
        .iter()
        .map(|f| {
            let positives = f.test.y.iter().filter(|&&y| y > 0.5).count();
            format!(
                "{} {}+{} ({} positive)",
                f.name,
                f.train.n_rows(),
                f.test.n_rows(),
                positives
            )
        })
        .collect();
    println!("rows (train+held out): {}", sizes.join(", "));

    let mut all: BTreeMap<&str, Vec<Scores>> = BTreeMap::new();
    for seed_idx in 0..u64::from(args.seeds) {
        let run = SeedRun {
            args,
            facilities,
            seed: seed_idx,
        };
        let fedavg = run.federated(&mlp, &StrategyConfig::FedAvg)?;
        let finetuned = run.fine_tuned(&mlp, &fedavg)?;
        let fedprox = run.federated(&mlp, &StrategyConfig::FedProx { mu: args.mu })?;
        let fedadam = run.federated(
            &mlp,
            &StrategyConfig::FedAdam {
                eta: args.server_lr,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
        )?;
        let fedper = run.federated(&personalized, &StrategyConfig::FedAvg)?;
        let per_method = [
            ("local", run.local(&mlp)?),
            ("pooled", run.pooled(&mlp)?),
            ("fedavg", run.score_shared(&mlp, &fedavg.global)?),
            ("fedprox", run.score_shared(&mlp, &fedprox.global)?),
            ("fedadam", run.score_shared(&mlp, &fedadam.global)?),
            ("fedper", run.score_own(&personalized, &fedper.personal)?),
            ("fedavg_finetune", run.score_own(&mlp, &finetuned)?),
        ];
        for (method, scores) in per_method {
            all.entry(method).or_default().push(scores);
        }
        eprintln!("seed {} of {} done", seed_idx + 1, args.seeds);
    }

    print_table(facilities, &all);
    let mut out = serde_json::Map::new();
    for method in METHODS {
        out.insert(method.to_owned(), method_json(facilities, &all[method]));
    }
    Ok(Value::Object(out))
}

/// Everything trained for one seed.
struct SeedRun<'a> {
    args: &'a QualityArgs,
    facilities: &'a [Facility],
    seed: u64,
}

/// The outcome of federated rounds.
struct Federated {
    /// The final global model (for FedPer, the final body with the initial head).
    global: Vec<f32>,
    /// Each facility's own model: for FedPer the final body and its head, otherwise the global.
    personal: Vec<Vec<f32>>,
}

impl SeedRun<'_> {
    fn init(&self, spec: &ModelSpec) -> Vec<f32> {
        spec.init_params(42 + self.seed)
    }

    /// The local training config for `epochs` epochs, with a batch order that depends on the seed,
    /// the round and the facility.
    fn config(&self, epochs: usize, round: u64, facility_idx: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: 16,
            learning_rate: self.args.learning_rate,
            optimizer: Optimizer::Adam,
            seed: self.seed * 1_000_003 + round * 1_009 + facility_idx as u64,
            proximal_mu: 0.0,
            frozen_layers: 0,
        }
    }

    fn total_epochs(&self) -> usize {
        (self.args.rounds * self.args.epochs) as usize
    }

    fn local(&self, spec: &ModelSpec) -> anyhow::Result<Scores> {
        let init = self.init(spec);
        let own = parallel(self.facilities, |idx, f| {
            Ok(train(
                spec,
                &init,
                &f.train,
                &self.config(self.total_epochs(), 0, idx),
            )?
            .params)
        })?;
        self.score_own(spec, &own)
    }

    fn pooled(&self, spec: &ModelSpec) -> anyhow::Result<Scores> {
        let trains: Vec<&Dataset> = self.facilities.iter().map(|f| &f.train).collect();
        let all = Dataset::concat(&trains);
        let params = train(
            spec,
            &self.init(spec),
            &all,
            &self.config(self.total_epochs(), 0, 999),
        )?
        .params;
        self.score_shared(spec, &params)
    }

    /// `rounds` rounds of the strategy; for a personalized spec only the body is uploaded and
    /// stepped, and each facility keeps its head.
    fn federated(&self, spec: &ModelSpec, strategy: &StrategyConfig) -> anyhow::Result<Federated> {
        let mut optimizer = ServerOptimizer::new(strategy.clone())?;
        let mut global = self.init(spec);
        let shared_len = spec.shared_len();
        let mut heads: Vec<Vec<f32>> =
            vec![spec.split_params(&global)?.1.to_vec(); self.facilities.len()];
        for round in 0..u64::from(self.args.rounds) {
            let (body, _) = spec.split_params(&global)?;
            let trained = parallel(self.facilities, |idx, f| {
                let start = spec.join_params(body, &heads[idx])?;
                let config = TrainConfig {
                    proximal_mu: strategy.proximal_mu(),
                    ..self.config(self.args.epochs as usize, round + 1, idx)
                };
                let report = train(spec, &start, &f.train, &config)?;
                let update = spec.shared_update(&report.params, &start)?;
                Ok((report, update))
            })?;
            // What secure aggregation reveals: the sample-weighted sum of the updates and the
            // total weight, hence the mean delta.
            let mut sum = FedAvg::new(shared_len);
            for (report, update) in &trained {
                sum.add(report.n_samples as u64, update);
            }
            let mean_delta = sum
                .finish(&vec![0.0; shared_len])
                .context("no update in a round")?;
            let new_body = optimizer.step(body, &mean_delta);
            let (_, global_head) = spec.split_params(&global)?;
            global = spec.join_params(&new_body, global_head)?;
            for (head, (report, _)) in heads.iter_mut().zip(&trained) {
                *head = spec.split_params(&report.params)?.1.to_vec();
            }
        }
        let (body, _) = spec.split_params(&global)?;
        let personal = heads
            .iter()
            .map(|head| spec.join_params(body, head))
            .collect::<Result<_, _>>()?;
        Ok(Federated { global, personal })
    }

    /// Each facility fine-tunes the final global model on its own rows.
    fn fine_tuned(&self, spec: &ModelSpec, federated: &Federated) -> anyhow::Result<Vec<Vec<f32>>> {
        let fine = FineTuneConfig {
            epochs: self.args.finetune_epochs as usize,
            learning_rate: None,
            frozen_layers: 0,
        };
        if fine.epochs == 0 {
            return Ok(vec![federated.global.clone(); self.facilities.len()]);
        }
        let rounds = u64::from(self.args.rounds);
        parallel(self.facilities, |idx, f| {
            Ok(fine_tune(
                spec,
                &federated.global,
                &f.train,
                &self.config(1, rounds + 1, idx),
                &fine,
            )?
            .params)
        })
    }

    /// Every facility uses the same model.
    fn score_shared(&self, spec: &ModelSpec, params: &[f32]) -> anyhow::Result<Scores> {
        let own = vec![params.to_vec(); self.facilities.len()];
        self.score_own(spec, &own)
    }

    /// Each facility uses its own model.
    fn score_own(&self, spec: &ModelSpec, own: &[Vec<f32>]) -> anyhow::Result<Scores> {
        let mut facilities = Vec::new();
        let mut all_probs = Vec::new();
        let mut all_labels = Vec::new();
        for (f, params) in self.facilities.iter().zip(own) {
            let probs = predict(spec, params, &f.test)?;
            facilities.push(metrics::compute(&probs, &f.test.y).auc);
            all_probs.extend(probs);
            all_labels.extend_from_slice(&f.test.y);
        }
        Ok(Scores {
            facilities,
            pooled: metrics::compute(&all_probs, &all_labels).auc,
        })
    }
}

/// `work` on every facility, on up to two threads (results in facility order; training is
/// deterministic whatever the thread).
fn parallel<T: Send>(
    facilities: &[Facility],
    work: impl Fn(usize, &Facility) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let indexed: Vec<(usize, &Facility)> = facilities.iter().enumerate().collect();
    let halves: Vec<&[(usize, &Facility)]> =
        indexed.chunks(indexed.len().div_ceil(2).max(1)).collect();
    let work = &work;
    let results: Vec<anyhow::Result<Vec<T>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = halves
            .into_iter()
            .map(|half| {
                scope.spawn(move || {
                    half.iter()
                        .map(|&(idx, f)| work(idx, f))
                        .collect::<anyhow::Result<Vec<T>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench thread panicked"))
            .collect()
    });
    let mut out = Vec::with_capacity(facilities.len());
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}

/// Mean and sample standard deviation (0 for one value); NaN if any value is NaN.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn cell(values: &[f64]) -> String {
    let (mean, sd) = mean_sd(values);
    if mean.is_nan() {
        "n/a".to_owned()
    } else {
        format!("{mean:.3} ± {sd:.3}")
    }
}

fn print_table(facilities: &[Facility], all: &BTreeMap<&str, Vec<Scores>>) {
    let width = 15;
    let mut header = format!("{:<16}", "method");
    for f in facilities {
        header.push_str(&format!(" {:>width$}", f.name));
    }
    header.push_str(&format!(
        " {:>width$} {:>width$}",
        "pooled", "worst facility"
    ));
    println!();
    println!("ROC AUC on held-out rows, mean ± sd over seeds");
    println!("{header}");
    for method in METHODS {
        let runs = &all[method];
        let mut line = format!("{method:<16}");
        for idx in 0..facilities.len() {
            let values: Vec<f64> = runs.iter().map(|s| s.facilities[idx]).collect();
            line.push_str(&format!(" {:>width$}", cell(&values)));
        }
        let pooled: Vec<f64> = runs.iter().map(|s| s.pooled).collect();
        let worst: Vec<f64> = runs.iter().map(Scores::worst).collect();
        line.push_str(&format!(
            " {:>width$} {:>width$}",
            cell(&pooled),
            cell(&worst)
        ));
        println!("{line}");
    }
}

fn method_json(facilities: &[Facility], runs: &[Scores]) -> Value {
    let number = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let mut means = serde_json::Map::new();
    let mut sds = serde_json::Map::new();
    for (idx, f) in facilities.iter().enumerate() {
        let (mean, sd) = mean_sd(&runs.iter().map(|s| s.facilities[idx]).collect::<Vec<_>>());
        means.insert(f.name.clone(), number(mean));
        sds.insert(f.name.clone(), number(sd));
    }
    let (pooled, pooled_sd) = mean_sd(&runs.iter().map(|s| s.pooled).collect::<Vec<_>>());
    let (worst, worst_sd) = mean_sd(&runs.iter().map(Scores::worst).collect::<Vec<_>>());
    json!({
        "pooled_auc": number(pooled),
        "worst_facility_auc": number(worst),
        "facilities": means,
        "pooled_auc_sd": number(pooled_sd),
        "worst_facility_auc_sd": number(worst_sd),
        "facilities_sd": sds,
        "seeds": runs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        assert_eq!(mean_sd(&[0.5]), (0.5, 0.0));
        let (mean, sd) = mean_sd(&[1.0, 2.0, 3.0]);
        assert_eq!(mean, 2.0);
        assert!((sd - 1.0).abs() < 1e-12);
        assert!(mean_sd(&[1.0, f64::NAN]).0.is_nan());
    }

    #[test]
    fn worst_is_the_minimum_unless_undefined() {
        assert_eq!(
            Scores {
                facilities: vec![0.9, 0.7, 0.8],
                pooled: 0.85
            }
            .worst(),
            0.7
        );
        assert!(
            Scores {
                facilities: vec![0.9, f64::NAN],
                pooled: 0.85
            }
            .worst()
            .is_nan()
        );
    }

    #[test]
    fn strategy_configs_and_state_survive_json() {
        // The coordinator stores both as JSON; check the wire names and defaults here, where
        // serde_json is at hand.
        let config: StrategyConfig =
            serde_json::from_str(r#"{"kind": "fedadam", "eta": 0.05}"#).unwrap();
        assert_eq!(
            config,
            StrategyConfig::FedAdam {
                eta: 0.05,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            }
        );
        let config: StrategyConfig = serde_json::from_str(r#"{"kind": "fedavg"}"#).unwrap();
        assert_eq!(config, StrategyConfig::FedAvg);
        let config: StrategyConfig =
            serde_json::from_str(r#"{"kind": "fedprox", "mu": 0.5}"#).unwrap();
        assert_eq!(config.proximal_mu(), 0.5);
        assert!(
            serde_json::from_str::<StrategyConfig>(r#"{"kind": "fedadam", "etta": 0.05}"#).is_err()
        );
        assert!(serde_json::from_str::<StrategyConfig>(r#"{"kind": "fedsgd"}"#).is_err());
        assert_eq!(
            serde_json::to_value(StrategyConfig::FedYogi {
                eta: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            })
            .unwrap()["kind"],
            "fedyogi"
        );

        let mut optimizer = ServerOptimizer::new(StrategyConfig::FedYogi {
            eta: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        })
        .unwrap();
        let x1 = optimizer.step(&[1.0, 2.0], &[0.1, -0.2]);
        let mut restored: ServerOptimizer =
            serde_json::from_str(&serde_json::to_string(&optimizer).unwrap()).unwrap();
        assert_eq!(restored, optimizer);
        assert_eq!(
            restored.step(&x1, &[0.3, 0.0]),
            optimizer.step(&x1, &[0.3, 0.0])
        );
    }
}
