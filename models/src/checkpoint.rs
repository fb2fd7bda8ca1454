//! Model checkpoints in the open [safetensors](https://huggingface.co/docs/safetensors) format,
//! for export to facility applications and Python users, and import as a federation's starting
//! point.
//!
//! A checkpoint holds one `F32` tensor per layer weight and bias, named as burn names the fields
//! of the model module (so burn's own safetensors store can load it): `layers.{i}.weight` with
//! shape `[n_in, n_out]` and `layers.{i}.bias` with shape `[n_out]`, input side first. A layer
//! computes `x @ weight + bias` (note: `torch.nn.Linear` stores the transpose, `[n_out, n_in]`),
//! with a ReLU after every layer but the last; the last gives one logit whose sigmoid is the
//! probability of the positive class.
//!
//! The safetensors header metadata (string to string) describes the model:
//!
//! | key | value |
//! |---|---|
//! | `format` | `harambee-checkpoint` |
//! | `format_version` | `1` |
//! | `model_kind` | `logistic_regression`, `mlp` or `personalized` |
//! | `hidden` | hidden widths as a JSON array, e.g. `[16]` |
//! | `n_inputs` | inputs per row |
//! | `schema` | the feature [`Schema`] as JSON: label (and `label_rule`), and per feature `column`, `center`, `scale`, `missing` tokens, `indicator`, and when set `kind`, `unit`, `min`, `max`, `categories`, `positive`, `negative`, `derive`, `fhir` |
//! | `federation` | name of the federation the model comes from |
//! | `version` | the model version in that federation |
//!
//! Loading checks all of it: the metadata parses, the schema's width equals `n_inputs`, every
//! expected tensor is present with the right dtype and shape, there is no other tensor, and
//! every value is finite. A personalized checkpoint holds one facility's head; the federated
//! body is the prefix of [`ModelSpec::shared_len`] values of the flat vector.
//!
//! Reading one in Python (numpy and the `safetensors` package):
//!
//! ```python
//! import json
//! import numpy as np
//! from safetensors import safe_open
//! from safetensors.numpy import load_file
//!
//! path = "model.safetensors"
//! tensors = load_file(path)
//! with safe_open(path, framework="numpy") as f:
//!     meta = f.metadata()
//! schema = json.loads(meta["schema"])
//! n_layers = len(json.loads(meta["hidden"])) + 1
//!
//! def encode(row):
//!     """A dict of raw CSV strings -> the model's inputs, as the federation encodes numeric
//!     features (binary and categorical ones, ranges and derived ages: see `data`)."""
//!     x = []
//!     for feat in schema["features"]:
//!         raw = row.get(feat["column"], "").strip()
//!         missing = raw == "" or raw in [t.strip() for t in feat["missing"]]
//!         x.append(0.0 if missing else (float(raw) - feat["center"]) / feat["scale"])
//!         if feat["indicator"]:
//!             x.append(1.0 if missing else 0.0)
//!     return x
//!
//! def predict_proba(x):
//!     """x: [n_rows, n_inputs] encoded inputs -> probability of the positive class."""
//!     h = np.asarray(x, dtype=np.float32)
//!     for i in range(n_layers):
//!         h = h @ tensors[f"layers.{i}.weight"] + tensors[f"layers.{i}.bias"]
//!         if i < n_layers - 1:
//!             h = np.maximum(h, 0.0)
//!     return 1.0 / (1.0 + np.exp(-h[:, 0]))
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::data::Schema;
use crate::model::{ModelError, ModelKind, ModelSpec};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "harambee-checkpoint";
/// Value of the `format_version` metadata key written by this version.
pub const FORMAT_VERSION: &str = "1";

/// A model with everything needed to use it outside the federation.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Architecture.
    pub spec: ModelSpec,
    /// How raw rows become the model's inputs.
    pub schema: Schema,
    /// Flat parameters in the [`ModelSpec`] layout.
    pub params: Vec<f32>,
    /// Name of the federation the model comes from.
    pub federation: String,
    /// Model version in that federation.
    pub version: u64,
}

/// Why a checkpoint cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// The header metadata is missing or not understood.
    #[error("checkpoint metadata: {0}")]
    Metadata(String),
    /// The model described by the metadata is invalid, or the parameters do not fit it.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An expected tensor is absent.
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    /// A tensor the model does not have.
    #[error("unexpected tensor {0}")]
    UnexpectedTensor(String),
    /// A tensor of the wrong type.
    #[error("tensor {tensor} has dtype {actual}, expected F32")]
    Dtype {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        actual: String,
    },
    /// A tensor of the wrong shape.
    #[error("tensor {tensor} has shape {actual:?}, but the {model} needs {expected:?}")]
    Shape {
        /// Tensor name.
        tensor: String,
        /// Shape the model needs.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
        /// Description of the model, e.g. `mlp [16] on 17 inputs`.
        model: String,
    },
    /// A tensor value is NaN or infinite.
    #[error("tensor {tensor} holds a non-finite value at index {index}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Position in the tensor, row-major.
        index: usize,
    },
    /// The checkpoint's model differs from the one a caller needs.
    #[error("checkpoint holds a {actual}, expected a {expected}")]
    SpecMismatch {
        /// The model the caller needs.
        expected: String,
        /// The model in the checkpoint.
        actual: String,
    },
}

impl Checkpoint {
    /// Checks that the checkpoint's model is `spec`, e.g. before a federation starts from it.
    pub fn expect_spec(&self, spec: &ModelSpec) -> Result<(), CheckpointError> {
        if &self.spec != spec {
            return Err(CheckpointError::SpecMismatch {
                expected: describe(spec),
                actual: describe(&self.spec),
            });
        }
        Ok(())
    }
}

/// Serializes `checkpoint` to safetensors bytes, after checking that its parameters fit its
/// spec and its schema has the spec's width.
pub fn save(checkpoint: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    let spec = &checkpoint.spec;
    spec.check()?;
    if checkpoint.params.len() != spec.n_params() {
        return Err(ModelError::ParamCount {
            expected: spec.n_params(),
            actual: checkpoint.params.len(),
        }
        .into());
    }
    if let Some(index) = checkpoint.params.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFiniteParam { index }.into());
    }
    check_schema(spec, &checkpoint.schema)?;

    let bytes: Vec<u8> = checkpoint
        .params
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    let mut views = Vec::with_capacity(2 * spec.n_layers());
    let mut offset = 0;
    for (name, shape) in tensor_layout(spec) {
        let len = shape.iter().product::<usize>() * 4;
        let view = TensorView::new(Dtype::F32, shape, &bytes[offset..offset + len])?;
        views.push((name, view));
        offset += len;
    }
    let metadata = HashMap::from([
        ("format".to_owned(), FORMAT.to_owned()),
        ("format_version".to_owned(), FORMAT_VERSION.to_owned()),
        ("model_kind".to_owned(), spec.kind.name().to_owned()),
        ("hidden".to_owned(), to_json(&spec.kind.hidden())?),
        ("n_inputs".to_owned(), spec.n_inputs.to_string()),
        ("schema".to_owned(), to_json(&checkpoint.schema)?),
        ("federation".to_owned(), checkpoint.federation.clone()),
        ("version".to_owned(), checkpoint.version.to_string()),
    ]);
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// Parses and validates safetensors bytes written by [`save`] (or by anyone following the
/// layout in the module documentation).
pub fn load(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let file = SafeTensors::deserialize(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let empty = HashMap::new();
    let metadata = header.metadata().as_ref().unwrap_or(&empty);
    let field = |key: &str| {
        metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| CheckpointError::Metadata(format!("no {key:?} entry")))
    };
    let bad = |key: &str, err: &dyn std::fmt::Display| {
        CheckpointError::Metadata(format!("cannot read {key:?}: {err}"))
    };
    if field("format")? != FORMAT {
        return Err(CheckpointError::Metadata(format!(
            "format is {:?}, not {FORMAT:?}",
            field("format")?
        )));
    }
    let format_version = field("format_version")?;
    if format_version != FORMAT_VERSION {
        return Err(CheckpointError::Metadata(format!(
            "format version {format_version:?} is not supported (this build reads {FORMAT_VERSION:?})"
        )));
    }
    let hidden: Vec<usize> =
        serde_json::from_str(field("hidden")?).map_err(|err| bad("hidden", &err))?;
    let kind = ModelKind::from_name(field("model_kind")?, hidden)?;
    let n_inputs: usize = field("n_inputs")?
        .parse()
        .map_err(|err| bad("n_inputs", &err))?;
    let schema: Schema =
        serde_json::from_str(field("schema")?).map_err(|err| bad("schema", &err))?;
    schema
        .validate()
        .map_err(|err| CheckpointError::Metadata(err.to_string()))?;
    let federation = field("federation")?.to_owned();
    let version: u64 = field("version")?
        .parse()
        .map_err(|err| bad("version", &err))?;
    let spec = ModelSpec { kind, n_inputs };
    spec.check()?;
    check_schema(&spec, &schema)?;

    let layout = tensor_layout(&spec);
    if let Some(extra) = file
        .names()
        .into_iter()
        .find(|name| !layout.iter().any(|(expected, _)| expected == name))
    {
        return Err(CheckpointError::UnexpectedTensor(extra.to_owned()));
    }
    let mut params = Vec::with_capacity(spec.n_params());
    for (name, shape) in layout {
        let view = file
            .tensor(&name)
            .map_err(|_| CheckpointError::MissingTensor(name.clone()))?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                tensor: name,
                actual: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape.as_slice() {
            return Err(CheckpointError::Shape {
                tensor: name,
                expected: shape,
                actual: view.shape().to_vec(),
                model: describe(&spec),
            });
        }
        let start = params.len();
        params.extend(
            view.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        if let Some(index) = params[start..].iter().position(|v| !v.is_finite()) {
            return Err(CheckpointError::NonFinite {
                tensor: name,
                index,
            });
        }
    }
    Ok(Checkpoint {
        spec,
        schema,
        params,
        federation,
        version,
    })
}

/// [`save`] to a file.
pub fn save_file(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let bytes = save(checkpoint)?;
    std::fs::write(path, bytes).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })
}

/// [`load`] from a file.
pub fn load_file(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    load(&bytes)
}

fn to_json(value: &impl serde::Serialize) -> Result<String, CheckpointError> {
    serde_json::to_string(value).map_err(|err| CheckpointError::Metadata(err.to_string()))
}

/// Tensor names and shapes, in flat-vector order.
fn tensor_layout(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    spec.layer_dims()
        .into_iter()
        .enumerate()
        .flat_map(|(layer_idx, (n_in, n_out))| {
            [
                (format!("layers.{layer_idx}.weight"), vec![n_in, n_out]),
                (format!("layers.{layer_idx}.bias"), vec![n_out]),
            ]
        })
        .collect()
}

fn check_schema(spec: &ModelSpec, schema: &Schema) -> Result<(), CheckpointError> {
    if schema.n_inputs() != spec.n_inputs {
        return Err(CheckpointError::Metadata(format!(
            "the schema encodes {} inputs, the model takes {}",
            schema.n_inputs(),
            spec.n_inputs
        )));
    }
    Ok(())
}

/// E.g. `mlp [16] on 17 inputs`.
fn describe(spec: &ModelSpec) -> String {
    match spec.kind {
        ModelKind::LogisticRegression => format!("logistic_regression on {} inputs", spec.n_inputs),
        _ => format!(
            "{} {:?} on {} inputs",
            spec.kind.name(),
            spec.kind.hidden(),
            spec.n_inputs
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;

    fn checkpoint(kind: ModelKind) -> Checkpoint {
        let schema = presets::heart_disease();
        let spec = ModelSpec {
            kind,
            n_inputs: schema.n_inputs(),
        };
        let params = spec.init_params(5);
        Checkpoint {
            spec,
            schema,
            params,
            federation: "heart-disease".to_owned(),
            version: 12,
        }
    }

    /// Rewrites the tensors of a checkpoint's bytes, keeping its metadata.
    fn rewrite(bytes: &[u8], tensors: Vec<(&str, Vec<usize>, Vec<f32>)>) -> Vec<u8> {
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape, values)| {
                let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.to_owned(), shape, data)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(name, shape, data)| {
                let view = TensorView::new(Dtype::F32, shape.clone(), data).unwrap();
                (name.clone(), view)
            })
            .collect();
        safetensors::serialize(views, header.metadata().clone()).unwrap()
    }

    #[test]
    fn round_trips_bit_exactly() {
        for kind in [
            ModelKind::LogisticRegression,
            ModelKind::Mlp { hidden: vec![8, 4] },
            ModelKind::Personalized { hidden: vec![16] },
        ] {
            let mut original = checkpoint(kind);
            // Values whose bits a decimal round trip could lose.
            original.params[0] = f32::MIN_POSITIVE;
            original.params[1] = -0.0;
            original.params[2] = 1.0 + f32::EPSILON;
            let loaded = load(&save(&original).unwrap()).unwrap();
            assert_eq!(loaded, original);
            let bits = |p: &[f32]| p.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&loaded.params), bits(&original.params));
        }
    }

    #[test]
    fn tensors_have_burn_names_and_shapes() {
        let original = checkpoint(ModelKind::Mlp { hidden: vec![16] });
        let bytes = save(&original).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "layers.0.bias",
                "layers.0.weight",
                "layers.1.bias",
                "layers.1.weight"
            ]
        );
        assert_eq!(file.tensor("layers.0.weight").unwrap().shape(), [17, 16]);
        assert_eq!(file.tensor("layers.1.weight").unwrap().shape(), [16, 1]);
        // The weight is row-major [n_in, n_out]: element (0, 1) is flat parameter 1.
        let weight = file.tensor("layers.0.weight").unwrap();
        let second = f32::from_le_bytes(weight.data()[4..8].try_into().unwrap());
        assert_eq!(second, original.params[1]);
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = header.metadata().clone().unwrap();
        assert_eq!(metadata["model_kind"], "mlp");
        assert_eq!(metadata["hidden"], "[16]");
        assert_eq!(metadata["federation"], "heart-disease");
        assert_eq!(metadata["version"], "12");
        let schema: Schema = serde_json::from_str(&metadata["schema"]).unwrap();
        assert_eq!(schema, original.schema);
    }

    #[test]
    fn a_wrong_shape_is_a_clear_error() {
        let original = checkpoint(ModelKind::Mlp { hidden: vec![4] });
        let bytes = save(&original).unwrap();
        // 17 inputs x 4 hidden stored as [4, 17]: same number of values, wrong shape.
        let p = &original.params;
        let wrong = rewrite(
            &bytes,
            vec![
                ("layers.0.weight", vec![4, 17], p[..68].to_vec()),
                ("layers.0.bias", vec![4], p[68..72].to_vec()),
                ("layers.1.weight", vec![4, 1], p[72..76].to_vec()),
                ("layers.1.bias", vec![1], p[76..].to_vec()),
            ],
        );
        let err = load(&wrong).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor layers.0.weight has shape [4, 17], but the mlp [4] on 17 inputs needs [17, 4]"
        );

        let missing = rewrite(
            &bytes,
            vec![("layers.0.weight", vec![17, 4], p[..68].to_vec())],
        );
        assert!(matches!(
            load(&missing),
            Err(CheckpointError::MissingTensor(name)) if name == "layers.0.bias"
        ));
        let extra = rewrite(
            &bytes,
            vec![
                ("layers.0.weight", vec![17, 4], p[..68].to_vec()),
                ("layers.0.bias", vec![4], p[68..72].to_vec()),
                ("layers.1.weight", vec![4, 1], p[72..76].to_vec()),
                ("layers.1.bias", vec![1], p[76..].to_vec()),
                ("layers.2.weight", vec![1, 1], vec![0.0]),
            ],
        );
        assert_eq!(
            load(&extra).unwrap_err().to_string(),
            "unexpected tensor layers.2.weight"
        );
        let mut nan = p.to_vec();
        nan[70] = f32::NAN;
        let non_finite = rewrite(
            &bytes,
            vec![
                ("layers.0.weight", vec![17, 4], nan[..68].to_vec()),
                ("layers.0.bias", vec![4], nan[68..72].to_vec()),
                ("layers.1.weight", vec![4, 1], nan[72..76].to_vec()),
                ("layers.1.bias", vec![1], nan[76..].to_vec()),
            ],
        );
        assert_eq!(
            load(&non_finite).unwrap_err().to_string(),
            "tensor layers.0.bias holds a non-finite value at index 2"
        );
    }

    #[test]
    fn bad_metadata_and_bytes_are_errors() {
        assert!(matches!(
            load(b"not a checkpoint"),
            Err(CheckpointError::Safetensors(_))
        ));
        // A valid safetensors file without our metadata.
        let data = [0u8; 4];
        let view = TensorView::new(Dtype::F32, vec![1], &data).unwrap();
        let foreign = safetensors::serialize([("x", view)], None).unwrap();
        assert_eq!(
            load(&foreign).unwrap_err().to_string(),
            "checkpoint metadata: no \"format\" entry"
        );
        // Parameters that do not fit the spec are refused when saving.
        let mut short = checkpoint(ModelKind::LogisticRegression);
        short.params.pop();
        assert!(matches!(
            save(&short),
            Err(CheckpointError::Model(ModelError::ParamCount { .. }))
        ));
    }

    #[test]
    fn expect_spec_names_both_models() {
        let loaded = checkpoint(ModelKind::Mlp { hidden: vec![16] });
        loaded.expect_spec(&loaded.spec.clone()).unwrap();
        let other = ModelSpec {
            kind: ModelKind::LogisticRegression,
            n_inputs: 17,
        };
        assert_eq!(
            loaded.expect_spec(&other).unwrap_err().to_string(),
            "checkpoint holds a mlp [16] on 17 inputs, expected a logistic_regression on 17 inputs"
        );
    }

    #[test]
    fn files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let original = checkpoint(ModelKind::Mlp { hidden: vec![3] });
        save_file(&path, &original).unwrap();
        assert_eq!(load_file(&path).unwrap(), original);
        assert!(matches!(
            load_file(&dir.path().join("absent")),
            Err(CheckpointError::Io { .. })
        ));
    }
}
