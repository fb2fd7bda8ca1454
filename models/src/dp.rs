//! Patient-level differentially private training: DP-SGD (Abadi et al. 2016) with Poisson
//! sampling, per-example clipping and Gaussian noise.
//!
//! # Guarantee
//!
//! [`train_dp`] is the subsampled Gaussian mechanism applied [`DpSgdReport::steps`] times to
//! one facility's table: each row (a patient) joins each step's batch independently with
//! probability `q` ([`DpSgdConfig::sampling_rate`]), its gradient is clipped to L2 norm `C`
//! ([`DpSgdConfig::clip_norm`]), and the sum over the batch gets Gaussian noise of standard
//! deviation `z * C` ([`DpSgdConfig::noise_multiplier`]) on every trainable coordinate. The
//! optimiser (SGD, Adam), the FedProx term and the conversion to a parameter vector only
//! post-process the noisy sums and public values (the starting parameters are the round's global
//! model). So the returned parameters, and anything derived from them such as the uploaded
//! update, are (ε, δ)-differentially private with respect to adding or removing one row of the
//! facility's table, with ε given by a Rényi-DP accountant for the Poisson-subsampled Gaussian
//! mechanism at `(z, q, steps)`. The agent feeds the report into its accountant after every
//! round (`harambee_privacy::accountant::RdpAccountant::compose(z, q, steps)`) and composes
//! over rounds; this crate does no accounting itself.
//!
//! Why the noisy sum is divided by the *expected* batch size `q * n` rather than by the drawn
//! batch size `|B|`: the mechanism's analysis covers the release of the noisy sum. Dividing by a
//! constant fixed before sampling is post-processing; dividing by `|B|`, which changes by one
//! when one patient is added or removed, would put a data-dependent normaliser on the released
//! value that the accountant does not cover. The normaliser uses the row count `n`, which is
//! treated as public (the agent reports it, like Opacus's `expected_batch_size`).
//!
//! # The noise, against floating-point attacks
//!
//! The noise is not a floating-point Gaussian sample added to a floating-point sum, whose set of
//! possible results depends on the sum's low bits (Mironov 2012). Each step uses the lattice
//! Gaussian of [`harambee_privacy::mechanism`]: every clipped per-example gradient is snapped
//! to a grid of spacing `γ` (a power of two with `γ√d ≤ C / 4096`, `d` the trainable
//! coordinates), the snapped gradients are summed in integers, an exact discrete Gaussian draw
//! (Canonne, Kamath, Steinke 2020) is added to each coordinate in integers, and only then is the
//! sum converted to floating point. The snapped sum's L2 sensitivity is at most `C + γ√d/2`;
//! the noise's standard deviation is `z (C + γ√d)`, so the accountant's `z` stays exact and the
//! price is at most `2^-12` more noise. The module docs of [`harambee_privacy::mechanism`] give
//! the argument and what it rests on.
//!
//! Not covered by the guarantee: [`TrainReport::mean_loss`] and [`TrainReport::n_samples`] in
//! the report are computed from the raw data without noise, for local logging only; and the
//! running time grows with the sampled batch sizes. With `z = 0` there is no noise, no
//! guarantee and no snapping: the sum stays in `f64`.
//!
//! Like [`train()`](crate::train::train), everything here is synchronous and CPU-bound. Given a
//! seeded RNG, results are deterministic; in production the RNG must be a cryptographically
//! secure generator seeded from the operating system, since the privacy of the batches and the
//! noise rests on its unpredictability.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use harambee_privacy::mechanism::LatticeGaussian;
use rand_core::{CryptoRng, Rng};

use crate::data::Dataset;
use crate::model::{Classifier, ModelError, ModelSpec, cpu_device};
use crate::train::{
    Optimizer, TrainConfig, TrainReport, batch_tensors, bce_with_logits, check_config,
    check_model_and_data,
};

/// The privacy parameters of DP-SGD.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSgdConfig {
    /// Per-example L2 clipping norm `C` over all trainable parameters; positive and finite.
    pub clip_norm: f64,
    /// Noise multiplier `z`: the summed clipped gradients get Gaussian noise of standard
    /// deviation `z * C` per coordinate; non-negative and finite. `0` trains without noise (and
    /// without a privacy guarantee), which is useful only for tests and baselines.
    pub noise_multiplier: f64,
    /// Sampling rate `q` in `(0, 1]`: each row joins each batch independently with probability
    /// `q` (Poisson sampling), so batches have `q * n` rows on average and may be empty.
    pub sampling_rate: f64,
}

/// Outcome of [`train_dp`]: the training report and what the privacy accountant needs.
#[derive(Clone, Debug, PartialEq)]
pub struct DpSgdReport {
    /// Trained parameters and (non-private, local-only) loss and row count.
    pub train: TrainReport,
    /// Noisy steps taken, [`dp_steps`] of the epochs and the sampling rate.
    pub steps: u64,
    /// `q` of the run, for the accountant.
    pub sampling_rate: f64,
    /// `z` of the run, for the accountant.
    pub noise_multiplier: f64,
    /// Mean number of rows per sampled batch (about `q * n`); not private, for logging only.
    pub mean_batch_size: f64,
}

/// Steps one call of [`train_dp`] takes for `epochs` passes at sampling rate `q`:
/// `ceil(epochs / q)`, so that every row is expected to be visited `epochs` times.
///
/// A quotient within a relative `1e-9` of an integer counts as that integer, so that rounding
/// in `q` (e.g. `7 / 0.07 = 100.00000000000001` in `f64`) does not add a step. An invalid rate
/// (not in `(0, 1]`), which [`train_dp`] rejects, gives `u64::MAX`: an accountant fed it reports
/// an unbounded privacy loss rather than an optimistic one.
pub fn dp_steps(epochs: usize, sampling_rate: f64) -> u64 {
    if !(sampling_rate > 0.0 && sampling_rate <= 1.0) {
        return u64::MAX;
    }
    let quotient = epochs as f64 / sampling_rate;
    let nearest = quotient.round();
    let steps = if (quotient - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        quotient.ceil()
    };
    // Saturates for absurd epoch counts.
    steps as u64
}

/// Trains from `params` on `data` with DP-SGD and returns the new parameters and the values the
/// privacy accountant needs.
///
/// Takes [`dp_steps`]`(config.epochs, q)` steps. Each step draws a Poisson batch (every row
/// independently with probability `q`, so the batch may be empty), computes every sampled row's
/// gradient of its binary cross-entropy with respect to the trainable parameters (one backward
/// pass per row), clips it to L2 norm at most `C`, sums the clipped gradients, adds independent
/// Gaussian noise `N(0, (z C)^2)` to every trainable coordinate, and divides by the expected
/// batch size `q * n`. With `config.proximal_mu > 0` the FedProx gradient `mu (w - w_start)`,
/// which does not depend on the data, is then added unclipped and noiseless. The optimiser
/// (`config.optimizer` at `config.learning_rate`) steps on the result.
///
/// From `config`, `epochs`, `learning_rate`, `optimizer`, `proximal_mu` and `frozen_layers` are
/// honoured; `batch_size` and `seed` are ignored (batches come from Poisson sampling, randomness
/// from `rng`). Frozen layers get neither gradient nor noise and come back bit for bit.
///
/// `rng` draws the batches and the noise. It must be a cryptographically secure generator
/// seeded from the operating system in production (e.g. `chacha20::ChaCha20Rng` seeded with 32
/// bytes of OS randomness); tests pass a seeded one for determinism.
///
/// [`TrainReport::mean_loss`] is the mean loss of the rows sampled during the last
/// [`dp_steps`]`(1, q)` steps (the last "epoch"), each measured before its step's update, or NaN
/// if none was sampled. Neither it nor `n_samples` is covered by the privacy guarantee.
pub fn train_dp<R: CryptoRng + ?Sized>(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    config: &TrainConfig,
    dp: &DpSgdConfig,
    rng: &mut R,
) -> Result<DpSgdReport, ModelError> {
    // The batch size is ignored here, so it must not be rejected either.
    check_config(&TrainConfig {
        batch_size: 1,
        ..config.clone()
    })?;
    check_dp_config(dp)?;
    check_model_and_data(spec, data, config)?;

    let device = cpu_device().autodiff();
    let n_frozen = spec.layers_len(config.frozen_layers);
    let mut model = Classifier::from_params_frozen(spec, params, &device, n_frozen)?;
    // Frozen parameters are not marked as requiring gradients, and they form a prefix of the
    // flat vector: the trainable coordinates are `params[n_frozen..]`.
    let start = &params[n_frozen..];
    let n_trainable = start.len();
    let mut optimizer = match config.optimizer {
        Optimizer::Adam => AdamConfig::new().init(),
        Optimizer::Sgd => SgdConfig::new().init(),
    };

    let n_rows = data.n_rows();
    let steps = dp_steps(config.epochs, dp.sampling_rate);
    let last_epoch_start = steps.saturating_sub(dp_steps(1, dp.sampling_rate));
    let expected_batch_size = dp.sampling_rate * n_rows as f64;

    let mut grad_sum = GradSum::new(dp, n_trainable)?;
    let mut noisy_sum = vec![0.0f64; n_trainable];
    let mut example_grad = Vec::with_capacity(n_trainable);
    let mut step_grad = vec![0.0f32; n_trainable];
    let mut n_sampled_total = 0u64;
    let (mut last_epoch_loss, mut last_epoch_rows) = (0.0, 0u64);
    for step_idx in 0..steps {
        grad_sum.clear();
        for row_idx in 0..n_rows {
            if unit_f64(rng) >= dp.sampling_rate {
                continue;
            }
            n_sampled_total += 1;
            let loss = example_gradient(&model, data, row_idx, &device, &mut example_grad)?;
            if step_idx >= last_epoch_start {
                last_epoch_loss += loss;
                last_epoch_rows += 1;
            }
            grad_sum.add_clipped(&example_grad, dp.clip_norm);
        }
        grad_sum.release(rng, &mut noisy_sum);
        let current = if config.proximal_mu > 0.0 {
            model.to_params().split_off(n_frozen)
        } else {
            Vec::new()
        };
        for (coord_idx, (grad, sum)) in step_grad.iter_mut().zip(&noisy_sum).enumerate() {
            let mut value = sum / expected_batch_size;
            if config.proximal_mu > 0.0 {
                value += config.proximal_mu * f64::from(current[coord_idx] - start[coord_idx]);
            }
            *grad = value as f32;
        }
        if step_grad.iter().any(|value| !value.is_finite()) {
            return Err(ModelError::Diverged { what: "gradient" });
        }
        let grads = gradients_params(&model, &step_grad);
        model = optimizer.step(config.learning_rate, model, grads);
    }

    let params = model.to_params();
    if params.iter().any(|value| !value.is_finite()) {
        return Err(ModelError::Diverged {
            what: "a parameter",
        });
    }
    let mean_loss = if last_epoch_rows == 0 {
        f64::NAN
    } else {
        last_epoch_loss / last_epoch_rows as f64
    };
    Ok(DpSgdReport {
        train: TrainReport {
            params,
            mean_loss,
            n_samples: n_rows,
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

fn check_dp_config(dp: &DpSgdConfig) -> Result<(), ModelError> {
    let invalid = |reason: &str| {
        Err(ModelError::InvalidConfig {
            reason: reason.to_owned(),
        })
    };
    if !(dp.clip_norm.is_finite() && dp.clip_norm > 0.0) {
        return invalid("dp clip norm must be positive and finite");
    }
    if !(dp.noise_multiplier.is_finite() && dp.noise_multiplier >= 0.0) {
        return invalid("dp noise multiplier must be non-negative and finite");
    }
    if !(dp.sampling_rate > 0.0 && dp.sampling_rate <= 1.0) {
        return invalid("dp sampling rate must be in (0, 1]");
    }
    Ok(())
}

/// Writes the gradient of row `row_idx`'s loss with respect to the trainable parameters of
/// `model` into `grad` (flat layout, trainable suffix) and returns the loss.
fn example_gradient(
    model: &Classifier,
    data: &Dataset,
    row_idx: usize,
    device: &Device,
    grad: &mut Vec<f32>,
) -> Result<f64, ModelError> {
    let (x, y) = batch_tensors(
        data.row(row_idx),
        &data.y[row_idx..=row_idx],
        data.n_inputs,
        device,
    );
    let loss = bce_with_logits(model.forward(x), y);
    let value = f64::from(loss.clone().into_scalar::<f32>());
    if !value.is_finite() {
        return Err(ModelError::Diverged { what: "loss" });
    }
    grad.clear();
    model.visit(&mut GradExporter {
        grads: loss.backward(),
        values: grad,
    });
    Ok(value)
}

/// One step's sum of clipped per-example gradients, and its noisy release.
///
/// With noise (`z > 0`), the lattice Gaussian: each clipped gradient is snapped to the grid and
/// summed in integers, and [`GradSum::release`] adds discrete Gaussian draws in integers before
/// converting. Without noise, a plain `f64` sum.
struct GradSum {
    lattice: Option<LatticeGaussian>,
    /// The snapped sum in grid steps (with noise).
    steps: Vec<i128>,
    /// The sum (without noise).
    plain: Vec<f64>,
}

impl GradSum {
    fn new(dp: &DpSgdConfig, n_trainable: usize) -> Result<GradSum, ModelError> {
        if dp.noise_multiplier == 0.0 || n_trainable == 0 {
            return Ok(GradSum {
                lattice: None,
                steps: Vec::new(),
                plain: vec![0.0; n_trainable],
            });
        }
        let lattice = LatticeGaussian::new(dp.clip_norm, dp.noise_multiplier, n_trainable)
            .map_err(|e| ModelError::InvalidConfig {
                reason: format!("dp noise: {e}"),
            })?;
        Ok(GradSum {
            lattice: Some(lattice),
            steps: vec![0; n_trainable],
            plain: Vec::new(),
        })
    }

    fn clear(&mut self) {
        self.steps.fill(0);
        self.plain.fill(0.0);
    }

    /// Adds `grad`, scaled down to L2 norm `clip_norm` if it is longer (and snapped to the
    /// grid, with noise).
    fn add_clipped(&mut self, grad: &[f32], clip_norm: f64) {
        let norm = grad
            .iter()
            .map(|&value| f64::from(value).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = if norm > clip_norm {
            clip_norm / norm
        } else {
            1.0
        };
        match &self.lattice {
            Some(lattice) => {
                for (total, &value) in self.steps.iter_mut().zip(grad) {
                    *total += i128::from(lattice.snap(scale * f64::from(value)));
                }
            }
            None => {
                for (total, &value) in self.plain.iter_mut().zip(grad) {
                    *total += scale * f64::from(value);
                }
            }
        }
    }

    /// Writes the noisy sum into `out`: one discrete Gaussian draw per coordinate added in
    /// grid steps, then converted (with noise); the plain sum (without).
    fn release<R: CryptoRng + ?Sized>(&self, rng: &mut R, out: &mut [f64]) {
        match &self.lattice {
            Some(lattice) => {
                for (value, &steps) in out.iter_mut().zip(&self.steps) {
                    *value = lattice.value(steps + i128::from(lattice.sample(rng)));
                }
            }
            None => out.copy_from_slice(&self.plain),
        }
    }
}

/// The flat gradient `grad` of the trainable parameters as burn's per-parameter gradients.
fn gradients_params(model: &Classifier, grad: &[f32]) -> GradientsParams {
    let mut importer = GradImporter {
        values: grad,
        offset: 0,
        device: cpu_device(),
        grads: GradientsParams::new(),
    };
    model.visit(&mut importer);
    debug_assert_eq!(importer.offset, grad.len());
    importer.grads
}

/// A uniform draw in `[0, 1)` with 53 bits of precision.
fn unit_f64<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Appends the gradient of every trainable parameter, in visiting (layout) order; a trainable
/// parameter the loss does not reach gets zeros.
struct GradExporter<'a> {
    grads: Gradients,
    values: &'a mut Vec<f32>,
}

impl ModuleVisitor for GradExporter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        match param.val().grad_remove(&mut self.grads) {
            Some(grad) => {
                let data = grad.into_data_as::<f32>();
                let values = data.as_slice::<f32>().expect("data was converted to f32");
                self.values.extend_from_slice(values);
            }
            None => {
                let len = param.lazy_shape().num_elements();
                self.values.extend(std::iter::repeat_n(0.0, len));
            }
        }
    }
}

/// Registers consecutive slices of a flat gradient for the trainable parameters, in visiting
/// order: the inverse of [`GradExporter`].
struct GradImporter<'a> {
    values: &'a [f32],
    offset: usize,
    device: Device,
    grads: GradientsParams,
}

impl ModuleVisitor for GradImporter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let shape = param.lazy_shape();
        let end = self.offset + shape.num_elements();
        let chunk = self.values[self.offset..end].to_vec();
        self.offset = end;
        let tensor = Tensor::<D>::from_data(TensorData::new(chunk, shape), &self.device);
        self.grads.register(param.id, tensor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn dp(noise_multiplier: f64) -> DpSgdConfig {
        DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier,
            sampling_rate: 1.0,
        }
    }

    #[test]
    fn clipping_scales_long_gradients_only() {
        let mut sum = GradSum::new(&dp(0.0), 2).unwrap();
        let mut out = vec![0.0; 2];
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        sum.add_clipped(&[3.0, 4.0], 1.0);
        sum.release(&mut rng, &mut out);
        assert!((out[0] - 0.6).abs() < 1e-12 && (out[1] - 0.8).abs() < 1e-12);
        sum.add_clipped(&[0.1, -0.1], 1.0);
        sum.release(&mut rng, &mut out);
        assert!((out[0] - 0.7).abs() < 1e-6 && (out[1] - 0.7).abs() < 1e-6);
        sum.add_clipped(&[0.0, 0.0], 1.0);
        sum.release(&mut rng, &mut out);
        assert!(out.iter().all(|value| value.is_finite()));
    }

    #[test]
    fn noisy_sums_are_grid_multiples_that_forget_the_bits_below_the_grid() {
        let lattice = LatticeGaussian::new(1.0, 1.5, 3).unwrap();
        let grid = lattice.grid();
        // Two batches whose gradients differ only below the grid (and not across a rounding
        // boundary), as two neighbouring inputs' low bits would.
        let a = [[0.25f32, -0.125, 0.5], [0.0625, 0.0, -0.25]];
        let below = (grid / 8.0) as f32;
        let b = a.map(|row| row.map(|value| value + below));
        let release = |batch: &[[f32; 3]; 2]| {
            let mut sum = GradSum::new(&dp(1.5), 3).unwrap();
            for grad in batch {
                sum.add_clipped(grad, 1.0);
            }
            let mut out = vec![0.0; 3];
            sum.release(&mut ChaCha20Rng::seed_from_u64(11), &mut out);
            out
        };
        let (ra, rb) = (release(&a), release(&b));
        assert_eq!(ra, rb, "low bits changed the release");
        for value in ra {
            assert_eq!(
                value / grid,
                (value / grid).round(),
                "{value} is off the grid"
            );
        }
        // The noise is there: the release is not the (grid-aligned) plain sum.
        assert_ne!(release(&a), vec![0.3125, -0.125, 0.25]);
    }

    #[test]
    fn noise_the_sampler_cannot_reach_is_a_config_error() {
        assert!(matches!(
            GradSum::new(&dp(1e12), 3),
            Err(ModelError::InvalidConfig { .. })
        ));
    }
}
