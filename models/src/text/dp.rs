//! Text-level DP-SGD for the LoRA text classifier: the mechanism of [`crate::dp`] with each
//! text (a patient's note or review) as the unit of privacy.
//!
//! # Guarantee
//!
//! [`train_features_dp`] is [`crate::dp::train_dp`]'s subsampled Gaussian mechanism, applied
//! to the trainable parameters of a text classifier (the adapters, and the head unless it is
//! frozen): each step draws a Poisson batch (every text independently with probability `q`),
//! computes every sampled text's gradient of its cross-entropy, clips it to L2 norm `C`, sums
//! the clipped gradients on the lattice and adds the discrete Gaussian noise of
//! [`harambee_privacy::mechanism`] (standard deviation `z (C + γ√d)`), divides by the
//! expected batch size `q n`, adds the FedProx term, and lets the optimiser step. The same
//! code clips, snaps and noises as for a table (`crate::dp`'s `GradSum`), and the report is the
//! same [`DpSgdReport`], so the agent's accountant composes `(z, q, steps)` exactly as for a
//! tabular model. The guarantee is with respect to adding or removing one text of the
//! facility's training set; a patient with several texts is covered only to the extent of
//! group privacy. The frozen encoder, the cached lower layers' outputs
//! ([`Features`]) and the starting parameters (the round's global model, and a facility's own
//! head, itself trained only by this mechanism) are either public or outputs of the mechanism:
//! what they feed into is post-processing.
//!
//! # The per-text gradients
//!
//! One forward and one backward pass per chunk of [`EXAMPLE_CHUNK`] texts of the batch, not one
//! per text: the adapters and head are copied once per text into `[n, ...]` tensors (text `i`
//! reads only its copy, with batched matrix products), so the gradient of the summed loss with
//! respect to copy `i` is text `i`'s own gradient. The attention mask keeps a text from seeing
//! another's padding, so a text's gradient is the one it would get alone, up to rounding; the
//! tests check it against one ordinary training step per text. The copies cost `n` times the
//! trainable parameters in memory (44,548 floats each for the demo's task).

use burn::optim::{AdamConfig, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use rand_core::CryptoRng;

use super::lora::{Adapters, LoraTarget, TextClassifierSpec};
use super::train::{Features, check_config, check_labels};
use super::{Encoder, Minilm, TextError, mean_pool};
use crate::dp::{DpSgdConfig, DpSgdReport, GradSum, check_dp_config, dp_steps, unit_f64};
use crate::model::{ModelError, cpu_device};
use crate::train::{Optimizer, TrainConfig, TrainReport};

/// Texts per forward and backward pass when computing per-text gradients: bounds the memory of
/// the per-text copies and of the activations.
pub const EXAMPLE_CHUNK: usize = 32;

/// Fine-tunes the adapters and head `params` of `spec` with DP-SGD on texts whose frozen layers
/// have already been run (`features`, `labels[i]` the class of text `i`), and returns the new
/// parameters and what the privacy accountant needs (see the module docs).
///
/// Takes [`dp_steps`]`(config.epochs, q)` steps; from `config`, `epochs`, `learning_rate`,
/// `optimizer` and `proximal_mu` are honoured, `batch_size` and `seed` are ignored (batches
/// come from Poisson sampling, randomness from `rng`), and `frozen_layers` must be 0 as for
/// [`super::train::train_features`]. With `freeze_head` the head is a constant: it gets
/// neither gradient nor noise and comes back bit for bit, and the clipping norm bounds the
/// adapters' gradient alone.
///
/// `rng` draws the batches and the noise: a cryptographically secure generator seeded from
/// the operating system in production, a seeded one in tests.
///
/// [`TrainReport::mean_loss`] is the mean loss of the texts sampled during the last
/// [`dp_steps`]`(1, q)` steps, each measured before its step's update (NaN if none was
/// sampled). Neither it nor `n_samples` is covered by the guarantee.
#[allow(clippy::too_many_arguments)]
pub fn train_features_dp<R: CryptoRng + ?Sized>(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    features: &Features,
    labels: &[usize],
    config: &TrainConfig,
    freeze_head: bool,
    dp: &DpSgdConfig,
    rng: &mut R,
) -> Result<DpSgdReport, TextError> {
    model.check_spec(spec)?;
    features.check(spec, labels.len())?;
    check_labels(labels, spec)?;
    // The batch size is ignored here, so it must not be rejected either.
    check_config(&TrainConfig {
        batch_size: 1,
        ..config.clone()
    })?;
    check_dp_config(dp).map_err(model_error)?;

    let device = cpu_device().autodiff();
    let encoder = model.encoder(&device);
    let mut module = spec.module(params, &device, freeze_head)?;
    // The head, when frozen, is the suffix: the trainable coordinates are a prefix.
    let n_trainable = trainable_len(spec, freeze_head);
    let start = &params[..n_trainable];
    let mut optimizer = match config.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };

    let n = labels.len();
    let steps = dp_steps(config.epochs, dp.sampling_rate);
    let last_epoch_start = steps.saturating_sub(dp_steps(1, dp.sampling_rate));
    let expected_batch_size = dp.sampling_rate * n as f64;
    let mut grad_sum = GradSum::new(dp, n_trainable).map_err(model_error)?;
    let mut noisy_sum = vec![0.0f64; n_trainable];
    let mut step_grad = vec![0.0f32; n_trainable];
    let mut batch = Vec::with_capacity(n);
    let mut current = params.to_vec();
    let mut n_sampled_total = 0u64;
    let (mut last_epoch_loss, mut last_epoch_texts) = (0.0, 0u64);
    for step_idx in 0..steps {
        grad_sum.clear();
        batch.clear();
        for text_idx in 0..n {
            if unit_f64(rng) < dp.sampling_rate {
                batch.push(text_idx);
            }
        }
        n_sampled_total += batch.len() as u64;
        for rows in batch.chunks(EXAMPLE_CHUNK) {
            let chunk = ExampleGradients::compute(
                &encoder,
                spec,
                &current,
                features,
                labels,
                rows,
                freeze_head,
                &device,
            )?;
            if step_idx >= last_epoch_start {
                last_epoch_loss += chunk.losses.iter().sum::<f64>();
                last_epoch_texts += rows.len() as u64;
            }
            for example_idx in 0..rows.len() {
                grad_sum.add_clipped(chunk.example(example_idx), dp.clip_norm);
            }
        }
        grad_sum.release(rng, &mut noisy_sum);
        for (coord_idx, (grad, sum)) in step_grad.iter_mut().zip(&noisy_sum).enumerate() {
            let mut value = sum / expected_batch_size;
            if config.proximal_mu > 0.0 {
                value += config.proximal_mu * f64::from(current[coord_idx] - start[coord_idx]);
            }
            *grad = value as f32;
        }
        if step_grad.iter().any(|value| !value.is_finite()) {
            return Err(diverged("a gradient"));
        }
        let grads = crate::dp::gradients_params(&module, &step_grad);
        module = optimizer.step(config.learning_rate, module, grads);
        current = module.to_params();
    }

    if current.iter().any(|value| !value.is_finite()) {
        return Err(diverged("a parameter"));
    }
    let mean_loss = if last_epoch_texts == 0 {
        f64::NAN
    } else {
        last_epoch_loss / last_epoch_texts as f64
    };
    Ok(DpSgdReport {
        train: TrainReport {
            params: current,
            mean_loss,
            n_samples: n,
        },
        steps,
        sampling_rate: dp.sampling_rate,
        noise_multiplier: dp.noise_multiplier,
        mean_batch_size: if steps == 0 {
            0.0
        } else {
            n_sampled_total as f64 / steps as f64
        },
    })
}

/// Each text's cross-entropy and gradient with respect to the trainable parameters of the
/// classifier at `params` (the adapters, then the head unless `freeze_head`, in flat-layout
/// order), for the texts `rows` of `features`: what [`train_features_dp`] clips. Computed as
/// it computes them, [`EXAMPLE_CHUNK`] texts per pass.
pub fn example_gradients(
    model: &Minilm,
    spec: &TextClassifierSpec,
    params: &[f32],
    features: &Features,
    labels: &[usize],
    rows: &[usize],
    freeze_head: bool,
) -> Result<Vec<(f64, Vec<f32>)>, TextError> {
    model.check_spec(spec)?;
    features.check(spec, labels.len())?;
    check_labels(labels, spec)?;
    if let Some(&row) = rows.iter().find(|&&row| row >= labels.len()) {
        return Err(TextError::Adapter(format!(
            "text {row} is not among the {} texts",
            labels.len()
        )));
    }
    let device = cpu_device().autodiff();
    let encoder = model.encoder(&device);
    let mut out = Vec::with_capacity(rows.len());
    for rows in rows.chunks(EXAMPLE_CHUNK) {
        let chunk = ExampleGradients::compute(
            &encoder,
            spec,
            params,
            features,
            labels,
            rows,
            freeze_head,
            &device,
        )?;
        for (example_idx, &loss) in chunk.losses.iter().enumerate() {
            out.push((loss, chunk.example(example_idx).to_vec()));
        }
    }
    Ok(out)
}

/// Values trained: the adapters, and the head unless it is frozen.
fn trainable_len(spec: &TextClassifierSpec, freeze_head: bool) -> usize {
    if freeze_head {
        spec.adapter_len()
    } else {
        spec.n_params()
    }
}

/// The losses and gradients of a chunk of texts, one flat gradient per text.
struct ExampleGradients {
    losses: Vec<f64>,
    /// `losses.len()` rows of `n_trainable` values.
    grads: Vec<f32>,
    n_trainable: usize,
}

impl ExampleGradients {
    #[allow(clippy::too_many_arguments)]
    fn compute(
        encoder: &Encoder,
        spec: &TextClassifierSpec,
        params: &[f32],
        features: &Features,
        labels: &[usize],
        rows: &[usize],
        freeze_head: bool,
        device: &Device,
    ) -> Result<ExampleGradients, TextError> {
        let n = rows.len();
        let n_trainable = trainable_len(spec, freeze_head);
        let copies = ExampleCopies::new(spec, params, n, freeze_head, device)?;
        let (x, mask) = features.batch(rows, device);
        let hidden = encoder.forward_layers_with(
            x,
            mask.clone(),
            features.start()..encoder.n_layers(),
            Some(&copies),
        );
        let logits = copies.head(mean_pool(hidden, mask));
        let mut one_hot = vec![0.0f32; n * spec.n_classes];
        for (example_idx, &row) in rows.iter().enumerate() {
            one_hot[example_idx * spec.n_classes + labels[row]] = 1.0;
        }
        let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [n, spec.n_classes]), device);
        // Each text's cross-entropy `[n, 1]`; their sum's gradient with respect to copy `i` is
        // text `i`'s gradient.
        let losses = (log_softmax(logits, 1) * one_hot).sum_dim(1).neg();
        let values = losses.clone().into_data_as::<f32>();
        let losses_f64: Vec<f64> = values
            .as_slice::<f32>()
            .expect("data was converted to f32")
            .iter()
            .map(|&loss| f64::from(loss))
            .collect();
        if losses_f64.iter().any(|loss| !loss.is_finite()) {
            return Err(diverged("the loss"));
        }
        let gradients = losses.sum().backward();
        let mut grads = vec![0.0f32; n * n_trainable];
        let mut offset = 0;
        for (tensor, len) in copies.trainable() {
            let per_example = tensor.grad_values(&gradients, n * len);
            for example_idx in 0..n {
                let at = example_idx * n_trainable + offset;
                grads[at..at + len]
                    .copy_from_slice(&per_example[example_idx * len..(example_idx + 1) * len]);
            }
            offset += len;
        }
        debug_assert_eq!(offset, n_trainable);
        Ok(ExampleGradients {
            losses: losses_f64,
            grads,
            n_trainable,
        })
    }

    /// The gradient of text `example_idx` of the chunk.
    fn example(&self, example_idx: usize) -> &[f32] {
        &self.grads[example_idx * self.n_trainable..(example_idx + 1) * self.n_trainable]
    }
}

/// A trainable per-text copy: a tensor of rank 2 or 3 whose first axis is the text.
enum PerText {
    Two(Tensor<2>),
    Three(Tensor<3>),
}

impl PerText {
    /// The gradient's values (`len` of them, zeros when the loss does not reach the copy).
    fn grad_values(&self, gradients: &Gradients, len: usize) -> Vec<f32> {
        let data = match self {
            PerText::Two(t) => t.grad(gradients).map(|g| g.into_data_as::<f32>()),
            PerText::Three(t) => t.grad(gradients).map(|g| g.into_data_as::<f32>()),
        };
        match data {
            Some(data) => data
                .as_slice::<f32>()
                .expect("data was converted to f32")
                .to_vec(),
            None => vec![0.0; len],
        }
    }
}

/// The adapters and head copied once per text of a chunk: `a[i]`, `b[i]`, `head_weight[i]`
/// and `head_bias[i]` are text `i`'s, each an autodiff leaf (the head a constant when frozen).
struct ExampleCopies {
    /// Per adapter: `A` `[n, n_in, rank]`, `B` `[n, rank, n_out]`.
    pairs: Vec<(Tensor<3>, Tensor<3>)>,
    /// Per adapter, its `n_in * rank` and `rank * n_out`.
    pair_lens: Vec<(usize, usize)>,
    head_weight: Tensor<3>,
    head_bias: Tensor<2>,
    head_trainable: bool,
    head_lens: (usize, usize),
    slots: Vec<usize>,
    scale: f64,
}

impl ExampleCopies {
    fn new(
        spec: &TextClassifierSpec,
        params: &[f32],
        n: usize,
        freeze_head: bool,
        device: &Device,
    ) -> Result<ExampleCopies, TextError> {
        if params.len() != spec.n_params() {
            return Err(TextError::Adapter(format!(
                "expected {} parameters, got {}",
                spec.n_params(),
                params.len()
            )));
        }
        let r = spec.lora.rank;
        let mut offset = 0;
        let mut take = |len: usize| {
            let chunk = &params[offset..offset + len];
            offset += len;
            chunk
        };
        let mut pairs = Vec::new();
        let mut pair_lens = Vec::new();
        for (_, _, n_in, n_out) in spec.adapters() {
            let a = leaf3(take(n_in * r), [n, n_in, r], true, device);
            let b = leaf3(take(r * n_out), [n, r, n_out], true, device);
            pairs.push((a, b));
            pair_lens.push((n_in * r, r * n_out));
        }
        let (h, c) = (spec.bert.hidden_size, spec.n_classes);
        let head_weight = leaf3(take(h * c), [n, h, c], !freeze_head, device);
        let bias = repeated(take(c), n);
        let bias = Tensor::<2>::from_data(TensorData::new(bias, [n, c]), device);
        let head_bias = if freeze_head {
            bias
        } else {
            bias.require_grad()
        };
        Ok(ExampleCopies {
            pairs,
            pair_lens,
            head_weight,
            head_bias,
            head_trainable: !freeze_head,
            head_lens: (h * c, c),
            slots: spec.adapter_slots(),
            scale: spec.lora.scale(),
        })
    }

    /// Logits `[n, n_classes]` of pooled features `[n, hidden]`, text `i` through its head.
    fn head(&self, pooled: Tensor<2>) -> Tensor<2> {
        let [n, hidden] = pooled.dims();
        let c = self.head_bias.dims()[1];
        pooled
            .reshape([n, 1, hidden])
            .matmul(self.head_weight.clone())
            .reshape([n, c])
            + self.head_bias.clone()
    }

    /// The trainable copies in flat-layout order, each with its length per text.
    fn trainable(&self) -> Vec<(PerText, usize)> {
        let mut out = Vec::with_capacity(2 * self.pairs.len() + 2);
        for ((a, b), &(a_len, b_len)) in self.pairs.iter().zip(&self.pair_lens) {
            out.push((PerText::Three(a.clone()), a_len));
            out.push((PerText::Three(b.clone()), b_len));
        }
        if self.head_trainable {
            out.push((PerText::Three(self.head_weight.clone()), self.head_lens.0));
            out.push((PerText::Two(self.head_bias.clone()), self.head_lens.1));
        }
        out
    }
}

impl Adapters for ExampleCopies {
    fn delta(&self, layer: usize, target: LoraTarget, x: Tensor<3>) -> Option<Tensor<3>> {
        let slot = *self
            .slots
            .get(layer * LoraTarget::ALL.len() + target.index())?;
        let (a, b) = self.pairs.get(slot)?;
        // [n, len, n_in] x [n, n_in, r] x [n, r, n_out]: text i through its own copy.
        Some(x.matmul(a.clone()).matmul(b.clone()).mul_scalar(self.scale))
    }
}

/// `values` (a `[rows, cols]` matrix) copied `n` times as a `[n, rows, cols]` tensor: an
/// autodiff leaf when `trainable`.
fn leaf3(values: &[f32], shape: [usize; 3], trainable: bool, device: &Device) -> Tensor<3> {
    let tensor = Tensor::<3>::from_data(TensorData::new(repeated(values, shape[0]), shape), device);
    if trainable {
        tensor.require_grad()
    } else {
        tensor
    }
}

fn repeated(values: &[f32], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len() * n);
    for _ in 0..n {
        out.extend_from_slice(values);
    }
    out
}

fn model_error(error: ModelError) -> TextError {
    TextError::Adapter(error.to_string())
}

fn diverged(what: &str) -> TextError {
    TextError::Adapter(format!("training diverged: {what} is not finite"))
}
