//! Local fine-tuning and evaluation of a LoRA text classifier on the CPU.
//!
//! Only the adapters and the head are parameters of the burn graph; the encoder's weights are
//! constants, so the optimiser never sees (and never moves) them, and its state is the size of
//! the adapters.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use super::lora::{LoraModule, TextClassifierSpec};
use super::{Encoder, Minilm, TextError, mean_pool};
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

    /// Splits into (train, held-out) exactly as [`crate::data::split_holdout`] splits a table:
    /// text `i` is held out when a hash of `(seed, i)` falls below `test_fraction`.
    pub fn split_holdout(&self, test_fraction: f64, seed: u64) -> (TextDataset, TextDataset) {
        let test_fraction = if test_fraction.is_nan() {
            0.0
        } else {
            test_fraction.clamp(0.0, 1.0)
        };
        let (test, train): (Vec<usize>, Vec<usize>) =
            (0..self.len()).partition(|&i| crate::rng::hash_unit(seed, i as u64) < test_fraction);
        (self.select(&train), self.select(&test))
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
}

/// The frozen layers' output for each text, computed once: the hidden states entering the
/// first adapted layer ([`TextClassifierSpec::first_adapted_layer`]; the embeddings' output
/// when every layer is adapted). Training and evaluation run only the layers above, which
/// is what makes LoRA on the top layers cheap: a text's lower layers are run once, not once per
/// epoch and round. Holds `tokens x hidden` floats per text.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// The first layer still to run.
    start: usize,
    hidden: usize,
    /// Per text: `[tokens, hidden]` row-major, real tokens only.
    rows: Vec<Vec<f32>>,
}

impl Features {
    /// Runs the embeddings and the layers below `spec`'s first adapted layer on `texts`
    /// (each truncated to `max_tokens` tokens), 32 texts at a time.
    pub fn compute(
        model: &Minilm,
        spec: &TextClassifierSpec,
        texts: &[String],
        max_tokens: usize,
    ) -> Result<Features, TextError> {
        model.check_spec(spec)?;
        let device = cpu_device();
        let encoder = model.encoder(&device);
        let start = spec.first_adapted_layer();
        let hidden = spec.bert.hidden_size;
        let mut rows = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let batch = model.tokenizer().encode(&chunk, max_tokens)?;
            let (ids, types, mask) = batch.tensors(&device);
            let x = encoder.forward_layers(encoder.embed(ids, types), mask, 0..start, None);
            let values = x.into_data_as::<f32>();
            let values = values.as_slice::<f32>().expect("data was converted to f32");
            for (row, states) in values.chunks(batch.len * hidden).enumerate() {
                let n = batch.mask[row * batch.len..(row + 1) * batch.len]
                    .iter()
                    .filter(|&&m| m != 0)
                    .count();
                rows.push(states[..n * hidden].to_vec());
            }
        }
        Ok(Features {
            start,
            hidden,
            rows,
        })
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no text.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The texts `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Features {
        Features {
            start: self.start,
            hidden: self.hidden,
            rows: rows.iter().map(|&i| self.rows[i].clone()).collect(),
        }
    }

    /// The texts of every part, in order. All parts must come from the same classifier.
    pub fn concat(parts: &[&Features]) -> Result<Features, TextError> {
        let first = parts
            .first()
            .ok_or_else(|| TextError::Adapter("nothing to concatenate".to_owned()))?;
        if parts
            .iter()
            .any(|p| p.start != first.start || p.hidden != first.hidden)
        {
            return Err(TextError::Adapter(
                "features of different classifiers cannot be joined".to_owned(),
            ));
        }
        Ok(Features {
            start: first.start,
            hidden: first.hidden,
            rows: parts.iter().flat_map(|p| p.rows.iter().cloned()).collect(),
        })
    }

    /// The first layer still to run on these features.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// Floats held.
    pub fn n_values(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    pub(crate) fn check(
        &self,
        spec: &TextClassifierSpec,
        n_labels: usize,
    ) -> Result<(), TextError> {
        if self.start != spec.first_adapted_layer() || self.hidden != spec.bert.hidden_size {
            return Err(TextError::Adapter(
                "the cached features were computed for another classifier".to_owned(),
            ));
        }
        if self.rows.len() != n_labels {
            return Err(TextError::Adapter(format!(
                "{} texts but {n_labels} labels",
                self.rows.len()
            )));
        }
        Ok(())
    }

    /// Hidden states `[n, len, hidden]` (zero-padded to the longest) and mask `[n, len]` of
    /// the texts `rows`.
    pub(crate) fn batch(&self, rows: &[usize], device: &Device) -> (Tensor<3>, Tensor<2>) {
        let h = self.hidden;
        let len = rows
            .iter()
            .map(|&i| self.rows[i].len() / h)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut states = vec![0.0f32; rows.len() * len * h];
        let mut mask = vec![0.0f32; rows.len() * len];
        for (r, &i) in rows.iter().enumerate() {
            let row = &self.rows[i];
            states[r * len * h..r * len * h + row.len()].copy_from_slice(row);
            mask[r * len..r * len + row.len() / h].fill(1.0);
        }
        (
            Tensor::<3>::from_data(TensorData::new(states, [rows.len(), len, h]), device),
            Tensor::<2>::from_data(TensorData::new(mask, [rows.len(), len]), device),
        )
    }

    /// Logits `[n, n_classes]` of the classifier for the texts `rows`.
    fn logits(
        &self,
        encoder: &Encoder,
        module: &LoraModule,
        rows: &[usize],
        device: &Device,
    ) -> Tensor<2> {
        let (x, mask) = self.batch(rows, device);
        let hidden = encoder.forward_layers(
            x,
            mask.clone(),
            self.start..encoder.n_layers(),
            Some(module),
        );
        module.head(mean_pool(hidden, mask))
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
    data.check(spec)?;
    let features = Features::compute(model, spec, &data.texts, max_tokens)?;
    train_features(
        model,
        spec,
        params,
        &features,
        &data.labels,
        config,
        freeze_head,
    )
}

/// [`train`] on texts whose frozen layers have already been run ([`Features::compute`]):
/// `labels[i]` is the class of text `i` of `features`.
pub fn train_features(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    features: &Features,
    labels: &[usize],
    config: &TrainConfig,
    freeze_head: bool,
) -> Result<TextTrainReport, TextError> {
    model.check_spec(spec)?;
    features.check(spec, labels.len())?;
    check_labels(labels, spec)?;
    check_config(config)?;
    let device = cpu_device().autodiff();
    let encoder = model.encoder(&device);
    let mut module = spec.module(params, &device, freeze_head)?;
    let anchor = if config.proximal_mu > 0.0 {
        Some(spec.module(params, &device, true)?.no_grad())
    } else {
        None
    };
    let mut optimizer = match config.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };
    let n = labels.len();
    let mut rng = SplitMix64::new(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut mean_loss = f64::NAN;
    for _ in 0..config.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for rows in order.chunks(config.batch_size) {
            let batch_labels: Vec<usize> = rows.iter().map(|&i| labels[i]).collect();
            let logits = features.logits(&encoder, &module, rows, &device);
            let loss = cross_entropy(logits, &batch_labels, spec.n_classes, &device);
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
    let features = Features::compute(model, spec, texts, max_tokens)?;
    predict_features(model, spec, params, &features)
}

/// [`predict`] on texts whose frozen layers have already been run.
pub fn predict_features(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    features: &Features,
) -> Result<Vec<Vec<f32>>, TextError> {
    model.check_spec(spec)?;
    features.check(spec, features.len())?;
    let device = cpu_device();
    let encoder = model.encoder(&device);
    let module = spec.module(params, &device, false)?;
    let mut out = Vec::with_capacity(features.len());
    let all: Vec<usize> = (0..features.len()).collect();
    for rows in all.chunks(32) {
        let probs =
            softmax(features.logits(&encoder, &module, rows, &device), 1).into_data_as::<f32>();
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

/// [`evaluate`] on texts whose frozen layers have already been run.
pub fn evaluate_features(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    features: &Features,
    labels: &[usize],
) -> Result<ClassMetrics, TextError> {
    features.check(spec, labels.len())?;
    check_labels(labels, spec)?;
    let probs = predict_features(model, spec, params, features)?;
    Ok(class_metrics(&probs, labels, spec.n_classes))
}

pub(crate) fn check_labels(labels: &[usize], spec: &TextClassifierSpec) -> Result<(), TextError> {
    if labels.is_empty() {
        return Err(TextError::Adapter("the data set has no texts".to_owned()));
    }
    if let Some(label) = labels.iter().find(|&&l| l >= spec.n_classes) {
        return Err(TextError::Adapter(format!(
            "label {label} is not below the {} classes",
            spec.n_classes
        )));
    }
    Ok(())
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

pub(crate) fn check_config(config: &TrainConfig) -> Result<(), TextError> {
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
