//! Local fine-tuning and evaluation of a LoRA text classifier on the CPU.
//!
//! Only the adapters and the head are parameters of the burn graph; the encoder's weights are
//! constants, so the optimiser never sees (and never moves) them, and its state is the size of
//! the adapters.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use super::lora::{TextClassifierSpec, classifier_logits};
use super::{Minilm, TextError, TokenBatch};
use crate::model::cpu_device;
use crate::rng::SplitMix64;
use crate::train::{Optimizer, TrainConfig};

/// Labelled texts: `labels[i]` in `0..n_classes` is the class of `texts[i]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextDataset {
    /// The texts.
    pub texts: Vec<String>,
    /// Class of each text.
    pub labels: Vec<usize>,
}

impl TextDataset {
    /// Number of texts.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there is no text.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The rows `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> TextDataset {
        TextDataset {
            texts: rows.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: rows.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    fn check(&self, spec: &TextClassifierSpec) -> Result<(), TextError> {
        if self.texts.is_empty() {
            return Err(TextError::Adapter("the data set has no texts".to_owned()));
        }
        if self.texts.len() != self.labels.len() {
            return Err(TextError::Adapter(format!(
                "{} texts but {} labels",
                self.texts.len(),
                self.labels.len()
            )));
        }
        if let Some(label) = self.labels.iter().find(|&&l| l >= spec.n_classes) {
            return Err(TextError::Adapter(format!(
                "label {label} is not below the {} classes",
                spec.n_classes
            )));
        }
        Ok(())
    }

    fn tokens(&self, model: &Minilm, max_tokens: usize) -> Result<TokenBatch, TextError> {
        let texts: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        model.tokenizer().encode(&texts, max_tokens)
    }
}

/// Outcome of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TextTrainReport {
    /// Trained flat parameters (adapters, then head).
    pub params: Vec<f32>,
    /// Mean cross-entropy over the last epoch's mini-batches, weighted by size, each measured
    /// before its update.
    pub mean_loss: f64,
    /// Texts trained on per epoch.
    pub n_samples: usize,
}

/// Fine-tunes the adapters and head `params` of `spec` on `data` with `config`'s epochs, batch
/// size, learning rate, optimiser, seed and FedProx term (`frozen_layers` must be 0: the
/// encoder is frozen anyway). With `freeze_head` the head is a constant and comes back as
/// given (a federated round that trains the shared adapters while the head stays local).
/// Texts are truncated to `max_tokens` tokens.
pub fn train(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    data: &TextDataset,
    config: &TrainConfig,
    max_tokens: usize,
    freeze_head: bool,
) -> Result<TextTrainReport, TextError> {
    model.check_spec(spec)?;
    data.check(spec)?;
    check_config(config)?;
    let device = cpu_device().autodiff();
    let encoder = model.encoder(&device);
    let mut module = spec.module(params, &device, freeze_head)?;
    let anchor = if config.proximal_mu > 0.0 {
        Some(spec.module(params, &device, true)?.no_grad())
    } else {
        None
    };
    let tokens = data.tokens(model, max_tokens)?;
    let mut optimizer = match config.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };
    let n = data.len();
    let mut rng = SplitMix64::new(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut mean_loss = f64::NAN;
    for _ in 0..config.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for rows in order.chunks(config.batch_size) {
            let batch = tokens.select(rows);
            let labels: Vec<usize> = rows.iter().map(|&i| data.labels[i]).collect();
            let logits = classifier_logits(&encoder, &module, &batch, &device);
            let loss = cross_entropy(logits, &labels, spec.n_classes, &device);
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(TextError::Adapter(
                    "training diverged: the loss is not finite".to_owned(),
                ));
            }
            loss_sum += value * rows.len() as f64;
            let loss = match &anchor {
                Some(anchor) => loss + module.squared_distance(anchor) * (config.proximal_mu / 2.0),
                None => loss,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &module);
            module = optimizer.step(config.learning_rate, module, grads);
        }
        mean_loss = loss_sum / n as f64;
    }
    let params = module.to_params();
    if params.iter().any(|v| !v.is_finite()) {
        return Err(TextError::Adapter(
            "training diverged: a parameter is not finite".to_owned(),
        ));
    }
    Ok(TextTrainReport {
        params,
        mean_loss,
        n_samples: n,
    })
}

/// Class probabilities (`n_classes` per text) of the classifier on `texts`.
pub fn predict(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    texts: &[String],
    max_tokens: usize,
) -> Result<Vec<Vec<f32>>, TextError> {
    model.check_spec(spec)?;
    let device = cpu_device();
    let encoder = model.encoder(&device);
    let module = spec.module(params, &device, false)?;
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let batch = model.tokenizer().encode(&chunk, max_tokens)?;
        let probs =
            softmax(classifier_logits(&encoder, &module, &batch, &device), 1).into_data_as::<f32>();
        let probs = probs.as_slice::<f32>().expect("data was converted to f32");
        out.extend(probs.chunks(spec.n_classes).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// Accuracy and macro-F1 of a multi-class classifier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassMetrics {
    /// Texts evaluated.
    pub n: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Share of texts whose most probable class is the label.
    pub accuracy: f64,
    /// Unweighted mean over the classes present (in labels or predictions) of each class's F1.
    pub macro_f1: f64,
}

/// [`ClassMetrics`] of the classifier on `data`.
pub fn evaluate(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    data: &TextDataset,
    max_tokens: usize,
) -> Result<ClassMetrics, TextError> {
    data.check(spec)?;
    let probs = predict(model, spec, params, &data.texts, max_tokens)?;
    Ok(class_metrics(&probs, &data.labels, spec.n_classes))
}

/// [`ClassMetrics`] of predicted probabilities against labels.
pub fn class_metrics(probs: &[Vec<f32>], labels: &[usize], n_classes: usize) -> ClassMetrics {
    let mut confusion = vec![[0usize; 3]; n_classes]; // per class: tp, fp, fn
    let mut correct = 0;
    let mut loss = 0.0;
    for (p, &label) in probs.iter().zip(labels) {
        let predicted = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        loss -= f64::from(p.get(label).copied().unwrap_or(0.0))
            .max(1e-12)
            .ln();
        if predicted == label {
            correct += 1;
            confusion[label][0] += 1;
        } else {
            confusion[predicted][1] += 1;
            confusion[label][2] += 1;
        }
    }
    let f1s: Vec<f64> = confusion
        .iter()
        .filter(|[tp, fp, fn_]| tp + fp + fn_ > 0)
        .map(|&[tp, fp, fn_]| 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64)
        .collect();
    let n = labels.len();
    ClassMetrics {
        n,
        loss: loss / n.max(1) as f64,
        accuracy: correct as f64 / n.max(1) as f64,
        macro_f1: if f1s.is_empty() {
            0.0
        } else {
            f1s.iter().sum::<f64>() / f1s.len() as f64
        },
    }
}

fn check_config(config: &TrainConfig) -> Result<(), TextError> {
    let bad = |reason: &str| {
        Err(TextError::Adapter(format!(
            "invalid training config: {reason}"
        )))
    };
    if config.epochs == 0 {
        return bad("epochs must be positive");
    }
    if config.batch_size == 0 {
        return bad("batch_size must be positive");
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return bad("learning_rate must be positive and finite");
    }
    if !(config.proximal_mu.is_finite() && config.proximal_mu >= 0.0) {
        return bad("proximal_mu must be finite and non-negative");
    }
    if config.frozen_layers != 0 {
        return bad("frozen_layers does not apply to a LoRA text model (its encoder is frozen)");
    }
    Ok(())
}

/// Mean cross-entropy of `logits` `[n, n_classes]` against `labels`.
fn cross_entropy(
    logits: Tensor<2>,
    labels: &[usize],
    n_classes: usize,
    device: &Device,
) -> Tensor<1> {
    let n = labels.len();
    let mut one_hot = vec![0.0f32; n * n_classes];
    for (row, &label) in labels.iter().enumerate() {
        one_hot[row * n_classes + label] = 1.0;
    }
    let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [n, n_classes]), device);
    (log_softmax(logits, 1) * one_hot)
        .sum()
        .neg()
        .div_scalar(n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_metrics_count_per_class() {
        // Labels 0, 0, 1, 2; predictions 0, 1, 1, 2.
        let probs = vec![
            vec![0.8, 0.1, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.1, 0.1, 0.8],
        ];
        let m = class_metrics(&probs, &[0, 0, 1, 2], 3);
        assert_eq!(m.n, 4);
        assert_eq!(m.accuracy, 0.75);
        // F1: class 0 = 2/3 (tp 1, fn 1), class 1 = 2/3 (tp 1, fp 1), class 2 = 1.
        assert!((m.macro_f1 - (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        let expected_loss = -(0.8f64.ln() + 0.2f64.ln() + 0.8f64.ln() + 0.8f64.ln()) / 4.0;
        assert!((m.loss - expected_loss).abs() < 1e-6);
    }
}
