//! Text-level DP-SGD for the LoRA text classifier (`harambee_models::text::dp`): the per-text
//! gradients it clips against one ordinary training step per text, a noiseless unclipped
//! step against plain SGD, and the bound clipping puts on one text's influence.
//!
//! Like `text.rs`, these need the all-MiniLM-L6-v2 files (fetched once when missing).

use chacha20::ChaCha20Rng;
use harambee_models::text::dp::{self as text_dp, EXAMPLE_CHUNK};
use harambee_models::text::train::{self as text_train, Features, TextDataset};
use harambee_models::text::{LoraConfig, LoraTarget, Minilm, TextClassifierSpec};
use harambee_models::{DpSgdConfig, Optimizer, TrainConfig, dp_steps};
use rand_core::SeedableRng;

use crate::text::minilm;

/// Rank 4 on the four projections the demo adapts, in the top layer only (the lower five are
/// cached, as an agent does).
fn spec(model: &Minilm) -> TextClassifierSpec {
    TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec![
                LoraTarget::Query,
                LoraTarget::Value,
                LoraTarget::Intermediate,
                LoraTarget::Output,
            ],
            top_layers: Some(1),
        },
        n_classes: 2,
    }
}

/// Notes of different lengths (so a batch pads), two classes.
fn notes() -> TextDataset {
    let texts = [
        (
            "severe chest pain radiating to the left arm, sweating and nausea since this morning",
            1,
        ),
        ("crushing chest pressure", 1),
        ("sudden chest tightness with shortness of breath at rest", 1),
        ("chest pain on exertion relieved by rest", 1),
        ("mild itchy rash on both forearms", 0),
        ("dry skin", 0),
        (
            "red itchy patches on the elbows and knees for two weeks, worse after a hot shower",
            0,
        ),
        ("skin rash with no fever", 0),
    ];
    TextDataset {
        texts: texts.iter().map(|(t, _)| (*t).to_owned()).collect(),
        labels: texts.iter().map(|&(_, l)| l).collect(),
    }
}

fn features(model: &Minilm, spec: &TextClassifierSpec, data: &TextDataset) -> Features {
    Features::compute(model, spec, &data.texts, 48).unwrap()
}

fn sgd(epochs: usize, batch_size: usize, learning_rate: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size,
        learning_rate,
        optimizer: Optimizer::Sgd,
        seed: 1,
        proximal_mu: 0.0,
        frozen_layers: 0,
    }
}

fn norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `‖actual - expected‖ <= relative ‖expected‖`, and no coordinate off by more than
/// `relative` times the largest.
fn assert_close(actual: &[f32], expected: &[f32], relative: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    let (gap, size) = (distance(actual, expected), norm(expected));
    assert!(gap <= relative * size, "{what}: off by {gap} of {size}");
    let largest = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (idx, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            f64::from((a - e).abs()) <= relative * f64::from(largest),
            "{what}: coordinate {idx}: {a} vs {e} (largest {largest})"
        );
    }
}

#[test]
fn per_text_gradients_equal_one_ordinary_training_step_per_text() {
    let model = minilm();
    let spec = spec(model);
    let data = notes();
    let features = features(model, &spec, &data);
    // Non-zero B factors, so every adapter coordinate has a gradient.
    let params = spec.random_params(21);
    // All texts in one pass (padded to the longest), in an order of their own, and more than
    // one chunk's worth (texts repeated) so that chunks are exercised too.
    let rows: Vec<usize> = (0..EXAMPLE_CHUNK + 3)
        .map(|i| (i * 5 + 2) % data.len())
        .collect();
    for freeze_head in [false, true] {
        let per_text = text_dp::example_gradients(
            model,
            &spec,
            &params,
            &features,
            &data.labels,
            &rows,
            freeze_head,
        )
        .unwrap();
        assert_eq!(per_text.len(), rows.len());
        let n_trainable = if freeze_head {
            spec.adapter_len()
        } else {
            spec.n_params()
        };
        for (&row, (loss, grad)) in rows.iter().zip(&per_text) {
            let what = format!("text {row}, head frozen: {freeze_head}");
            assert_eq!(grad.len(), n_trainable, "{what}");
            // The ordinary path on this text alone: one SGD step at rate 100 moves the
            // parameters by minus 100 times the gradient (a large rate, so that the
            // parameters' rounding is small against the step).
            let alone = text_train::train_features(
                model,
                &spec,
                &params,
                &features.select(&[row]),
                &[data.labels[row]],
                &sgd(1, 1, 100.0),
                freeze_head,
            )
            .unwrap();
            let expected: Vec<f32> = params
                .iter()
                .zip(&alone.params)
                .take(n_trainable)
                .map(|(before, after)| (before - after) / 100.0)
                .collect();
            assert!(norm(&expected) > 0.0, "{what}");
            assert_close(grad, &expected, 1e-5, &what);
            assert!(
                (loss - alone.mean_loss).abs() <= 1e-5 * alone.mean_loss.abs().max(1.0),
                "{what}: loss {loss} vs {}",
                alone.mean_loss
            );
        }
    }
}

#[test]
fn a_noiseless_unclipped_dp_step_is_a_plain_sgd_step() {
    let model = minilm();
    let spec = spec(model);
    let data = notes();
    let features = features(model, &spec, &data);
    let start = spec.random_params(4);
    // q = 1: every text in the one step's batch; expected batch size = n.
    let dp = DpSgdConfig {
        clip_norm: 1e6,
        noise_multiplier: 0.0,
        sampling_rate: 1.0,
    };
    let report = text_dp::train_features_dp(
        model,
        &spec,
        &start,
        &features,
        &data.labels,
        &sgd(1, 1, 0.05),
        false,
        &dp,
        &mut ChaCha20Rng::seed_from_u64(7),
    )
    .unwrap();
    assert_eq!(report.steps, 1);
    assert_eq!(report.steps, dp_steps(1, 1.0));
    assert_eq!(report.mean_batch_size, data.len() as f64);
    assert_eq!((report.sampling_rate, report.noise_multiplier), (1.0, 0.0));
    assert_eq!(report.train.n_samples, data.len());
    let plain = text_train::train_features(
        model,
        &spec,
        &start,
        &features,
        &data.labels,
        &sgd(1, data.len(), 0.05),
        false,
    )
    .unwrap();
    let step =
        |params: &[f32]| -> Vec<f32> { start.iter().zip(params).map(|(s, p)| s - p).collect() };
    assert_close(
        &step(&report.train.params),
        &step(&plain.params),
        1e-5,
        "one step",
    );
    assert!((report.train.mean_loss - plain.mean_loss).abs() < 1e-5);
}

#[test]
fn clipping_bounds_what_one_outlier_text_moves() {
    let model = minilm();
    let spec = spec(model);
    let data = notes();
    // Trained on the notes first, so that they are read well (small gradients) and a
    // mislabelled outlier has a large loss.
    let features = features(model, &spec, &data);
    let adam = TrainConfig {
        optimizer: Optimizer::Adam,
        ..sgd(6, 4, 0.01)
    };
    let start = text_train::train_features(
        model,
        &spec,
        &spec.init_params(2),
        &features,
        &data.labels,
        &adam,
        false,
    )
    .unwrap()
    .params;
    let mut with_outlier = data.clone();
    with_outlier
        .texts
        .push("crushing chest pain and cold sweat".to_owned());
    with_outlier.labels.push(0);
    let outlier_features = self::features(model, &spec, &with_outlier);
    let n = data.len();
    let all: Vec<usize> = (0..=n).collect();
    let per_text = text_dp::example_gradients(
        model,
        &spec,
        &start,
        &outlier_features,
        &with_outlier.labels,
        &all,
        false,
    )
    .unwrap();
    let (outlier_loss, outlier_grad) = &per_text[n];
    assert!(*outlier_loss > 1.0, "outlier loss {outlier_loss}");
    // C a tenth of the outlier's gradient norm, and above every ordinary text's: only the
    // outlier is clipped.
    let clip_norm = norm(outlier_grad) / 10.0;
    let largest = per_text[..n]
        .iter()
        .map(|(_, g)| norm(g))
        .fold(0.0, f64::max);
    assert!(largest < clip_norm, "{largest} vs C = {clip_norm}");

    // A large rate, so that the parameters' rounding is small against the step.
    let lr = 10.0;
    // One step with every text (q = 1) and no noise, with and without the outlier: the
    // clipped sum it adds is `(start - params) * expected batch / lr`.
    let summed = |with: bool, clip_norm: f64| -> Vec<f64> {
        let (labels, features) = if with {
            (&with_outlier.labels, &outlier_features)
        } else {
            (&data.labels, &features)
        };
        let dp = DpSgdConfig {
            clip_norm,
            noise_multiplier: 0.0,
            sampling_rate: 1.0,
        };
        let report = text_dp::train_features_dp(
            model,
            &spec,
            &start,
            features,
            labels,
            &sgd(1, 1, lr),
            false,
            &dp,
            &mut ChaCha20Rng::seed_from_u64(3),
        )
        .unwrap();
        start
            .iter()
            .zip(&report.train.params)
            .map(|(s, p)| f64::from(s - p) * labels.len() as f64 / lr)
            .collect()
    };
    let moved = |clip_norm: f64| -> f64 {
        summed(true, clip_norm)
            .iter()
            .zip(summed(false, clip_norm))
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    // Clipped: the outlier adds a vector of norm at most C (f32 rounding of the parameters
    // aside), i.e. moves the update by at most C lr / expected batch size.
    let clipped = moved(clip_norm);
    assert!(clipped <= clip_norm * 1.01, "{clipped} > C = {clip_norm}");
    assert!(
        clipped >= clip_norm * 0.99,
        "the outlier was clipped to C: {clipped}"
    );
    // Unclipped, it moves the sum by its whole gradient.
    let unclipped = moved(1e6);
    assert!(
        unclipped > 5.0 * clip_norm,
        "{unclipped} vs C = {clip_norm}"
    );
}

#[test]
fn noisy_text_dp_reports_what_the_accountant_needs_and_keeps_a_frozen_head() {
    let model = minilm();
    let spec = spec(model);
    let data = notes();
    let features = features(model, &spec, &data);
    let start = spec.init_params(9);
    let dp = DpSgdConfig {
        clip_norm: 1.0,
        noise_multiplier: 1.1,
        sampling_rate: 0.5,
    };
    let config = TrainConfig {
        optimizer: Optimizer::Adam,
        ..sgd(2, 1, 0.01)
    };
    let run = |freeze_head: bool, seed: u64| {
        text_dp::train_features_dp(
            model,
            &spec,
            &start,
            &features,
            &data.labels,
            &config,
            freeze_head,
            &dp,
            &mut ChaCha20Rng::seed_from_u64(seed),
        )
        .unwrap()
    };
    let report = run(false, 5);
    assert_eq!(report.steps, dp_steps(2, 0.5));
    assert_eq!(report.steps, 4);
    assert_eq!((report.sampling_rate, report.noise_multiplier), (0.5, 1.1));
    assert!(report.mean_batch_size > 0.0 && report.mean_batch_size <= data.len() as f64);
    assert_eq!(report.train.params.len(), spec.n_params());
    // Seeded: the same batches and noise.
    assert_eq!(run(false, 5), report);
    assert_ne!(run(false, 6).train.params, report.train.params);
    let adapters = spec.adapter_len();
    assert_ne!(report.train.params[adapters..], start[adapters..]);
    // A frozen head gets neither gradient nor noise.
    let frozen = run(true, 5);
    assert_eq!(frozen.train.params[adapters..], start[adapters..]);
    assert_ne!(frozen.train.params[..adapters], start[..adapters]);
    // Bad privacy parameters are refused, as for a table.
    let bad = DpSgdConfig {
        sampling_rate: 0.0,
        ..dp.clone()
    };
    let error = text_dp::train_features_dp(
        model,
        &spec,
        &start,
        &features,
        &data.labels,
        &config,
        false,
        &bad,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap_err();
    assert!(error.to_string().contains("sampling rate"), "{error}");
}
