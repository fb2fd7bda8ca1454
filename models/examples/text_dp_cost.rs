//! What text-level DP-SGD costs against ordinary fine-tuning of the LoRA text classifier, on
//! the demo's task and settings (rank 8 on query, value, intermediate and output of the top
//! layer, 128 tokens, the lower five layers run once per text and cached, as an agent does):
//! seconds per local epoch without DP (mini-batches of 16, Adam) and with DP-SGD (Poisson
//! batches of 16 texts on average, clip 1, noise multiplier 1), and the per-text gradients
//! computed in batched passes against one pass per text. One thread; prints one JSON line
//! with the process's CPU seconds of each phase (from `/proc/self/stat`, so that other load
//! on the machine does not count) and, in `wall`, the elapsed seconds.
//!
//! ```text
//! cargo run --release -p harambee-models --example text_dp_cost -- DRUGREVIEW_DIR [TEXTS] [EPOCHS]
//! ```
//!
//! Texts: the reviews of the four most frequent conditions of `drugsComTrain.tsv` (UCI Drug
//! Review sample, data/README.md; `models/text/fetch-drugreview.sh`), at most `TEXTS` of them
//! (default 111, the demo's largest facility).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use chacha20::ChaCha20Rng;
use harambee_models::text::lora::{LoraConfig, LoraTarget, TextClassifierSpec};
use harambee_models::text::train::{self, Features};
use harambee_models::text::{Minilm, dp};
use harambee_models::{DpSgdConfig, Optimizer, TrainConfig};
use rand_core::SeedableRng;

const CLASSES: usize = 4;
const MAX_TOKENS: usize = 128;
const BATCH: usize = 16;

fn read_tsv(path: &Path) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let mut reader = csv::ReaderBuilder::new().delimiter(b'\t').from_path(path)?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("{}: no column {name}", path.display()))
    };
    let (condition, review) = (column("condition")?, column("review")?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        rows.push((record[condition].to_owned(), record[review].to_owned()));
    }
    Ok(rows)
}

/// User plus system CPU seconds of this process so far (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which ends with the last ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Runs `f`, returning its result with its CPU and wall seconds.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let out = f();
    (out, cpu_seconds() - cpu, wall.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: text_dp_cost DRUGREVIEW_DIR [TEXTS] [EPOCHS]";
    let dir = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let max_texts: usize = args.next().map_or(Ok(111), |n| n.parse())?;
    let epochs: usize = args.next().map_or(Ok(2), |n| n.parse())?;

    let rows = read_tsv(&dir.join("drugsComTrain.tsv"))?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (condition, _) in &rows {
        *counts.entry(condition.as_str()).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let classes: Vec<&str> = ranked.iter().take(CLASSES).map(|(c, _)| *c).collect();
    let (mut texts, mut labels) = (Vec::new(), Vec::new());
    for (condition, review) in &rows {
        if let Some(label) = classes.iter().position(|c| c == condition) {
            texts.push(review.clone());
            labels.push(label);
        }
    }
    texts.truncate(max_texts);
    labels.truncate(max_texts);
    let n = texts.len();

    let model = Minilm::load_default()?;
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec![
                LoraTarget::Query,
                LoraTarget::Value,
                LoraTarget::Intermediate,
                LoraTarget::Output,
            ],
            top_layers: Some(1),
        },
        n_classes: CLASSES,
    };
    let (features, frozen_cpu, frozen_wall) =
        timed(|| Features::compute(&model, &spec, &texts, MAX_TOKENS));
    let features = features?;
    let config = TrainConfig {
        epochs,
        batch_size: BATCH,
        learning_rate: 3e-3,
        optimizer: Optimizer::Adam,
        seed: 1,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let start = spec.init_params(1);

    let (plain, plain_cpu, plain_wall) =
        timed(|| train::train_features(&model, &spec, &start, &features, &labels, &config, false));
    plain?;

    let dp_config = DpSgdConfig {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        sampling_rate: BATCH as f64 / n as f64,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (report, dp_cpu, dp_wall) = timed(|| {
        dp::train_features_dp(
            &model, &spec, &start, &features, &labels, &config, false, &dp_config, &mut rng,
        )
    });
    let report = report?;

    // Every text's gradient once: in batched passes (as DP-SGD computes them), and one pass
    // per text (what a loop of per-text backward passes would cost).
    let all: Vec<usize> = (0..n).collect();
    let (batched, batched_cpu, batched_wall) =
        timed(|| dp::example_gradients(&model, &spec, &start, &features, &labels, &all, false));
    batched?;
    let (one_by_one, one_cpu, one_wall) = timed(|| {
        (0..n).try_for_each(|row| {
            dp::example_gradients(&model, &spec, &start, &features, &labels, &[row], false)
                .map(|_| ())
        })
    });
    one_by_one?;
    let per_epoch = epochs as f64;

    println!(
        "{}",
        serde_json::json!({
            "texts": n,
            "epochs": epochs,
            "trainable_values": spec.n_params(),
            "frozen_layers_s": frozen_cpu,
            "plain_s_per_epoch": plain_cpu / per_epoch,
            "dp_s_per_epoch": dp_cpu / per_epoch,
            "dp_over_plain": dp_cpu / plain_cpu,
            "dp_steps": report.steps,
            "dp_mean_batch": report.mean_batch_size,
            "per_text_gradients_batched_s": batched_cpu,
            "per_text_gradients_one_pass_each_s": one_cpu,
            "wall": {
                "frozen_layers_s": frozen_wall,
                "plain_s_per_epoch": plain_wall / per_epoch,
                "dp_s_per_epoch": dp_wall / per_epoch,
                "per_text_gradients_batched_s": batched_wall,
                "per_text_gradients_one_pass_each_s": one_wall,
            },
        })
    );
    Ok(())
}
