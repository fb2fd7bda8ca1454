//! Harambee's models: binary classifiers over tabular clinical data, their local training and
//! evaluation, and the loading of the tables they train on.
//!
//! - [`data`]: a declared [`Schema`] (label or label rule; numeric features with fixed
//!   standardisation, units and plausible ranges; binary and categorical features with the
//!   federation's vocabulary; derived ages; missing-value tokens) and CSV loading into a dense
//!   [`Dataset`], with a [`DataReport`] naming the file, line and column of every value that
//!   could not be used (none stops a load); deterministic hold-out splits.
//! - [`fhir`]: the same rows from a FHIR R4 Bulk Data export (NDJSON), by the schema's
//!   mapping of features to LOINC/SNOMED codes and resource paths.
//! - [`presets`]: federation-fixed schemas for the bundled heart-disease (CSV and FHIR),
//!   breast-cancer and periodontal-therapy (preterm birth, categorical) data.
//! - [`model`]: logistic regression, MLPs and personalized MLPs (FedPer: federated body, local
//!   head) as burn modules, exchanged as flat `f32` vectors whose layout is fixed by the
//!   [`ModelSpec`].
//! - [`train`](mod@train): mini-batch training (Adam or SGD, optional FedProx proximal term and
//!   frozen layers), local fine-tuning, prediction and evaluation on the CPU.
//! - [`dp`]: patient-level differentially private training (DP-SGD: Poisson sampling,
//!   per-example clipping, Gaussian noise), reporting the steps, sampling rate and noise
//!   multiplier the agent's privacy accountant composes.
//! - [`metrics`]: loss, accuracy, ROC AUC, sensitivity, specificity and calibration (ECE), and
//!   their sample-weighted mean (no burn).
//! - [`text`]: a pretrained BERT-family text encoder (all-MiniLM-L6-v2) loaded from safetensors
//!   with its WordPiece tokenizer, sentence embeddings, and LoRA adapters plus a classification
//!   head for federated fine-tuning, exported in the layout Python's PEFT loads.
//! - [`checkpoint`]: export and import of a model with its kind and feature schema as
//!   safetensors, readable from Python.
//!
//! This crate does no networking, no async and no aggregation: it turns a parameter vector and a
//! local table into a new parameter vector or metrics, synchronously and deterministically for a
//! given seed (or seeded RNG). Callers in async code should run [`train()`] and [`train_dp()`]
//! on a blocking thread. It reads and writes files only when asked to ([`load_csv`], [`load_fhir`],
//! [`checkpoint::load_file`], [`checkpoint::save_file`]) and keeps no global state.

pub mod checkpoint;
pub mod data;
pub mod dp;
pub mod fhir;
pub mod metrics;
pub mod model;
pub mod presets;
pub mod text;
pub mod train;

mod rng;

pub use data::{
    DataError, DataReport, Dataset, Feature, FeatureKind, Issue, IssueKind, LabelRule, Loaded,
    Schema, load_csv, load_csv_report, parse_csv, parse_csv_report, split_holdout,
};
pub use dp::{DpSgdConfig, DpSgdReport, dp_steps, train_dp};
pub use fhir::{FhirSource, load_fhir};
pub use metrics::Metrics;
pub use model::{ModelError, ModelKind, ModelSpec};
pub use train::{
    FineTuneConfig, Optimizer, TrainConfig, TrainReport, evaluate, evaluate_at, fine_tune, predict,
    train,
};
