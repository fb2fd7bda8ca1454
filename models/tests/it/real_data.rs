//! End-to-end checks on the bundled real data sets (`/data` at the workspace root).

use std::io::Write;
use std::path::PathBuf;

use harambee_models::{
    DataError, Dataset, ModelKind, ModelSpec, Optimizer, TrainConfig, evaluate, load_csv,
    load_csv_report, presets, split_holdout, train,
};

fn data_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name)
}

fn heart() -> Dataset {
    load_csv(
        &data_file("heart_disease_uci_4sites.csv"),
        &presets::heart_disease(),
    )
    .unwrap()
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 30,
        batch_size: 32,
        learning_rate: 0.01,
        optimizer: Optimizer::Adam,
        seed: 7,
        proximal_mu: 0.0,
        frozen_layers: 0,
    }
}

#[test]
fn models_heart_preset_loads_all_rows() {
    let data = heart();
    assert_eq!(data.n_rows(), 920);
    assert_eq!(data.n_inputs, 17);
    assert_eq!(data.x.len(), 920 * 17);
    assert_eq!(
        data.y.iter().filter(|&&y| y == 1.0).count(),
        139 + 106 + 115 + 149
    );
    // The most extreme value is chol 603 mg/dl: (603 - 200) / 40 = 10.075.
    assert!(data.x.iter().all(|x| x.is_finite() && x.abs() < 10.1));
    // chol (input 4) is missing for every Switzerland row: value 0, indicator (input 5) 1.
    // The first Switzerland row follows 303 Cleveland and 294 Hungary rows.
    let swiss = data.row(303 + 294);
    assert_eq!((swiss[4], swiss[5]), (0.0, 1.0));
    // The first Cleveland row has chol 233: (233 - 200) / 40, not missing.
    assert_eq!((data.row(0)[4], data.row(0)[5]), (33.0 / 40.0, 0.0));
}

#[test]
fn models_breast_cancer_preset_loads_all_rows() {
    let data = load_csv(
        &data_file("breast_cancer_wisconsin_diagnostic.csv"),
        &presets::breast_cancer(),
    )
    .unwrap();
    assert_eq!((data.n_rows(), data.n_inputs), (569, 30));
    assert_eq!(data.y.iter().filter(|&&y| y == 1.0).count(), 212);
    // The published ranges, rounded to 3 decimals, cover the data up to that rounding.
    let max_abs = data.x.iter().fold(0.0f32, |max, x| max.max(x.abs()));
    assert!((1.0..1.05).contains(&max_abs), "{max_abs}");
}

#[test]
fn models_heart_split_is_reproducible() {
    let (train_a, test_a) = split_holdout(&heart(), 0.25, 2024);
    let (train_b, test_b) = split_holdout(&heart(), 0.25, 2024);
    assert_eq!(train_a, train_b);
    assert_eq!(test_a, test_b);
    assert!(
        (180..280).contains(&test_a.n_rows()),
        "{} test rows",
        test_a.n_rows()
    );
}

/// Trains on 75 % of the pooled four sites and returns the held-out AUC.
fn held_out_auc(kind: ModelKind) -> f64 {
    let (train_set, test_set) = split_holdout(&heart(), 0.25, 2024);
    let spec = ModelSpec {
        kind,
        n_inputs: train_set.n_inputs,
    };
    let initial = spec.init_params(1);
    let report = train(&spec, &initial, &train_set, &config()).unwrap();
    let before = evaluate(&spec, &initial, &train_set).unwrap();
    let after = evaluate(&spec, &report.params, &train_set).unwrap();
    assert!(
        after.loss < before.loss,
        "training loss {} -> {}",
        before.loss,
        after.loss
    );
    let held_out = evaluate(&spec, &report.params, &test_set).unwrap();
    eprintln!(
        "{spec:?}: train loss {:.3} -> {:.3}, held out {held_out:?}",
        before.loss, after.loss
    );
    held_out.auc
}

#[test]
fn models_logistic_regression_reaches_held_out_auc_above_0_80() {
    let auc = held_out_auc(ModelKind::LogisticRegression);
    assert!(auc > 0.80, "held-out AUC {auc}");
}

#[test]
fn models_mlp_reaches_held_out_auc_above_0_80() {
    let auc = held_out_auc(ModelKind::Mlp { hidden: vec![32] });
    assert!(auc > 0.80, "held-out AUC {auc}");
}

#[test]
fn models_a_bad_value_is_missing_and_named_by_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heart.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    let header = "site,source_row,age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num,target";
    writeln!(file, "{header}").unwrap();
    writeln!(file, "cleveland,1,63,1,1,145,233,1,2,150,0,2.3,3,0,6,0,0").unwrap();
    writeln!(file, "cleveland,2,67,1,4,160,abc,0,2,108,1,1.5,2,3,3,2,1").unwrap();
    drop(file);

    let loaded = load_csv_report(&path, &presets::heart_disease()).unwrap();
    assert_eq!(
        loaded.data.n_rows(),
        2,
        "the row is kept, its cholesterol missing"
    );
    let issue = &loaded.report.issues[0];
    assert_eq!((issue.line, issue.column.as_deref()), (3, Some("chol")));
    assert_eq!(
        issue.to_string(),
        "heart.csv: line 3, column chol: cannot read \"abc\" as a number"
    );
    // chol's input and its missing indicator (inputs 4 and 5).
    assert_eq!(&loaded.data.row(1)[4..6], [0.0, 1.0]);
}

#[test]
fn models_missing_file_error_names_the_path() {
    let path = data_file("no_such_file.csv");
    let err = load_csv(&path, &presets::heart_disease()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("no_such_file.csv"), "{err}");
}

#[test]
fn models_breast_cancer_logistic_regression_separates_the_classes() {
    let data = load_csv(
        &data_file("breast_cancer_wisconsin_diagnostic.csv"),
        &presets::breast_cancer(),
    )
    .unwrap();
    let (train_set, test_set) = split_holdout(&data, 0.25, 2024);
    let spec = ModelSpec {
        kind: ModelKind::LogisticRegression,
        n_inputs: data.n_inputs,
    };
    let report = train(&spec, &spec.init_params(1), &train_set, &config()).unwrap();
    let held_out = evaluate(&spec, &report.params, &test_set).unwrap();
    eprintln!("{spec:?}: held out {held_out:?}");
    assert!(held_out.auc > 0.95, "{held_out:?}");
}
