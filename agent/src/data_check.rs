//! `harambee-agent data check --config agent.toml`: the facility's data against each
//! federation schema the agent knows (the ones recorded in `schemas.json` from tasks, or a
//! federation's file given with `--schema` before joining), printed here and sent nowhere.
//!
//! For each schema: rows read, usable and left out; the label balance; per feature the
//! missing, out-of-range and unreadable values and the unseen categories; whether the
//! training rows reach `policy.min_samples` and the held-out rows `policy.min_cohort`; and
//! every hard error (a value that cannot be read, a label that cannot be read, a broken row)
//! with its file, line and column. It exits non-zero on any hard error, on a source the
//! schema cannot read at all, and when `min_samples` is not met (the agent would decline
//! every round). The report quotes values from the data: it is for the facility's own eyes,
//! unlike `doctor`'s.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use harambee_models::data::{DataReport, Schema, split_holdout};
use serde::Serialize;

use crate::config::AgentConfig;
use crate::doctor::Output;

/// `harambee-agent data check` arguments.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The agent's configuration file.
    #[arg(long, default_value = "agent.toml")]
    pub config: PathBuf,
    /// A federation's configuration (`federation.toml`, whose `[schema]` is read) or a
    /// schema alone (TOML or JSON), as the national unit sends it before the facility joins.
    /// Without it: every federation schema this agent has received.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    pub output: Output,
}

/// The check of one schema.
#[derive(Clone, Debug, Serialize)]
pub struct SchemaCheck {
    /// The federation, or the file the schema came from.
    pub federation: String,
    /// The CSV file or FHIR directory read.
    pub data: String,
    /// Whether this schema's check passed.
    pub ok: bool,
    /// Why the source could not be used at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was read (absent when `error` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<DataReport>,
    /// Rows the agent would train on, and the policy's minimum.
    pub training_rows: u64,
    pub min_samples: u64,
    pub min_samples_met: bool,
    /// Rows held out for evaluation, and the size below which metrics are withheld.
    pub held_out_rows: u64,
    pub min_cohort: u64,
    pub min_cohort_met: bool,
}

/// The whole check.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    pub ok: bool,
    pub schemas: Vec<SchemaCheck>,
}

/// Runs the command: prints the report, returns whether it passed.
pub fn run(args: &CheckArgs) -> anyhow::Result<bool> {
    let config = AgentConfig::load(&args.config)?;
    let schemas = match &args.schema {
        Some(path) => BTreeMap::from([(path.display().to_string(), read_schema(path)?)]),
        None => {
            let known = crate::status::read_schemas(&config.state_dir)?;
            if known.is_empty() {
                anyhow::bail!(
                    "this agent has no federation schema yet (the coordinator sends it with the first task): pass the federation's file with --schema"
                );
            }
            known
        }
    };
    let checked = check(&config, &schemas);
    match args.output {
        Output::Text => print!("{}", text(&checked)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&checked)?),
    }
    Ok(checked.ok)
}

/// Reads a schema from a federation's TOML (its `[schema]`), a schema's TOML or JSON.
pub fn read_schema(path: &Path) -> anyhow::Result<Schema> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let schema: Schema = if path.extension().is_some_and(|ext| ext == "json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    } else {
        let value: toml::Value =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let table = value.get("schema").cloned().unwrap_or(value);
        table
            .try_into()
            .with_context(|| format!("reading the schema in {}", path.display()))?
    };
    schema
        .validate()
        .with_context(|| format!("in {}", path.display()))?;
    Ok(schema)
}

/// Checks the configured data against each schema.
pub fn check(config: &AgentConfig, schemas: &BTreeMap<String, Schema>) -> Checked {
    let policy = &config.policy;
    let data = config.data.path().display().to_string();
    let checks: Vec<SchemaCheck> = schemas
        .iter()
        .map(|(federation, schema)| match config.data.load(schema) {
            Ok(loaded) => {
                let (train, held_out) = split_holdout(
                    &loaded.data,
                    config.data.holdout_fraction,
                    config.data.split_seed,
                );
                let training_rows = train.n_rows() as u64;
                let held_out_rows = held_out.n_rows() as u64;
                let min_samples_met = training_rows >= policy.min_samples;
                SchemaCheck {
                    federation: federation.clone(),
                    data: data.clone(),
                    ok: loaded.report.hard_errors == 0 && min_samples_met,
                    error: None,
                    report: Some(loaded.report),
                    training_rows,
                    min_samples: policy.min_samples,
                    min_samples_met,
                    held_out_rows,
                    min_cohort: policy.min_cohort,
                    min_cohort_met: held_out_rows >= policy.min_cohort,
                }
            }
            Err(e) => SchemaCheck {
                federation: federation.clone(),
                data: data.clone(),
                ok: false,
                error: Some(e.to_string()),
                report: None,
                training_rows: 0,
                min_samples: policy.min_samples,
                min_samples_met: false,
                held_out_rows: 0,
                min_cohort: policy.min_cohort,
                min_cohort_met: false,
            },
        })
        .collect();
    Checked {
        ok: checks.iter().all(|c| c.ok),
        schemas: checks,
    }
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

/// The report as text, one block per schema.
pub fn text(checked: &Checked) -> String {
    let mut out = String::new();
    for c in &checked.schemas {
        let _ = writeln!(out, "federation {}: {}", c.federation, c.data);
        let Some(r) = &c.report else {
            let _ = writeln!(
                out,
                "  FAIL  {}",
                c.error.as_deref().unwrap_or("cannot read the data")
            );
            continue;
        };
        let share = if r.rows_used > 0 {
            100.0 * r.positives as f64 / r.rows_used as f64
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "  rows: {} read, {} usable, {} left out",
            r.rows_read, r.rows_used, r.rows_left_out
        );
        let _ = writeln!(
            out,
            "  label: {} positive, {} negative ({share:.1} % positive)",
            r.positives, r.negatives
        );
        let _ = writeln!(
            out,
            "  training rows {} (min_samples {}: {}); held out {} (min_cohort {}: {}{})",
            c.training_rows,
            c.min_samples,
            met(c.min_samples_met),
            c.held_out_rows,
            c.min_cohort,
            met(c.min_cohort_met),
            if c.min_cohort_met {
                ""
            } else {
                ", evaluation metrics will be withheld"
            }
        );
        let width = r
            .features
            .iter()
            .map(|f| f.column.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>7}  {:>12}  {:>10}  {:>6}",
            "feature", "missing", "out of range", "unreadable", "unseen"
        );
        for f in &r.features {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>7}  {:>12}  {:>10}  {:>6}",
                f.column, f.missing, f.out_of_range, f.unreadable, f.unseen
            );
        }
        for f in r.features.iter().filter(|f| !f.unseen_values.is_empty()) {
            let values: Vec<String> = f
                .unseen_values
                .iter()
                .map(|(value, n)| format!("{value:?} ×{n}"))
                .collect();
            let _ = writeln!(
                out,
                "  unseen categories of {} (encoded as other): {}",
                f.column,
                values.join(", ")
            );
        }
        let hard: Vec<_> = r.hard_issues().collect();
        if !hard.is_empty() {
            let _ = writeln!(out, "  hard errors ({}):", r.hard_errors);
            for issue in &hard {
                let _ = writeln!(out, "    {issue}");
            }
            if (hard.len() as u64) < r.hard_errors {
                let _ = writeln!(out, "    … and {} more", r.hard_errors - hard.len() as u64);
            }
        }
        let soft = r.issues.iter().filter(|i| !i.kind.is_hard()).count();
        if soft > 0 {
            let _ = writeln!(
                out,
                "  {} more values are outside their range, unseen categories or missing labels (used as missing, as other, or left out):",
                r.issues_total - r.hard_errors
            );
            for issue in r.issues.iter().filter(|i| !i.kind.is_hard()).take(20) {
                let _ = writeln!(out, "    {issue}");
            }
        }
        let _ = writeln!(
            out,
            "  {}",
            if c.ok {
                "ok"
            } else if !c.min_samples_met && r.hard_errors == 0 {
                "FAIL: too few training rows for this facility's min_samples"
            } else {
                "FAIL: fix the hard errors named above"
            }
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if checked.ok {
            "data check passed"
        } else {
            "data check FAILED"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(dir: &Path, data: &str, min_samples: u64) -> AgentConfig {
        std::fs::write(dir.join("data.csv"), data).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "coordinator = \"https://x:1\"\nstate_dir = \"state\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[data]\ncsv = \"data.csv\"\nholdout_fraction = 0.25\n[policy]\nmin_samples = {min_samples}\nmin_cohort = 2\n"
            ),
        )
        .unwrap();
        AgentConfig::load(&path).unwrap()
    }

    fn federation(dir: &Path) -> BTreeMap<String, Schema> {
        let path = dir.join("federation.toml");
        std::fs::write(
            &path,
            r#"name = "pancreatitis"
[model]
kind = "logistic_regression"
[schema]
label = "outcome"
label_rule = { positive = ["1_yes"], negative = ["0_no"] }
[[schema.features]]
column = "gender"
kind = "binary"
positive = ["1_female"]
negative = ["2_male"]
[[schema.features]]
column = "site"
kind = "categorical"
categories = ["1_UM", "2_IU"]
[[schema.features]]
column = "age"
center = 45.0
scale = 15.0
unit = "a"
min = 0.0
max = 120.0
"#,
        )
        .unwrap();
        BTreeMap::from([("pancreatitis".to_owned(), read_schema(&path).unwrap())])
    }

    const GOOD: &str = "site,gender,age,outcome\n1_UM,1_female,26,1_yes\n2_IU,2_male,24,0_no\n1_UM,1_female,57,0_no\n2_IU,1_female,41,0_no\n1_UM,2_male,33,1_yes\n2_IU,1_female,60,0_no\n1_UM,1_female,51,0_no\n2_IU,2_male,38,1_yes\n";

    #[test]
    fn good_data_passes_with_counts_and_the_label_balance() {
        let dir = tempfile::tempdir().unwrap();
        let config = agent(dir.path(), GOOD, 2);
        let checked = check(&config, &federation(dir.path()));
        assert!(checked.ok, "{}", text(&checked));
        let c = &checked.schemas[0];
        let r = c.report.as_ref().unwrap();
        assert_eq!(
            (r.rows_read, r.rows_used, r.positives, r.negatives),
            (8, 8, 3, 5)
        );
        assert_eq!(c.training_rows + c.held_out_rows, 8);
        assert!(c.min_samples_met);
        let shown = text(&checked);
        assert!(
            shown.contains("rows: 8 read, 8 usable, 0 left out"),
            "{shown}"
        );
        assert!(
            shown.contains("3 positive, 5 negative (37.5 % positive)"),
            "{shown}"
        );
        assert!(shown.ends_with("data check passed\n"), "{shown}");
    }

    #[test]
    fn broken_data_fails_naming_file_line_and_column_of_each_hard_error() {
        let dir = tempfile::tempdir().unwrap();
        let broken = format!(
            "{GOOD}3_UK,1_female,300,0_no\n1_UM,female,44,1_yes\n1_UM,1_female,forty,0_no\n1_UM,1_female,44,perhaps\n1_UM,1_female\n2_IU,2_male,50,\n"
        );
        let config = agent(dir.path(), &broken, 2);
        let checked = check(&config, &federation(dir.path()));
        assert!(!checked.ok);
        let shown = text(&checked);
        for expected in [
            "data.csv: line 11, column gender: \"female\" is neither a yes (1_female) nor a no (2_male) of this binary column",
            "data.csv: line 12, column age: cannot read \"forty\" as a number",
            "data.csv: line 13, column outcome: label \"perhaps\" is neither a positive (1_yes) nor a negative (0_no)",
            "data.csv: line 14: expected 4 fields like the header, found 2",
            "hard errors (4):",
            // Soft: counted and listed, not failing the check by themselves.
            "data.csv: line 10, column site: \"3_UK\" is not one of the federation's categories; encoded as other",
            "data.csv: line 10, column age: 300 a is outside the plausible range 0 to 120 a",
            "data.csv: line 15, column outcome: label is missing",
            "unseen categories of site (encoded as other): \"3_UK\" ×1",
            "rows: 14 read, 11 usable, 3 left out",
            "data check FAILED",
        ] {
            assert!(shown.contains(expected), "{expected}\n---\n{shown}");
        }
        let r = checked.schemas[0].report.as_ref().unwrap();
        let age = &r.features[2];
        assert_eq!((age.out_of_range, age.unreadable), (1, 1));

        // The same file without its hard errors passes: soft issues alone do not fail.
        let soft_only = format!("{GOOD}3_UK,1_female,300,0_no\n2_IU,2_male,50,\n");
        let config = agent(dir.path(), &soft_only, 2);
        assert!(check(&config, &federation(dir.path())).ok);
    }

    #[test]
    fn a_missing_column_or_too_few_rows_fails() {
        let dir = tempfile::tempdir().unwrap();
        let config = agent(dir.path(), "site,age,outcome\n1_UM,30,0_no\n", 0);
        let checked = check(&config, &federation(dir.path()));
        assert!(!checked.ok);
        assert_eq!(
            checked.schemas[0].error.as_deref(),
            Some("data.csv: header has no column gender")
        );
        let config = agent(dir.path(), GOOD, 100);
        let checked = check(&config, &federation(dir.path()));
        assert!(!checked.ok);
        assert!(!checked.schemas[0].min_samples_met);
        assert!(text(&checked).contains("(min_samples 100: NOT met)"));
        let json = serde_json::to_value(&checked).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["schemas"][0]["min_samples_met"], false);
        assert_eq!(json["schemas"][0]["report"]["rows_used"], 8);
    }
}
