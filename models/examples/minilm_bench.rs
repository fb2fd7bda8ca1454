//! The cost of LoRA fine-tuning all-MiniLM-L6-v2 on real clinical text: seconds per local
//! epoch, samples per second and peak resident memory of the process, and the classifier's
//! accuracy and macro-F1 afterwards. Run by `models/text/bench.sh`, which runs the same
//! fine-tune in PyTorch + PEFT (`models/text/bench.py`) on the data this writes.
//!
//! ```text
//! minilm_bench DRUGREVIEW_DIR DATA_JSON [EPOCHS] [MAX_TRAIN_TEXTS]
//! ```
//!
//! Task: the condition a patient's drug review is about, among the four most frequent
//! conditions of `drugsComTrain.tsv` (UCI Drug Review sample, see data/README.md); trained on
//! those rows of `drugsComTrain.tsv`, evaluated on those of `drugsComTest.tsv`. Both sets go to
//! `DATA_JSON` so the Python side trains on exactly the same texts.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use harambee_models::text::Minilm;
use harambee_models::text::lora::{LoraConfig, TextClassifierSpec};
use harambee_models::text::train::{self, TextDataset};
use harambee_models::{Optimizer, TrainConfig};

const CLASSES: usize = 4;
const MAX_TOKENS: usize = 128;
const BATCH: usize = 16;
const LEARNING_RATE: f64 = 1e-3;

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

fn dataset(rows: &[(String, String)], classes: &[String]) -> TextDataset {
    let mut data = TextDataset::default();
    for (condition, review) in rows {
        if let Some(label) = classes.iter().position(|c| c == condition) {
            data.texts.push(review.clone());
            data.labels.push(label);
        }
    }
    data
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: minilm_bench DRUGREVIEW_DIR DATA_JSON [EPOCHS] [MAX_TRAIN_TEXTS]";
    let dir = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let out = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let epochs: usize = args.next().map_or(Ok(3), |e| e.parse())?;
    let max_train: usize = args.next().map_or(Ok(usize::MAX), |n| n.parse())?;

    let train_rows = read_tsv(&dir.join("drugsComTrain.tsv"))?;
    let test_rows = read_tsv(&dir.join("drugsComTest.tsv"))?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (condition, _) in &train_rows {
        *counts.entry(condition.as_str()).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let classes: Vec<String> = ranked
        .iter()
        .take(CLASSES)
        .map(|(c, _)| (*c).to_owned())
        .collect();
    let mut train_data = dataset(&train_rows, &classes);
    train_data.texts.truncate(max_train);
    train_data.labels.truncate(max_train);
    let test_data = dataset(&test_rows, &classes);
    std::fs::write(
        &out,
        serde_json::to_vec(&serde_json::json!({
            "classes": classes,
            "max_tokens": MAX_TOKENS,
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "epochs": epochs,
            "train": {"texts": train_data.texts, "labels": train_data.labels},
            "test": {"texts": test_data.texts, "labels": test_data.labels},
        }))?,
    )?;

    let model = Minilm::load_default()?;
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig::default(),
        n_classes: CLASSES,
    };
    let config = TrainConfig {
        epochs,
        batch_size: BATCH,
        learning_rate: LEARNING_RATE,
        optimizer: Optimizer::Adam,
        seed: 1,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let start = spec.init_params(1);
    let began = Instant::now();
    let report = train::train(
        &model,
        &spec,
        &start,
        &train_data,
        &config,
        MAX_TOKENS,
        false,
    )?;
    let seconds = began.elapsed().as_secs_f64();
    let metrics = train::evaluate(&model, &spec, &report.params, &test_data, MAX_TOKENS)?;
    let result = serde_json::json!({
        "impl": "harambee",
        "threads": 1,
        "train_texts": train_data.len(),
        "test_texts": test_data.len(),
        "epochs": epochs,
        "seconds_per_epoch": seconds / epochs as f64,
        "samples_per_s": (train_data.len() * epochs) as f64 / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "final_train_loss": report.mean_loss,
        "test_accuracy": metrics.accuracy,
        "test_macro_f1": metrics.macro_f1,
        "update_values": spec.n_params(),
        "model_values": model.n_params(),
    });
    println!("{result}");
    Ok(())
}
