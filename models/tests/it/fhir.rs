//! FHIR R4 input: the bundled heart data written as a Bulk Data export by
//! `data/heart_to_fhir.py` encodes to exactly the CSV's rows and trains the same model.

use std::path::{Path, PathBuf};
use std::process::Command;

use harambee_models::{
    IssueKind, ModelKind, ModelSpec, Optimizer, TrainConfig, evaluate, load_csv_report, load_fhir,
    presets, split_holdout, train,
};

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
}

/// Runs the repository's converter into `dir`.
fn export(dir: &Path, site: Option<&str>) {
    let mut command = Command::new("python3");
    command
        .arg(repo_file("data/heart_to_fhir.py"))
        .arg("--out")
        .arg(dir);
    if let Some(site) = site {
        command.args(["--site", site]);
    }
    let output = command.output().expect("python3 runs the converter");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn fhir_export_of_the_heart_data_trains_the_same_model_as_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), None);
    let schema = presets::heart_disease_fhir();
    let csv = load_csv_report(&repo_file("data/heart_disease_uci_4sites.csv"), &schema).unwrap();
    let fhir = load_fhir(dir.path(), &schema).unwrap();
    assert_eq!(fhir.data.n_rows(), 920);
    assert_eq!(fhir.data.n_inputs, 17);
    // The same inputs and labels, row for row; the same counts of missing values.
    assert_eq!(fhir.data, csv.data);
    assert_eq!(fhir.report.features, csv.report.features);
    assert_eq!((fhir.report.positives, fhir.report.issues_total), (509, 0));

    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![8] },
        n_inputs: 17,
    };
    let config = TrainConfig {
        epochs: 5,
        batch_size: 32,
        learning_rate: 0.01,
        optimizer: Optimizer::Adam,
        seed: 3,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let init = spec.init_params(11);
    let (csv_train, csv_test) = split_holdout(&csv.data, 0.25, 7);
    let (fhir_train, fhir_test) = split_holdout(&fhir.data, 0.25, 7);
    let from_csv = train(&spec, &init, &csv_train, &config).unwrap();
    let from_fhir = train(&spec, &init, &fhir_train, &config).unwrap();
    let max_diff = from_csv
        .params
        .iter()
        .zip(&from_fhir.params)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-6, "parameters differ by {max_diff}");
    let m_csv = evaluate(&spec, &from_csv.params, &csv_test).unwrap();
    let m_fhir = evaluate(&spec, &from_fhir.params, &fhir_test).unwrap();
    assert!((m_csv.auc - m_fhir.auc).abs() <= 1e-9);
    assert!(m_fhir.auc > 0.8, "{m_fhir:?}");
}

#[test]
fn fhir_bad_resources_are_named_by_file_and_line_and_do_not_stop_the_load() {
    let dir = tempfile::tempdir().unwrap();
    export(dir.path(), Some("cleveland"));
    let observations = dir.path().join("Observation.ndjson");
    let text = std::fs::read_to_string(&observations).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Line 4 is cleveland-1's cholesterol: in mmol/L, which the federation does not expect.
    assert!(lines[3].contains("2093-3"), "{}", lines[3]);
    lines[3] = lines[3].replace("mg/dL", "mmol/L");
    // Line 2 (cleveland-1's chest pain type) becomes a line that is not JSON.
    lines[1] = "{\"resourceType\": \"Observation\", ".to_owned();
    std::fs::write(&observations, lines.join("\n") + "\n").unwrap();

    let loaded = load_fhir(dir.path(), &presets::heart_disease_fhir()).unwrap();
    assert_eq!(loaded.data.n_rows(), 303, "every patient is still a row");
    let shown: Vec<String> = loaded
        .report
        .issues
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("Observation.ndjson: line 2: not JSON"),
        "{shown:?}"
    );
    assert_eq!(
        shown[1],
        "Observation.ndjson: line 4, column chol: unit \"mmol/L\" where the federation expects \"mg/dL\""
    );
    assert_eq!(loaded.report.issues[1].kind, IssueKind::Unreadable);
    // cleveland-1: cp (input 2) and chol (input 4) missing, chol's indicator (input 5) set.
    let row = loaded.data.row(0);
    assert_eq!((row[2], row[4], row[5]), (0.0, 0.0, 1.0));

    // A schema without a FHIR mapping for a feature is refused by name.
    let err = load_fhir(dir.path(), &presets::heart_disease()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the federation's schema has no FHIR mapping for column age",
            dir.path().file_name().unwrap().to_string_lossy()
        )
    );
}
