//! `bench train`: how fast a facility trains, Harambee against PyTorch (non-DP) and Opacus
//! (DP-SGD), on the same rows with the same hyper-parameters, in one run.
//!
//! Rows: the demo facilities' training rows ([`demo::write_facilities`], each facility's
//! held-out rows removed as the demo does), encoded by the heart-disease schema, pooled. The
//! same encoded rows go to the Python side as a CSV file, with Harambee's initial parameters,
//! so both sides train the same network from the same start on identical inputs:
//!
//! - non-DP: mini-batches of `--batch-size` rows in a fresh order each epoch, Adam; Harambee's
//!   [`train`], PyTorch (`sim/bench/train_reference.py`).
//! - DP-SGD: Poisson sampling at rate `q`, per-example clipping to `C`, Gaussian noise of
//!   multiplier `z`, division by the expected batch size, Adam; Harambee's [`train_dp`], Opacus
//!   (`make_private`, the same `q`, `C` and `z`). Both take `epochs / q` steps.
//!
//! Only training is timed on both sides (not process start, imports, data loading or model
//! construction): one untimed warm-up, then `--repeats` timed runs from the same start; the
//! median samples per second is reported (samples: rows trained on, or rows sampled with
//! DP-SGD). Harambee's training runs on one thread (the ndarray backend is built without its
//! thread pool); the bench measures the cores it actually used (process CPU time over wall time)
//! and sets PyTorch to as many threads (`--torch-threads` overrides).
//!
//! The bench also times one local DP-SGD round as the demo federation runs it (logistic
//! regression, 5 epochs, the demo's DP-SGD parameters, Adam at 0.01) on all 200 rows of the
//! VA Long Beach facility, and the same round with the bench's MLP.
//!
//! The Python side runs in a virtual environment under the cargo target directory
//! (`target/bench-venv`), created with `python3 -m venv` and `pip install torch opacus` when it is
//! missing (several GB: PyTorch's Linux wheels pull NVIDIA's libraries), or with `--python`. If
//! it cannot run, Harambee's figures are printed with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use harambee_models::data::{Dataset, load_csv, split_holdout};
use harambee_models::dp::{DpSgdConfig, train_dp};
use harambee_models::model::{ModelKind, ModelSpec};
use harambee_models::train::{Optimizer, TrainConfig, evaluate, train};
use harambee_secagg::ChaCha20Rng;
use harambee_secagg::rand_core::SeedableRng;
use serde_json::{Value, json};

use crate::demo;

/// The reference script, written next to the rows it reads.
const REFERENCE_SCRIPT: &str = include_str!("../../bench/train_reference.py");
/// The facility whose 200 rows one local round is timed on.
const LOCAL_ROUND_FACILITY: &str = "va-long-beach";
/// Free space below which the bench does not start installing PyTorch (the environment takes
/// about 5.5 GiB, and pip needs room for the downloads).
const MIN_FREE_BYTES_FOR_TORCH: u64 = 8 << 30;

/// Options of `bench train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Hidden layer widths of the MLP both sides train, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32,32")]
    pub hidden: Vec<usize>,
    /// Passes over the rows per training run.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Rows per mini-batch of non-DP training.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam's step size, both trainers.
    #[arg(long, default_value_t = 0.01)]
    pub learning_rate: f64,
    /// DP-SGD's per-example clipping norm C (Opacus's max_grad_norm).
    #[arg(long, default_value_t = 1.0)]
    pub clip_norm: f64,
    /// DP-SGD's noise multiplier z.
    #[arg(long, default_value_t = 1.5)]
    pub noise_multiplier: f64,
    /// DP-SGD's Poisson sampling rate q; 1/k for a whole k, so that both sides take the same
    /// steps (Opacus takes 1/q steps per epoch).
    #[arg(long, default_value_t = 0.1)]
    pub sampling_rate: f64,
    /// Timed runs per trainer, after one untimed warm-up; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// A Python interpreter with torch and opacus, instead of the bench's own virtual
    /// environment under the cargo target directory.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// PyTorch's threads (torch.set_num_threads); default: the cores Harambee's training used,
    /// rounded.
    #[arg(long)]
    pub torch_threads: Option<usize>,
    /// Harambee only: no PyTorch or Opacus reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    // Other work on the machine skews the figures: say how busy it was.
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok());
    let dir = tempfile::Builder::new()
        .prefix("harambee-bench-train-")
        .tempdir()
        .context("creating a scratch directory")?;
    let rows = load_rows(dir.path())?;
    let spec = ModelSpec {
        kind: ModelKind::Mlp {
            hidden: args.hidden.clone(),
        },
        n_inputs: rows.pooled.n_inputs,
    };
    let init = spec.init_params(42);

    let harambee = tokio::task::spawn_blocking({
        let (args, spec, init, rows) = (args.clone(), spec.clone(), init.clone(), rows.clone());
        move || bench_harambee(&args, &spec, &init, &rows)
    })
    .await??;
    let threads = args
        .torch_threads
        .unwrap_or_else(|| harambee.cores.round().max(1.0) as usize);
    let reference = if args.no_reference {
        Err("--no-reference".to_owned())
    } else {
        let (args, init, pooled, dir_path) = (
            args.clone(),
            init.clone(),
            rows.pooled.clone(),
            dir.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            run_reference(&args, threads, &init, &pooled, &dir_path).map_err(|e| format!("{e:#}"))
        })
        .await?
    };

    let report = Report {
        args: &args,
        spec: &spec,
        n_rows: rows.pooled.n_rows(),
        local_rows: rows.local.n_rows(),
        harambee: &harambee,
        reference: &reference,
        threads,
        load_at_start,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    Ok(())
}

fn check_args(args: &TrainArgs) -> anyhow::Result<()> {
    if args.epochs == 0 || args.batch_size == 0 || args.repeats == 0 {
        bail!("--epochs, --batch-size and --repeats must be at least 1");
    }
    if args.hidden.contains(&0) {
        bail!("--hidden: a layer of width 0");
    }
    if args.torch_threads == Some(0) {
        bail!("--torch-threads must be at least 1");
    }
    if !(args.learning_rate.is_finite() && args.learning_rate > 0.0) {
        bail!("--learning-rate must be positive");
    }
    if !(args.clip_norm.is_finite() && args.clip_norm > 0.0) {
        bail!("--clip-norm must be positive");
    }
    if !(args.noise_multiplier.is_finite() && args.noise_multiplier >= 0.0) {
        bail!("--noise-multiplier must be non-negative");
    }
    let inverse = 1.0 / args.sampling_rate;
    if !(args.sampling_rate > 0.0 && args.sampling_rate <= 1.0)
        || (inverse - inverse.round()).abs() > 1e-9 * inverse
    {
        bail!(
            "--sampling-rate must be 1/k for a whole k (Opacus takes 1/q steps per epoch), got {}",
            args.sampling_rate
        );
    }
    Ok(())
}

/// The rows both sides train on, and the facility a local round is timed on.
#[derive(Clone)]
struct Rows {
    /// Every demo facility's training rows, in facility order.
    pooled: Dataset,
    /// All rows of [`LOCAL_ROUND_FACILITY`].
    local: Dataset,
}

fn load_rows(dir: &Path) -> anyhow::Result<Rows> {
    let schema = harambee_models::presets::heart_disease();
    let mut trains = Vec::new();
    let mut local = None;
    for f in demo::write_facilities(dir, None)? {
        let data = load_csv(&f.dir.join("data.csv"), &schema)?;
        trains.push(split_holdout(&data, demo::HOLDOUT, demo::SPLIT_SEED).0);
        if f.name == LOCAL_ROUND_FACILITY {
            local = Some(data);
        }
    }
    let local = local.with_context(|| format!("no demo facility {LOCAL_ROUND_FACILITY}"))?;
    Ok(Rows {
        pooled: Dataset::concat(&trains.iter().collect::<Vec<_>>()),
        local,
    })
}

/// One trainer's timed runs.
#[derive(Debug, Clone)]
struct Timed {
    /// Median over the runs of samples per second.
    samples_per_s: f64,
    run_seconds: Vec<f64>,
    run_samples: Vec<u64>,
    /// Median over the runs of the training loss after training (a check that it trained).
    final_loss: f64,
}

impl Timed {
    fn json(&self) -> Value {
        json!({
            "samples_per_s": self.samples_per_s,
            "run_seconds": self.run_seconds,
            "run_samples": self.run_samples,
            "final_loss": self.final_loss,
        })
    }
}

/// Harambee's figures.
#[derive(Debug, Clone)]
struct Harambee {
    nondp: Timed,
    dp: Timed,
    /// Process CPU time over wall time during the timed runs.
    cores: f64,
    /// One local DP-SGD round, median milliseconds: the demo's logistic regression, the bench's
    /// MLP.
    local_round_ms: (f64, f64),
}

fn bench_harambee(
    args: &TrainArgs,
    spec: &ModelSpec,
    init: &[f32],
    rows: &Rows,
) -> anyhow::Result<Harambee> {
    let data = &rows.pooled;
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        optimizer: Optimizer::Adam,
        seed: 1,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let dp = DpSgdConfig {
        clip_norm: args.clip_norm,
        noise_multiplier: args.noise_multiplier,
        sampling_rate: args.sampling_rate,
    };
    // Cores used: CPU time over wall time of the whole span, warm-ups included.
    let pid = std::process::id();
    let cpu_before = super::cpu_seconds(pid)?;
    let span = Instant::now();
    let nondp = time_runs(args.repeats, || {
        let report = train(spec, init, data, &config)?;
        Ok((
            (args.epochs * data.n_rows()) as u64,
            evaluate(spec, &report.params, data)?.loss,
        ))
    })?;
    let dp_timed = time_runs(args.repeats, || {
        let report = train_dp(spec, init, data, &config, &dp, &mut os_seeded_rng())?;
        let n_sampled = (report.mean_batch_size * report.steps as f64).round() as u64;
        Ok((n_sampled, evaluate(spec, &report.train.params, data)?.loss))
    })?;
    let cores = (super::cpu_seconds(pid)? - cpu_before) / span.elapsed().as_secs_f64();

    let (clip_norm, noise_multiplier, sampling_rate) = demo::DEMO_DP_SGD;
    let demo_dp = DpSgdConfig {
        clip_norm,
        noise_multiplier,
        sampling_rate,
    };
    let demo_round = TrainConfig {
        epochs: 5,
        batch_size: 16,
        learning_rate: 0.01,
        ..config.clone()
    };
    let logistic = ModelSpec {
        kind: ModelKind::LogisticRegression,
        n_inputs: data.n_inputs,
    };
    let mut local_ms = [0.0; 2];
    for (ms, spec) in local_ms.iter_mut().zip([&logistic, spec]) {
        let start = spec.init_params(42);
        let timed = time_runs(args.repeats, || {
            train_dp(
                spec,
                &start,
                &rows.local,
                &demo_round,
                &demo_dp,
                &mut os_seeded_rng(),
            )?;
            Ok((1, f64::NAN))
        })?;
        *ms = 1e3 * median(timed.run_seconds);
    }
    Ok(Harambee {
        nondp,
        dp: dp_timed,
        cores,
        local_round_ms: (local_ms[0], local_ms[1]),
    })
}

/// A CSPRNG seeded by the operating system, as the agent trains with.
fn os_seeded_rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed(rand::random())
}

/// One untimed warm-up of `run`, then `repeats` timed runs; `run` returns the samples it
/// trained on and the loss after training.
fn time_runs(
    repeats: usize,
    mut run: impl FnMut() -> anyhow::Result<(u64, f64)>,
) -> anyhow::Result<Timed> {
    run()?;
    let mut run_seconds = Vec::with_capacity(repeats);
    let mut run_samples = Vec::with_capacity(repeats);
    let mut losses = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        let (samples, loss) = run()?;
        let seconds = started.elapsed().as_secs_f64();
        run_seconds.push(seconds);
        run_samples.push(samples);
        losses.push(loss);
    }
    let rates: Vec<f64> = run_samples
        .iter()
        .zip(&run_seconds)
        .map(|(&samples, &seconds)| samples as f64 / seconds)
        .collect();
    Ok(Timed {
        samples_per_s: median(rates),
        run_seconds,
        run_samples,
        final_loss: median(losses),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// What the Python side printed: its figures for PyTorch and Opacus.
type Reference = Result<Value, String>;

/// Runs the reference script on the same rows and hyper-parameters.
fn run_reference(
    args: &TrainArgs,
    threads: usize,
    init: &[f32],
    data: &Dataset,
    dir: &Path,
) -> anyhow::Result<Value> {
    let python = match &args.python {
        Some(python) => python.clone(),
        None => bench_venv()?,
    };
    let csv_path = dir.join("rows.csv");
    let mut text = String::with_capacity(data.x.len() * 12);
    for row_idx in 0..data.n_rows() {
        for value in data.row(row_idx) {
            // `{}` prints the shortest decimal that reads back as the same f32.
            text.push_str(&format!("{value},"));
        }
        text.push_str(&format!("{}\n", data.y[row_idx]));
    }
    std::fs::write(&csv_path, text).context("writing the rows for the reference")?;
    let config_path = dir.join("config.json");
    let config = json!({
        "data_csv": csv_path,
        "n_inputs": data.n_inputs,
        "hidden": args.hidden,
        "init_params": init,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "clip_norm": args.clip_norm,
        "noise_multiplier": args.noise_multiplier,
        "sampling_rate": args.sampling_rate,
        "repeats": args.repeats,
        "threads": threads,
        "seed": 1,
    });
    std::fs::write(&config_path, config.to_string())?;
    let script = dir.join("train_reference.py");
    std::fs::write(&script, REFERENCE_SCRIPT)?;

    let output = Command::new(&python)
        .arg(&script)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed: Option<Value> = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok());
    match parsed {
        Some(value) if value.get("error").is_none() && output.status.success() => Ok(value),
        Some(value) if value.get("error").is_some() => {
            bail!(
                "reference failed: {}",
                value["error"].as_str().unwrap_or("?")
            )
        }
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            bail!(
                "the reference script exited with {} and no result: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

/// The Python of the bench's virtual environment, `<target>/bench-venv`, created and given
/// torch and opacus (from the Python package index) when it does not import them.
fn bench_venv() -> anyhow::Result<PathBuf> {
    let target = target_dir()?;
    let venv = target.join("bench-venv");
    let python = venv.join("bin").join("python");
    if python.exists() && imports_torch(&python) {
        return Ok(python);
    }
    let free = free_bytes(&target)?;
    if free < MIN_FREE_BYTES_FOR_TORCH {
        bail!(
            "{:.1} GiB free under {}: torch and opacus need about 6 GiB (pass --python to use an existing interpreter)",
            free as f64 / f64::from(1u32 << 30),
            target.display()
        );
    }
    eprintln!(
        "bench train: installing torch and opacus into {} (pip, from the Python package index; several GB, once)",
        venv.display()
    );
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv")?;
        if !status.success() {
            bail!("python3 -m venv {} failed ({status})", venv.display());
        }
    }
    // pip's progress goes to stderr, so that stdout stays the bench's own (--json).
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "torch", "opacus"])
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install torch opacus failed ({status})");
    }
    if !imports_torch(&python) {
        bail!("{} still cannot import torch and opacus", python.display());
    }
    Ok(python)
}

fn imports_torch(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import torch, opacus"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The cargo target directory this binary was built in: the parent of its profile directory,
/// recognised by the `CACHEDIR.TAG` cargo writes there.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_owned)
        .with_context(|| {
            format!(
                "{} is not in a cargo target directory, where the bench keeps its Python environment: pass --python",
                exe.display()
            )
        })
}

/// Bytes available to this user on the file system holding `dir` (`df -Pk`).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let output = Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .context("running df")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("unexpected df output: {text}"))?;
    Ok(kib * 1024)
}

/// Everything the bench prints.
struct Report<'a> {
    args: &'a TrainArgs,
    spec: &'a ModelSpec,
    n_rows: usize,
    local_rows: usize,
    harambee: &'a Harambee,
    reference: &'a Reference,
    threads: usize,
    load_at_start: Option<f64>,
}

impl Report<'_> {
    /// `(pytorch non-DP, opacus DP-SGD)` samples per second, when the reference ran.
    fn reference_rates(&self) -> Option<(f64, f64)> {
        let value = self.reference.as_ref().ok()?;
        Some((
            value["nondp"]["samples_per_s"].as_f64()?,
            value["dp"]["samples_per_s"].as_f64()?,
        ))
    }

    fn machine(&self) -> Value {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        json!({ "cpu": cpu, "cores": cores, "load_average_1min_at_start": self.load_at_start })
    }

    fn json(&self) -> Value {
        let h = self.harambee;
        let ratios = self.reference_rates().map(|(torch, opacus)| {
            json!({
                "harambee_over_pytorch_nondp": h.nondp.samples_per_s / torch,
                "harambee_over_opacus_dp": h.dp.samples_per_s / opacus,
            })
        });
        let (reference, missing) = match self.reference {
            Ok(value) => (value.clone(), Value::Null),
            Err(reason) => (Value::Null, json!(reason)),
        };
        json!({
            "model": { "kind": "mlp", "hidden": self.args.hidden, "n_inputs": self.spec.n_inputs, "n_params": self.spec.n_params() },
            "rows": self.n_rows,
            "epochs": self.args.epochs,
            "batch_size": self.args.batch_size,
            "learning_rate": self.args.learning_rate,
            "dp_sgd": { "clip_norm": self.args.clip_norm, "noise_multiplier": self.args.noise_multiplier, "sampling_rate": self.args.sampling_rate },
            "timing": format!("training only; median of {} runs after one warm-up", self.args.repeats),
            "machine": self.machine(),
            "harambee": {
                "nondp": h.nondp.json(),
                "dp": h.dp.json(),
                "cores_used": h.cores,
                "local_round_ms": {
                    "facility": LOCAL_ROUND_FACILITY,
                    "rows": self.local_rows,
                    "logistic_regression": h.local_round_ms.0,
                    "mlp": h.local_round_ms.1,
                },
            },
            "torch_threads": self.threads,
            "reference": reference,
            "reference_missing": missing,
            "ratios": ratios,
        })
    }

    fn print(&self) {
        let (args, h) = (self.args, self.harambee);
        let machine = self.machine();
        println!(
            "bench train: mlp {:?} on {} inputs ({} parameters), {} rows (the demo facilities' training rows), {} epochs, Adam lr {}",
            args.hidden,
            self.spec.n_inputs,
            self.spec.n_params(),
            self.n_rows,
            args.epochs,
            args.learning_rate
        );
        println!(
            "non-DP: batches of {}; DP-SGD: C {}, z {}, Poisson q {} ({:.0} rows per step expected, {} steps)",
            args.batch_size,
            args.clip_norm,
            args.noise_multiplier,
            args.sampling_rate,
            args.sampling_rate * self.n_rows as f64,
            harambee_models::dp::dp_steps(args.epochs, args.sampling_rate)
        );
        println!(
            "machine: {} ({} cores, load average {} when the bench started); timing: training only, median of {} runs after one warm-up",
            machine["cpu"].as_str().unwrap_or("?"),
            machine["cores"],
            machine["load_average_1min_at_start"],
            args.repeats
        );
        println!(
            "Harambee used {:.2} cores (CPU time / wall time); PyTorch set to {} thread(s)",
            h.cores, self.threads
        );
        println!();
        println!("{:<18} {:>12} {:>11}", "", "samples/s", "final loss");
        let line = |name: &str, rate: f64, loss: f64| {
            println!("{name:<18} {rate:>12.0} {loss:>11.4}");
        };
        line("harambee non-DP", h.nondp.samples_per_s, h.nondp.final_loss);
        if let Ok(value) = self.reference {
            let rate = |key: &str| value[key]["samples_per_s"].as_f64().unwrap_or(f64::NAN);
            let loss = |key: &str| value[key]["final_loss"].as_f64().unwrap_or(f64::NAN);
            line("pytorch non-DP", rate("nondp"), loss("nondp"));
            line("harambee DP-SGD", h.dp.samples_per_s, h.dp.final_loss);
            line("opacus DP-SGD", rate("dp"), loss("dp"));
        } else {
            line("harambee DP-SGD", h.dp.samples_per_s, h.dp.final_loss);
        }
        println!();
        match (self.reference, self.reference_rates()) {
            (Ok(value), Some((torch, opacus))) => {
                println!(
                    "reference: torch {}, opacus {}, Python {}",
                    value["torch_version"].as_str().unwrap_or("?"),
                    value["opacus_version"].as_str().unwrap_or("?"),
                    value["python"].as_str().unwrap_or("?")
                );
                let verdict =
                    |ratio: f64, target: f64| if ratio >= target { "met" } else { "NOT met" };
                let nondp = h.nondp.samples_per_s / torch;
                let dp = h.dp.samples_per_s / opacus;
                println!(
                    "harambee / pytorch non-DP: {nondp:.2} (target >= 0.5: {})",
                    verdict(nondp, 0.5)
                );
                println!(
                    "harambee / opacus DP-SGD:  {dp:.2} (target >= 1: {})",
                    verdict(dp, 1.0)
                );
            }
            (Err(reason), _) => println!("no PyTorch/Opacus reference: {reason}"),
            (Ok(_), None) => println!("no PyTorch/Opacus reference: its output lacks the figures"),
        }
        let (clip_norm, noise_multiplier, sampling_rate) = demo::DEMO_DP_SGD;
        println!(
            "one local DP-SGD round (5 epochs, C {clip_norm}, z {noise_multiplier}, q {sampling_rate}, Adam lr 0.01) on {}'s {} rows: logistic regression {:.1} ms, mlp {:?} {:.1} ms (median of {})",
            LOCAL_ROUND_FACILITY,
            self.local_rows,
            h.local_round_ms.0,
            args.hidden,
            h.local_round_ms.1,
            args.repeats
        );
    }
}
