//! The README's first command, in a debug build: the demo runs a federation of agent
//! processes on the bundled data and its global model comes within 0.03 AUC of pooled training.

use std::process::Command;

/// Runs `harambee-sim demo ARGS --rounds ROUNDS` in a temporary directory; checks that it
/// succeeded and committed its last round, and returns its output and summary.
fn run_demo(dir: &std::path::Path, args: &[&str], rounds: u32) -> (String, serde_json::Value) {
    let summary = dir.join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .arg("demo")
        .args(args)
        .args(["--rounds", &rounds.to_string(), "--dir"])
        .arg(dir.join("demo"))
        .arg("--summary-json")
        .arg(&summary)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("round {rounds}: committed model version {rounds}")),
        "{stdout}"
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["rounds_committed"], rounds);
    (stdout, s)
}

#[test]
fn demo_runs_and_matches_pooled_training() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, s) = run_demo(dir.path(), &[], 3);
    let global = s["global"]["auc"].as_f64().unwrap();
    let pooled = s["pooled"]["auc"].as_f64().unwrap();
    assert!(pooled > 0.8, "pooled reference AUC {pooled}");
    assert!(
        (pooled - global).abs() <= 0.03,
        "federated AUC {global} vs pooled {pooled}"
    );
    assert_eq!(
        s["secure_aggregation"], true,
        "the demo runs with secure aggregation"
    );
    let plain = s["plain"]["auc"].as_f64().unwrap();
    assert!(
        (plain - global).abs() <= 0.01,
        "secure {global} vs plain {plain}: secure aggregation must cost no quality"
    );
    let facilities = s["facilities"].as_array().unwrap();
    let names: Vec<&str> = facilities
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cleveland", "hungary", "switzerland", "va-long-beach"]
    );
    assert!(
        facilities
            .iter()
            .all(|f| f["samples"].as_u64().unwrap() > 0)
    );
    let model =
        harambee_models::checkpoint::load_file(&dir.path().join("demo/model.safetensors")).unwrap();
    assert_eq!(model.version, 3);

    // Patient-level DP: every facility's ε, from the receipts in the ledger, is what its
    // accountant gives for 3 rounds of each of the two federations (5 epochs at q = 0.1:
    // 50 steps a round), within its budget; and the ledger verifies against every log.
    let (_, z, q) = harambee_sim::demo::DEMO_DP_SGD;
    let expected = harambee_privacy::accountant::epsilon(
        z,
        q,
        2 * 3 * harambee_models::dp::dp_steps(5, q),
        1e-5,
    )
    .unwrap()
    .epsilon;
    let spent = s["privacy"]["epsilon"].as_object().unwrap();
    assert_eq!(spent.len(), 4, "{spent:?}");
    for (facility, e) in spent {
        let eps = e["epsilon"].as_f64().unwrap();
        assert!(
            (eps - expected).abs() < 1e-6,
            "{facility}: ε {eps}, expected {expected}"
        );
        assert!(eps <= 10.0, "{facility} is over its budget: {eps}");
        assert_eq!(e["contributions"], 6);
    }
    assert_eq!(s["privacy"]["facilities_verified"], 4);
    assert!(
        stdout.contains(
            "audit verify: the ledger verifies and agrees with all 4 facilities' privacy logs"
        ),
        "{stdout}"
    );
}

#[test]
fn privacy_epsilon_prints_the_accountant_value_last() {
    let output = Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args([
            "coordinator",
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.1",
            "--sampling-rate",
            "0.01",
            "--steps",
            "1000",
            "--delta",
            "1e-5",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: f64 = stdout.lines().last().unwrap().parse().unwrap();
    let expected = harambee_privacy::accountant::epsilon(1.1, 0.01, 1000, 1e-5)
        .unwrap()
        .epsilon;
    assert_eq!(last, expected);
    assert!(
        last > 0.5 && last < 2.0,
        "a well-known regime (Abadi et al.: about 1.2) gives {last}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args([
            "coordinator",
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "0",
            "--sampling-rate",
            "0.01",
            "--steps",
            "10",
            "--delta",
            "1e-5",
        ])
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a zero noise multiplier has no finite epsilon"
    );
}

/// The second bundled data set, with binary and categorical columns, end to end: the demo
/// on `--dataset preterm-birth` commits its rounds and reports every clinic's metrics.
#[test]
fn demo_runs_on_the_categorical_preterm_birth_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_, s) = run_demo(dir.path(), &["--dataset", "preterm-birth"], 2);
    let facilities = s["facilities"].as_array().unwrap();
    let names: Vec<&str> = facilities
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ky", "mn", "ms", "ny"]);
    // Each clinic trained on its rows (the 9 lost to follow-up left out) and reported
    // metrics on its held-out rows (over min_cohort = 20).
    let trained: u64 = facilities
        .iter()
        .map(|f| f["samples"].as_u64().unwrap())
        .sum();
    let tested: u64 = facilities
        .iter()
        .map(|f| f["test_samples"].as_u64().unwrap())
        .sum();
    assert_eq!(trained + tested, 823 - 9, "{facilities:?}");
    for f in facilities {
        assert!(f["test_samples"].as_u64().unwrap() >= 20, "{f}");
        assert!(f["loss"].as_f64().unwrap().is_finite(), "{f}");
        assert!(f["auc"].as_f64().is_some(), "{f}");
    }
    let model =
        harambee_models::checkpoint::load_file(&dir.path().join("demo/model.safetensors")).unwrap();
    assert_eq!(model.version, 2);
    assert_eq!(model.schema, harambee_models::presets::preterm_birth());
    assert_eq!(s["privacy"]["facilities_verified"], 4);
}
