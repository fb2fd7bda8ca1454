//! DP-SGD on the bundled heart-disease data: the gradient, the clipping and the noise pinned
//! against plain training, frozen layers, utility, and the checks of the configuration.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use chacha20::ChaCha20Rng;
use harambee_models::{
    Dataset, DpSgdConfig, ModelError, ModelKind, ModelSpec, Optimizer, TrainConfig, dp_steps,
    evaluate, load_csv, presets, split_holdout, train, train_dp,
};
use harambee_privacy::mechanism::LatticeGaussian;
use rand_core::SeedableRng;

fn heart() -> Dataset {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/heart_disease_uci_4sites.csv");
    load_csv(&path, &presets::heart_disease()).unwrap()
}

/// Rows `rows` of `data`. The bundled table holds Cleveland (rows 0..303), Hungary (303..597),
/// Switzerland (597..720) and VA Long Beach (720..920), in that order.
fn rows(data: &Dataset, rows: Range<usize>) -> Dataset {
    let n_inputs = data.n_inputs;
    Dataset {
        n_inputs,
        x: data.x[rows.start * n_inputs..rows.end * n_inputs].to_vec(),
        y: data.y[rows].to_vec(),
    }
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn logistic(n_inputs: usize) -> ModelSpec {
    ModelSpec {
        kind: ModelKind::LogisticRegression,
        n_inputs,
    }
}

fn mlp(n_inputs: usize, hidden: Vec<usize>) -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Mlp { hidden },
        n_inputs,
    }
}

fn config(optimizer: Optimizer, epochs: usize, learning_rate: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        learning_rate,
        optimizer,
        seed: 1,
        proximal_mu: 0.0,
        frozen_layers: 0,
    }
}

fn dp(clip_norm: f64, noise_multiplier: f64, sampling_rate: f64) -> DpSgdConfig {
    DpSgdConfig {
        clip_norm,
        noise_multiplier,
        sampling_rate,
    }
}

/// `after - before`, in `f64`.
fn change(after: &[f32], before: &[f32]) -> Vec<f64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| f64::from(*a) - f64::from(*b))
        .collect()
}

fn norm(values: &[f64]) -> f64 {
    values.iter().map(|value| value * value).sum::<f64>().sqrt()
}

fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(actual.len(), expected.len());
    for (idx, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "{what}: param {idx}: {a} vs {e}"
        );
    }
}

#[test]
fn models_dp_without_noise_or_clipping_is_full_batch_training() {
    // q = 1 samples every row, a huge C clips nothing and z = 0 adds nothing: each step is one
    // full-batch step on the mean gradient, with the FedProx term when mu > 0.
    let data = rows(&heart(), 0..60);
    let n_rows = data.n_rows();
    for spec in [logistic(data.n_inputs), mlp(data.n_inputs, vec![8])] {
        let start = spec.init_params(3);
        let cases = [
            (Optimizer::Sgd, 1, 0.5, 0.0, 1e-6),
            (Optimizer::Sgd, 3, 0.5, 0.8, 1e-5),
            (Optimizer::Adam, 3, 0.05, 0.0, 1e-4),
        ];
        for (optimizer, epochs, learning_rate, proximal_mu, tolerance) in cases {
            let config = TrainConfig {
                batch_size: n_rows,
                proximal_mu,
                ..config(optimizer, epochs, learning_rate)
            };
            let plain = train(&spec, &start, &data, &config).unwrap();
            let private = train_dp(
                &spec,
                &start,
                &data,
                &config,
                &dp(1e6, 0.0, 1.0),
                &mut rng(1),
            )
            .unwrap();
            let what = format!("{spec:?} {optimizer:?} {epochs} epochs mu {proximal_mu}");
            assert_close(&private.train.params, &plain.params, tolerance, &what);
            assert_ne!(private.train.params, start, "{what}");
            assert_eq!(private.steps, epochs as u64);
            assert_eq!(private.mean_batch_size, n_rows as f64);
            assert_eq!(private.train.n_samples, n_rows);
            assert!(
                (private.train.mean_loss - plain.mean_loss).abs() < 1e-5,
                "{what}: loss {} vs {}",
                private.train.mean_loss,
                plain.mean_loss
            );
        }
    }
}

#[test]
fn models_dp_clipping_bounds_each_patients_influence() {
    // One noiseless SGD step at lr 1 over every row moves the parameters by exactly
    // -(sum of clipped per-patient gradients) / n, a vector of norm at most C. The per-patient
    // gradients come from plain training: one SGD step at lr 1 on that row alone.
    let data = rows(&heart(), 303..343);
    let n_rows = data.n_rows();
    let clip_norm = 0.01;
    for spec in [logistic(data.n_inputs), mlp(data.n_inputs, vec![8])] {
        let start = spec.init_params(2);
        let one_step = TrainConfig {
            batch_size: 1,
            ..config(Optimizer::Sgd, 1, 1.0)
        };
        let mut expected = vec![0.0f64; start.len()];
        for row_idx in 0..n_rows {
            let alone = rows(&data, row_idx..row_idx + 1);
            let stepped = train(&spec, &start, &alone, &one_step).unwrap().params;
            let grad: Vec<f64> = change(&start, &stepped);
            let grad_norm = norm(&grad);
            assert!(grad_norm > clip_norm, "{spec:?} row {row_idx}: {grad_norm}");
            for (total, value) in expected.iter_mut().zip(&grad) {
                *total -= value * clip_norm / grad_norm / n_rows as f64;
            }
        }
        let private = train_dp(
            &spec,
            &start,
            &data,
            &one_step,
            &dp(clip_norm, 0.0, 1.0),
            &mut rng(2),
        )
        .unwrap();
        let update = change(&private.train.params, &start);
        for (idx, (actual, expected)) in update.iter().zip(&expected).enumerate() {
            assert!(
                (actual - expected).abs() < 2e-7,
                "{spec:?} param {idx}: {actual} vs {expected}"
            );
        }
        let update_norm = norm(&update);
        assert!(update_norm <= clip_norm * 1.0001, "{spec:?}: {update_norm}");
        assert!(update_norm > 0.5 * clip_norm, "{spec:?}: {update_norm}");
    }
}

#[test]
fn models_dp_noise_has_standard_deviation_z_c_over_n() {
    // With q = 1 every run sees the same batch, so the difference between a noisy and the
    // noiseless update is the noise alone: N(0, (z C / n)^2) per coordinate at lr 1.
    let data = rows(&heart(), 720..750);
    let n_rows = data.n_rows() as f64;
    let spec = logistic(data.n_inputs);
    let start = spec.init_params(4);
    let one_step = config(Optimizer::Sgd, 1, 1.0);
    let (clip_norm, noise_multiplier) = (0.05, 1.5);
    let noiseless = train_dp(
        &spec,
        &start,
        &data,
        &one_step,
        &dp(clip_norm, 0.0, 1.0),
        &mut rng(0),
    )
    .unwrap()
    .train
    .params;
    let n_runs = 200;
    let mut noise_by_coord = vec![Vec::with_capacity(n_runs); start.len()];
    for seed in 0..n_runs as u64 {
        let noisy = train_dp(
            &spec,
            &start,
            &data,
            &one_step,
            &dp(clip_norm, noise_multiplier, 1.0),
            &mut rng(seed),
        )
        .unwrap()
        .train
        .params;
        for (coord, value) in noise_by_coord.iter_mut().zip(change(&noisy, &noiseless)) {
            coord.push(value);
        }
    }
    let expected_std = noise_multiplier * clip_norm / n_rows;
    let rms =
        |values: &[f64]| (values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64).sqrt();
    let all: Vec<f64> = noise_by_coord.concat();
    let pooled = rms(&all);
    assert!(
        (pooled / expected_std - 1.0).abs() < 0.1,
        "pooled std {pooled} vs {expected_std}"
    );
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    assert!(
        mean.abs() < 4.0 * expected_std / (all.len() as f64).sqrt(),
        "mean {mean}"
    );
    for (coord_idx, values) in noise_by_coord.iter().enumerate() {
        let std = rms(values);
        assert!(
            (std / expected_std - 1.0).abs() < 0.3,
            "coordinate {coord_idx}: std {std} vs {expected_std}"
        );
    }
}

#[test]
fn models_dp_noise_is_lattice_gaussian_on_a_power_of_two_grid() {
    // One full-batch SGD step at lr 1 from zero parameters on 32 rows: the parameters are
    // -(snapped sum + discrete Gaussian) * γ / 32, exact in f32, so every parameter times 32 is
    // an integer multiple of γ, whatever the data's low bits. A floating-point Gaussian added
    // to the floating-point sum (the old noise) lands on such a point with probability ~0.
    let data = rows(&heart(), 720..752);
    let spec = logistic(data.n_inputs);
    let start = vec![0.0; spec.n_params()];
    let (clip_norm, noise_multiplier) = (0.05, 1.5);
    let lattice = LatticeGaussian::new(clip_norm, noise_multiplier, spec.n_params()).unwrap();
    let grid = lattice.grid();
    assert!(grid * (spec.n_params() as f64).sqrt() <= clip_norm / 4096.0);
    for seed in 0..5 {
        let params = train_dp(
            &spec,
            &start,
            &data,
            &config(Optimizer::Sgd, 1, 1.0),
            &dp(clip_norm, noise_multiplier, 1.0),
            &mut rng(seed),
        )
        .unwrap()
        .train
        .params;
        for (idx, &value) in params.iter().enumerate() {
            let steps = -f64::from(value) * 32.0 / grid;
            assert_eq!(steps, steps.round(), "seed {seed}, param {idx}: {value}");
            assert!(steps.abs() < f64::from(1u32 << 24), "{steps}");
        }
    }
}

#[test]
fn models_dp_frozen_layers_come_back_bit_for_bit() {
    let data = rows(&heart(), 0..120);
    let personalized = ModelSpec {
        kind: ModelKind::Personalized { hidden: vec![8] },
        n_inputs: data.n_inputs,
    };
    for spec in [mlp(data.n_inputs, vec![6, 4]), personalized] {
        let start = spec.init_params(8);
        for frozen_layers in 0..spec.n_layers() {
            let config = TrainConfig {
                frozen_layers,
                proximal_mu: 0.5,
                ..config(Optimizer::Adam, 2, 0.05)
            };
            let trained = train_dp(
                &spec,
                &start,
                &data,
                &config,
                &dp(1.0, 1.0, 0.2),
                &mut rng(5),
            )
            .unwrap()
            .train
            .params;
            let n_frozen = spec.layers_len(frozen_layers);
            assert_eq!(trained[..n_frozen], start[..n_frozen], "{frozen_layers}");
            for layer_idx in frozen_layers..spec.n_layers() {
                let range = spec.layers_len(layer_idx)..spec.layers_len(layer_idx + 1);
                assert_ne!(trained[range.clone()], start[range], "layer {layer_idx}");
            }
        }
    }
}

#[test]
fn models_dp_logistic_regression_reaches_held_out_auc_above_0_80() {
    let (train_set, test_set) = split_holdout(&heart(), 0.25, 2024);
    let spec = logistic(train_set.n_inputs);
    let start = vec![0.0; spec.n_params()];
    let config = config(Optimizer::Adam, 5, 0.05);
    let privacy = dp(1.0, 1.0, 0.1);
    let report = train_dp(&spec, &start, &train_set, &config, &privacy, &mut rng(7)).unwrap();
    let held_out = evaluate(&spec, &report.train.params, &test_set).unwrap();
    eprintln!(
        "DP-SGD (C 1, z 1, q 0.1, {} steps, mean batch {:.1}): held out {held_out:?}",
        report.steps, report.mean_batch_size
    );
    assert!(held_out.auc > 0.80, "held-out AUC {}", held_out.auc);
    assert_eq!(report.steps, 50);
    assert_eq!((report.sampling_rate, report.noise_multiplier), (0.1, 1.0));
    let expected_batch = 0.1 * train_set.n_rows() as f64;
    assert!(
        (report.mean_batch_size - expected_batch).abs() < 0.2 * expected_batch,
        "{} vs {expected_batch}",
        report.mean_batch_size
    );
    assert!(report.train.mean_loss.is_finite());
}

#[test]
fn models_dp_one_local_round_at_one_site() {
    // A facility's round: VA Long Beach's 200 patients, 5 epochs at q = 0.1 (50 steps of about
    // 20 patients each). The time is printed for `--nocapture`; it is not asserted.
    let site = rows(&heart(), 720..920);
    let spec = logistic(site.n_inputs);
    let start = vec![0.0; spec.n_params()];
    let config = config(Optimizer::Adam, 5, 0.05);
    let started = Instant::now();
    let report = train_dp(
        &spec,
        &start,
        &site,
        &config,
        &dp(1.0, 1.0, 0.1),
        &mut rng(3),
    )
    .unwrap();
    let elapsed = started.elapsed();
    let before = evaluate(&spec, &start, &site).unwrap();
    let after = evaluate(&spec, &report.train.params, &site).unwrap();
    eprintln!(
        "one DP round on {} rows ({} steps, mean batch {:.1}): {elapsed:?}; loss {:.3} -> {:.3}",
        site.n_rows(),
        report.steps,
        report.mean_batch_size,
        before.loss,
        after.loss
    );
    assert_eq!(report.steps, 50);
    assert!(after.loss < before.loss, "{before:?} -> {after:?}");
}

#[test]
fn models_dp_is_deterministic_for_a_seeded_rng() {
    let data = rows(&heart(), 0..80);
    let spec = mlp(data.n_inputs, vec![4]);
    let start = spec.init_params(1);
    let config = config(Optimizer::Sgd, 2, 0.1);
    let privacy = dp(1.0, 1.1, 0.25);
    let run = |seed| train_dp(&spec, &start, &data, &config, &privacy, &mut rng(seed)).unwrap();
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).train.params, run(10).train.params);
}

#[test]
fn models_dp_rejects_invalid_configs() {
    let data = rows(&heart(), 0..20);
    let spec = mlp(data.n_inputs, vec![4]);
    let start = spec.init_params(1);
    let good = config(Optimizer::Sgd, 1, 0.1);
    let good_dp = dp(1.0, 1.0, 0.5);
    let is_invalid =
        |result: Result<_, ModelError>| matches!(result, Err(ModelError::InvalidConfig { .. }));
    let bad_dp = [
        dp(0.0, 1.0, 0.5),
        dp(-1.0, 1.0, 0.5),
        dp(f64::NAN, 1.0, 0.5),
        dp(f64::INFINITY, 1.0, 0.5),
        dp(1.0, -0.1, 0.5),
        dp(1.0, f64::NAN, 0.5),
        dp(1.0, f64::INFINITY, 0.5),
        dp(1.0, 1.0, 0.0),
        dp(1.0, 1.0, -0.5),
        dp(1.0, 1.0, 1.5),
        dp(1.0, 1.0, f64::NAN),
    ];
    for bad in bad_dp {
        let result = train_dp(&spec, &start, &data, &good, &bad, &mut rng(0));
        assert!(is_invalid(result), "{bad:?}");
    }
    let bad_configs = [
        TrainConfig {
            epochs: 0,
            ..good.clone()
        },
        TrainConfig {
            learning_rate: 0.0,
            ..good.clone()
        },
        TrainConfig {
            learning_rate: f64::NAN,
            ..good.clone()
        },
        TrainConfig {
            proximal_mu: -1.0,
            ..good.clone()
        },
        TrainConfig {
            frozen_layers: 2,
            ..good.clone()
        },
    ];
    for bad in bad_configs {
        let result = train_dp(&spec, &start, &data, &bad, &good_dp, &mut rng(0));
        assert!(is_invalid(result), "{bad:?}");
    }
    // The batch size is ignored, so even 0 is accepted.
    let any_batch = TrainConfig {
        batch_size: 0,
        ..good.clone()
    };
    assert!(train_dp(&spec, &start, &data, &any_batch, &good_dp, &mut rng(0)).is_ok());
    // Data and parameter errors are those of plain training.
    let empty = Dataset {
        n_inputs: data.n_inputs,
        x: Vec::new(),
        y: Vec::new(),
    };
    assert_eq!(
        train_dp(&spec, &start, &empty, &good, &good_dp, &mut rng(0)),
        Err(ModelError::EmptyData)
    );
    assert!(matches!(
        train_dp(&spec, &start[1..], &data, &good, &good_dp, &mut rng(0)),
        Err(ModelError::ParamCount { .. })
    ));
}

#[test]
fn models_dp_steps_is_epochs_over_the_sampling_rate_rounded_up() {
    assert_eq!(dp_steps(5, 0.1), 50);
    assert_eq!(dp_steps(1, 1.0), 1);
    assert_eq!(dp_steps(3, 0.3), 10);
    assert_eq!(dp_steps(7, 0.07), 100);
    assert_eq!(dp_steps(1, 0.3), 4);
    assert_eq!(dp_steps(2, 0.75), 3);
    assert_eq!(dp_steps(0, 0.5), 0);
    for invalid in [0.0, -0.1, 1.5, f64::NAN] {
        assert_eq!(dp_steps(1, invalid), u64::MAX, "{invalid}");
    }
    // A run takes exactly that many steps, even when batches come out empty.
    let data = rows(&heart(), 0..5);
    let spec = logistic(data.n_inputs);
    let report = train_dp(
        &spec,
        &spec.init_params(0),
        &data,
        &config(Optimizer::Sgd, 1, 0.1),
        &dp(1.0, 1.0, 0.03),
        &mut rng(0),
    )
    .unwrap();
    assert_eq!(report.steps, dp_steps(1, 0.03));
    assert_eq!(report.steps, 34);
    assert!(report.mean_batch_size < 1.0);
}

#[test]
fn models_dp_divides_by_the_expected_batch_size() {
    // Forty copies of one patient, whose gradient is longer than the tiny C: every sampled copy
    // contributes C times the same unit vector (the model barely moves), so the noiseless SGD
    // run at lr 1 moves the parameters by C * (rows sampled) / (q * n). Dividing by the drawn
    // batch sizes instead would give C * steps.
    let heart = heart();
    let patient = rows(&heart, 0..1);
    let n_rows = 40;
    let data = Dataset {
        n_inputs: patient.n_inputs,
        x: patient.x.repeat(n_rows),
        y: patient.y.repeat(n_rows),
    };
    let spec = logistic(data.n_inputs);
    let start = spec.init_params(6);
    let (clip_norm, sampling_rate) = (1e-3, 0.25);
    let report = train_dp(
        &spec,
        &start,
        &data,
        &config(Optimizer::Sgd, 2, 1.0),
        &dp(clip_norm, 0.0, sampling_rate),
        &mut rng(11),
    )
    .unwrap();
    let n_sampled = report.mean_batch_size * report.steps as f64;
    let expected_batch = sampling_rate * n_rows as f64;
    // The draw is discriminating: it did not sample exactly the expected number of rows.
    assert!((n_sampled - expected_batch * report.steps as f64).abs() >= 1.0);
    let moved = norm(&change(&report.train.params, &start));
    let expected = clip_norm * n_sampled / expected_batch;
    assert!(
        (moved / expected - 1.0).abs() < 1e-3,
        "moved {moved}, expected {expected} ({n_sampled} rows in {} steps)",
        report.steps
    );
}
