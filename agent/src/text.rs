//! A facility's side of a `minilm_lora` federation: the pinned base model and the facility's
//! labelled texts, with the frozen layers' output per text computed once and kept for the
//! federation's later rounds and evaluations (it depends only on the base model, the texts
//! and the task, all fixed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use harambee_models::text::train::{Features, TextDataset};
use harambee_models::text::{Minilm, TextClassifierSpec, TextError, TextTask};
use tracing::{info, warn};

use crate::config::DataConfig;

/// The federation's pinned base model, and this facility's texts ready to train on.
pub(crate) struct TextLocal {
    pub model: Minilm,
    pub spec: TextClassifierSpec,
    pub train: Features,
    pub train_labels: Vec<usize>,
    pub test: Features,
    pub test_labels: Vec<usize>,
}

/// Why a facility cannot take part.
pub(crate) enum Unavailable {
    /// Its copy of the base model is missing, unreadable or not the one the federation pins.
    Base(anyhow::Error),
    /// Its texts cannot be read.
    Data(anyhow::Error),
}

/// [`TextLocal`] per federation, loaded on first use.
#[derive(Default)]
pub(crate) struct TextCache {
    loaded: Mutex<HashMap<String, (TextTask, Arc<TextLocal>)>>,
}

impl TextCache {
    /// The federation's [`TextLocal`], loading it (blocking: the frozen layers run on every
    /// text) unless it is loaded already for the same task.
    pub fn get(
        &self,
        federation: &str,
        task: &TextTask,
        data: &DataConfig,
    ) -> Result<Arc<TextLocal>, Unavailable> {
        // Held while loading, so that a round's training and evaluation load once.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, local)) = loaded.get(federation)
            && cached == task
        {
            return Ok(local.clone());
        }
        let local = Arc::new(load(task, data)?);
        loaded.insert(federation.to_owned(), (task.clone(), local.clone()));
        Ok(local)
    }
}

fn base_dir(data: &DataConfig) -> anyhow::Result<PathBuf> {
    data.base_model_dir
        .clone()
        .or_else(harambee_models::text::default_dir)
        .context("no base model directory: set [data] base_model_dir or $HARAMBEE_MINILM_DIR")
}

fn load(task: &TextTask, data: &DataConfig) -> Result<TextLocal, Unavailable> {
    let dir = base_dir(data).map_err(Unavailable::Base)?;
    // The pin first: nothing is computed with weights the federation did not choose.
    let model = Minilm::load_pinned(&dir, &task.base_sha256).map_err(|e| {
        Unavailable::Base(anyhow::Error::new(e).context(format!("base model in {}", dir.display())))
    })?;
    let spec = task.classifier();
    let wrap = |e: TextError| Unavailable::Data(e.into());
    model
        .check_spec(&spec)
        .map_err(|e| Unavailable::Base(e.into()))?;
    if data.csv.as_os_str().is_empty() {
        return Err(Unavailable::Data(anyhow::anyhow!(
            "a minilm_lora federation reads [data] csv (a CSV or TSV file of texts)"
        )));
    }
    let (all, skipped) = task.load(&data.csv).map_err(wrap)?;
    if skipped > 0 {
        warn!(
            skipped,
            "rows whose label is not one of the federation's classes were skipped"
        );
    }
    let (train, test): (TextDataset, TextDataset) =
        all.split_holdout(data.holdout_fraction, data.split_seed);
    let started = std::time::Instant::now();
    let train_features =
        Features::compute(&model, &spec, &train.texts, task.max_tokens).map_err(wrap)?;
    let test_features =
        Features::compute(&model, &spec, &test.texts, task.max_tokens).map_err(wrap)?;
    info!(
        train = train.len(),
        held_out = test.len(),
        frozen_layers = spec.first_adapted_layer(),
        secs = started.elapsed().as_secs_f32(),
        "texts encoded through the frozen layers"
    );
    Ok(TextLocal {
        model,
        spec,
        train: train_features,
        train_labels: train.labels,
        test: test_features,
        test_labels: test.labels,
    })
}
