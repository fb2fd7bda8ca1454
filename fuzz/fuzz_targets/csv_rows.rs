//! A facility's CSV as the agent loads it (`models::data::parse_csv`) against a
//! federation's schema: heart-disease columns with a missing-value token and an
//! indicator. Rows that load are a rectangular table of finite inputs and 0/1 labels;
//! a bad value or row is an issue of the report, a file that cannot be used a
//! `DataError`, never a panic.

#![no_main]

use harambee_models::data::{Feature, Schema, parse_csv};
use libfuzzer_sys::fuzz_target;

fn schema() -> Schema {
    let feature =
        |column: &str, center: f64, scale: f64, missing: &[&str], indicator: bool| Feature {
            column: column.to_owned(),
            center,
            scale,
            missing: missing.iter().map(|m| (*m).to_owned()).collect(),
            indicator,
            ..Feature::default()
        };
    Schema {
        label: "target".to_owned(),
        features: vec![
            feature("age", 54.0, 9.0, &[], false),
            feature("chol", 200.0, 50.0, &["0"], true),
            feature("oldpeak", 1.0, 1.0, &["?", "NA"], false),
        ],
        ..Schema::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let schema = schema();
    let Ok(table) = parse_csv("fuzz.csv", data, &schema) else {
        return;
    };
    assert_eq!(table.n_inputs, schema.n_inputs());
    assert_eq!(table.x.len(), table.y.len() * table.n_inputs);
    assert!(table.y.iter().all(|&y| y == 0.0 || y == 1.0));
    assert!(
        table.x.iter().all(|x| x.is_finite()),
        "a loaded input is not finite"
    );
});
