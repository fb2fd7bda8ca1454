//! FedPer on the bundled heart-disease data: what an agent uploads for a personalized model.

use std::path::PathBuf;

use harambee_models::{
    ModelKind, ModelSpec, Optimizer, TrainConfig, evaluate, load_csv, presets, split_holdout, train,
};

fn heart_spec() -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Personalized { hidden: vec![16] },
        n_inputs: presets::heart_disease().n_inputs(),
    }
}

#[test]
fn fedper_uploads_the_body_and_never_the_head() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/heart_disease_uci_4sites.csv");
    let data = load_csv(&path, &presets::heart_disease()).unwrap();
    let (train_rows, test_rows) = split_holdout(&data, 0.25, 7);
    let spec = heart_spec();
    let config = TrainConfig {
        epochs: 5,
        batch_size: 16,
        learning_rate: 0.01,
        optimizer: Optimizer::Adam,
        seed: 3,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let global = spec.init_params(42);
    let trained = train(&spec, &global, &train_rows, &config).unwrap().params;
    assert!(evaluate(&spec, &trained, &test_rows).unwrap().auc > 0.8);

    let upload = spec.shared_update(&trained, &global).unwrap();
    // 17 inputs x 16 hidden + 16 biases; the head is 16 weights + 1 bias.
    assert_eq!(spec.shared_len(), 17 * 16 + 16);
    assert_eq!(upload.len(), spec.shared_len());
    assert_eq!(spec.n_params() - upload.len(), 17);
    for (idx, value) in upload.iter().enumerate() {
        assert_eq!(*value, trained[idx] - global[idx]);
    }

    // Whatever the head holds, locally or in the base, the upload is the same.
    let (trained_body, _) = spec.split_params(&trained).unwrap();
    let (global_body, global_head) = spec.split_params(&global).unwrap();
    let other_head: Vec<f32> = (0..17).map(|i| 1000.0 + i as f32).collect();
    let other_trained = spec.join_params(trained_body, &other_head).unwrap();
    let other_base = spec.join_params(global_body, &other_head).unwrap();
    assert_eq!(spec.shared_update(&other_trained, &global).unwrap(), upload);
    assert_eq!(spec.shared_update(&trained, &other_base).unwrap(), upload);
    // No head value appears in the upload, as a value or as a difference.
    let (_, trained_head) = spec.split_params(&trained).unwrap();
    for head_value in trained_head.iter().chain(global_head) {
        assert!(!upload.contains(head_value), "{head_value} leaked");
    }

    // The facility's model after the round: the new global body with its own head.
    let new_body: Vec<f32> = global_body
        .iter()
        .zip(&upload)
        .map(|(g, u)| g + u)
        .collect();
    let personal = spec.join_params(&new_body, trained_head).unwrap();
    let (personal_body, personal_head) = spec.split_params(&personal).unwrap();
    assert_eq!(personal_head, trained_head);
    for (p, t) in personal_body.iter().zip(trained_body) {
        assert!((p - t).abs() < 1e-6, "{p} vs {t}");
    }
}
