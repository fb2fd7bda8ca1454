//! `bench quality` in a debug build, small: every method is reported for every facility, in the
//! JSON shape the issue asks for, and the pooled reference is a useful model.

use std::process::Command;

const METHODS: [&str; 7] = [
    "local",
    "pooled",
    "fedavg",
    "fedprox",
    "fedadam",
    "fedper",
    "fedavg_finetune",
];
const FACILITIES: [&str; 4] = ["cleveland", "hungary", "switzerland", "va-long-beach"];

#[test]
fn bench_quality_reports_every_method_per_facility() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("quality.json");
    let output = Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args([
            "bench", "quality", "--seeds", "1", "--rounds", "3", "--json",
        ])
        .arg(&json_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for method in METHODS {
        assert!(
            stdout.lines().any(|line| line.starts_with(method)),
            "no table row for {method}:\n{stdout}"
        );
    }

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let object = results.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = METHODS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for method in METHODS {
        let m = &results[method];
        let pooled = m["pooled_auc"]
            .as_f64()
            .unwrap_or_else(|| panic!("{method}: pooled_auc {m}"));
        assert!(
            (0.0..=1.0).contains(&pooled),
            "{method}: pooled_auc {pooled}"
        );
        let facilities = m["facilities"].as_object().unwrap();
        let mut names: Vec<&str> = facilities.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, FACILITIES, "{method}");
        let aucs: Vec<f64> = facilities
            .values()
            .map(|auc| auc.as_f64().unwrap())
            .collect();
        assert!(
            aucs.iter().all(|auc| (0.0..=1.0).contains(auc)),
            "{method}: {aucs:?}"
        );
        // One seed: the worst facility is the minimum of the facilities.
        let worst = m["worst_facility_auc"].as_f64().unwrap();
        assert_eq!(
            worst,
            aucs.iter().copied().fold(f64::INFINITY, f64::min),
            "{method}"
        );
    }
    let pooled = results["pooled"]["pooled_auc"].as_f64().unwrap();
    assert!(pooled > 0.8, "pooled reference AUC {pooled}");
}

/// `bench idle`, small: real mTLS clients hold task streams and heartbeat; the figures are
/// printed and no heartbeat fails.
#[test]
fn bench_idle_reports_memory_per_agent() {
    let output = Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args(["bench", "idle", "--agents", "20", "--hold-s", "1", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(figures["agents"], 20);
    assert_eq!(figures["failed_heartbeats"], 0);
    assert!(figures["rss_with_bytes"].as_u64().unwrap() > 0, "{figures}");
    assert!(figures["bytes_per_agent"].as_f64().is_some(), "{figures}");
}
