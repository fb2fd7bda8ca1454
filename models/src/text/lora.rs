//! LoRA adapters (Hu et al. 2021) on the frozen encoder, plus a classification head.
//!
//! Each targeted projection `y = x W + b` of each layer becomes
//! `y = x W + b + (alpha / rank) * (x A) B`, with `A` `[n_in, rank]` and `B` `[rank, n_out]`
//! trainable and `W`, `b` frozen; `B` starts at zero, so training starts from the pretrained
//! encoder. The head maps the mean-pooled last hidden states (not normalised) to one logit per
//! class.
//!
//! # Flat layout
//!
//! The trainable parameters travel as one `f32` vector, [`TextClassifierSpec::n_params`] long:
//! for each layer in turn, for each target in [`LoraTarget::ALL`] order that the
//! [`LoraConfig`] selects, `A` then `B` (row-major, the shapes above); then the head's weight
//! `[hidden, n_classes]` and bias `[n_classes]`. The adapters are the prefix of
//! [`TextClassifierSpec::adapter_len`] values, so a federation that keeps heads local (FedPer)
//! shares that prefix only.
//!
//! # PEFT layout
//!
//! [`export_peft`] writes a directory that Python's PEFT library loads onto
//! `transformers.AutoModel` of the same base model (`PeftModel.from_pretrained(base, dir)`):
//! `adapter_model.safetensors` with tensors named
//! `base_model.model.encoder.layer.{i}.{module}.lora_A.weight` (`[rank, n_in]`) and
//! `...lora_B.weight` (`[n_out, rank]`), PyTorch's transposes of `A` and `B`;
//! `adapter_config.json` (`peft_type` `LORA`, `r`, `lora_alpha`, `target_modules`, no dropout,
//! no bias); and `head.safetensors` with the head as `torch.nn.Linear` stores it (`weight`
//! `[n_classes, hidden]`, `bias`). `models/text/reference.py` checks that the logits agree.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{BertConfig, Encoder, TextError, TokenBatch, mean_pool, transposed};
use crate::rng::SplitMix64;

/// A projection of an encoder layer that can carry an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    /// Attention query projection (`attention.self.query`).
    Query,
    /// Attention key projection (`attention.self.key`).
    Key,
    /// Attention value projection (`attention.self.value`).
    Value,
    /// Attention output projection (`attention.output.dense`).
    AttentionOutput,
    /// Feed-forward input projection (`intermediate.dense`).
    Intermediate,
    /// Feed-forward output projection (`output.dense`).
    Output,
}

impl LoraTarget {
    /// Every target, in flat-layout order.
    pub const ALL: [LoraTarget; 6] = [
        LoraTarget::Query,
        LoraTarget::Key,
        LoraTarget::Value,
        LoraTarget::AttentionOutput,
        LoraTarget::Intermediate,
        LoraTarget::Output,
    ];

    /// Position in [`LoraTarget::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name in configuration files: `query`, `key`, `value`, `attention_output`,
    /// `intermediate` or `output`.
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Query => "query",
            LoraTarget::Key => "key",
            LoraTarget::Value => "value",
            LoraTarget::AttentionOutput => "attention_output",
            LoraTarget::Intermediate => "intermediate",
            LoraTarget::Output => "output",
        }
    }

    /// The target called `name` (see [`LoraTarget::name`]).
    pub fn from_name(name: &str) -> Result<LoraTarget, TextError> {
        LoraTarget::ALL
            .into_iter()
            .find(|target| target.name() == name)
            .ok_or_else(|| {
                TextError::Adapter(format!(
                    "unknown LoRA target {name:?} (expected one of query, key, value, attention_output, intermediate, output)"
                ))
            })
    }

    /// The module's path inside a layer of Hugging Face's `BertModel`.
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::Query => "attention.self.query",
            LoraTarget::Key => "attention.self.key",
            LoraTarget::Value => "attention.self.value",
            LoraTarget::AttentionOutput => "attention.output.dense",
            LoraTarget::Intermediate => "intermediate.dense",
            LoraTarget::Output => "output.dense",
        }
    }

    /// `(n_in, n_out)` of the projection.
    pub fn dims(self, config: &BertConfig) -> (usize, usize) {
        let h = config.hidden_size;
        match self {
            LoraTarget::Intermediate => (h, config.intermediate_size),
            LoraTarget::Output => (config.intermediate_size, h),
            _ => (h, h),
        }
    }
}

impl serde::Serialize for LoraTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for LoraTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        LoraTarget::from_name(&name).map_err(serde::de::Error::custom)
    }
}

/// Which projections get adapters, and their rank and scale (set by the federation).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter; positive.
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// The adapter's output is scaled by `alpha / rank`; positive and finite.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Targeted projections, in every adapted layer; not empty.
    #[serde(default = "default_targets")]
    pub targets: Vec<LoraTarget>,
    /// Adapt only the last `top_layers` layers (PEFT's `layers_to_transform`); `None`: every
    /// layer. The layers below are then untouched by training, so their outputs can be
    /// computed once per text and reused (see [`super::train::Features`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_layers: Option<usize>,
}

fn default_rank() -> usize {
    8
}

fn default_alpha() -> f64 {
    16.0
}

fn default_targets() -> Vec<LoraTarget> {
    vec![LoraTarget::Query, LoraTarget::Value]
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, query and value (PEFT's default targets for BERT).
    fn default() -> Self {
        LoraConfig {
            rank: default_rank(),
            alpha: default_alpha(),
            targets: default_targets(),
            top_layers: None,
        }
    }
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The targets in flat-layout order, without duplicates.
    pub fn sorted_targets(&self) -> Vec<LoraTarget> {
        let mut targets = self.targets.clone();
        targets.sort();
        targets.dedup();
        targets
    }

    fn check(&self) -> Result<(), TextError> {
        if self.rank == 0 || self.rank > 4096 {
            return Err(TextError::Adapter(format!(
                "rank {} is not in 1..=4096",
                self.rank
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(TextError::Adapter(format!(
                "alpha {} is not positive and finite",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(TextError::Adapter("no LoRA target".to_owned()));
        }
        if self.top_layers == Some(0) {
            return Err(TextError::Adapter(
                "top_layers must be at least 1 (or absent: every layer)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The trainable part of a text classifier: the base encoder's shape, its adapters and a head.
#[derive(Clone, Debug, PartialEq)]
pub struct TextClassifierSpec {
    /// The frozen encoder's configuration.
    pub bert: BertConfig,
    /// The adapters.
    pub lora: LoraConfig,
    /// Classes of the head; at least 2.
    pub n_classes: usize,
}

impl TextClassifierSpec {
    /// Checks the adapter configuration and the number of classes.
    pub fn check(&self) -> Result<(), TextError> {
        self.lora.check()?;
        if self.n_classes < 2 || self.n_classes > 1 << 16 {
            return Err(TextError::Adapter(format!(
                "{} classes: a classifier needs 2 to 65536",
                self.n_classes
            )));
        }
        Ok(())
    }

    /// The first layer with adapters: the layers below it are the frozen base model's
    /// alone.
    pub fn first_adapted_layer(&self) -> usize {
        let n = self.bert.num_hidden_layers;
        n - self.lora.top_layers.unwrap_or(n).min(n)
    }

    /// `(layer, target, n_in, n_out)` of every adapter, in flat-layout order.
    pub fn adapters(&self) -> Vec<(usize, LoraTarget, usize, usize)> {
        let targets = self.lora.sorted_targets();
        (self.first_adapted_layer()..self.bert.num_hidden_layers)
            .flat_map(|layer| {
                targets.iter().map(move |&target| {
                    let (n_in, n_out) = target.dims(&self.bert);
                    (layer, target, n_in, n_out)
                })
            })
            .collect()
    }

    /// Index in [`TextClassifierSpec::adapters`] per `layer * 6 + target`, `usize::MAX` where
    /// that projection has no adapter.
    pub(crate) fn adapter_slots(&self) -> Vec<usize> {
        let mut slots = vec![usize::MAX; self.bert.num_hidden_layers * LoraTarget::ALL.len()];
        for (i, (layer, target, _, _)) in self.adapters().into_iter().enumerate() {
            slots[layer * LoraTarget::ALL.len() + target.index()] = i;
        }
        slots
    }

    /// Values of all adapters: the federated prefix when heads stay local.
    pub fn adapter_len(&self) -> usize {
        let r = self.lora.rank;
        self.adapters()
            .iter()
            .map(|&(_, _, n_in, n_out)| n_in * r + r * n_out)
            .sum()
    }

    /// Values of the head (weight and bias).
    pub fn head_len(&self) -> usize {
        self.bert.hidden_size * self.n_classes + self.n_classes
    }

    /// Length of the flat trainable vector: adapters, then head.
    pub fn n_params(&self) -> usize {
        self.adapter_len() + self.head_len()
    }

    /// Deterministic initial parameters for `seed`, as PEFT initialises LoRA and PyTorch a
    /// linear layer: each `A` uniform in `(-1/sqrt(n_in), 1/sqrt(n_in))` (PEFT's Kaiming-uniform
    /// with `a = sqrt(5)`), each `B` zero, the head's weight and bias uniform in
    /// `(-1/sqrt(hidden), 1/sqrt(hidden))`. With `B` zero the classifier starts from the
    /// pretrained encoder's embeddings.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        self.params_from(seed, false)
    }

    /// Like [`TextClassifierSpec::init_params`] but with `B` drawn like `A` (bound
    /// `1/sqrt(rank)`) instead of zero: adapters that change the encoder's output, for tests and
    /// the PEFT reference.
    pub fn random_params(&self, seed: u64) -> Vec<f32> {
        self.params_from(seed, true)
    }

    fn params_from(&self, seed: u64, random_b: bool) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut uniform = |n: usize, fan_in: usize, out: &mut Vec<f32>| {
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            out.extend((0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32));
        };
        let r = self.lora.rank;
        let mut params = Vec::with_capacity(self.n_params());
        for (_, _, n_in, n_out) in self.adapters() {
            uniform(n_in * r, n_in, &mut params);
            if random_b {
                uniform(r * n_out, r, &mut params);
            } else {
                params.extend(std::iter::repeat_n(0.0, r * n_out));
            }
        }
        let h = self.bert.hidden_size;
        uniform(h * self.n_classes + self.n_classes, h, &mut params);
        params
    }

    /// Builds the module on `device` from a flat vector (checked for length and finiteness).
    /// On an autodiff device every parameter requires gradients, except the head's when
    /// `freeze_head`.
    pub fn module(
        &self,
        params: &[f32],
        device: &Device,
        freeze_head: bool,
    ) -> Result<LoraModule, TextError> {
        self.check()?;
        let expected = self.n_params();
        if params.len() != expected {
            return Err(TextError::Adapter(format!(
                "expected {expected} parameters, got {}",
                params.len()
            )));
        }
        if let Some(index) = params.iter().position(|v| !v.is_finite()) {
            return Err(TextError::Adapter(format!(
                "parameter {index} is not finite"
            )));
        }
        let r = self.lora.rank;
        let slots = self.adapter_slots();
        let mut adapters = Vec::new();
        for (_, _, n_in, n_out) in self.adapters() {
            adapters.push(LoraPair {
                a: Param::from_tensor(Tensor::zeros([n_in, r], device)),
                b: Param::from_tensor(Tensor::zeros([r, n_out], device)),
            });
        }
        let skeleton = LoraModule {
            adapters,
            head_weight: Param::from_tensor(Tensor::zeros(
                [self.bert.hidden_size, self.n_classes],
                device,
            )),
            head_bias: Param::from_tensor(Tensor::zeros([self.n_classes], device)),
            slots,
            scale: self.lora.scale(),
        };
        let mut importer = Importer {
            values: params,
            offset: 0,
            require_grad: device.is_autodiff(),
            frozen_from: if freeze_head {
                self.adapter_len()
            } else {
                usize::MAX
            },
        };
        let module = skeleton.map(&mut importer);
        debug_assert_eq!(importer.offset, expected);
        Ok(module)
    }
}

/// One adapter's factors.
#[derive(Module, Debug)]
pub struct LoraPair {
    a: Param<Tensor<2>>,
    b: Param<Tensor<2>>,
}

/// The trainable parameters of a text classifier as a burn module (see the module docs for
/// the layout); built by [`TextClassifierSpec::module`].
#[derive(Module, Debug)]
pub struct LoraModule {
    adapters: Vec<LoraPair>,
    head_weight: Param<Tensor<2>>,
    head_bias: Param<Tensor<1>>,
    /// Adapter index per `layer * 6 + target`, `usize::MAX` where there is none.
    #[module(skip)]
    slots: Vec<usize>,
    #[module(skip)]
    scale: f64,
}

/// What the encoder asks of a set of adapters: the term each one adds to the projection it
/// targets.
pub(crate) trait Adapters {
    /// The term added to `target` of `layer` for input `x` `[n, len, n_in]`, or `None` when
    /// that projection has no adapter.
    fn delta(&self, layer: usize, target: LoraTarget, x: Tensor<3>) -> Option<Tensor<3>>;
}

impl Adapters for LoraModule {
    fn delta(&self, layer: usize, target: LoraTarget, x: Tensor<3>) -> Option<Tensor<3>> {
        LoraModule::delta(self, layer, target, x)
    }
}

impl LoraModule {
    /// The adapter's contribution `scale * (x A) B` to `target` of `layer` for input `x`, or
    /// `None` when that projection has no adapter.
    pub fn delta(&self, layer: usize, target: LoraTarget, x: Tensor<3>) -> Option<Tensor<3>> {
        let slot = *self
            .slots
            .get(layer * LoraTarget::ALL.len() + target.index())?;
        let pair = self.adapters.get(slot)?;
        let down = linear(x, pair.a.val(), None);
        Some(linear(down, pair.b.val(), None).mul_scalar(self.scale))
    }

    /// Logits `[n, n_classes]` of pooled features `[n, hidden]`.
    pub fn head(&self, pooled: Tensor<2>) -> Tensor<2> {
        linear(pooled, self.head_weight.val(), Some(self.head_bias.val()))
    }

    /// Squared Euclidean distance to `other` (same spec) as a differentiable scalar `[1]`: the
    /// FedProx proximal term's norm.
    pub fn squared_distance(&self, other: &LoraModule) -> Tensor<1> {
        let mut terms = Vec::with_capacity(2 * self.adapters.len() + 2);
        for (pair, base) in self.adapters.iter().zip(&other.adapters) {
            terms.push((pair.a.val() - base.a.val()).powi_scalar(2).sum());
            terms.push((pair.b.val() - base.b.val()).powi_scalar(2).sum());
        }
        terms.push(
            (self.head_weight.val() - other.head_weight.val())
                .powi_scalar(2)
                .sum(),
        );
        terms.push(
            (self.head_bias.val() - other.head_bias.val())
                .powi_scalar(2)
                .sum(),
        );
        Tensor::cat(terms, 0).sum()
    }

    /// The flat vector, in layout order.
    pub fn to_params(&self) -> Vec<f32> {
        let mut exporter = Exporter { values: Vec::new() };
        self.visit(&mut exporter);
        exporter.values
    }
}

struct Exporter {
    values: Vec<f32>,
}

impl ModuleVisitor for Exporter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data_as::<f32>();
        self.values
            .extend_from_slice(data.as_slice::<f32>().expect("data was converted to f32"));
    }
}

/// Replaces parameters with consecutive slices of a flat vector (re-marking `require_grad`: a
/// tensor rebuilt from data is a fresh autodiff leaf).
struct Importer<'a> {
    values: &'a [f32],
    offset: usize,
    require_grad: bool,
    /// Parameters starting at or after this offset stay constants.
    frozen_from: usize,
}

impl ModuleMapper for Importer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let end = self.offset + shape.num_elements();
        let frozen = self.offset >= self.frozen_from;
        let chunk = self.values[self.offset..end].to_vec();
        self.offset = end;
        let device = param.lazy_device();
        let tensor = Tensor::<D>::from_data(TensorData::new(chunk, shape), &device);
        let tensor = if self.require_grad && !frozen {
            tensor.require_grad()
        } else {
            tensor
        };
        Param::initialized(param.id, tensor)
    }
}

/// Logits `[n, n_classes]` of the classifier (`encoder` with the adapters and head of
/// `module`) for a batch of tokenized texts.
pub fn classifier_logits(
    encoder: &Encoder,
    module: &LoraModule,
    batch: &TokenBatch,
    device: &Device,
) -> Tensor<2> {
    let (ids, types, mask) = batch.tensors(device);
    let hidden = encoder.forward(ids, types, mask.clone(), Some(module));
    module.head(mean_pool(hidden, mask))
}

/// File names of an exported adapter directory.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
/// See [`PEFT_WEIGHTS`].
pub const PEFT_CONFIG: &str = "adapter_config.json";
/// See [`PEFT_WEIGHTS`].
pub const HEAD_WEIGHTS: &str = "head.safetensors";

/// The PEFT name of an adapter factor (`"A"` or `"B"`).
pub fn peft_key(layer: usize, target: LoraTarget, factor: &str) -> String {
    format!(
        "base_model.model.encoder.layer.{layer}.{}.lora_{factor}.weight",
        target.module_path()
    )
}

/// The `adapter_config.json` PEFT reads for `spec`. (The base model's SHA-256 is in the
/// safetensors metadata, `base_model_sha256`, where PEFT does not look.) Targets are PEFT module-name suffixes, or a regular expression over full module
/// names when the feed-forward output (`output.dense`, a suffix of `attention.output.dense`
/// too) is one.
pub fn peft_config(spec: &TextClassifierSpec) -> serde_json::Value {
    let targets = spec.lora.sorted_targets();
    let target_modules = if targets.contains(&LoraTarget::Output) {
        let alternatives: Vec<String> = targets
            .iter()
            .map(|t| t.module_path().replace('.', r"\."))
            .collect();
        serde_json::Value::String(format!(
            r".*encoder\.layer\.\d+\.({})",
            alternatives.join("|")
        ))
    } else {
        serde_json::Value::from(
            targets
                .iter()
                .map(|t| match t {
                    LoraTarget::AttentionOutput | LoraTarget::Intermediate => t.module_path(),
                    _ => t.module_path().rsplit('.').next().unwrap_or_default(),
                })
                .collect::<Vec<_>>(),
        )
    };
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
        "r": spec.lora.rank,
        "lora_alpha": spec.lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": spec.lora.top_layers.map(|_| {
            (spec.first_adapted_layer()..spec.bert.num_hidden_layers).collect::<Vec<_>>()
        }),
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null
    })
}

/// Writes the flat vector `params` of `spec` to `dir` (created if missing) in PEFT's layout:
/// see the module docs.
pub fn export_peft(
    spec: &TextClassifierSpec,
    params: &[f32],
    base_sha256: &str,
    dir: &Path,
) -> Result<(), TextError> {
    spec.check()?;
    if params.len() != spec.n_params() {
        return Err(TextError::Adapter(format!(
            "expected {} parameters, got {}",
            spec.n_params(),
            params.len()
        )));
    }
    let r = spec.lora.rank;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut offset = 0;
    let mut take = |n: usize| {
        let chunk = &params[offset..offset + n];
        offset += n;
        chunk
    };
    for (layer, target, n_in, n_out) in spec.adapters() {
        let a = take(n_in * r);
        let b = take(r * n_out);
        // Ours: A [n_in, r], B [r, n_out]; PEFT's: lora_A [r, n_in], lora_B [n_out, r].
        tensors.push((
            peft_key(layer, target, "A"),
            vec![r, n_in],
            le_bytes(&transposed(a, n_in, r)),
        ));
        tensors.push((
            peft_key(layer, target, "B"),
            vec![n_out, r],
            le_bytes(&transposed(b, r, n_out)),
        ));
    }
    let h = spec.bert.hidden_size;
    let c = spec.n_classes;
    let weight = take(h * c);
    let bias = take(c);
    let head = vec![
        (
            "weight".to_owned(),
            vec![c, h],
            le_bytes(&transposed(weight, h, c)),
        ),
        ("bias".to_owned(), vec![c], le_bytes(bias)),
    ];
    let metadata = HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        ("base_model_sha256".to_owned(), base_sha256.to_owned()),
    ]);
    std::fs::create_dir_all(dir).map_err(|source| TextError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write(
        &dir.join(PEFT_WEIGHTS),
        &serialize(&tensors, metadata.clone())?,
    )?;
    write(&dir.join(HEAD_WEIGHTS), &serialize(&head, metadata)?)?;
    let config = serde_json::to_vec_pretty(&peft_config(spec))
        .map_err(|e| TextError::Adapter(e.to_string()))?;
    write(&dir.join(PEFT_CONFIG), &config)
}

/// Reads an adapter directory written by [`export_peft`] (or by PEFT, with a head saved the
/// same way) back into the flat vector of `spec`. Every expected tensor must be present with
/// the right shape and dtype (F32), and no other.
pub fn import_peft(spec: &TextClassifierSpec, dir: &Path) -> Result<Vec<f32>, TextError> {
    spec.check()?;
    let adapters = read(&dir.join(PEFT_WEIGHTS))?;
    let adapters = SafeTensors::deserialize(&adapters)?;
    let head = read(&dir.join(HEAD_WEIGHTS))?;
    let head = SafeTensors::deserialize(&head)?;
    let r = spec.lora.rank;
    let mut params = Vec::with_capacity(spec.n_params());
    let adapter_list = spec.adapters();
    for &(layer, target, n_in, n_out) in &adapter_list {
        let a = tensor_values(&adapters, &peft_key(layer, target, "A"), &[r, n_in])?;
        params.extend(transposed(&a, r, n_in));
        let b = tensor_values(&adapters, &peft_key(layer, target, "B"), &[n_out, r])?;
        params.extend(transposed(&b, n_out, r));
    }
    if adapters.len() != 2 * adapter_list.len() {
        return Err(TextError::Adapter(format!(
            "{} holds {} tensors, the configuration has {}",
            PEFT_WEIGHTS,
            adapters.len(),
            2 * adapter_list.len()
        )));
    }
    let h = spec.bert.hidden_size;
    let c = spec.n_classes;
    let weight = tensor_values(&head, "weight", &[c, h])?;
    params.extend(transposed(&weight, c, h));
    params.extend(tensor_values(&head, "bias", &[c])?);
    if head.len() != 2 {
        return Err(TextError::Adapter(format!(
            "{HEAD_WEIGHTS} holds {} tensors, expected weight and bias",
            head.len()
        )));
    }
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        return Err(TextError::Adapter(format!(
            "parameter {index} is not finite"
        )));
    }
    Ok(params)
}

fn tensor_values(
    file: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, TextError> {
    let view = file
        .tensor(name)
        .map_err(|_| TextError::Adapter(format!("tensor {name} is missing")))?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(TextError::Adapter(format!(
            "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
            view.dtype(),
            view.shape()
        )));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn serialize(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, TextError> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(safetensors::serialize(views, Some(metadata))?)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TextError> {
    std::fs::write(path, bytes).map_err(|source| TextError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TextError> {
    std::fs::read(path).map_err(|source| TextError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_device;

    fn tiny() -> BertConfig {
        BertConfig::from_json(
            br#"{"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 16, "vocab_size": 10, "max_position_embeddings": 12,
                "type_vocab_size": 2, "layer_norm_eps": 1e-12}"#,
        )
        .unwrap()
    }

    fn spec(targets: Vec<LoraTarget>) -> TextClassifierSpec {
        TextClassifierSpec {
            bert: tiny(),
            lora: LoraConfig {
                rank: 2,
                alpha: 4.0,
                targets,
                top_layers: None,
            },
            n_classes: 3,
        }
    }

    #[test]
    fn layout_is_adapters_then_head() {
        let spec = spec(vec![
            LoraTarget::Value,
            LoraTarget::Query,
            LoraTarget::Query,
        ]);
        // 2 layers x (query, value) x (8 x 2 + 2 x 8), then 8 x 3 + 3.
        assert_eq!(spec.adapter_len(), 2 * 2 * 32);
        assert_eq!(spec.n_params(), 128 + 27);
        let order: Vec<(usize, LoraTarget)> = spec.adapters().iter().map(|a| (a.0, a.1)).collect();
        assert_eq!(
            order,
            [
                (0, LoraTarget::Query),
                (0, LoraTarget::Value),
                (1, LoraTarget::Query),
                (1, LoraTarget::Value)
            ]
        );
        let init = spec.init_params(1);
        // Every B starts at zero, every A does not.
        for i in 0..4 {
            assert!(init[i * 32..i * 32 + 16].iter().all(|v| *v != 0.0));
            assert!(init[i * 32 + 16..(i + 1) * 32].iter().all(|v| *v == 0.0));
        }
        for device in [cpu_device(), cpu_device().autodiff()] {
            let module = spec.module(&init, &device, false).unwrap();
            assert_eq!(module.num_params(), spec.n_params());
            assert_eq!(module.to_params(), init);
        }
    }

    #[test]
    fn top_layers_adapt_only_the_last_layers() {
        let mut top = spec(vec![LoraTarget::Query]);
        top.lora.top_layers = Some(1);
        assert_eq!(top.first_adapted_layer(), 1);
        let layers: Vec<usize> = top.adapters().iter().map(|a| a.0).collect();
        assert_eq!(layers, [1]);
        assert_eq!(top.adapter_len(), 32);
        assert_eq!(
            peft_config(&top)["layers_to_transform"],
            serde_json::json!([1])
        );
        assert_eq!(
            peft_config(&spec(vec![LoraTarget::Query]))["layers_to_transform"],
            serde_json::Value::Null
        );
        // More than there are: every layer.
        top.lora.top_layers = Some(9);
        assert_eq!(top.first_adapted_layer(), 0);
        top.lora.top_layers = Some(0);
        assert!(top.check().is_err());
    }

    #[test]
    fn bad_vectors_and_configs_are_refused() {
        let spec = spec(vec![LoraTarget::Query]);
        let mut params = spec.init_params(2);
        let device = cpu_device();
        assert!(spec.module(&params[1..], &device, false).is_err());
        params[5] = f32::NAN;
        let error = spec.module(&params, &device, false).unwrap_err();
        assert!(error.to_string().contains("parameter 5"), "{error}");
        for lora in [
            LoraConfig {
                rank: 0,
                ..LoraConfig::default()
            },
            LoraConfig {
                alpha: f64::NAN,
                ..LoraConfig::default()
            },
            LoraConfig {
                targets: vec![],
                ..LoraConfig::default()
            },
        ] {
            let bad = TextClassifierSpec {
                lora,
                ..spec.clone()
            };
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let one_class = TextClassifierSpec {
            n_classes: 1,
            ..spec
        };
        assert!(one_class.check().is_err());
    }

    #[test]
    fn peft_files_round_trip_the_flat_vector() {
        let spec = spec(LoraTarget::ALL.to_vec());
        let params = spec.random_params(3);
        let dir = tempfile::tempdir().unwrap();
        export_peft(&spec, &params, "abc", dir.path()).unwrap();
        assert_eq!(import_peft(&spec, dir.path()).unwrap(), params);
        // The first A, as PyTorch stores it: [rank, n_in], i.e. our [n_in, rank] transposed.
        let bytes = std::fs::read(dir.path().join(PEFT_WEIGHTS)).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let a = tensor_values(&file, &peft_key(0, LoraTarget::Query, "A"), &[2, 8]).unwrap();
        assert_eq!(a[1], params[2]); // row 0, column 1 = our row 1, column 0
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = metadata.metadata().clone().unwrap();
        assert_eq!(metadata["base_model_sha256"], "abc");
    }

    #[test]
    fn peft_targets_are_suffixes_or_a_regex_when_ambiguous() {
        let qv = peft_config(&spec(vec![LoraTarget::Value, LoraTarget::Query]));
        assert_eq!(qv["target_modules"], serde_json::json!(["query", "value"]));
        assert_eq!(qv["r"], 2);
        let dense = peft_config(&spec(vec![
            LoraTarget::AttentionOutput,
            LoraTarget::Intermediate,
        ]));
        assert_eq!(
            dense["target_modules"],
            serde_json::json!(["attention.output.dense", "intermediate.dense"])
        );
        let output = peft_config(&spec(vec![LoraTarget::Output]));
        assert_eq!(
            output["target_modules"],
            serde_json::json!(r".*encoder\.layer\.\d+\.(output\.dense)")
        );
    }

    #[test]
    fn config_names_and_defaults() {
        let config: LoraConfig = serde_json::from_str(r#"{"targets": ["key", "output"]}"#).unwrap();
        assert_eq!(config.rank, 8);
        assert_eq!(config.scale(), 2.0);
        assert_eq!(config.targets, [LoraTarget::Key, LoraTarget::Output]);
        assert!(serde_json::from_str::<LoraConfig>(r#"{"targets": ["keys"]}"#).is_err());
        for target in LoraTarget::ALL {
            assert_eq!(LoraTarget::from_name(target.name()).unwrap(), target);
        }
    }
}
