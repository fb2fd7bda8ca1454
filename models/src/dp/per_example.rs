//! Per-example gradients of a whole DP-SGD batch from one forward and one backward pass, without
//! autodiff.
//!
//! The network of every [`ModelKind`](crate::ModelKind) is a stack of linear layers,
//! `z_l = a_l W_l + b_l`, with `a_{l+1} = relu(z_l)` between them; the last `z` is the logit. A
//! row's loss is the binary cross-entropy with logits, `ℓ = (1 - y) z - log σ(z)` (as
//! `bce_with_logits` in `train.rs` computes it for a batch of one), so `∂ℓ/∂z = σ(z) - y`.
//! Backpropagation for one row: `δ_last = σ(z) - y`, and `δ_l = (δ_{l+1} W_{l+1}ᵀ) ⊙ [a_{l+1} > 0]`
//! below it (the derivative of burn's ReLU is 1 where its output is positive, 0 elsewhere). The
//! row's gradient for layer `l` is the outer product `a_l ⊗ δ_l` for the weight (shape
//! `[n_in, n_out]`, the flat layout's) and `δ_l` for the bias: exactly what autodiff computes
//! for a batch of that one row.
//!
//! Stacking the batch's rows, `A_l` (`[B, n_in]`) and `Δ_l` (`[B, n_out]`) hold every row's
//! inputs and deltas, so the forward and backward passes are one matrix product per layer for
//! the whole batch. A row's gradient is formed only when asked for ([`BatchGradients::write_example`]),
//! and two quantities need no gradient at all:
//! - its squared L2 norm: per layer `‖a ⊗ δ‖² + ‖δ‖² = ‖δ‖² (‖a‖² + 1)`
//!   ([`BatchGradients::squared_norms`]);
//! - a weighted sum over the rows: per layer `Σ_i c_i a_i ⊗ δ_i = A_lᵀ diag(c) Δ_l` and
//!   `Σ_i c_i δ_i = Δ_lᵀ c` ([`BatchGradients::add_weighted_sum`]).
//!
//! Frozen layers (a prefix, `first_trainable` of them) take part in the forward pass only: no
//! delta is propagated below the first trainable layer.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};

use crate::data::Dataset;
use crate::model::ModelError;

/// The inputs and deltas of every trainable layer for a batch of rows, and each row's loss.
#[derive(Debug)]
pub(super) struct BatchGradients {
    /// Per trainable layer, input side first: the rows' inputs `A_l`, `[B, n_in]`.
    inputs: Vec<Array2<f32>>,
    /// Per trainable layer: the rows' deltas `Δ_l = ∂ℓ/∂z_l`, `[B, n_out]`.
    deltas: Vec<Array2<f32>>,
    /// Each row's loss, in batch order.
    losses: Vec<f64>,
}

impl BatchGradients {
    /// One forward pass of rows `rows` of `data` through the network whose layers have the
    /// `(n_in, n_out)` of `dims` and the flat parameters `params`, and one backward pass down to
    /// layer `first_trainable`.
    ///
    /// Fails on a shape mismatch (which the callers' checks rule out) and with
    /// [`ModelError::Diverged`] when a row's loss is not finite.
    pub(super) fn compute(
        dims: &[(usize, usize)],
        params: &[f32],
        first_trainable: usize,
        data: &Dataset,
        rows: &[usize],
    ) -> Result<BatchGradients, ModelError> {
        let layers = layer_views(dims, params)?;
        let (n_inputs, _) = dims.first().copied().unwrap_or((0, 0));
        if data.n_inputs != n_inputs {
            return Err(ModelError::InputMismatch {
                expected: n_inputs,
                actual: data.n_inputs,
            });
        }
        if first_trainable >= layers.len() {
            return Err(ModelError::InvalidConfig {
                reason: format!(
                    "cannot freeze {first_trainable} of the model's {} layers: at least one must train",
                    layers.len()
                ),
            });
        }

        let mut activation = Array2::<f32>::zeros((rows.len(), n_inputs));
        for (mut out, &row_idx) in activation.rows_mut().into_iter().zip(rows) {
            let row = data
                .x
                .get(row_idx * n_inputs..(row_idx + 1) * n_inputs)
                .ok_or(ModelError::MalformedData {
                    n_inputs,
                    n_rows: data.n_rows(),
                    x_len: data.x.len(),
                })?;
            out.assign(&ArrayView1::from(row));
        }
        let mut labels = Vec::with_capacity(rows.len());
        for &row_idx in rows {
            labels.push(*data.y.get(row_idx).ok_or(ModelError::MalformedData {
                n_inputs,
                n_rows: data.n_rows(),
                x_len: data.x.len(),
            })?);
        }

        // Forward, keeping the inputs of the trainable layers.
        let mut inputs = Vec::with_capacity(layers.len() - first_trainable);
        let mut logits = Array2::<f32>::zeros((rows.len(), 1));
        for (layer_idx, (weight, bias)) in layers.iter().enumerate() {
            let mut z = activation.dot(weight);
            z += bias;
            if layer_idx >= first_trainable {
                inputs.push(activation);
            }
            if layer_idx + 1 == layers.len() {
                logits = z;
                break;
            }
            // burn's ReLU: zero where the input is not positive (NaN stays NaN).
            z.mapv_inplace(|value| if value <= 0.0 { 0.0 } else { value });
            activation = z;
        }

        // The loss and `∂ℓ/∂z` of each row, in f64.
        let mut losses = Vec::with_capacity(rows.len());
        let mut delta = Array2::<f32>::zeros((rows.len(), 1));
        for ((out, &logit), &label) in delta.iter_mut().zip(logits.iter()).zip(&labels) {
            let (z, y) = (f64::from(logit), f64::from(label));
            // (1 - y) z - log σ(z), with -log σ(z) = softplus(-z).
            let loss = (1.0 - y) * z + softplus(-z);
            if !loss.is_finite() {
                return Err(ModelError::Diverged { what: "loss" });
            }
            losses.push(loss);
            *out = (sigmoid(z) - y) as f32;
        }

        // Backward, from the output layer down to the first trainable one.
        let mut deltas = Vec::with_capacity(inputs.len());
        for layer_idx in (first_trainable..layers.len()).rev() {
            let below = if layer_idx > first_trainable {
                let (weight, _) = &layers[layer_idx];
                let mut below = delta.dot(&weight.t());
                // This layer's inputs are relu(z) of the layer below: burn's ReLU passes no
                // gradient where its output is not positive.
                Zip::from(&mut below)
                    .and(&inputs[layer_idx - first_trainable])
                    .for_each(|value, &input| {
                        if input <= 0.0 {
                            *value = 0.0;
                        }
                    });
                Some(below)
            } else {
                None
            };
            deltas.push(delta);
            match below {
                Some(below) => delta = below,
                None => break,
            }
        }
        deltas.reverse();
        Ok(BatchGradients {
            inputs,
            deltas,
            losses,
        })
    }

    /// Rows in the batch.
    pub(super) fn n_examples(&self) -> usize {
        self.losses.len()
    }

    /// Each row's loss, in batch order.
    pub(super) fn losses(&self) -> &[f64] {
        &self.losses
    }

    /// Writes row `example_idx`'s gradient with respect to the trainable parameters into `out`
    /// (cleared first), in the flat layout: per trainable layer, `a ⊗ δ` row-major, then `δ`.
    pub(super) fn write_example(&self, example_idx: usize, out: &mut Vec<f32>) {
        out.clear();
        for (inputs, deltas) in self.inputs.iter().zip(&self.deltas) {
            let delta = deltas.row(example_idx);
            for &input in inputs.row(example_idx) {
                out.extend(delta.iter().map(|&d| input * d));
            }
            out.extend(delta.iter().copied());
        }
    }

    /// Each row's squared gradient norm, `Σ_l ‖δ_l‖² (‖a_l‖² + 1)`, in batch order.
    pub(super) fn squared_norms(&self) -> Vec<f64> {
        let mut norms = vec![0.0f64; self.n_examples()];
        let squared = |values: ArrayView1<f32>| -> f64 {
            values.iter().map(|&value| f64::from(value).powi(2)).sum()
        };
        for (inputs, deltas) in self.inputs.iter().zip(&self.deltas) {
            for ((norm, input), delta) in norms.iter_mut().zip(inputs.rows()).zip(deltas.rows()) {
                *norm += squared(delta) * (squared(input) + 1.0);
            }
        }
        norms
    }

    /// Adds `Σ_i weights[i] g_i` to `out` (the trainable coordinates, flat layout), where `g_i`
    /// is row `i`'s gradient: per layer `A_lᵀ diag(weights) Δ_l` and `Δ_lᵀ weights`, in f64.
    pub(super) fn add_weighted_sum(&self, weights: &[f64], out: &mut [f64]) {
        let weights = ArrayView1::from(weights);
        let mut offset = 0;
        for (inputs, deltas) in self.inputs.iter().zip(&self.deltas) {
            let scaled_inputs = inputs.mapv(f64::from) * weights.insert_axis(Axis(1));
            let deltas = deltas.mapv(f64::from);
            let weight_sum = scaled_inputs.t().dot(&deltas);
            let bias_sum: Array1<f64> = deltas.t().dot(&weights);
            for (total, value) in out[offset..].iter_mut().zip(weight_sum.iter()) {
                *total += value;
            }
            offset += weight_sum.len();
            for (total, value) in out[offset..].iter_mut().zip(bias_sum.iter()) {
                *total += value;
            }
            offset += bias_sum.len();
        }
    }
}

/// A linear layer's weight `[n_in, n_out]` and bias `[n_out]`.
type LayerView<'a> = (ArrayView2<'a, f32>, ArrayView1<'a, f32>);

/// Each layer's weight and bias as views of the flat vector.
fn layer_views<'a>(
    dims: &[(usize, usize)],
    params: &'a [f32],
) -> Result<Vec<LayerView<'a>>, ModelError> {
    let expected: usize = dims.iter().map(|&(n_in, n_out)| n_in * n_out + n_out).sum();
    if params.len() != expected || dims.is_empty() {
        return Err(ModelError::ParamCount {
            expected,
            actual: params.len(),
        });
    }
    let mut rest = params;
    let mut views = Vec::with_capacity(dims.len());
    for &(n_in, n_out) in dims {
        let (weight, after) = rest.split_at(n_in * n_out);
        let (bias, after) = after.split_at(n_out);
        rest = after;
        let weight =
            ArrayView2::from_shape((n_in, n_out), weight).map_err(|_| ModelError::ParamCount {
                expected,
                actual: params.len(),
            })?;
        views.push((weight, ArrayView1::from(bias)));
    }
    Ok(views)
}

/// `ln(1 + e^t)` without overflow.
fn softplus(t: f64) -> f64 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

/// `1 / (1 + e^-z)` without overflow.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}
