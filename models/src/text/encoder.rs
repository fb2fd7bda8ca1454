//! The BERT encoder (post-layer-norm, absolute positions, GELU), with frozen weights.
//!
//! Computes what Hugging Face `transformers`' `BertModel` computes: embeddings (the sum of
//! word, position and token-type embeddings, then layer norm), then per layer self-attention
//! (`softmax(q k^T / sqrt(d)) v` over the unmasked keys, output projection, residual, layer
//! norm) and the feed-forward block (`gelu` with `erf`, residual, layer norm). Weights are
//! stored transposed relative to PyTorch (`[n_in, n_out]`, burn's convention) and are plain
//! tensors, not parameters: nothing of the base model is ever trained.

use std::collections::HashMap;

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{embedding, layer_norm, linear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors};

use super::TextError;
use super::lora::{Adapters, LoraModule, LoraTarget};

/// The BERT hyper-parameters from `config.json` that shape the encoder.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct BertConfig {
    /// Width of the hidden states (384 for MiniLM-L6).
    pub hidden_size: usize,
    /// Transformer layers (6).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (12).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block (1536).
    pub intermediate_size: usize,
    /// Vocabulary size (30522).
    pub vocab_size: usize,
    /// Longest input in tokens (512).
    pub max_position_embeddings: usize,
    /// Segment types (2).
    pub type_vocab_size: usize,
    /// Layer-norm epsilon (1e-12).
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward block; only `gelu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Position embedding kind; only `absolute` is supported.
    #[serde(default = "default_position")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".to_owned()
}

fn default_position() -> String {
    "absolute".to_owned()
}

impl BertConfig {
    /// The shape of all-MiniLM-L6-v2 (its `config.json`), which a coordinator needs to size
    /// the adapters without holding the weights.
    pub fn minilm_l6() -> BertConfig {
        BertConfig {
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            vocab_size: 30522,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: default_act(),
            position_embedding_type: default_position(),
        }
    }

    /// Parses and checks a `config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<BertConfig, TextError> {
        let config: BertConfig =
            serde_json::from_slice(bytes).map_err(|e| TextError::Config(e.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(TextError::Config(format!(
                "hidden_act {:?} is not supported (only gelu)",
                config.hidden_act
            )));
        }
        if config.position_embedding_type != "absolute" {
            return Err(TextError::Config(format!(
                "position_embedding_type {:?} is not supported (only absolute)",
                config.position_embedding_type
            )));
        }
        let sizes = [
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.vocab_size,
            config.max_position_embeddings,
            config.type_vocab_size,
        ];
        if sizes.contains(&0) || sizes.iter().any(|&s| s > 1 << 20) {
            return Err(TextError::Config(
                "a size is zero or implausibly large".to_owned(),
            ));
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            return Err(TextError::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        if !(config.layer_norm_eps.is_finite() && config.layer_norm_eps > 0.0) {
            return Err(TextError::Config(
                "layer_norm_eps must be positive".to_owned(),
            ));
        }
        Ok(config)
    }

    /// `(name, shape in the file)` of every tensor the encoder reads, in a fixed order. Linear
    /// weights are `[n_out, n_in]` as PyTorch stores them.
    pub(crate) fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let mut shapes = vec![
            (
                "embeddings.word_embeddings.weight".to_owned(),
                vec![self.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".to_owned(),
                vec![self.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".to_owned(),
                vec![self.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".to_owned(), vec![h]),
            ("embeddings.LayerNorm.bias".to_owned(), vec![h]),
        ];
        for layer in 0..self.num_hidden_layers {
            for target in LoraTarget::ALL {
                let (n_in, n_out) = target.dims(self);
                let module = format!("encoder.layer.{layer}.{}", target.module_path());
                shapes.push((format!("{module}.weight"), vec![n_out, n_in]));
                shapes.push((format!("{module}.bias"), vec![n_out]));
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                for part in ["weight", "bias"] {
                    shapes.push((format!("encoder.layer.{layer}.{norm}.{part}"), vec![h]));
                }
            }
        }
        shapes
    }
}

/// The encoder's weights as host vectors, in the encoder's layout (linear weights transposed
/// to `[n_in, n_out]`).
#[derive(Debug)]
pub(crate) struct HostWeights {
    tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
    /// Parameters in the file, pooler and all (the model's size as published).
    n_file_params: usize,
}

impl HostWeights {
    /// Reads every tensor [`BertConfig::tensor_shapes`] names from safetensors bytes, checking
    /// dtype (F32), shape and finiteness. Other tensors (the pooler, `position_ids`) are
    /// counted, not kept.
    pub(crate) fn from_safetensors(config: &BertConfig, bytes: &[u8]) -> Result<Self, TextError> {
        let file = SafeTensors::deserialize(bytes)?;
        let n_file_params = file
            .tensors()
            .iter()
            .filter(|(_, view)| view.dtype() == Dtype::F32)
            .map(|(_, view)| view.shape().iter().product::<usize>())
            .sum();
        let mut tensors = HashMap::new();
        for (name, shape) in config.tensor_shapes() {
            let view = file
                .tensor(&name)
                .map_err(|_| TextError::Weights(format!("tensor {name} is missing")))?;
            if view.dtype() != Dtype::F32 {
                return Err(TextError::Weights(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            if view.shape() != shape.as_slice() {
                return Err(TextError::Weights(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    view.shape()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(TextError::Weights(format!(
                    "tensor {name} has a non-finite value"
                )));
            }
            let (values, shape) =
                if name.starts_with("encoder.") && name.ends_with(".weight") && shape.len() == 2 {
                    (
                        super::transposed(&values, shape[0], shape[1]),
                        vec![shape[1], shape[0]],
                    )
                } else {
                    (values, shape)
                };
            tensors.insert(name, (values, shape));
        }
        Ok(HostWeights {
            tensors,
            n_file_params,
        })
    }

    pub(crate) fn n_params(&self) -> usize {
        self.n_file_params
    }

    fn get(&self, name: &str) -> &(Vec<f32>, Vec<usize>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("tensor {name} was checked at load"))
    }
}

/// One linear map `x @ weight + bias`, weight `[n_in, n_out]`.
#[derive(Clone, Debug)]
struct Dense {
    weight: Tensor<2>,
    bias: Tensor<1>,
}

#[derive(Clone, Debug)]
struct Norm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
}

#[derive(Clone, Debug)]
struct Layer {
    /// Indexed like [`LoraTarget::ALL`].
    dense: Vec<Dense>,
    attention_norm: Norm,
    output_norm: Norm,
}

/// The frozen encoder on one device (see the module docs).
#[derive(Clone, Debug)]
pub struct Encoder {
    word: Tensor<2>,
    position: Tensor<2>,
    token_type: Tensor<2>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    n_heads: usize,
    eps: f64,
}

impl Encoder {
    pub(crate) fn new(config: &BertConfig, weights: &HostWeights, device: &Device) -> Encoder {
        let t2 = |name: &str| {
            let (values, shape) = weights.get(name);
            Tensor::<2>::from_data(
                TensorData::new(values.clone(), [shape[0], shape[1]]),
                device,
            )
        };
        let t1 = |name: &str| {
            let (values, _) = weights.get(name);
            Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), device)
        };
        let norm = |prefix: &str| Norm {
            gamma: t1(&format!("{prefix}.weight")),
            beta: t1(&format!("{prefix}.bias")),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                let prefix = format!("encoder.layer.{layer}");
                Layer {
                    dense: LoraTarget::ALL
                        .iter()
                        .map(|target| {
                            let module = format!("{prefix}.{}", target.module_path());
                            Dense {
                                weight: t2(&format!("{module}.weight")),
                                bias: t1(&format!("{module}.bias")),
                            }
                        })
                        .collect(),
                    attention_norm: norm(&format!("{prefix}.attention.output.LayerNorm")),
                    output_norm: norm(&format!("{prefix}.output.LayerNorm")),
                }
            })
            .collect();
        Encoder {
            word: t2("embeddings.word_embeddings.weight"),
            position: t2("embeddings.position_embeddings.weight"),
            token_type: t2("embeddings.token_type_embeddings.weight"),
            embedding_norm: norm("embeddings.LayerNorm"),
            layers,
            n_heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
        }
    }

    /// Last hidden states `[n, len, hidden]` for token ids `[n, len]`, segment ids `[n, len]`
    /// and the attention mask `[n, len]` (1 for a token, 0 for padding), with the adapters of
    /// `lora` added to the projections they target. Inputs longer than the position table
    /// panic: the tokenizer truncates before.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        type_ids: Tensor<2, Int>,
        mask: Tensor<2>,
        lora: Option<&LoraModule>,
    ) -> Tensor<3> {
        let x = self.embed(ids, type_ids);
        self.forward_layers(x, mask, 0..self.layers.len(), lora)
    }

    /// Number of transformer layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The embeddings' output `[n, len, hidden]` (the input of layer 0).
    pub fn embed(&self, ids: Tensor<2, Int>, type_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, len] = ids.dims();
        let hidden = self.word.dims()[1];
        let positions = self
            .position
            .clone()
            .slice([0..len, 0..hidden])
            .unsqueeze_dim::<3>(0);
        let x = embedding(self.word.clone(), ids)
            + positions
            + embedding(self.token_type.clone(), type_ids);
        self.embedding_norm.forward(x, self.eps)
    }

    /// Runs the layers `layers` (a range of `0..n_layers`) on their input `x` `[n, len,
    /// hidden]` under the attention mask `[n, len]`, with the adapters of `lora` on the
    /// projections they target: [`Encoder::forward`] from an intermediate state.
    pub fn forward_layers(
        &self,
        x: Tensor<3>,
        mask: Tensor<2>,
        layers: std::ops::Range<usize>,
        lora: Option<&LoraModule>,
    ) -> Tensor<3> {
        self.forward_layers_with(x, mask, layers, lora.map(|lora| lora as &dyn Adapters))
    }

    /// [`Encoder::forward_layers`] with any [`Adapters`]: one set shared by the batch, or
    /// a copy per text (DP-SGD's per-text gradients, `super::dp`).
    pub(crate) fn forward_layers_with(
        &self,
        mut x: Tensor<3>,
        mask: Tensor<2>,
        layers: std::ops::Range<usize>,
        lora: Option<&dyn Adapters>,
    ) -> Tensor<3> {
        let [n, len, hidden] = x.dims();
        // Additive attention bias [n, 1, 1, len]: 0 for tokens, a large negative for padding.
        let bias = (mask.ones_like() - mask)
            .mul_scalar(-1e9)
            .reshape([n, 1, 1, len]);
        let head_dim = hidden / self.n_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let first = layers.start;
        for (offset, layer) in self.layers[layers].iter().enumerate() {
            let index = first + offset;
            let project = |x: Tensor<3>, target: LoraTarget| {
                let dense = &layer.dense[target.index()];
                let y = linear(x.clone(), dense.weight.clone(), Some(dense.bias.clone()));
                match lora.and_then(|lora| lora.delta(index, target, x)) {
                    Some(delta) => y + delta,
                    None => y,
                }
            };
            let heads = |t: Tensor<3>| t.reshape([n, len, self.n_heads, head_dim]).swap_dims(1, 2);
            let q = heads(project(x.clone(), LoraTarget::Query));
            let k = heads(project(x.clone(), LoraTarget::Key));
            let v = heads(project(x.clone(), LoraTarget::Value));
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
            let context = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([n, len, hidden]);
            let attended = project(context, LoraTarget::AttentionOutput) + x;
            let attended = layer.attention_norm.forward(attended, self.eps);
            let inner = gelu(project(attended.clone(), LoraTarget::Intermediate));
            x = layer
                .output_norm
                .forward(project(inner, LoraTarget::Output) + attended, self.eps);
        }
        x
    }
}

impl Norm {
    fn forward(&self, x: Tensor<3>, eps: f64) -> Tensor<3> {
        layer_norm(x, self.gamma.clone(), Some(self.beta.clone()), eps)
    }
}

/// Mean of the hidden states `[n, len, hidden]` over the real tokens (mask `[n, len]`):
/// `[n, hidden]`, sentence-transformers' mean pooling.
pub fn mean_pool(hidden: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
    let [n, len, width] = hidden.dims();
    let counts = mask.clone().sum_dim(1).clamp_min(1e-9);
    let summed = (hidden * mask.reshape([n, len, 1]))
        .sum_dim(1)
        .reshape([n, width]);
    summed / counts
}

/// Every row of `x` `[n, width]` divided by its Euclidean norm (at least 1e-12), as
/// `torch.nn.functional.normalize` does.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norms = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norms
}
