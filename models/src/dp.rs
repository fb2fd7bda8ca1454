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
//! # The per-example gradients
//!
//! Each step computes what it needs of every sampled row's gradient from one forward and one
//! backward pass over the whole batch, without autodiff (`dp/per_example.rs`): a linear layer's
//! gradient for one row is the outer product of the row's input to the layer and its
//! backpropagated delta, so both passes are matrix products over the batch. With noise, each
//! row's gradient is then formed on its own, one row at a time, and clipped, snapped and added
//! in grid steps as above. Without noise nothing is snapped, and the clipped sum is formed
//! without forming any row's gradient: each row's norm from the norms of its two vectors, then
//! one weighted matrix product per layer. A row's gradient is the one that an autodiff backward
//! pass on that row alone gives (what this module computed before, and what its tests check
//! it against), up to floating-point rounding, so the guarantee is unchanged.
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

mod per_example;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use harambee_privacy::mechanism::LatticeGaussian;
use rand_core::{CryptoRng, Rng};

use crate::data::Dataset;
use crate::model::{Classifier, ModelError, ModelSpec, cpu_device};
use crate::train::{Optimizer, TrainConfig, TrainReport, check_config, check_model_and_data};
use per_example::BatchGradients;

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
/// gradient of its binary cross-entropy with respect to the trainable parameters (one forward
/// and one backward pass for the whole batch, see the module docs), clips it to L2 norm at most
/// `C`, sums the clipped gradients, adds independent Gaussian noise `N(0, (z C)^2)` to every
/// trainable coordinate, and divides by the expected batch size `q * n`. With
/// `config.proximal_mu > 0` the FedProx gradient `mu (w - w_start)`, which does not depend on the
/// data, is then added unclipped and noiseless. The optimiser (`config.optimizer` at
/// `config.learning_rate`) steps on the result.
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

    let dims = spec.layer_dims();
    let mut grad_sum = GradSum::new(dp, n_trainable)?;
    let mut noisy_sum = vec![0.0f64; n_trainable];
    let mut example_grad = Vec::with_capacity(n_trainable);
    let mut step_grad = vec![0.0f32; n_trainable];
    let mut batch = Vec::with_capacity(n_rows);
    // The model's parameters as the next step sees them.
    let mut current = params.to_vec();
    let mut n_sampled_total = 0u64;
    let (mut last_epoch_loss, mut last_epoch_rows) = (0.0, 0u64);
    for step_idx in 0..steps {
        grad_sum.clear();
        batch.clear();
        for row_idx in 0..n_rows {
            if unit_f64(rng) < dp.sampling_rate {
                batch.push(row_idx);
            }
        }
        if !batch.is_empty() {
            n_sampled_total += batch.len() as u64;
            let grads =
                BatchGradients::compute(&dims, &current, config.frozen_layers, data, &batch)?;
            if step_idx >= last_epoch_start {
                for loss in grads.losses() {
                    last_epoch_loss += loss;
                    last_epoch_rows += 1;
                }
            }
            grad_sum.add_batch(&grads, dp.clip_norm, &mut example_grad);
        }
        grad_sum.release(rng, &mut noisy_sum);
        for (coord_idx, (grad, sum)) in step_grad.iter_mut().zip(&noisy_sum).enumerate() {
            let mut value = sum / expected_batch_size;
            if config.proximal_mu > 0.0 {
                let at = n_frozen + coord_idx;
                value += config.proximal_mu * f64::from(current[at] - start[coord_idx]);
            }
            *grad = value as f32;
        }
        if step_grad.iter().any(|value| !value.is_finite()) {
            return Err(ModelError::Diverged { what: "gradient" });
        }
        let grads = gradients_params(&model, &step_grad);
        model = optimizer.step(config.learning_rate, model, grads);
        current = model.to_params();
    }

    let params = current;
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

pub(crate) fn check_dp_config(dp: &DpSgdConfig) -> Result<(), ModelError> {
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

/// One step's sum of clipped per-example gradients, and its noisy release.
///
/// With noise (`z > 0`), the lattice Gaussian: each clipped gradient is snapped to the grid and
/// summed in integers, and [`GradSum::release`] adds discrete Gaussian draws in integers before
/// converting. Without noise, a plain `f64` sum.
pub(crate) struct GradSum {
    lattice: Option<LatticeGaussian>,
    /// The snapped sum in grid steps (with noise).
    steps: Vec<i128>,
    /// The sum (without noise).
    plain: Vec<f64>,
}

impl GradSum {
    pub(crate) fn new(dp: &DpSgdConfig, n_trainable: usize) -> Result<GradSum, ModelError> {
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

    pub(crate) fn clear(&mut self) {
        self.steps.fill(0);
        self.plain.fill(0.0);
    }

    /// Adds every per-example gradient of `batch`, each clipped to L2 norm `clip_norm`.
    ///
    /// With noise, each clipped gradient is snapped to the grid on its own, as the sensitivity
    /// argument requires: it is formed in `scratch`, one example at a time, and added by
    /// [`GradSum::add_clipped`]. Without noise nothing is snapped, and the clipped sum is formed
    /// without any per-example gradient: the clip factors from the norms
    /// ([`BatchGradients::squared_norms`]), then one weighted sum per layer
    /// ([`BatchGradients::add_weighted_sum`]).
    fn add_batch(&mut self, batch: &BatchGradients, clip_norm: f64, scratch: &mut Vec<f32>) {
        if self.lattice.is_some() {
            for example_idx in 0..batch.n_examples() {
                batch.write_example(example_idx, scratch);
                self.add_clipped(scratch, clip_norm);
            }
        } else {
            let scales: Vec<f64> = batch
                .squared_norms()
                .into_iter()
                .map(|squared| clip_scale(squared.sqrt(), clip_norm))
                .collect();
            batch.add_weighted_sum(&scales, &mut self.plain);
        }
    }

    /// Adds `grad`, scaled down to L2 norm `clip_norm` if it is longer (and snapped to the
    /// grid, with noise).
    pub(crate) fn add_clipped(&mut self, grad: &[f32], clip_norm: f64) {
        let norm = grad
            .iter()
            .map(|&value| f64::from(value).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = clip_scale(norm, clip_norm);
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
    pub(crate) fn release<R: CryptoRng + ?Sized>(&self, rng: &mut R, out: &mut [f64]) {
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

/// The factor that scales a gradient of L2 norm `norm` to at most `clip_norm`.
fn clip_scale(norm: f64, clip_norm: f64) -> f64 {
    if norm > clip_norm {
        clip_norm / norm
    } else {
        1.0
    }
}

/// The flat gradient `grad` of the trainable parameters of `model` (those that require
/// gradients, in visiting order) as burn's per-parameter gradients.
pub(crate) fn gradients_params<M: Module>(model: &M, grad: &[f32]) -> GradientsParams {
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
pub(crate) fn unit_f64<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Registers consecutive slices of a flat gradient for the trainable parameters, in visiting
/// order (the flat layout's).
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

    use std::ops::Range;
    use std::path::Path;

    use burn::tensor::Gradients;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use crate::model::ModelKind;
    use crate::train::{batch_tensors, bce_with_logits, train};
    use crate::{load_csv, presets};

    /// The reference the batched gradients are checked against, and what `train_dp` computed
    /// before them: one burn autodiff backward pass for row `row_idx` alone. Writes the
    /// gradient of its loss with respect to the trainable parameters of `model` into `grad`
    /// (flat layout, trainable suffix) and returns the loss.
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

    /// The bundled heart-disease table, encoded by its federation schema.
    fn heart() -> Dataset {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart_disease_uci_4sites.csv");
        load_csv(&path, &presets::heart_disease()).unwrap()
    }

    /// A batch of 43 rows from all four hospitals (Cleveland 0..303, Hungary 303..597,
    /// Switzerland 597..720, VA Long Beach 720..920), out of order.
    fn batch_rows() -> Vec<usize> {
        let mut rows: Vec<usize> = (0..920).step_by(23).collect();
        rows.extend([919, 5, 600]);
        rows
    }

    /// A model, its parameters and its frozen layers.
    struct Case {
        spec: ModelSpec,
        params: Vec<f32>,
        frozen_layers: usize,
    }

    impl Case {
        fn name(&self) -> String {
            format!(
                "{} {:?}, {} frozen",
                self.spec.kind.name(),
                self.spec.kind.hidden(),
                self.frozen_layers
            )
        }

        fn n_trainable(&self) -> usize {
            self.spec.n_params() - self.spec.layers_len(self.frozen_layers)
        }

        fn batch(&self, data: &Dataset, rows: &[usize]) -> BatchGradients {
            BatchGradients::compute(
                &self.spec.layer_dims(),
                &self.params,
                self.frozen_layers,
                data,
                rows,
            )
            .unwrap()
        }

        /// Each row's loss and gradient, one autodiff backward pass per row.
        fn reference(&self, data: &Dataset, rows: &[usize]) -> Vec<(f64, Vec<f32>)> {
            let device = cpu_device().autodiff();
            let n_frozen = self.spec.layers_len(self.frozen_layers);
            let model = Classifier::from_params_frozen(&self.spec, &self.params, &device, n_frozen)
                .unwrap();
            rows.iter()
                .map(|&row_idx| {
                    let mut grad = Vec::new();
                    let loss = example_gradient(&model, data, row_idx, &device, &mut grad).unwrap();
                    (loss, grad)
                })
                .collect()
        }
    }

    /// Logistic regression; an MLP with two hidden layers, at its initial parameters and after
    /// some training, with none, one or two layers frozen; FedPer's network with its body
    /// frozen (local fine-tuning of the head).
    fn cases(data: &Dataset) -> Vec<Case> {
        let n_inputs = data.n_inputs;
        let spec = |kind| ModelSpec { kind, n_inputs };
        let mlp = spec(ModelKind::Mlp {
            hidden: vec![16, 8],
        });
        let trained = train(
            &mlp,
            &mlp.init_params(2),
            data,
            &TrainConfig {
                epochs: 3,
                batch_size: 32,
                learning_rate: 0.01,
                optimizer: Optimizer::Adam,
                seed: 1,
                proximal_mu: 0.0,
                frozen_layers: 0,
            },
        )
        .unwrap()
        .params;
        let logistic = spec(ModelKind::LogisticRegression);
        let personalized = spec(ModelKind::Personalized { hidden: vec![8] });
        vec![
            Case {
                params: logistic.init_params(1),
                spec: logistic,
                frozen_layers: 0,
            },
            Case {
                params: mlp.init_params(2),
                spec: mlp.clone(),
                frozen_layers: 0,
            },
            Case {
                params: trained.clone(),
                spec: mlp.clone(),
                frozen_layers: 0,
            },
            Case {
                params: trained.clone(),
                spec: mlp.clone(),
                frozen_layers: 1,
            },
            Case {
                params: trained,
                spec: mlp,
                frozen_layers: 2,
            },
            Case {
                params: personalized.init_params(3),
                spec: personalized,
                frozen_layers: 1,
            },
        ]
    }

    /// `|actual - expected| <= RELATIVE * |expected|` for every coordinate, where the relative
    /// tolerance is taken against the larger of the coordinate and a millionth of the row's
    /// largest coordinate (an exact zero of one side is rounding noise on the other).
    fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
        const RELATIVE: f32 = 1e-5;
        assert_eq!(actual.len(), expected.len(), "{what}");
        let largest = expected
            .iter()
            .fold(0.0f32, |max, value| max.max(value.abs()));
        for (idx, (a, e)) in actual.iter().zip(expected).enumerate() {
            let scale = e.abs().max(largest * 1e-6);
            assert!(
                (a - e).abs() <= RELATIVE * scale,
                "{what}: coordinate {idx}: {a} vs {e}"
            );
        }
    }

    #[test]
    fn batched_per_example_gradients_equal_one_backward_pass_per_row() {
        let data = heart();
        let rows = batch_rows();
        for case in cases(&data) {
            let what = case.name();
            let batch = case.batch(&data, &rows);
            let reference = case.reference(&data, &rows);
            assert_eq!(batch.n_examples(), rows.len());
            let norms = batch.squared_norms();
            let mut grad = Vec::new();
            // Where the hidden layers' bias gradients (their deltas) sit in the trainable suffix.
            let n_frozen = case.spec.layers_len(case.frozen_layers);
            let hidden_biases: Vec<Range<usize>> = (case.frozen_layers..case.spec.n_layers() - 1)
                .map(|layer_idx| {
                    let end = case.spec.layers_len(layer_idx + 1) - n_frozen;
                    end - case.spec.layer_dims()[layer_idx].1..end
                })
                .collect();
            let mut n_switched_off = 0;
            for (example_idx, (loss, expected)) in reference.iter().enumerate() {
                let what = format!("{what}, row {}", rows[example_idx]);
                assert_eq!(expected.len(), case.n_trainable(), "{what}");
                batch.write_example(example_idx, &mut grad);
                assert_close(&grad, expected, &what);
                n_switched_off += hidden_biases
                    .iter()
                    .flat_map(|range| &expected[range.clone()])
                    .filter(|&&delta| delta == 0.0)
                    .count();
                let batched_loss = batch.losses()[example_idx];
                assert!(
                    (batched_loss - loss).abs() <= 1e-5 * loss.abs(),
                    "{what}: loss {batched_loss} vs {loss}"
                );
                let direct: f64 = expected.iter().map(|&v| f64::from(v).powi(2)).sum();
                assert!(
                    (norms[example_idx] - direct).abs() <= 1e-5 * direct,
                    "{what}: squared norm {} vs {direct}",
                    norms[example_idx]
                );
            }
            // Where a trainable hidden layer exists, its ReLU switched units off for some rows:
            // the masks were exercised.
            assert_eq!(
                n_switched_off > 0,
                !hidden_biases.is_empty(),
                "{what}: {n_switched_off} hidden units off"
            );
        }
    }

    #[test]
    fn clipped_sums_equal_the_sum_of_individually_clipped_reference_gradients() {
        let data = heart();
        let rows = batch_rows();
        for case in cases(&data) {
            let what = case.name();
            let batch = case.batch(&data, &rows);
            let reference = case.reference(&data, &rows);
            let n_trainable = case.n_trainable();
            // C at the median norm: about half the rows are clipped.
            let mut norms: Vec<f64> = reference
                .iter()
                .map(|(_, g)| g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
                .collect();
            norms.sort_by(f64::total_cmp);
            let clip_norm = norms[norms.len() / 2];
            assert!(
                norms[0] < clip_norm && clip_norm < norms[norms.len() - 1],
                "{what}"
            );

            // Without noise: clip factors from the norm trick and one weighted sum per layer,
            // against the f64 sum of the clipped reference gradients. The tolerance is
            // relative to the sum of the terms' magnitudes.
            let config = |noise_multiplier| DpSgdConfig {
                clip_norm,
                noise_multiplier,
                sampling_rate: 1.0,
            };
            let mut batched = GradSum::new(&config(0.0), n_trainable).unwrap();
            batched.add_batch(&batch, clip_norm, &mut Vec::new());
            let mut one_by_one = GradSum::new(&config(0.0), n_trainable).unwrap();
            let mut magnitude = vec![0.0f64; n_trainable];
            for (_, grad) in &reference {
                one_by_one.add_clipped(grad, clip_norm);
                let norm = grad
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let scale = clip_scale(norm, clip_norm);
                for (total, &value) in magnitude.iter_mut().zip(grad) {
                    *total += scale * f64::from(value).abs();
                }
            }
            for (idx, ((a, e), m)) in batched
                .plain
                .iter()
                .zip(&one_by_one.plain)
                .zip(&magnitude)
                .enumerate()
            {
                assert!(
                    (a - e).abs() <= 1e-5 * m,
                    "{what}: coordinate {idx}: {a} vs {e} (terms {m})"
                );
            }

            // With noise: every clipped gradient snapped on the grid and summed in grid steps.
            // A row's snapped value may differ by one step where the two gradients straddle a
            // rounding boundary.
            let mut batched = GradSum::new(&config(1.0), n_trainable).unwrap();
            batched.add_batch(&batch, clip_norm, &mut Vec::new());
            let mut one_by_one = GradSum::new(&config(1.0), n_trainable).unwrap();
            for (_, grad) in &reference {
                one_by_one.add_clipped(grad, clip_norm);
            }
            let grid = batched.lattice.as_ref().unwrap().grid();
            for (idx, ((a, e), m)) in batched
                .steps
                .iter()
                .zip(&one_by_one.steps)
                .zip(&magnitude)
                .enumerate()
            {
                let tolerance = 1e-5 * m / grid + rows.len() as f64;
                assert!(
                    ((a - e) as f64).abs() <= tolerance,
                    "{what}: coordinate {idx}: {a} vs {e} grid steps"
                );
            }
            // The grid is fine enough for that slack to be small against the sums.
            let largest = one_by_one.steps.iter().map(|steps| steps.abs()).max();
            assert!(
                largest > Some(1000 * rows.len() as i128),
                "{what}: {largest:?}"
            );
        }
    }
}
