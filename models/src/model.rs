//! Binary classifiers as burn modules, exchanged as flat `f32` parameter vectors.
//!
//! A [`ModelSpec`] describes the architecture; the federation only ever moves the flat vector.
//! Its layout is the declaration order of the burn module's float parameters, as visited by a
//! [`ModuleVisitor`]: for each linear layer in turn, the weight matrix `[n_in, n_out]` in
//! row-major order, then the bias `[n_out]`.
//!
//! Personalization (FedPer, Arivazhagan et al. 2019): for [`ModelKind::Personalized`] the body
//! (every layer but the last) is federated and each facility keeps its own head (the last layer).
//! Because the head is the last layer, the federated part is a prefix of the flat vector, of
//! length [`ModelSpec::shared_len`]; [`ModelSpec::split_params`], [`ModelSpec::join_params`] and
//! [`ModelSpec::shared_update`] cut and paste along that boundary. A [`ModelKind::MinilmLora`]
//! whose task asks for local heads ([`crate::text::TextTask::local_head`]) is cut the same way:
//! its adapters come first in the flat vector and are the federated prefix, its classification
//! head is the facility's own.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::rng::SplitMix64;

/// Architecture family.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ModelKind {
    /// One linear layer to a single logit.
    LogisticRegression,
    /// Linear + ReLU per hidden layer (widths in `hidden`), then linear to a single logit.
    Mlp {
        /// Width of each hidden layer, input side first.
        hidden: Vec<usize>,
    },
    /// The same network as [`ModelKind::Mlp`], but only its body (the hidden layers) is
    /// federated; the output layer is the facility's own head and never leaves it (FedPer).
    /// Needs at least one hidden layer.
    Personalized {
        /// Width of each hidden layer, input side first.
        hidden: Vec<usize>,
    },
    /// A pretrained text encoder (all-MiniLM-L6-v2, frozen, pinned by its SHA-256) with LoRA
    /// adapters and a classification head: the flat vector is the adapters and the head
    /// ([`crate::text::lora`]), trained by [`crate::text::train`], never by
    /// [`crate::train::train`]. `n_inputs` is 0.
    MinilmLora {
        /// Base model, columns, classes and adapters.
        text: Box<crate::text::TextTask>,
    },
}

impl ModelKind {
    /// The kind's name in configuration files, on the wire and in checkpoints:
    /// `logistic_regression`, `mlp`, `personalized` or `minilm_lora`.
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::LogisticRegression => "logistic_regression",
            ModelKind::Mlp { .. } => "mlp",
            ModelKind::Personalized { .. } => "personalized",
            ModelKind::MinilmLora { .. } => "minilm_lora",
        }
    }

    /// The text task of a [`ModelKind::MinilmLora`].
    pub fn text(&self) -> Option<&crate::text::TextTask> {
        match self {
            ModelKind::MinilmLora { text } => Some(text),
            _ => None,
        }
    }

    /// Widths of the hidden layers, input side first (empty for logistic regression and text
    /// models).
    pub fn hidden(&self) -> &[usize] {
        match self {
            ModelKind::LogisticRegression | ModelKind::MinilmLora { .. } => &[],
            ModelKind::Mlp { hidden } | ModelKind::Personalized { hidden } => hidden,
        }
    }

    /// The kind called `name` (see [`ModelKind::name`]) with the given hidden widths. Logistic
    /// regression takes no hidden layers.
    pub fn from_name(name: &str, hidden: Vec<usize>) -> Result<ModelKind, ModelError> {
        let kind = match name {
            "logistic_regression" if hidden.is_empty() => ModelKind::LogisticRegression,
            "logistic_regression" => {
                return Err(ModelError::InvalidSpec {
                    reason: "logistic_regression takes no hidden layers".to_owned(),
                });
            }
            "mlp" => ModelKind::Mlp { hidden },
            "personalized" => ModelKind::Personalized { hidden },
            "minilm_lora" => {
                return Err(ModelError::InvalidSpec {
                    reason: "minilm_lora needs its text task (base model, columns, classes)"
                        .to_owned(),
                });
            }
            other => {
                return Err(ModelError::InvalidSpec {
                    reason: format!("unknown model kind {other:?}"),
                });
            }
        };
        Ok(kind)
    }
}

/// A concrete architecture: kind and number of inputs. The output is one logit; the predicted
/// probability of the positive class is its sigmoid.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Architecture family.
    pub kind: ModelKind,
    /// Inputs per row, [`crate::data::Schema::n_inputs`].
    pub n_inputs: usize,
}

impl ModelSpec {
    /// Length of the flat parameter vector.
    pub fn n_params(&self) -> usize {
        if let Some(text) = self.kind.text() {
            return text.classifier().n_params();
        }
        self.layer_dims()
            .iter()
            .map(|&(n_in, n_out)| n_in * n_out + n_out)
            .sum()
    }

    /// [`ModelSpec::n_params`], or `None` when it overflows a `usize`: check it first on a
    /// spec whose layer sizes came from someone else (the coordinator's task).
    pub fn checked_n_params(&self) -> Option<usize> {
        if let Some(text) = self.kind.text() {
            // Sizes are bounded by the task's check (rank, classes) and the fixed encoder.
            return text.check().ok().map(|()| text.classifier().n_params());
        }
        self.layer_dims()
            .iter()
            .try_fold(0usize, |sum, &(n_in, n_out)| {
                n_in.checked_mul(n_out)?
                    .checked_add(n_out)?
                    .checked_add(sum)
            })
    }

    /// Deterministic initial parameters for `seed`: every weight and bias drawn uniformly from
    /// `(-k, k)` with `k = 1 / sqrt(n_in)` of its layer (burn's and PyTorch's default scheme),
    /// using a version-stable generator so every party derives the same vector from the seed.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        if let Some(text) = self.kind.text() {
            // Adapters as PEFT starts them (B = 0: the pretrained encoder) and a random head.
            return text.classifier().init_params(seed);
        }
        let mut rng = SplitMix64::new(seed);
        let mut params = Vec::with_capacity(self.n_params());
        for (n_in, n_out) in self.layer_dims() {
            let bound = 1.0 / (n_in.max(1) as f64).sqrt();
            params.extend(
                (0..n_in * n_out + n_out).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32),
            );
        }
        params
    }

    /// Length of the federated prefix of the flat vector: everything but the head for
    /// [`ModelKind::Personalized`], the adapters for a [`ModelKind::MinilmLora`] with local heads
    /// ([`crate::text::TextTask::local_head`]), the whole vector ([`ModelSpec::n_params`])
    /// otherwise. An agent uploads only `params[..shared_len]` (as an update, see
    /// [`ModelSpec::shared_update`]).
    pub fn shared_len(&self) -> usize {
        match &self.kind {
            ModelKind::MinilmLora { text } if text.local_head => text.classifier().adapter_len(),
            ModelKind::Personalized { .. } => {
                let head = self
                    .layer_dims()
                    .last()
                    .map_or(0, |&(n_in, n_out)| n_in * n_out + n_out);
                self.n_params() - head
            }
            ModelKind::LogisticRegression
            | ModelKind::Mlp { .. }
            | ModelKind::MinilmLora { .. } => self.n_params(),
        }
    }

    /// Number of linear layers (hidden layers plus the output layer); 0 for a text model.
    pub fn n_layers(&self) -> usize {
        self.layer_dims().len()
    }

    /// `(n_in, n_out)` of each linear layer, input side first. Layer `i`'s weight has shape
    /// `[n_in, n_out]` and its bias `[n_out]`. Empty for a text model.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        if self.kind.text().is_some() {
            return Vec::new();
        }
        let widths: Vec<usize> = std::iter::once(self.n_inputs)
            .chain(self.kind.hidden().iter().copied())
            .chain(std::iter::once(1))
            .collect();
        widths.windows(2).map(|pair| (pair[0], pair[1])).collect()
    }

    /// Number of parameters in the first `n_layers` layers, i.e. the flat offset where layer
    /// `n_layers` starts (clamped to the number of layers).
    pub fn layers_len(&self, n_layers: usize) -> usize {
        self.layer_dims()
            .iter()
            .take(n_layers)
            .map(|&(n_in, n_out)| n_in * n_out + n_out)
            .sum()
    }

    /// Splits a full parameter vector into its federated part and the facility's head:
    /// `(params[..shared_len], params[shared_len..])`. The head is empty unless the kind is
    /// [`ModelKind::Personalized`] or a [`ModelKind::MinilmLora`] with local heads.
    pub fn split_params<'a>(
        &self,
        params: &'a [f32],
    ) -> Result<(&'a [f32], &'a [f32]), ModelError> {
        self.check_len(params.len())?;
        Ok(params.split_at(self.shared_len()))
    }

    /// The full parameter vector made of a federated part and a head, e.g. the latest global
    /// body and this facility's own head.
    pub fn join_params(&self, shared: &[f32], head: &[f32]) -> Result<Vec<f32>, ModelError> {
        let shared_len = self.shared_len();
        if shared.len() != shared_len {
            return Err(ModelError::ParamCount {
                expected: shared_len,
                actual: shared.len(),
            });
        }
        let head_len = self.n_params() - shared_len;
        if head.len() != head_len {
            return Err(ModelError::ParamCount {
                expected: head_len,
                actual: head.len(),
            });
        }
        Ok([shared, head].concat())
    }

    /// The update an agent uploads after training from `base` to `trained` (both full vectors):
    /// `trained[i] - base[i]` for the federated prefix only, `shared_len` values. No value of the
    /// head enters it.
    pub fn shared_update(&self, trained: &[f32], base: &[f32]) -> Result<Vec<f32>, ModelError> {
        let (trained, _) = self.split_params(trained)?;
        let (base, _) = self.split_params(base)?;
        Ok(trained.iter().zip(base).map(|(t, b)| t - b).collect())
    }

    fn check_len(&self, len: usize) -> Result<(), ModelError> {
        let expected = self.n_params();
        if len != expected {
            return Err(ModelError::ParamCount {
                expected,
                actual: len,
            });
        }
        Ok(())
    }

    /// Rejects architectures with a zero-width layer.
    pub(crate) fn check(&self) -> Result<(), ModelError> {
        if self.kind.text().is_some() {
            return Err(ModelError::InvalidSpec {
                reason: "a minilm_lora model trains and evaluates with harambee_models::text"
                    .to_owned(),
            });
        }
        if self.n_inputs == 0 {
            return Err(ModelError::InvalidSpec {
                reason: "zero inputs".to_owned(),
            });
        }
        if self.kind.hidden().contains(&0) {
            return Err(ModelError::InvalidSpec {
                reason: "a hidden layer has width 0".to_owned(),
            });
        }
        if let ModelKind::Personalized { hidden } = &self.kind
            && hidden.is_empty()
        {
            return Err(ModelError::InvalidSpec {
                reason: "a personalized model needs at least one hidden layer (its body)"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// Errors from building, training or evaluating a model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// The architecture cannot be built.
    #[error("invalid model spec: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// The flat parameter vector has the wrong length for the spec.
    #[error("expected {expected} parameters, got {actual}")]
    ParamCount {
        /// `ModelSpec::n_params`.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A parameter is NaN or infinite.
    #[error("parameter {index} is not finite")]
    NonFiniteParam {
        /// Position in the flat vector.
        index: usize,
    },
    /// The dataset has no rows.
    #[error("dataset has no rows")]
    EmptyData,
    /// The dataset's width differs from the model's.
    #[error("model expects {expected} inputs, dataset has {actual}")]
    InputMismatch {
        /// `ModelSpec::n_inputs`.
        expected: usize,
        /// `Dataset::n_inputs`.
        actual: usize,
    },
    /// The dataset's buffers disagree with its declared shape.
    #[error("malformed dataset: {x_len} input values for {n_rows} rows of {n_inputs} inputs")]
    MalformedData {
        /// Declared inputs per row.
        n_inputs: usize,
        /// Rows (labels).
        n_rows: usize,
        /// Length of the input buffer.
        x_len: usize,
    },
    /// The training configuration is unusable.
    #[error("invalid training config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// Training produced a non-finite loss or parameters (learning rate too high?).
    #[error("training diverged: {what} is not finite")]
    Diverged {
        /// The quantity that blew up.
        what: &'static str,
    },
}

/// The burn module behind every [`ModelKind`]: linear layers with ReLU in between.
#[derive(Module, Debug)]
pub(crate) struct Classifier {
    layers: Vec<Linear>,
}

impl Classifier {
    /// Builds the module for `spec` on `device` and loads `params` into it, after checking the
    /// spec, the length and the finiteness of `params`. On an autodiff device every parameter is
    /// marked as requiring gradients.
    pub(crate) fn from_params(
        spec: &ModelSpec,
        params: &[f32],
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::from_params_frozen(spec, params, device, 0)
    }

    /// Like [`Classifier::from_params`], but the parameters that start before flat offset
    /// `n_frozen` are constants: not marked as requiring gradients, so no optimiser step moves
    /// them. With `n_frozen >= params.len()` the whole module is constant.
    pub(crate) fn from_params_frozen(
        spec: &ModelSpec,
        params: &[f32],
        device: &Device,
        n_frozen: usize,
    ) -> Result<Self, ModelError> {
        spec.check()?;
        let expected = spec.n_params();
        if params.len() != expected {
            return Err(ModelError::ParamCount {
                expected,
                actual: params.len(),
            });
        }
        if let Some(index) = params.iter().position(|value| !value.is_finite()) {
            return Err(ModelError::NonFiniteParam { index });
        }
        // The layers are lazily initialised: the mapper replaces each parameter before any
        // random initialisation runs.
        let skeleton = Classifier {
            layers: spec
                .layer_dims()
                .into_iter()
                .map(|(n_in, n_out)| LinearConfig::new(n_in, n_out).init(device))
                .collect(),
        };
        debug_assert_eq!(skeleton.num_params(), expected);
        let mut importer = Importer {
            values: params,
            offset: 0,
            require_grad: device.is_autodiff(),
            n_frozen,
        };
        let model = skeleton.map(&mut importer);
        if importer.offset != expected {
            // Unreachable while `n_params` mirrors the module, but never load a partial vector.
            return Err(ModelError::ParamCount {
                expected: importer.offset,
                actual: params.len(),
            });
        }
        Ok(model)
    }

    /// The flat parameter vector, in declaration order.
    pub(crate) fn to_params(&self) -> Vec<f32> {
        let mut exporter = Exporter {
            values: Vec::with_capacity(self.num_params()),
        };
        self.visit(&mut exporter);
        exporter.values
    }

    /// Logits `[n_rows, 1]` for inputs `[n_rows, n_inputs]`.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let (last, hidden) = self
            .layers
            .split_last()
            .expect("a classifier has an output layer");
        let x = hidden.iter().fold(x, |x, layer| relu(layer.forward(x)));
        last.forward(x)
    }

    /// Squared Euclidean distance between the parameters of `self` and `other` (same
    /// architecture), as a differentiable scalar `[1]`.
    pub(crate) fn squared_distance(&self, other: &Classifier) -> Tensor<1> {
        let mut terms = Vec::with_capacity(2 * self.layers.len());
        for (layer, base) in self.layers.iter().zip(&other.layers) {
            terms.push(
                (layer.weight.val() - base.weight.val())
                    .powi_scalar(2)
                    .sum(),
            );
            if let (Some(bias), Some(base_bias)) = (&layer.bias, &base.bias) {
                terms.push((bias.val() - base_bias.val()).powi_scalar(2).sum());
            }
        }
        Tensor::cat(terms, 0).sum()
    }
}

/// Copies float parameters out of a module, in visiting (declaration) order.
struct Exporter {
    values: Vec<f32>,
}

impl ModuleVisitor for Exporter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data_as::<f32>();
        let values = data.as_slice::<f32>().expect("data was converted to f32");
        self.values.extend_from_slice(values);
    }
}

/// Replaces float parameters with consecutive slices of a flat vector, in visiting order.
///
/// A tensor rebuilt from data is a fresh autodiff leaf: it must be marked `require_grad` again or
/// the optimiser gets no gradient for it.
struct Importer<'a> {
    values: &'a [f32],
    offset: usize,
    require_grad: bool,
    /// Parameters starting before this offset stay constants (frozen).
    n_frozen: usize,
}

impl ModuleMapper for Importer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let end = self.offset + shape.num_elements();
        let Some(chunk) = self.values.get(self.offset..end) else {
            // Too short: leave the parameter and let the caller see the offset mismatch.
            self.offset = usize::MAX;
            return param;
        };
        let frozen = self.offset < self.n_frozen;
        self.offset = end;
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(chunk.to_vec(), shape), &device);
        let tensor = if self.require_grad && !frozen {
            tensor.require_grad()
        } else {
            tensor
        };
        Param::initialized(param.id, tensor)
    }
}

/// The plain (inference) CPU device.
#[allow(deprecated)] // burn 0.22 deprecates ndarray in favour of flex; the workspace enables ndarray.
pub(crate) fn cpu_device() -> Device {
    Device::ndarray()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ModelSpec> {
        vec![
            ModelSpec {
                kind: ModelKind::LogisticRegression,
                n_inputs: 5,
            },
            ModelSpec {
                kind: ModelKind::Mlp { hidden: vec![8] },
                n_inputs: 5,
            },
            ModelSpec {
                kind: ModelKind::Mlp { hidden: vec![7, 3] },
                n_inputs: 4,
            },
        ]
    }

    /// Found by `fuzz/fuzz_targets/wire_convert.rs`: a task's hidden sizes overflowed it.
    #[test]
    fn checked_n_params_is_none_when_the_count_overflows() {
        for spec in specs() {
            assert_eq!(spec.checked_n_params(), Some(spec.n_params()));
        }
        let huge = ModelSpec {
            kind: ModelKind::Mlp {
                hidden: vec![usize::MAX / 2, 4],
            },
            n_inputs: 3,
        };
        assert_eq!(huge.checked_n_params(), None);
    }

    #[test]
    fn n_params_matches_the_burn_module() {
        let expected = [5 + 1, 5 * 8 + 8 + 8 + 1, 4 * 7 + 7 + 7 * 3 + 3 + 3 + 1];
        for (spec, expected) in specs().iter().zip(expected) {
            assert_eq!(spec.n_params(), expected);
            let model = Classifier::from_params(spec, &spec.init_params(1), &cpu_device()).unwrap();
            assert_eq!(model.num_params(), expected);
        }
    }

    #[test]
    fn flat_params_round_trip_exactly_on_both_devices() {
        for spec in specs() {
            let params = spec.init_params(3);
            for device in [cpu_device(), cpu_device().autodiff()] {
                let model = Classifier::from_params(&spec, &params, &device).unwrap();
                assert_eq!(model.to_params(), params, "{spec:?}");
            }
        }
    }

    #[test]
    fn layout_is_weight_row_major_then_bias() {
        // Logistic regression on 2 inputs: params [w0, w1, b].
        let spec = ModelSpec {
            kind: ModelKind::LogisticRegression,
            n_inputs: 2,
        };
        let model = Classifier::from_params(&spec, &[2.0, -3.0, 0.5], &cpu_device()).unwrap();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 1.0, 0.0, 2.0], [2, 2]),
            &cpu_device(),
        );
        let logits = model.forward(x).into_data_as::<f32>();
        assert_eq!(
            logits.as_slice::<f32>().unwrap(),
            &[2.0 - 3.0 + 0.5, -6.0 + 0.5]
        );

        // MLP 2 -> 2 -> 1: first weight [[1, 2], [3, 4]] means x0 feeds (1, 2) and x1 feeds (3, 4).
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![2] },
            n_inputs: 2,
        };
        let params = [1.0, 2.0, 3.0, 4.0, 0.0, -100.0, 1.0, 1.0, 0.25];
        let model = Classifier::from_params(&spec, &params, &cpu_device()).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &cpu_device());
        let logit = model.forward(x).into_data_as::<f32>();
        // Hidden = relu([1, 2] + [0, -100]) = [1, 0]; output = 1 + 0 + 0.25.
        assert_eq!(logit.as_slice::<f32>().unwrap(), &[1.25]);
    }

    #[test]
    fn init_params_is_deterministic_and_bounded() {
        for spec in specs() {
            let params = spec.init_params(11);
            assert_eq!(params.len(), spec.n_params());
            assert_eq!(params, spec.init_params(11));
            assert_ne!(params, spec.init_params(12));
            let bound = 1.0 / (spec.n_inputs as f32).sqrt();
            assert!(params[..spec.n_inputs].iter().all(|p| p.abs() <= bound));
        }
    }

    #[test]
    fn bad_params_are_rejected() {
        let spec = &specs()[1];
        let params = spec.init_params(0);
        let device = cpu_device();
        for len in [0, params.len() - 1, params.len() + 1] {
            let mut wrong = params.clone();
            wrong.resize(len, 0.0);
            assert_eq!(
                Classifier::from_params(spec, &wrong, &device).unwrap_err(),
                ModelError::ParamCount {
                    expected: params.len(),
                    actual: len
                }
            );
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut wrong = params.clone();
            wrong[17] = bad;
            assert_eq!(
                Classifier::from_params(spec, &wrong, &device).unwrap_err(),
                ModelError::NonFiniteParam { index: 17 }
            );
        }
        let zero_width = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![4, 0] },
            n_inputs: 3,
        };
        assert!(matches!(
            Classifier::from_params(&zero_width, &[], &device),
            Err(ModelError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn personalized_shares_everything_but_the_head() {
        let spec = ModelSpec {
            kind: ModelKind::Personalized { hidden: vec![8, 4] },
            n_inputs: 5,
        };
        // Body: 5*8 + 8 + 8*4 + 4 = 84; head: 4 + 1 = 5.
        assert_eq!(spec.n_params(), 89);
        assert_eq!(spec.shared_len(), 84);
        assert_eq!(spec.n_layers(), 3);
        assert_eq!(spec.layers_len(2), 84);
        assert_eq!(spec.layers_len(9), 89);
        // The same network as the MLP, which shares everything.
        let mlp = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![8, 4] },
            n_inputs: 5,
        };
        assert_eq!(mlp.n_params(), 89);
        assert_eq!(mlp.shared_len(), 89);
        let params = spec.init_params(4);
        assert_eq!(params, mlp.init_params(4));
        let model = Classifier::from_params(&spec, &params, &cpu_device()).unwrap();
        assert_eq!(model.to_params(), params);

        let (shared, head) = spec.split_params(&params).unwrap();
        assert_eq!((shared.len(), head.len()), (84, 5));
        assert_eq!(spec.join_params(shared, head).unwrap(), params);
        assert_eq!(
            spec.join_params(head, shared),
            Err(ModelError::ParamCount {
                expected: 84,
                actual: 5
            })
        );
        let (all, none) = mlp.split_params(&params).unwrap();
        assert_eq!((all.len(), none.len()), (89, 0));
    }

    #[test]
    fn a_text_model_with_local_heads_shares_its_adapters_only() {
        let task = crate::text::TextTask {
            base_sha256: crate::text::MINILM_SHA256.to_owned(),
            text_column: "review".to_owned(),
            label_column: "condition".to_owned(),
            classes: vec!["Acne".to_owned(), "Pain".to_owned(), "Flu".to_owned()],
            max_tokens: 64,
            lora: crate::text::LoraConfig {
                top_layers: Some(1),
                ..Default::default()
            },
            local_head: false,
        };
        let classifier = task.classifier();
        let shared_all = ModelSpec {
            kind: ModelKind::MinilmLora {
                text: Box::new(task.clone()),
            },
            n_inputs: 0,
        };
        let local = ModelSpec {
            kind: ModelKind::MinilmLora {
                text: Box::new(crate::text::TextTask {
                    local_head: true,
                    ..task
                }),
            },
            n_inputs: 0,
        };
        // Rank 8 on query and value of one layer: 2 * (384 * 8 + 8 * 384); head 384 * 3 + 3.
        let (n_adapters, n_head) = (2 * 2 * 384 * 8, 384 * 3 + 3);
        assert_eq!(classifier.adapter_len(), n_adapters);
        assert_eq!(local.n_params(), n_adapters + n_head);
        assert_eq!(local.n_params(), shared_all.n_params());
        assert_eq!(shared_all.shared_len(), shared_all.n_params());
        assert_eq!(local.shared_len(), n_adapters);

        let params = local.init_params(7);
        assert_eq!(params, shared_all.init_params(7));
        let (adapters, head) = local.split_params(&params).unwrap();
        assert_eq!((adapters.len(), head.len()), (n_adapters, n_head));
        assert_eq!(adapters, &params[..n_adapters]);
        assert_eq!(local.join_params(adapters, head).unwrap(), params);
        assert_eq!(
            local.join_params(&params, &[]),
            Err(ModelError::ParamCount {
                expected: n_adapters,
                actual: n_adapters + n_head
            })
        );
        let (all, none) = shared_all.split_params(&params).unwrap();
        assert_eq!((all.len(), none.len()), (n_adapters + n_head, 0));
        // The update carries the adapters' change only: a changed head does not enter it.
        let mut trained = params.clone();
        trained[0] += 0.5;
        trained[n_adapters] += 1.0;
        let update = local.shared_update(&trained, &params).unwrap();
        assert_eq!(update.len(), n_adapters);
        assert_eq!(update[0], 0.5);
        assert!(update[1..].iter().all(|&v| v == 0.0));
        assert_eq!(
            shared_all.shared_update(&trained, &params).unwrap()[n_adapters],
            1.0
        );
    }

    #[test]
    fn a_personalized_model_needs_a_body() {
        let spec = ModelSpec {
            kind: ModelKind::Personalized { hidden: vec![] },
            n_inputs: 3,
        };
        assert!(matches!(spec.check(), Err(ModelError::InvalidSpec { .. })));
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in [
            ModelKind::LogisticRegression,
            ModelKind::Mlp { hidden: vec![3, 2] },
            ModelKind::Personalized { hidden: vec![4] },
        ] {
            let again = ModelKind::from_name(kind.name(), kind.hidden().to_vec()).unwrap();
            assert_eq!(again, kind);
        }
        assert!(ModelKind::from_name("logistic_regression", vec![2]).is_err());
        assert!(ModelKind::from_name("transformer", vec![]).is_err());
    }
}
