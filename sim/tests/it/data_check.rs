//! `harambee-agent data check` as a facility runs it before joining: one clinic of the
//! bundled periodontal-therapy trial against the federation's schema file, then the same
//! file with hard errors, which the command names by file, line and column and exits 1.

use std::path::Path;
use std::process::{Command, Output};

use harambee_sim::demo::{self, DemoDataset};

fn data_check(config: &Path, schema: &Path, json: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_harambee-sim"));
    command
        .args(["agent", "data", "check", "--config"])
        .arg(config)
        .arg("--schema")
        .arg(schema);
    if json {
        command.args(["--output", "json"]);
    }
    command.output().unwrap()
}

#[test]
fn data_check_passes_a_clinic_and_names_each_hard_error_of_a_broken_copy() {
    let dir = tempfile::tempdir().unwrap();
    let facilities =
        demo::write_dataset_facilities(dir.path(), DemoDataset::PretermBirth, None).unwrap();
    let ky = facilities.iter().find(|f| f.name == "ky").unwrap();
    let config = demo::write_agent_config(
        ky,
        "https://127.0.0.1:1",
        &dir.path().join("pki"),
        &DemoDataset::PretermBirth.policy(),
    )
    .unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        serde_json::to_vec(&DemoDataset::PretermBirth.schema()).unwrap(),
    )
    .unwrap();

    let output = data_check(&config, &schema, false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Kentucky: 211 women, 3 lost to follow-up (no label), 21 preterm births.
    assert!(
        stdout.contains("rows: 211 read, 208 usable, 3 left out"),
        "{stdout}"
    );
    assert!(stdout.contains("21 positive, 187 negative"), "{stdout}");
    assert!(stdout.contains("label is missing"), "{stdout}");
    assert!(stdout.contains("(min_samples 20: met)"), "{stdout}");
    assert!(stdout.ends_with("data check passed\n"), "{stdout}");

    // Break three values and one row; the rest of the file still loads.
    let csv = ky.dir.join("data.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header: Vec<String> = lines[0].split(',').map(str::to_owned).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut set = |line: usize, column: &str, value: &str| {
        let mut fields: Vec<String> = lines[line - 1].split(',').map(str::to_owned).collect();
        fields[col(column)] = value.to_owned();
        lines[line - 1] = fields.join(",");
    };
    set(3, "Age", "twenty");
    set(10, "Hypertension", "maybe");
    set(5, "Education", "PhD");
    set(6, "BMI", "250");
    lines[7] = "KY,T,30".to_owned();
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();

    let output = data_check(&config, &schema, false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for expected in [
        "data.csv: line 3, column Age: cannot read \"twenty\" as a number",
        "data.csv: line 10, column Hypertension: \"maybe\" is neither a yes (Y) nor a no (N) of this binary column",
        "data.csv: line 8: expected 35 fields like the header, found 3",
        "hard errors (3):",
        "data.csv: line 5, column Education: \"PhD\" is not one of the federation's categories; encoded as other",
        "data.csv: line 6, column BMI: 250 kg/m2 is outside the plausible range 12 to 80 kg/m2",
        "unseen categories of Education (encoded as other): \"PhD\" ×1",
        "data check FAILED",
    ] {
        assert!(stdout.contains(expected), "{expected}\n---\n{stdout}");
    }
    let output = data_check(&config, &schema, true);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = &json["schemas"][0]["report"];
    assert_eq!(report["hard_errors"], 3);
    assert_eq!(report["rows_read"], 211);
    let bmi = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["column"] == "BMI")
        .unwrap();
    assert_eq!(bmi["out_of_range"], 1);
}
