//! Tabular data: a declared [`Schema`], CSV loading into a dense [`Dataset`] with a
//! [`DataReport`] of every value that could not be used, hold-out splits.
//!
//! The schema fixes everything about how a facility's rows become model inputs: for every
//! input column its kind, the centre and scale used to standardise it, its unit and
//! plausible range, its categories, the tokens that mean "not measured", and how the label
//! is read. Every facility of a federation encodes its rows with the same schema, so the
//! model sees the same input space everywhere, and nothing is learnt from any facility's
//! data: no facility has to publish its own means, ranges or categories.
//!
//! Encoding of one feature value, by [`FeatureKind`]:
//! - `numeric` (the default): `(x - center) / scale`. With `derive = { age_at = DATE }` the
//!   column holds a date (`YYYY-MM-DD`, a longer ISO 8601 timestamp is cut to its date) and
//!   `x` is the age in completed years at `DATE`. A value outside the plausible range
//!   `[min, max]` becomes missing and is counted.
//! - `binary`: `+1` for one of the `positive` tokens, `-1` for one of the `negative` ones
//!   (`"1"` and `"0"` unless the schema names them), compared after trimming, ignoring ASCII
//!   case.
//! - `categorical`: one input per category of the federation's vocabulary (one-hot) and one
//!   more, "other", for any value outside it: an unseen category is counted, never an error.
//!
//! A missing value (an empty field or one of the feature's `missing` tokens, compared after
//! trimming) becomes `0.0` in every input of the feature (the federation's centre for a
//! numeric feature). With `indicator` set, the feature also gets an input that is `1.0` when
//! the value was missing or unusable and `0.0` otherwise, placed right after the feature's
//! own inputs. Columns the schema does not name are ignored.
//!
//! The label is a 0/1 column, or any column read by a [`LabelRule`] (`num > 0`, or tokens
//! such as `Yes`/`No`).
//!
//! **No bad value stops a load.** A value that cannot be read (not a number, not a date, a
//! binary token outside the schema's, invalid UTF-8) or lies outside its plausible range
//! is treated as missing; a row whose label is missing or unreadable, or whose number of
//! fields differs from the header's, is left out. Each is counted in the [`DataReport`] and
//! recorded as an [`Issue`] naming the file, the line and the column. Only what makes the
//! whole source unusable is a [`DataError`]: an unreadable file, no header, a column the
//! schema needs that the header lacks, no data rows at all.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::rng;

mod encode;

pub use encode::{DataReport, FeatureStats, Issue, IssueKind, Loaded};
pub(crate) use encode::{Encoder, Field, Located};

/// How a feature's values become inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A number, standardised by `center` and `scale`, with an optional plausible range.
    #[default]
    Numeric,
    /// Two values, `positive` and `negative` tokens, encoded `+1` and `-1`.
    Binary,
    /// One of the federation's `categories`, one-hot, plus an "other" input.
    Categorical,
}

impl FeatureKind {
    fn is_numeric(&self) -> bool {
        *self == FeatureKind::Numeric
    }

    /// The name used in configuration files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Binary => "binary",
            FeatureKind::Categorical => "categorical",
        }
    }

    /// The kind named `name`; the empty string is `numeric` (schemas from before kinds).
    pub fn parse(name: &str) -> Option<FeatureKind> {
        match name {
            "" | "numeric" => Some(FeatureKind::Numeric),
            "binary" => Some(FeatureKind::Binary),
            "categorical" => Some(FeatureKind::Categorical),
            _ => None,
        }
    }
}

/// A feature computed from its column rather than read as it stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derive {
    /// The column is a date of birth; the feature is the age in completed years at this
    /// reference date (`YYYY-MM-DD`), fixed by the federation.
    AgeAt(String),
}

/// One input column and how to encode it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Feature {
    /// Column name in the CSV header.
    pub column: String,
    /// Numeric features: value subtracted before scaling; also the value a missing entry is
    /// imputed with.
    #[serde(default)]
    pub center: f64,
    /// Numeric features: divisor after centring; must be positive and finite.
    #[serde(default = "unit_scale")]
    pub scale: f64,
    /// Tokens (besides the empty field) that mean "missing", e.g. `"0"` for an unmeasured
    /// cholesterol.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Whether to add a 0/1 "was missing" input after this feature.
    #[serde(default)]
    pub indicator: bool,
    /// `numeric` (default), `binary` or `categorical`.
    #[serde(default, skip_serializing_if = "FeatureKind::is_numeric")]
    pub kind: FeatureKind,
    /// Unit of a numeric value (UCUM, e.g. `mm[Hg]`), for people and for FHIR input.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// Smallest plausible value of a numeric feature; below it, the value counts as missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest plausible value of a numeric feature; above it, the value counts as missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Categorical features: the federation's vocabulary, in input order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Binary features: tokens meaning yes (`["1"]` when both lists are empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positive: Vec<String>,
    /// Binary features: tokens meaning no (`["0"]` when both lists are empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub negative: Vec<String>,
    /// A derived feature: how to compute it from the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive: Option<Derive>,
    /// Where the value is in a FHIR export (for [`crate::fhir::load_fhir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir: Option<crate::fhir::FhirSource>,
}

fn unit_scale() -> f64 {
    1.0
}

impl Default for Feature {
    /// A numeric feature of no column, centre 0 and scale 1.
    fn default() -> Self {
        Feature {
            column: String::new(),
            center: 0.0,
            scale: 1.0,
            missing: Vec::new(),
            indicator: false,
            kind: FeatureKind::Numeric,
            unit: String::new(),
            min: None,
            max: None,
            categories: Vec::new(),
            positive: Vec::new(),
            negative: Vec::new(),
            derive: None,
            fhir: None,
        }
    }
}

impl Feature {
    /// Model inputs of this feature: one (numeric, binary), one per category plus "other"
    /// (categorical); plus one for the indicator.
    pub fn n_inputs(&self) -> usize {
        let own = match self.kind {
            FeatureKind::Numeric | FeatureKind::Binary => 1,
            FeatureKind::Categorical => self.categories.len() + 1,
        };
        own + usize::from(self.indicator)
    }
}

/// How a label column that is not 0/1 becomes one. Either tokens (`positive` and
/// `negative`, both non-empty) or a threshold (`greater_than` or `less_than`, one of them).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelRule {
    /// Values meaning 1, compared after trimming, ignoring ASCII case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positive: Vec<String>,
    /// Values meaning 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub negative: Vec<String>,
    /// 1 when the number is greater than this, else 0 (e.g. `num > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greater_than: Option<f64>,
    /// 1 when the number is less than this, else 0 (e.g. gestational age < 259 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub less_than: Option<f64>,
}

/// The label column and the ordered input features of a binary classification table.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    /// Name of the label column (0/1, or read by `label_rule`).
    pub label: String,
    /// Input features, in model input order.
    pub features: Vec<Feature>,
    /// How to read a label column that is not 0/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_rule: Option<LabelRule>,
    /// Where the label is in a FHIR export (for [`crate::fhir::load_fhir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_fhir: Option<crate::fhir::FhirSource>,
}

impl Schema {
    /// Number of model inputs: the sum of [`Feature::n_inputs`].
    pub fn n_inputs(&self) -> usize {
        self.features.iter().map(Feature::n_inputs).sum()
    }

    /// Checks that the schema can encode data: at least one feature, no column named twice
    /// (the label included), every numeric feature with a finite centre, a positive finite
    /// scale and a range with `min <= max`, every categorical feature with categories, no two
    /// tokens or categories that collide, a valid reference date for a derived age, a label
    /// rule of exactly one style.
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
            let column = &feature.column;
            if column.trim().is_empty() {
                return invalid("a feature has no column name".to_owned());
            }
            if !seen.insert(column.as_str()) {
                return invalid(format!("column {column} is named twice"));
            }
            if !feature.center.is_finite() {
                return invalid(format!("center of column {column} is not finite"));
            }
            if !(feature.scale.is_finite() && feature.scale > 0.0) {
                return invalid(format!(
                    "scale of column {column} must be positive and finite, got {}",
                    feature.scale
                ));
            }
            for bound in [feature.min, feature.max].into_iter().flatten() {
                if bound.is_nan() {
                    return invalid(format!("range of column {column} has a NaN bound"));
                }
            }
            if let (Some(min), Some(max)) = (feature.min, feature.max)
                && min > max
            {
                return invalid(format!(
                    "range of column {column} is empty: min {min} > max {max}"
                ));
            }
            match feature.kind {
                FeatureKind::Numeric => {
                    if !feature.categories.is_empty()
                        || !feature.positive.is_empty()
                        || !feature.negative.is_empty()
                    {
                        return invalid(format!(
                            "column {column} is numeric: categories and positive/negative tokens belong to categorical and binary features"
                        ));
                    }
                }
                FeatureKind::Binary => {
                    if !feature.categories.is_empty() || feature.derive.is_some() {
                        return invalid(format!(
                            "column {column} is binary: it takes positive/negative tokens, not categories or a derivation"
                        ));
                    }
                    if feature.positive.is_empty() != feature.negative.is_empty() {
                        return invalid(format!(
                            "binary column {column} needs both positive and negative tokens, or neither (1/0)"
                        ));
                    }
                    distinct_tokens(
                        column,
                        feature
                            .positive
                            .iter()
                            .chain(&feature.negative)
                            .chain(&feature.missing),
                    )?;
                }
                FeatureKind::Categorical => {
                    if feature.categories.is_empty() {
                        return invalid(format!("categorical column {column} has no categories"));
                    }
                    if !feature.positive.is_empty()
                        || !feature.negative.is_empty()
                        || feature.derive.is_some()
                    {
                        return invalid(format!(
                            "column {column} is categorical: it takes categories, not positive/negative tokens or a derivation"
                        ));
                    }
                    distinct_tokens(column, feature.categories.iter().chain(&feature.missing))?;
                    if feature.categories.iter().any(|c| c.trim().is_empty()) {
                        return invalid(format!(
                            "categorical column {column} has an empty category (an empty field is missing)"
                        ));
                    }
                }
            }
            if let Some(Derive::AgeAt(date)) = &feature.derive
                && encode::parse_date(date).is_none()
            {
                return invalid(format!(
                    "column {column}: age_at {date:?} is not a date (YYYY-MM-DD)"
                ));
            }
        }
        if let Some(rule) = &self.label_rule {
            let tokens = !rule.positive.is_empty() || !rule.negative.is_empty();
            let styles = usize::from(tokens)
                + usize::from(rule.greater_than.is_some())
                + usize::from(rule.less_than.is_some());
            if styles != 1 {
                return invalid(
                    "the label rule needs exactly one of: positive and negative tokens, greater_than, less_than".to_owned(),
                );
            }
            if tokens {
                if rule.positive.is_empty() || rule.negative.is_empty() {
                    return invalid(
                        "the label rule needs both positive and negative tokens".to_owned(),
                    );
                }
                distinct_tokens(&self.label, rule.positive.iter().chain(&rule.negative))?;
            }
            if rule
                .greater_than
                .into_iter()
                .chain(rule.less_than)
                .any(|t| !t.is_finite())
            {
                return invalid("the label rule's threshold is not finite".to_owned());
            }
        }
        Ok(())
    }
}

/// Tokens compared after trimming and ignoring ASCII case must all differ.
fn distinct_tokens<'a>(
    column: &str,
    tokens: impl Iterator<Item = &'a String>,
) -> Result<(), DataError> {
    let mut seen = HashSet::new();
    for token in tokens {
        let key = token.trim().to_ascii_lowercase();
        if !seen.insert(key) {
            return Err(DataError::InvalidSchema {
                reason: format!("column {column}: the value {token:?} is listed twice"),
            });
        }
    }
    Ok(())
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

/// What makes a whole source unusable. Each names its source; a bad value is never one of
/// these but an [`Issue`] in the [`DataReport`].
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
    /// Every row was left out (each one is an issue of the report).
    #[error(
        "{source_name}: none of the {rows_read} rows is usable (the first problem: {first_issue})"
    )]
    NoUsableRows {
        /// File name or other description of the source.
        source_name: String,
        /// Data rows read.
        rows_read: u64,
        /// Why the first row was left out.
        first_issue: String,
    },
    /// The header row itself is broken.
    #[error("{source_name}: line {line}: {reason}")]
    Malformed {
        /// File name or other description of the source.
        source_name: String,
        /// 1-based line number in the file.
        line: u64,
        /// What the reader reported.
        reason: String,
    },
    /// A FHIR export directory holds no `.ndjson` file, or a feature has no FHIR mapping.
    #[error("{source_name}: {reason}")]
    Fhir {
        /// The directory.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads and encodes the CSV file at `path`, leaving out what cannot be used (see
/// [`load_csv_report`] for what was). Errors name the file by its final path component.
pub fn load_csv(path: &Path, schema: &Schema) -> Result<Dataset, DataError> {
    load_csv_report(path, schema).map(|loaded| loaded.data)
}

/// Reads and encodes the CSV file at `path`, with the report of every value and row that
/// could not be used.
pub fn load_csv_report(path: &Path, schema: &Schema) -> Result<Loaded, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_csv_report(&file_name(path), std::io::BufReader::new(file), schema)
}

/// The final component of `path`, as issues and errors name a file.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Reads and encodes a CSV table (comma-separated, with a header row) from `reader`.
/// `source_name` is only used in messages.
pub fn parse_csv(
    source_name: &str,
    reader: impl Read,
    schema: &Schema,
) -> Result<Dataset, DataError> {
    parse_csv_report(source_name, reader, schema).map(|loaded| loaded.data)
}

/// [`parse_csv`], with the report.
pub fn parse_csv_report(
    source_name: &str,
    reader: impl Read,
    schema: &Schema,
) -> Result<Loaded, DataError> {
    schema.validate()?;
    let mut csv_reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);

    let header = csv_reader
        .byte_headers()
        .map_err(|err| csv_error(source_name, err))?
        .clone();
    if header.iter().all(<[u8]>::is_empty) {
        return Err(DataError::Empty {
            source_name: source_name.to_owned(),
        });
    }
    let column_idx = |column: &str| {
        header
            .iter()
            .position(|name| name == column.as_bytes())
            .ok_or_else(|| DataError::MissingColumn {
                source_name: source_name.to_owned(),
                column: column.to_owned(),
            })
    };
    let label_idx = column_idx(&schema.label)?;
    let feature_idx = schema
        .features
        .iter()
        .map(|feature| column_idx(&feature.column))
        .collect::<Result<Vec<_>, DataError>>()?;

    let mut encoder = Encoder::new(schema, source_name);
    let mut record = csv::ByteRecord::new();
    loop {
        match csv_reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => match err.kind() {
                csv::ErrorKind::Io(_) => return Err(csv_error(source_name, err)),
                _ => {
                    // The reader has moved past the broken record: note it, go on.
                    let line = err.position().map_or(0, csv::Position::line);
                    encoder.skip_row(source_name, line, format!("broken CSV: {err}"));
                    continue;
                }
            },
        }
        let line = record.position().map_or(0, csv::Position::line);
        if record.len() != header.len() {
            encoder.skip_row(
                source_name,
                line,
                format!(
                    "expected {} fields like the header, found {}",
                    header.len(),
                    record.len()
                ),
            );
            continue;
        }
        let field = |idx: usize| Located {
            field: match std::str::from_utf8(&record[idx]) {
                Ok(text) => Field::Value(text),
                Err(_) => Field::Unreadable("invalid UTF-8".to_owned()),
            },
            source: source_name,
            line,
        };
        let fields: Vec<Located<'_>> = feature_idx.iter().map(|&idx| field(idx)).collect();
        encoder.push_row(&fields, field(label_idx));
    }
    encoder.finish()
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

fn csv_error(source_name: &str, err: csv::Error) -> DataError {
    let line = err.position().map_or(0, csv::Position::line);
    let reason = match err.kind() {
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
            ..Feature::default()
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
            ..Schema::default()
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

    fn report(text: &str, schema: &Schema) -> Loaded {
        parse_csv_report("t.csv", text.as_bytes(), schema).unwrap()
    }

    fn messages(loaded: &Loaded) -> Vec<String> {
        loaded
            .report
            .issues
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn bad_values_are_missing_counted_and_named_by_file_line_and_column() {
        let loaded = report(
            "a,b,y\n1,1,0\n2,abc,1\nNaN,1,0\n1,inf,0\n1e300,1,0\n14,2,1\n",
            &schema(),
        );
        assert_eq!(
            messages(&loaded),
            [
                "t.csv: line 3, column b: cannot read \"abc\" as a number",
                "t.csv: line 4, column a: \"NaN\" is not a finite number",
                "t.csv: line 5, column b: \"inf\" is not a finite number",
                // Finite, but infinite as an f32 input (`fuzz/fuzz_targets/csv_rows.rs`).
                "t.csv: line 6, column a: \"1e300\" is out of range for this column",
            ]
        );
        // Every row is used; each bad value is the federation's centre, with the indicator.
        assert_eq!(loaded.data.n_rows(), 6);
        assert_eq!(loaded.data.row(1), [-4.0, 0.0, 1.0]);
        assert_eq!(loaded.data.row(2), [0.0, 0.0, 0.0]);
        assert_eq!(loaded.data.row(4), [0.0, 0.0, 0.0]);
        assert_eq!(loaded.data.row(5), [2.0, 2.0, 0.0]);
        let r = &loaded.report;
        assert_eq!((r.rows_read, r.rows_used, r.rows_left_out), (6, 6, 0));
        assert_eq!(
            (r.features[0].unreadable, r.features[0].out_of_range),
            (1, 1)
        );
        assert_eq!(r.features[1].unreadable, 2);
        assert_eq!((r.issues_total, r.hard_errors), (4, 3));
        assert!(loaded.data.x.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn rows_with_a_bad_label_or_broken_structure_are_left_out_and_named() {
        let loaded = report("a,b,y\n1,1,\n1,1,2\n1,1,yes\n1,1\n12,1,1\n", &schema());
        assert_eq!(
            messages(&loaded),
            [
                "t.csv: line 2, column y: label is missing",
                "t.csv: line 3, column y: label must be 0 or 1, got \"2\"",
                "t.csv: line 4, column y: label must be 0 or 1, got \"yes\"",
                "t.csv: line 5: expected 3 fields like the header, found 2",
            ]
        );
        let kinds: Vec<IssueKind> = loaded.report.issues.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [
                IssueKind::MissingLabel,
                IssueKind::BadLabel,
                IssueKind::BadLabel,
                IssueKind::BrokenRow
            ]
        );
        assert_eq!(loaded.data.y, [1.0]);
        let r = &loaded.report;
        assert_eq!((r.rows_read, r.rows_used, r.rows_left_out), (5, 1, 4));
        assert_eq!((r.positives, r.negatives, r.hard_errors), (1, 0, 3));
        // Nothing usable at all is an error of the whole file, naming the first problem.
        let err = parse("a,b,y\n1,1,\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv: none of the 1 rows is usable (the first problem: t.csv: line 2, column y: label is missing)"
        );
    }

    #[test]
    fn invalid_utf8_is_an_unreadable_value_of_its_column() {
        let loaded = parse_csv_report("t.csv", &b"a,b,y\n1,\xff,1\n"[..], &schema()).unwrap();
        assert_eq!(
            messages(&loaded),
            ["t.csv: line 2, column b: invalid UTF-8"]
        );
        assert_eq!(loaded.data.row(0), [-4.5, 0.0, 1.0]);
    }

    /// A table as a facility might hold it: a categorical code, a yes/no column, a
    /// measurement with unit and range, a date of birth, an outcome read by a rule.
    fn clinical() -> Schema {
        Schema {
            label: "num".to_owned(),
            label_rule: Some(LabelRule {
                greater_than: Some(0.0),
                ..LabelRule::default()
            }),
            features: vec![
                Feature {
                    column: "site".to_owned(),
                    kind: FeatureKind::Categorical,
                    categories: vec!["1_UM".to_owned(), "2_IU".to_owned()],
                    missing: vec!["NA".to_owned()],
                    ..Feature::default()
                },
                Feature {
                    column: "gender".to_owned(),
                    kind: FeatureKind::Binary,
                    positive: vec!["1_female".to_owned()],
                    negative: vec!["2_male".to_owned()],
                    indicator: true,
                    ..Feature::default()
                },
                Feature {
                    column: "sbp".to_owned(),
                    center: 120.0,
                    scale: 20.0,
                    unit: "mm[Hg]".to_owned(),
                    min: Some(50.0),
                    max: Some(260.0),
                    ..Feature::default()
                },
                Feature {
                    column: "birth_date".to_owned(),
                    center: 50.0,
                    scale: 10.0,
                    derive: Some(Derive::AgeAt("2024-06-30".to_owned())),
                    min: Some(0.0),
                    max: Some(120.0),
                    ..Feature::default()
                },
            ],
            label_fhir: None,
        }
    }

    #[test]
    fn categories_binaries_units_ranges_derived_ages_and_label_rules() {
        let schema = clinical();
        schema.validate().unwrap();
        // 2 categories + other, binary + indicator, numeric, derived.
        assert_eq!(schema.n_inputs(), 3 + 2 + 1 + 1);
        let loaded = report(
            "site,gender,sbp,birth_date,num\n\
             1_UM,1_female,140,1974-06-30,0\n\
             2_iu , 2_MALE ,100,1974-07-01T08:00:00Z,3\n\
             3_UK,,300,2025-01-01,1\n\
             NA,unknown,abc,30/06/1974,0\n",
            &schema,
        );
        let d = &loaded.data;
        // Born 1974-06-30: 50 on 2024-06-30; a day later: 49.
        assert_eq!(d.row(0), [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(d.row(1), [0.0, 1.0, 0.0, -1.0, 0.0, -1.0, -0.1]);
        // Unseen category: "other"; missing binary: 0 and its indicator; out of range and a
        // birth after the reference date: missing.
        assert_eq!(d.row(2), [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        // Missing token; unreadable binary, number and date: missing, with the indicator.
        assert_eq!(d.row(3), [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(d.y, [0.0, 1.0, 1.0, 0.0]);
        assert_eq!(
            messages(&loaded),
            [
                "t.csv: line 4, column site: \"3_UK\" is not one of the federation's categories; encoded as other",
                "t.csv: line 4, column sbp: 300 mm[Hg] is outside the plausible range 50 to 260 mm[Hg]",
                "t.csv: line 4, column birth_date: date \"2025-01-01\" is after the federation's reference date 2024-06-30",
                "t.csv: line 5, column gender: \"unknown\" is neither a yes (1_female) nor a no (2_male) of this binary column",
                "t.csv: line 5, column sbp: cannot read \"abc\" as a number",
                "t.csv: line 5, column birth_date: cannot read \"30/06/1974\" as a date (YYYY-MM-DD)",
            ]
        );
        let r = &loaded.report;
        assert_eq!(r.features[0].unseen, 1);
        assert_eq!(r.features[0].unseen_values.get("3_UK"), Some(&1));
        assert_eq!(r.features[0].missing, 1);
        assert_eq!(r.features[1].missing, 1);
        assert_eq!(r.features[1].unreadable, 1);
        assert_eq!(
            (r.features[2].out_of_range, r.features[2].unreadable),
            (1, 1)
        );
        assert_eq!(
            (r.features[3].out_of_range, r.features[3].unreadable),
            (1, 1)
        );
        assert_eq!((r.positives, r.negatives), (2, 2));
        // Unseen categories and out-of-range values are what real data holds; unreadable
        // values are the file's to fix.
        assert_eq!(r.hard_errors, 3);
        assert!(r.summary().contains("4 of 4 rows used"));
        assert!(!r.summary().contains("3_UK"), "a log line quotes no value");
    }

    #[test]
    fn token_label_rules_read_yes_and_no_and_leave_out_the_rest() {
        let mut schema = clinical();
        schema.label_rule = Some(LabelRule {
            positive: vec!["1_yes".to_owned()],
            negative: vec!["0_no".to_owned()],
            ..LabelRule::default()
        });
        let loaded = report(
            "site,gender,sbp,birth_date,num\n1_UM,1_female,140,1974-06-30,1_YES\n1_UM,1_female,140,1974-06-30,0_no\n1_UM,1_female,140,1974-06-30,maybe\n",
            &schema,
        );
        assert_eq!(loaded.data.y, [1.0, 0.0]);
        assert_eq!(
            messages(&loaded),
            [
                "t.csv: line 4, column num: label \"maybe\" is neither a positive (1_yes) nor a negative (0_no)"
            ]
        );
    }

    #[test]
    fn dates_are_checked_day_by_day() {
        assert!(encode::parse_date("2024-02-29").is_some());
        assert!(encode::parse_date("2023-02-29").is_none());
        assert!(encode::parse_date("2024-13-01").is_none());
        assert!(encode::parse_date("2024-1-01").is_none());
        assert!(encode::parse_date("1974").is_none());
        assert!(encode::parse_date("2024-06-30T23:59:59+02:00").is_some());
        assert!(encode::parse_date("2024-06-30x").is_none());
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
        for (change, reason) in [
            (
                (|s: &mut Schema| s.features[0].categories.clear()) as fn(&mut Schema),
                "categorical column site has no categories",
            ),
            (
                |s| s.features[0].categories.push("2_iu ".to_owned()),
                "column site: the value \"2_iu \" is listed twice",
            ),
            (
                |s| s.features[1].negative.clear(),
                "binary column gender needs both positive and negative tokens, or neither (1/0)",
            ),
            (
                |s| s.features[2].min = Some(300.0),
                "range of column sbp is empty: min 300 > max 260",
            ),
            (
                |s| s.features[3].derive = Some(Derive::AgeAt("30/06/2024".to_owned())),
                "column birth_date: age_at \"30/06/2024\" is not a date (YYYY-MM-DD)",
            ),
            (
                |s| s.label_rule.as_mut().unwrap().less_than = Some(1.0),
                "the label rule needs exactly one of: positive and negative tokens, greater_than, less_than",
            ),
            (
                |s| s.features[2].categories.push("x".to_owned()),
                "column sbp is numeric: categories and positive/negative tokens belong to categorical and binary features",
            ),
        ] {
            let mut bad = clinical();
            change(&mut bad);
            assert_eq!(
                bad.validate().unwrap_err().to_string(),
                format!("invalid schema: {reason}")
            );
        }
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
