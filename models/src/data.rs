//! Tabular data: a declared [`Schema`], CSV loading into a dense [`Dataset`], hold-out splits.
//!
//! The schema fixes, for every input column, the centre and scale used to standardise it and the
//! tokens that mean "not measured". Every facility of a federation encodes its rows with the same
//! schema, so the model sees the same input space everywhere and no facility has to publish its
//! own means or standard deviations.
//!
//! Encoding of one feature value `x`: `(x - center) / scale`. A missing value (an empty field or
//! one of the feature's `missing` tokens, compared after trimming) becomes `0.0`, the
//! federation's centre. With `indicator` set, the feature also gets a second input that is `1.0`
//! when the value was missing and `0.0` otherwise, placed right after the feature's own input.
//! Columns the schema does not name are ignored.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::rng;

/// One input column and how to standardise it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Feature {
    /// Column name in the CSV header.
    pub column: String,
    /// Value subtracted before scaling; also the value a missing entry is imputed with.
    pub center: f64,
    /// Divisor after centring; must be positive and finite.
    pub scale: f64,
    /// Tokens (besides the empty field) that mean "missing", e.g. `"0"` for an unmeasured
    /// cholesterol.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Whether to add a 0/1 "was missing" input after this feature.
    #[serde(default)]
    pub indicator: bool,
}

/// The label column and the ordered input features of a binary classification table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    /// Name of the 0/1 label column.
    pub label: String,
    /// Input features, in model input order.
    pub features: Vec<Feature>,
}

impl Schema {
    /// Number of model inputs: one per feature plus one per missing-value indicator.
    pub fn n_inputs(&self) -> usize {
        self.features.len() + self.features.iter().filter(|f| f.indicator).count()
    }

    /// Checks that the schema can encode data: at least one feature, every centre finite, every
    /// scale positive and finite, no column named twice (the label included).
    pub fn validate(&self) -> Result<(), DataError> {
        let invalid = |reason: String| Err(DataError::InvalidSchema { reason });
        if self.label.trim().is_empty() {
            return invalid("the label column has no name".to_owned());
        }
        if self.features.is_empty() {
            return invalid("no features".to_owned());
        }
        let mut seen = HashSet::from([self.label.as_str()]);
        for feature in &self.features {
            if !seen.insert(feature.column.as_str()) {
                return invalid(format!("column {} is named twice", feature.column));
            }
            if !feature.center.is_finite() {
                return invalid(format!("center of column {} is not finite", feature.column));
            }
            if !(feature.scale.is_finite() && feature.scale > 0.0) {
                return invalid(format!(
                    "scale of column {} must be positive and finite, got {}",
                    feature.column, feature.scale
                ));
            }
        }
        Ok(())
    }
}

/// Encoded rows: standardised inputs and 0/1 labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// Inputs per row.
    pub n_inputs: usize,
    /// Inputs, row-major; `x.len() == n_rows() * n_inputs`.
    pub x: Vec<f32>,
    /// Labels, `0.0` or `1.0`, one per row.
    pub y: Vec<f32>,
}

impl Dataset {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.y.len()
    }

    /// The inputs of row `row_idx`.
    ///
    /// # Panics
    ///
    /// If `row_idx >= self.n_rows()`.
    pub fn row(&self, row_idx: usize) -> &[f32] {
        &self.x[row_idx * self.n_inputs..(row_idx + 1) * self.n_inputs]
    }

    /// Stacks the rows of `parts`, in order. With no parts the result is empty with zero inputs.
    ///
    /// # Panics
    ///
    /// If the parts do not all have the same `n_inputs`: they were encoded with different
    /// schemas, which is a programming error.
    pub fn concat(parts: &[&Dataset]) -> Dataset {
        let n_inputs = parts.first().map_or(0, |part| part.n_inputs);
        assert!(
            parts.iter().all(|part| part.n_inputs == n_inputs),
            "cannot concatenate datasets with different numbers of inputs"
        );
        Dataset {
            n_inputs,
            x: parts
                .iter()
                .flat_map(|part| part.x.iter().copied())
                .collect(),
            y: parts
                .iter()
                .flat_map(|part| part.y.iter().copied())
                .collect(),
        }
    }

    /// A new dataset holding the given rows of `self`, in the given order.
    pub(crate) fn select(&self, row_indices: &[usize]) -> Dataset {
        let mut x = Vec::with_capacity(row_indices.len() * self.n_inputs);
        let mut y = Vec::with_capacity(row_indices.len());
        for &row_idx in row_indices {
            x.extend_from_slice(self.row(row_idx));
            y.push(self.y[row_idx]);
        }
        Dataset {
            n_inputs: self.n_inputs,
            x,
            y,
        }
    }
}

/// Errors reading or encoding a table. Each names its source; value errors also name the 1-based
/// line in the file (the header is line 1) and the column.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The schema itself is unusable.
    #[error("invalid schema: {reason}")]
    InvalidSchema {
        /// What is wrong.
        reason: String,
    },
    /// The file has no header row.
    #[error("{source_name}: file is empty")]
    Empty {
        /// File name or other description of the source.
        source_name: String,
    },
    /// The header lacks a column the schema needs.
    #[error("{source_name}: header has no column {column}")]
    MissingColumn {
        /// File name or other description of the source.
        source_name: String,
        /// The column the schema names.
        column: String,
    },
    /// The file has a header but no data rows.
    #[error("{source_name}: no data rows")]
    NoRows {
        /// File name or other description of the source.
        source_name: String,
    },
    /// The CSV structure is broken (wrong field count, invalid UTF-8, ...).
    #[error("{source_name}: line {line}: {reason}")]
    Malformed {
        /// File name or other description of the source.
        source_name: String,
        /// 1-based line number in the file.
        line: u64,
        /// What the CSV reader reported.
        reason: String,
    },
    /// A field could not be used.
    #[error("{source_name}: line {line}, column {column}: {reason}")]
    Value {
        /// File name or other description of the source.
        source_name: String,
        /// 1-based line number in the file.
        line: u64,
        /// The column.
        column: String,
        /// Why the value was rejected.
        reason: String,
    },
}

/// Reads and encodes the CSV file at `path`. Errors name the file by its final path component.
pub fn load_csv(path: &Path, schema: &Schema) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let source_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    parse_csv(&source_name, std::io::BufReader::new(file), schema)
}

/// Reads and encodes a CSV table (comma-separated, with a header row) from `reader`.
/// `source_name` is only used in error messages.
pub fn parse_csv(
    source_name: &str,
    reader: impl Read,
    schema: &Schema,
) -> Result<Dataset, DataError> {
    schema.validate()?;
    let mut csv_reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);

    let header = csv_reader
        .headers()
        .map_err(|err| csv_error(source_name, err))?
        .clone();
    if header.iter().all(str::is_empty) {
        return Err(DataError::Empty {
            source_name: source_name.to_owned(),
        });
    }
    let column_idx = |column: &str| {
        header
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| DataError::MissingColumn {
                source_name: source_name.to_owned(),
                column: column.to_owned(),
            })
    };
    let label_idx = column_idx(&schema.label)?;
    let encoders = schema
        .features
        .iter()
        .map(|feature| {
            Ok(FeatureEncoder {
                feature,
                field_idx: column_idx(&feature.column)?,
                missing: feature.missing.iter().map(|token| token.trim()).collect(),
            })
        })
        .collect::<Result<Vec<_>, DataError>>()?;

    let n_inputs = schema.n_inputs();
    let mut data = Dataset {
        n_inputs,
        x: Vec::new(),
        y: Vec::new(),
    };
    let mut record = csv::StringRecord::new();
    loop {
        match csv_reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => return Err(csv_error(source_name, err)),
        }
        let line = record.position().map_or(0, csv::Position::line);
        let value_error = |column: &str, reason: String| DataError::Value {
            source_name: source_name.to_owned(),
            line,
            column: column.to_owned(),
            reason,
        };
        // The reader rejects rows whose length differs from the header's, so indices are valid.
        for encoder in &encoders {
            let field = &record[encoder.field_idx];
            match encoder.encode(field) {
                Ok(Some(value)) => {
                    data.x.push(value);
                    if encoder.feature.indicator {
                        data.x.push(0.0);
                    }
                }
                Ok(None) => {
                    data.x.push(0.0);
                    if encoder.feature.indicator {
                        data.x.push(1.0);
                    }
                }
                Err(reason) => return Err(value_error(&encoder.feature.column, reason)),
            }
        }
        let label =
            parse_label(&record[label_idx]).map_err(|reason| value_error(&schema.label, reason))?;
        data.y.push(label);
    }
    if data.y.is_empty() {
        return Err(DataError::NoRows {
            source_name: source_name.to_owned(),
        });
    }
    Ok(data)
}

/// Splits `data` into (train, test). Row `i` goes to test when a hash of `(seed, i)` falls below
/// `test_fraction`, so the split depends only on the seed and the row's position: the same file
/// split twice gives the same split, and about `test_fraction` of the rows land in test.
/// `test_fraction` is clamped to `[0, 1]`; NaN counts as 0.
pub fn split_holdout(data: &Dataset, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let test_fraction = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0)
    };
    let (test_rows, train_rows): (Vec<usize>, Vec<usize>) = (0..data.n_rows())
        .partition(|&row_idx| rng::hash_unit(seed, row_idx as u64) < test_fraction);
    (data.select(&train_rows), data.select(&test_rows))
}

/// One schema feature bound to its field position in the file.
struct FeatureEncoder<'a> {
    feature: &'a Feature,
    field_idx: usize,
    missing: Vec<&'a str>,
}

impl FeatureEncoder<'_> {
    /// The standardised value, `None` when missing, or why the (trimmed) field is unusable.
    fn encode(&self, field: &str) -> Result<Option<f32>, String> {
        if field.is_empty() || self.missing.contains(&field) {
            return Ok(None);
        }
        let value = parse_number(field)?;
        let standardised = ((value - self.feature.center) / self.feature.scale) as f32;
        // A finite value can still overflow f32 once standardised (1e300): refuse it rather
        // than train on an infinite input.
        if !standardised.is_finite() {
            return Err(format!("{field:?} is out of range for this column"));
        }
        Ok(Some(standardised))
    }
}

fn parse_number(field: &str) -> Result<f64, String> {
    let value: f64 = field
        .parse()
        .map_err(|_| format!("cannot read {field:?} as a number"))?;
    if !value.is_finite() {
        return Err(format!("{field:?} is not a finite number"));
    }
    Ok(value)
}

fn parse_label(field: &str) -> Result<f32, String> {
    if field.is_empty() {
        return Err("label is missing".to_owned());
    }
    match field.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        Ok(1.0) => Ok(1.0),
        _ => Err(format!("label must be 0 or 1, got {field:?}")),
    }
}

fn csv_error(source_name: &str, err: csv::Error) -> DataError {
    let line = err.position().map_or(0, csv::Position::line);
    let reason = match err.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields like the header, found {len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
        _ => err.to_string(),
    };
    match err.into_kind() {
        csv::ErrorKind::Io(source) => DataError::Io {
            path: PathBuf::from(source_name),
            source,
        },
        _ => DataError::Malformed {
            source_name: source_name.to_owned(),
            line,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(column: &str, center: f64, scale: f64) -> Feature {
        Feature {
            column: column.to_owned(),
            center,
            scale,
            missing: Vec::new(),
            indicator: false,
        }
    }

    fn schema() -> Schema {
        Schema {
            label: "y".to_owned(),
            features: vec![
                feature("a", 10.0, 2.0),
                Feature {
                    missing: vec!["0".to_owned(), " ? ".to_owned()],
                    indicator: true,
                    ..feature("b", 1.0, 0.5)
                },
            ],
        }
    }

    fn parse(text: &str) -> Result<Dataset, DataError> {
        parse_csv("t.csv", text.as_bytes(), &schema())
    }

    #[test]
    fn encodes_standardised_values_missing_tokens_and_indicators() {
        let data = parse("ignored,b,a,y\nz,1.5,12,1\nz,,8,0\nz, 0 ,10,0.0\nz,?,11,1.0\n").unwrap();
        assert_eq!(data.n_inputs, 3);
        assert_eq!(data.n_rows(), 4);
        assert_eq!(
            data.x,
            vec![1.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0]
        );
        assert_eq!(data.y, vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn value_errors_name_file_line_and_column() {
        let err = parse("a,b,y\n1,1,0\n2,abc,1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: line 3, column b: cannot read \"abc\" as a number"
        );
        let err = parse("a,b,y\nNaN,1,0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: line 2, column a: \"NaN\" is not a finite number"
        );
        let err = parse("a,b,y\n1,inf,0\n").unwrap_err();
        assert!(
            err.to_string().starts_with("t.csv: line 2, column b: "),
            "{err}"
        );
        // Finite, but infinite as an f32 input (`fuzz/fuzz_targets/csv_rows.rs` checks it).
        let err = parse("a,b,y\n1e300,1,0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: line 2, column a: \"1e300\" is out of range for this column"
        );
    }

    #[test]
    fn labels_must_be_present_and_binary() {
        for (text, reason) in [
            ("a,b,y\n1,1,\n", "label is missing"),
            ("a,b,y\n1,1,2\n", "label must be 0 or 1, got \"2\""),
            ("a,b,y\n1,1,yes\n", "label must be 0 or 1, got \"yes\""),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("t.csv: line 2, column y: {reason}")
            );
        }
    }

    #[test]
    fn structural_errors_are_reported() {
        assert_eq!(parse("").unwrap_err().to_string(), "t.csv: file is empty");
        assert_eq!(
            parse("a,b,y\n").unwrap_err().to_string(),
            "t.csv: no data rows"
        );
        assert_eq!(
            parse("a,y\n1,0\n").unwrap_err().to_string(),
            "t.csv: header has no column b"
        );
        assert_eq!(
            parse("a,b,y\n1,1,0\n1,1\n").unwrap_err().to_string(),
            "t.csv: line 3: expected 3 fields like the header, found 2"
        );
    }

    #[test]
    fn validate_rejects_bad_schemas() {
        let mut bad = schema();
        bad.features[0].scale = 0.0;
        assert!(matches!(
            bad.validate(),
            Err(DataError::InvalidSchema { .. })
        ));
        bad.features[0].scale = f64::INFINITY;
        assert!(bad.validate().is_err());
        let mut bad = schema();
        bad.features[1].column = "a".to_owned();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "invalid schema: column a is named twice"
        );
        let mut bad = schema();
        bad.features[1].column = "y".to_owned();
        assert!(bad.validate().is_err());
        let mut bad = schema();
        bad.features.clear();
        assert!(bad.validate().is_err());
        assert!(schema().validate().is_ok());
        assert_eq!(schema().n_inputs(), 3);
    }

    #[test]
    fn split_holdout_is_deterministic_and_roughly_proportional() {
        let n_rows = 2000;
        let data = Dataset {
            n_inputs: 1,
            x: (0..n_rows).map(|i| i as f32).collect(),
            y: (0..n_rows).map(|i| (i % 2) as f32).collect(),
        };
        let (train, test) = split_holdout(&data, 0.25, 42);
        assert_eq!(
            (train.clone(), test.clone()),
            split_holdout(&data, 0.25, 42)
        );
        assert_eq!(train.n_rows() + test.n_rows(), n_rows);
        assert!(
            (400..600).contains(&test.n_rows()),
            "{} test rows",
            test.n_rows()
        );
        // Every row lands on exactly one side, with its label.
        let mut all: Vec<f32> = train.x.iter().chain(&test.x).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, data.x);
        assert!(
            test.x
                .iter()
                .zip(&test.y)
                .all(|(x, y)| (*x as usize % 2) as f32 == *y)
        );
        // Another seed gives another split; the extremes are trivial.
        assert_ne!(split_holdout(&data, 0.25, 43).1, test);
        assert_eq!(split_holdout(&data, 0.0, 1).1.n_rows(), 0);
        assert_eq!(split_holdout(&data, 1.0, 1).0.n_rows(), 0);
    }

    #[test]
    fn a_row_keeps_its_side_when_other_rows_are_appended() {
        let small = Dataset {
            n_inputs: 1,
            x: (0..100).map(|i| i as f32).collect(),
            y: vec![0.0; 100],
        };
        let big = Dataset::concat(&[&small, &small]);
        assert_eq!(big.n_rows(), 200);
        let (_, test_small) = split_holdout(&small, 0.3, 9);
        let (_, test_big) = split_holdout(&big, 0.3, 9);
        assert_eq!(test_small.x, test_big.x[..test_small.x.len()]);
    }
}
