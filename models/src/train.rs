//! Local training, prediction and evaluation on the CPU (burn, ndarray backend).
//!
//! Everything here is synchronous and CPU-bound; an async caller should run it on a blocking
//! thread. Results are deterministic for a fixed seed.

use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Dataset;
use crate::metrics::{self, Metrics};
use crate::model::{Classifier, ModelError, ModelSpec, cpu_device};
use crate::rng::SplitMix64;

/// Gradient-based optimiser for local training.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    /// Adam (beta1 0.9, beta2 0.999, epsilon 1e-5: burn's defaults). Its moment estimates start
    /// from zero on every call to [`train`], i.e. every federated round.
    Adam,
    /// Plain stochastic gradient descent, no momentum.
    Sgd,
}

/// Hyper-parameters of one local training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the data; positive.
    pub epochs: usize,
    /// Rows per mini-batch (the last batch of an epoch may be smaller); positive.
    pub batch_size: usize,
    /// Step size; positive and finite.
    pub learning_rate: f64,
    /// Optimiser.
    pub optimizer: Optimizer,
    /// Seed of the mini-batch order.
    pub seed: u64,
    /// FedProx (Li et al. 2020): weight `mu` of the proximal term `mu / 2 * ||w - w_base||^2`
    /// added to the training loss, where `w_base` are the parameters training started from
    /// (the round's global model). It keeps the local model near the global one on
    /// heterogeneous data. `0` is plain training (FedAvg); finite and non-negative.
    pub proximal_mu: f64,
    /// The first `frozen_layers` linear layers (input side) are not trained: their weights and
    /// biases come back unchanged. Less than the number of layers, so something is trained.
    pub frozen_layers: usize,
}

/// Local fine-tuning at a facility, from the final global model, kept at the facility: a few
/// local epochs, optionally with a different learning rate and with the first layers frozen.
/// Batch size, optimiser and seed are the federation's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FineTuneConfig {
    /// Local epochs; positive.
    pub epochs: usize,
    /// Step size; the federation's when `None`.
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Layers (input side first) kept as they are in the global model.
    #[serde(default)]
    pub frozen_layers: usize,
}

impl FineTuneConfig {
    /// The training configuration of the fine-tuning run, given the federation's: no proximal
    /// term, this config's epochs, learning rate and frozen layers.
    pub fn train_config(&self, federation: &TrainConfig) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            learning_rate: self.learning_rate.unwrap_or(federation.learning_rate),
            proximal_mu: 0.0,
            frozen_layers: self.frozen_layers,
            ..federation.clone()
        }
    }
}

/// Outcome of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// Trained flat parameters.
    pub params: Vec<f32>,
    /// Mean training loss (binary cross-entropy, without the proximal term) over the
    /// mini-batches of the last epoch, weighted by batch size, measured before each batch's
    /// update.
    pub mean_loss: f64,
    /// Rows trained on (per epoch).
    pub n_samples: usize,
}

/// Trains from `params` on `data` and returns the new parameters.
///
/// Each epoch visits the rows in a fresh order drawn from `config.seed` and takes one optimiser
/// step per mini-batch on the mean binary cross-entropy of the logits, plus the proximal term
/// when `config.proximal_mu > 0`. Parameters of frozen layers are constants of the graph, so
/// they are returned bit for bit as given.
pub fn train(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    config: &TrainConfig,
) -> Result<TrainReport, ModelError> {
    check_config(config)?;
    check_model_and_data(spec, data, config)?;
    let device = cpu_device().autodiff();
    let n_frozen = spec.layers_len(config.frozen_layers);
    let mut model = Classifier::from_params_frozen(spec, params, &device, n_frozen)?;
    // The proximal anchor: the starting parameters as constants of the graph.
    let anchor = if config.proximal_mu > 0.0 {
        Some(Classifier::from_params_frozen(
            spec,
            params,
            &device,
            usize::MAX,
        )?)
    } else {
        None
    };
    let mut optimizer = match config.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };

    let n_rows = data.n_rows();
    let mut rng = SplitMix64::new(config.seed);
    let mut order: Vec<usize> = (0..n_rows).collect();
    let mut batch_x = Vec::with_capacity(config.batch_size.min(n_rows) * data.n_inputs);
    let mut batch_y = Vec::with_capacity(config.batch_size.min(n_rows));
    let mut mean_loss = f64::NAN;
    for _ in 0..config.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for batch in order.chunks(config.batch_size) {
            batch_x.clear();
            batch_y.clear();
            for &row_idx in batch {
                batch_x.extend_from_slice(data.row(row_idx));
                batch_y.push(data.y[row_idx]);
            }
            let (x, y) = batch_tensors(&batch_x, &batch_y, data.n_inputs, &device);
            let loss = bce_with_logits(model.forward(x), y);
            let batch_loss = f64::from(loss.clone().into_scalar::<f32>());
            if !batch_loss.is_finite() {
                return Err(ModelError::Diverged { what: "loss" });
            }
            loss_sum += batch_loss * batch.len() as f64;
            let loss = match &anchor {
                Some(anchor) => loss + model.squared_distance(anchor) * (config.proximal_mu / 2.0),
                None => loss,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
        }
        mean_loss = loss_sum / n_rows as f64;
    }

    let params = model.to_params();
    if params.iter().any(|value| !value.is_finite()) {
        return Err(ModelError::Diverged {
            what: "a parameter",
        });
    }
    Ok(TrainReport {
        params,
        mean_loss,
        n_samples: n_rows,
    })
}

/// Checks the data against the model and that something is left to train.
pub(crate) fn check_model_and_data(
    spec: &ModelSpec,
    data: &Dataset,
    config: &TrainConfig,
) -> Result<(), ModelError> {
    check_data(spec, data)?;
    spec.check()?;
    if config.frozen_layers >= spec.n_layers() {
        return Err(ModelError::InvalidConfig {
            reason: format!(
                "cannot freeze {} of the model's {} layers: at least one must train",
                config.frozen_layers,
                spec.n_layers()
            ),
        });
    }
    Ok(())
}

/// Predicted probability of the positive class for every row of `data`.
pub fn predict(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<Vec<f32>, ModelError> {
    check_data(spec, data)?;
    let device = cpu_device();
    let model = Classifier::from_params(spec, params, &device)?;
    let mut probs = Vec::with_capacity(data.n_rows());
    for (x_chunk, y_chunk) in data
        .x
        .chunks(PREDICT_CHUNK_ROWS * data.n_inputs)
        .zip(data.y.chunks(PREDICT_CHUNK_ROWS))
    {
        let (x, _) = batch_tensors(x_chunk, y_chunk, data.n_inputs, &device);
        let chunk_probs = sigmoid(model.forward(x)).into_data_as::<f32>();
        probs.extend_from_slice(
            chunk_probs
                .as_slice::<f32>()
                .expect("data was converted to f32"),
        );
    }
    Ok(probs)
}

/// [`Metrics`] of the model on `data`, at the default decision threshold (0.5).
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<Metrics, ModelError> {
    let probs = predict(spec, params, data)?;
    Ok(metrics::compute(&probs, &data.y))
}

/// [`Metrics`] of the model on `data`, predicting positive when `p >= threshold`.
pub fn evaluate_at(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    threshold: f64,
) -> Result<Metrics, ModelError> {
    let probs = predict(spec, params, data)?;
    Ok(metrics::compute_at(&probs, &data.y, threshold))
}

/// Local fine-tuning after the last round: trains from the global model `global` on the
/// facility's `data` with [`FineTuneConfig::train_config`]. The result is the facility's own
/// model; nothing of it is meant to leave the facility.
pub fn fine_tune(
    spec: &ModelSpec,
    global: &[f32],
    data: &Dataset,
    federation: &TrainConfig,
    fine: &FineTuneConfig,
) -> Result<TrainReport, ModelError> {
    train(spec, global, data, &fine.train_config(federation))
}

/// Rows per forward pass in [`predict`], to bound memory on large tables.
const PREDICT_CHUNK_ROWS: usize = 4096;

/// Inputs `[n_rows, n_inputs]` and labels `[n_rows]`.
pub(crate) fn batch_tensors(
    x: &[f32],
    y: &[f32],
    n_inputs: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<1>) {
    let n_rows = y.len();
    (
        Tensor::from_data(TensorData::new(x.to_vec(), [n_rows, n_inputs]), device),
        Tensor::from_data(TensorData::new(y.to_vec(), [n_rows]), device),
    )
}

/// Mean binary cross-entropy of `logits` (`[n, 1]`) against 0/1 `targets` (`[n]`), in the stable
/// form `(1 - y) z - log_sigmoid(z)`.
pub(crate) fn bce_with_logits(logits: Tensor<2>, targets: Tensor<1>) -> Tensor<1> {
    let [n_rows, _] = logits.dims();
    let logits: Tensor<1> = logits.reshape([n_rows]);
    ((targets.neg() + 1.0) * logits.clone() - log_sigmoid(logits)).mean()
}

pub(crate) fn check_config(config: &TrainConfig) -> Result<(), ModelError> {
    let invalid = |reason: &str| {
        Err(ModelError::InvalidConfig {
            reason: reason.to_owned(),
        })
    };
    if config.epochs == 0 {
        return invalid("epochs must be positive");
    }
    if config.batch_size == 0 {
        return invalid("batch size must be positive");
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return invalid("learning rate must be positive and finite");
    }
    if !(config.proximal_mu.is_finite() && config.proximal_mu >= 0.0) {
        return invalid("proximal mu must be non-negative and finite");
    }
    Ok(())
}

pub(crate) fn check_data(spec: &ModelSpec, data: &Dataset) -> Result<(), ModelError> {
    if data.n_inputs != spec.n_inputs {
        return Err(ModelError::InputMismatch {
            expected: spec.n_inputs,
            actual: data.n_inputs,
        });
    }
    if data.x.len() != data.n_rows() * data.n_inputs {
        return Err(ModelError::MalformedData {
            n_inputs: data.n_inputs,
            n_rows: data.n_rows(),
            x_len: data.x.len(),
        });
    }
    if data.n_rows() == 0 {
        return Err(ModelError::EmptyData);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelKind;

    /// Two noisy Gaussian blobs in 3 dimensions, labels by blob; deterministic.
    fn blobs(n_rows: usize, seed: u64) -> Dataset {
        let mut rng = SplitMix64::new(seed);
        let mut data = Dataset {
            n_inputs: 3,
            x: Vec::new(),
            y: Vec::new(),
        };
        for row_idx in 0..n_rows {
            let label = (row_idx % 2) as f32;
            for dim in 0..3 {
                let noise = (0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0;
                let shift = if dim == 2 {
                    0.0
                } else {
                    f64::from(label) * 1.5 - 0.75
                };
                data.x.push((shift + noise) as f32);
            }
            data.y.push(label);
        }
        data
    }

    fn config(optimizer: Optimizer) -> TrainConfig {
        TrainConfig {
            epochs: 5,
            batch_size: 16,
            learning_rate: 0.05,
            optimizer,
            seed: 3,
            proximal_mu: 0.0,
            frozen_layers: 0,
        }
    }

    fn specs() -> [ModelSpec; 2] {
        [
            ModelSpec {
                kind: ModelKind::LogisticRegression,
                n_inputs: 3,
            },
            ModelSpec {
                kind: ModelKind::Mlp { hidden: vec![8] },
                n_inputs: 3,
            },
        ]
    }

    #[test]
    fn training_reduces_loss_with_both_optimizers() {
        let data = blobs(200, 1);
        for spec in specs() {
            for optimizer in [Optimizer::Adam, Optimizer::Sgd] {
                let params = spec.init_params(5);
                let before = evaluate(&spec, &params, &data).unwrap();
                let report = train(&spec, &params, &data, &config(optimizer)).unwrap();
                let after = evaluate(&spec, &report.params, &data).unwrap();
                assert_eq!(report.n_samples, 200);
                assert!(
                    after.loss < before.loss - 0.05,
                    "{spec:?} {optimizer:?}: {before:?} -> {after:?}"
                );
                assert!(after.auc > 0.8, "{spec:?} {optimizer:?}: {after:?}");
                assert!(report.mean_loss.is_finite() && report.mean_loss < before.loss);
            }
        }
    }

    #[test]
    fn training_is_deterministic_for_a_seed() {
        let data = blobs(100, 2);
        for spec in specs() {
            let params = spec.init_params(9);
            let first = train(&spec, &params, &data, &config(Optimizer::Adam)).unwrap();
            let second = train(&spec, &params, &data, &config(Optimizer::Adam)).unwrap();
            assert_eq!(first, second);
            let other_seed = TrainConfig {
                seed: 4,
                ..config(Optimizer::Adam)
            };
            assert_ne!(
                first.params,
                train(&spec, &params, &data, &other_seed).unwrap().params
            );
        }
    }

    #[test]
    fn concurrent_training_gives_the_same_result_as_sequential() {
        // Simulations train many agents in one process: burn must keep their graphs apart.
        let spec = &specs()[1];
        let params = spec.init_params(2);
        let datasets = [blobs(120, 10), blobs(90, 11)];
        let sequential: Vec<TrainReport> = datasets
            .iter()
            .map(|data| train(spec, &params, data, &config(Optimizer::Adam)).unwrap())
            .collect();
        let concurrent: Vec<TrainReport> = std::thread::scope(|scope| {
            let handles: Vec<_> = datasets
                .iter()
                .map(|data| {
                    scope.spawn(|| train(spec, &params, data, &config(Optimizer::Adam)).unwrap())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        assert_eq!(sequential, concurrent);
    }

    #[test]
    fn predict_matches_the_logistic_formula() {
        let spec = ModelSpec {
            kind: ModelKind::LogisticRegression,
            n_inputs: 3,
        };
        let params = [0.5, -1.0, 2.0, 0.25];
        let data = blobs(5, 3);
        let probs = predict(&spec, &params, &data).unwrap();
        for (row_idx, prob) in probs.iter().enumerate() {
            let row = data.row(row_idx);
            let logit = 0.5 * row[0] - row[1] + 2.0 * row[2] + 0.25;
            let expected = 1.0 / (1.0 + (-logit).exp());
            assert!((prob - expected).abs() < 1e-6, "{prob} vs {expected}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let spec = &specs()[0];
        let params = spec.init_params(0);
        let data = blobs(10, 4);
        let good = config(Optimizer::Sgd);
        let bad_configs = [
            TrainConfig {
                epochs: 0,
                ..good.clone()
            },
            TrainConfig {
                batch_size: 0,
                ..good.clone()
            },
            TrainConfig {
                learning_rate: 0.0,
                ..good.clone()
            },
            TrainConfig {
                learning_rate: -0.1,
                ..good.clone()
            },
            TrainConfig {
                learning_rate: f64::NAN,
                ..good.clone()
            },
            TrainConfig {
                learning_rate: f64::INFINITY,
                ..good.clone()
            },
        ];
        for bad in bad_configs {
            assert!(
                matches!(
                    train(spec, &params, &data, &bad),
                    Err(ModelError::InvalidConfig { .. })
                ),
                "{bad:?}"
            );
        }
        let empty = Dataset {
            n_inputs: 3,
            x: Vec::new(),
            y: Vec::new(),
        };
        assert_eq!(
            train(spec, &params, &empty, &good),
            Err(ModelError::EmptyData)
        );
        assert_eq!(predict(spec, &params, &empty), Err(ModelError::EmptyData));
        let narrow = Dataset {
            n_inputs: 2,
            x: vec![0.0; 4],
            y: vec![0.0, 1.0],
        };
        assert_eq!(
            evaluate(spec, &params, &narrow),
            Err(ModelError::InputMismatch {
                expected: 3,
                actual: 2
            })
        );
        let ragged = Dataset {
            n_inputs: 3,
            x: vec![0.0; 5],
            y: vec![0.0, 1.0],
        };
        assert!(matches!(
            predict(spec, &params, &ragged),
            Err(ModelError::MalformedData { .. })
        ));
        assert_eq!(
            train(spec, &params[1..], &data, &good),
            Err(ModelError::ParamCount {
                expected: 4,
                actual: 3
            })
        );
    }

    #[test]
    fn divergence_is_an_error_not_nan_params() {
        let spec = &specs()[0];
        let mut data = blobs(20, 5);
        data.x.iter_mut().for_each(|x| *x *= 1e30);
        let huge_step = TrainConfig {
            learning_rate: 1e30,
            ..config(Optimizer::Sgd)
        };
        assert!(matches!(
            train(spec, &spec.init_params(0), &data, &huge_step),
            Err(ModelError::Diverged { .. })
        ));
    }

    #[test]
    fn frozen_layers_come_back_bit_for_bit() {
        let data = blobs(120, 6);
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![6, 4] },
            n_inputs: 3,
        };
        let params = spec.init_params(8);
        for frozen_layers in 0..spec.n_layers() {
            let config = TrainConfig {
                frozen_layers,
                ..config(Optimizer::Adam)
            };
            let trained = train(&spec, &params, &data, &config).unwrap().params;
            let n_frozen = spec.layers_len(frozen_layers);
            assert_eq!(trained[..n_frozen], params[..n_frozen], "{frozen_layers}");
            // Every trainable layer moved.
            for layer_idx in frozen_layers..spec.n_layers() {
                let range = spec.layers_len(layer_idx)..spec.layers_len(layer_idx + 1);
                assert_ne!(trained[range.clone()], params[range], "layer {layer_idx}");
            }
        }
        let all = TrainConfig {
            frozen_layers: 3,
            ..config(Optimizer::Adam)
        };
        assert!(matches!(
            train(&spec, &params, &data, &all),
            Err(ModelError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn proximal_term_adds_mu_times_the_distance_to_the_gradient() {
        // Full-batch SGD, so every step uses the same rows whatever the order. Step 1 starts at
        // the anchor w0, where the proximal gradient mu (w - w0) is zero; step 2 starts at w1
        // in both runs, so the proximal run ends exactly lr * mu * (w1 - w0) behind.
        let data = blobs(40, 7);
        let spec = &specs()[1];
        let w0 = spec.init_params(3);
        let sgd = |epochs: usize, proximal_mu: f64| TrainConfig {
            epochs,
            batch_size: 40,
            learning_rate: 0.5,
            optimizer: Optimizer::Sgd,
            seed: 1,
            proximal_mu,
            frozen_layers: 0,
        };
        let mu = 0.8;
        let w1 = train(spec, &w0, &data, &sgd(1, 0.0)).unwrap().params;
        let w1_prox = train(spec, &w0, &data, &sgd(1, mu)).unwrap().params;
        assert_eq!(w1, w1_prox);
        let w2 = train(spec, &w0, &data, &sgd(2, 0.0)).unwrap().params;
        let w2_prox = train(spec, &w0, &data, &sgd(2, mu)).unwrap().params;
        for idx in 0..w0.len() {
            let expected = f64::from(w2[idx]) - 0.5 * mu * f64::from(w1[idx] - w0[idx]);
            assert!(
                (f64::from(w2_prox[idx]) - expected).abs() < 1e-5,
                "param {idx}: {} vs {expected}",
                w2_prox[idx]
            );
        }
        assert_ne!(w2, w2_prox);
    }

    #[test]
    fn a_strong_proximal_term_keeps_the_model_near_its_start() {
        let data = blobs(200, 8);
        let spec = &specs()[1];
        let start = spec.init_params(2);
        let distance = |proximal_mu: f64| {
            let config = TrainConfig {
                proximal_mu,
                ..config(Optimizer::Adam)
            };
            let trained = train(spec, &start, &data, &config).unwrap().params;
            trained
                .iter()
                .zip(&start)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let free = distance(0.0);
        let held = distance(10.0);
        assert!(held < 0.5 * free, "{held} vs {free}");
        let bad = TrainConfig {
            proximal_mu: -1.0,
            ..config(Optimizer::Adam)
        };
        assert!(matches!(
            train(spec, &start, &data, &bad),
            Err(ModelError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn fine_tuning_with_a_frozen_body_trains_only_the_head() {
        let data = blobs(150, 9);
        let spec = ModelSpec {
            kind: ModelKind::Personalized { hidden: vec![8] },
            n_inputs: 3,
        };
        let federation = config(Optimizer::Adam);
        let global = train(&spec, &spec.init_params(1), &data, &federation)
            .unwrap()
            .params;
        let fine = FineTuneConfig {
            epochs: 3,
            learning_rate: Some(0.02),
            frozen_layers: 1,
        };
        let tuned = fine_tune(&spec, &global, &data, &federation, &fine).unwrap();
        let shared_len = spec.shared_len();
        assert_eq!(tuned.params[..shared_len], global[..shared_len]);
        assert_ne!(tuned.params[shared_len..], global[shared_len..]);
        let derived = fine.train_config(&federation);
        assert_eq!(
            (derived.epochs, derived.learning_rate, derived.frozen_layers),
            (3, 0.02, 1)
        );
        assert_eq!(derived.batch_size, federation.batch_size);
    }
}
