//! From raw fields to model inputs, one row at a time, whatever the source (CSV or FHIR),
//! with the count of everything that could not be used.

use std::collections::BTreeMap;

use super::{DataError, Dataset, Derive, FeatureKind, LabelRule, Schema};

/// At most this many issues are kept with their location; all are counted.
pub(crate) const MAX_ISSUES: usize = 1000;
/// At most this many distinct unseen categories are listed per feature; all are counted.
const MAX_UNSEEN_VALUES: usize = 50;

/// What was wrong with a value or a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// Not a number, a date or a token of its feature (or not valid text): used as missing.
    Unreadable,
    /// A number outside the feature's plausible range (or a date after the reference
    /// date): used as missing.
    OutOfRange,
    /// A category outside the federation's vocabulary: encoded as "other".
    UnseenCategory,
    /// The label is missing: the row is left out.
    MissingLabel,
    /// The label cannot be read: the row is left out.
    BadLabel,
    /// The row itself is broken (its number of fields, a line that is not JSON): left out.
    BrokenRow,
}

impl IssueKind {
    /// Whether the file needs fixing: an unreadable value or label, a broken row.
    /// Missing labels, out-of-range values and unseen categories are what real data holds.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            IssueKind::Unreadable | IssueKind::BadLabel | IssueKind::BrokenRow
        )
    }
}

/// One value or row that could not be used as it stands, and where it is.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Issue {
    /// The file (final path component).
    pub source: String,
    /// 1-based line in that file (a CSV's header is line 1).
    pub line: u64,
    /// The column (the schema's name for it), unless the whole row is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What kind of problem.
    pub kind: IssueKind,
    /// What is wrong; it may quote the value, so it stays at the facility.
    pub reason: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(column) => write!(
                f,
                "{}: line {}, column {column}: {}",
                self.source, self.line, self.reason
            ),
            None => write!(f, "{}: line {}: {}", self.source, self.line, self.reason),
        }
    }
}

/// Counts for one feature, over the rows used.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FeatureStats {
    /// The feature's column.
    pub column: String,
    /// Empty fields, missing tokens, values absent from a FHIR export.
    pub missing: u64,
    /// Values that could not be read (used as missing).
    pub unreadable: u64,
    /// Values outside the plausible range (used as missing).
    pub out_of_range: u64,
    /// Values outside the categories (encoded as "other").
    pub unseen: u64,
    /// The unseen values and how often each occurred (at most 50 distinct ones).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unseen_values: BTreeMap<String, u64>,
}

/// What a load made of a source: rows read, used and left out, the label balance, counts
/// per feature, and the first 1000 issues with their location.
///
/// Its counts hold no patient value; `issues` and `unseen_values` may quote values, so the
/// report is printed at the facility (`harambee-agent data check`) and never sent.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DataReport {
    /// The file or directory read.
    pub source: String,
    /// Data rows (CSV lines after the header, FHIR Patient resources) read.
    pub rows_read: u64,
    /// Rows encoded.
    pub rows_used: u64,
    /// Rows left out: missing or unreadable label, broken row.
    pub rows_left_out: u64,
    /// Rows used with label 1.
    pub positives: u64,
    /// Rows used with label 0.
    pub negatives: u64,
    /// Per feature, in schema order.
    pub features: Vec<FeatureStats>,
    /// The first 1000 issues, in the order met.
    pub issues: Vec<Issue>,
    /// Every issue, kept or not.
    pub issues_total: u64,
    /// Issues that need the file fixed ([`IssueKind::is_hard`]), kept or not.
    pub hard_errors: u64,
}

impl DataReport {
    /// The hard errors among the issues kept.
    pub fn hard_issues(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|issue| issue.kind.is_hard())
    }

    /// Counts only, no value and no location: safe for a log line.
    pub fn summary(&self) -> String {
        let sum = |get: fn(&FeatureStats) -> u64| self.features.iter().map(get).sum::<u64>();
        format!(
            "{}: {} of {} rows used ({} left out), labels {} positive / {} negative; values missing {}, unreadable {}, out of range {}, unseen categories {}",
            self.source,
            self.rows_used,
            self.rows_read,
            self.rows_left_out,
            self.positives,
            self.negatives,
            sum(|f| f.missing),
            sum(|f| f.unreadable),
            sum(|f| f.out_of_range),
            sum(|f| f.unseen),
        )
    }

    fn record(&mut self, issue: Issue) {
        self.issues_total += 1;
        if issue.kind.is_hard() {
            self.hard_errors += 1;
        }
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(issue);
        }
    }
}

/// Encoded rows and the report of how they were read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// The rows used.
    pub data: Dataset,
    /// What was read and what was not used.
    pub report: DataReport,
}

/// One raw field as a source found it.
pub(crate) enum Field<'a> {
    /// Not there at all (a FHIR export without the observation).
    Absent,
    /// The text of the field.
    Value(&'a str),
    /// The source could not give a value (invalid UTF-8, a FHIR unit that does not match).
    Unreadable(String),
}

/// A field and where it was found.
pub(crate) struct Located<'a> {
    pub field: Field<'a>,
    pub source: &'a str,
    pub line: u64,
}

/// A feature's tokens, prepared once: trimmed and in ASCII lower case.
struct Prepared {
    missing: Vec<String>,
    positive: Vec<String>,
    negative: Vec<String>,
    categories: Vec<String>,
    age_at: Option<Date>,
}

fn lower(tokens: &[String]) -> Vec<String> {
    tokens
        .iter()
        .map(|token| token.trim().to_ascii_lowercase())
        .collect()
}

/// Why one value was not used, and how to count it.
type Problem = (IssueKind, String);

/// Encodes rows into a [`Dataset`] by a validated schema, counting what it cannot use.
pub(crate) struct Encoder<'s> {
    schema: &'s Schema,
    prepared: Vec<Prepared>,
    label_rule: Option<(Vec<String>, Vec<String>)>,
    data: Dataset,
    report: DataReport,
    row: Vec<f32>,
}

impl<'s> Encoder<'s> {
    /// An encoder for `schema`, which the caller has validated.
    pub fn new(schema: &'s Schema, source: &str) -> Encoder<'s> {
        let prepared = schema
            .features
            .iter()
            .map(|feature| {
                let binary_default = feature.kind == FeatureKind::Binary
                    && feature.positive.is_empty()
                    && feature.negative.is_empty();
                Prepared {
                    missing: lower(&feature.missing),
                    positive: if binary_default {
                        vec!["1".to_owned()]
                    } else {
                        lower(&feature.positive)
                    },
                    negative: if binary_default {
                        vec!["0".to_owned()]
                    } else {
                        lower(&feature.negative)
                    },
                    categories: lower(&feature.categories),
                    age_at: match &feature.derive {
                        Some(Derive::AgeAt(date)) => parse_date(date),
                        None => None,
                    },
                }
            })
            .collect();
        Encoder {
            schema,
            prepared,
            label_rule: schema
                .label_rule
                .as_ref()
                .map(|rule| (lower(&rule.positive), lower(&rule.negative))),
            data: Dataset {
                n_inputs: schema.n_inputs(),
                x: Vec::new(),
                y: Vec::new(),
            },
            report: DataReport {
                source: source.to_owned(),
                features: schema
                    .features
                    .iter()
                    .map(|feature| FeatureStats {
                        column: feature.column.clone(),
                        ..FeatureStats::default()
                    })
                    .collect(),
                ..DataReport::default()
            },
            row: Vec::new(),
        }
    }

    /// A row that cannot be read at all: counted and left out.
    pub fn skip_row(&mut self, source: &str, line: u64, reason: String) {
        self.report.rows_read += 1;
        self.report.rows_left_out += 1;
        self.report.record(Issue {
            source: source.to_owned(),
            line,
            column: None,
            kind: IssueKind::BrokenRow,
            reason,
        });
    }

    /// Encodes one row: `fields` in schema order, then the label. A row whose label cannot
    /// be used is left out; a feature value that cannot be used is missing.
    pub fn push_row(&mut self, fields: &[Located<'_>], label: Located<'_>) {
        self.report.rows_read += 1;
        let y = match self.label(&label.field) {
            Ok(y) => y,
            Err((kind, reason)) => {
                self.report.rows_left_out += 1;
                self.report.record(Issue {
                    source: label.source.to_owned(),
                    line: label.line,
                    column: Some(self.schema.label.clone()),
                    kind,
                    reason,
                });
                return;
            }
        };
        self.row.clear();
        for (feature_idx, located) in fields.iter().enumerate() {
            self.encode_feature(feature_idx, located);
        }
        debug_assert_eq!(self.row.len(), self.data.n_inputs);
        self.data.x.extend_from_slice(&self.row);
        self.data.y.push(y);
        self.report.rows_used += 1;
        if y == 1.0 {
            self.report.positives += 1;
        } else {
            self.report.negatives += 1;
        }
    }

    /// The encoded rows and the report; an error when no row was read or none is usable.
    pub fn finish(self) -> Result<super::Loaded, DataError> {
        let report = self.report;
        if report.rows_read == 0 {
            return Err(DataError::NoRows {
                source_name: report.source,
            });
        }
        if report.rows_used == 0 {
            return Err(DataError::NoUsableRows {
                first_issue: report
                    .issues
                    .first()
                    .map_or_else(String::new, ToString::to_string),
                source_name: report.source,
                rows_read: report.rows_read,
            });
        }
        Ok(Loaded {
            data: self.data,
            report,
        })
    }

    fn encode_feature(&mut self, feature_idx: usize, located: &Located<'_>) {
        let feature = &self.schema.features[feature_idx];
        let prepared = &self.prepared[feature_idx];
        let stats = &mut self.report.features[feature_idx];
        let own_inputs = feature.n_inputs() - usize::from(feature.indicator);
        let text = match &located.field {
            Field::Absent => None,
            Field::Unreadable(reason) => {
                stats.unreadable += 1;
                let issue = Issue {
                    source: located.source.to_owned(),
                    line: located.line,
                    column: Some(feature.column.clone()),
                    kind: IssueKind::Unreadable,
                    reason: reason.clone(),
                };
                self.report.record(issue);
                push_missing(&mut self.row, own_inputs, feature.indicator);
                return;
            }
            Field::Value(text) => {
                let text = text.trim();
                let key = text.to_ascii_lowercase();
                (!text.is_empty() && !prepared.missing.contains(&key)).then_some(text)
            }
        };
        let Some(text) = text else {
            stats.missing += 1;
            push_missing(&mut self.row, own_inputs, feature.indicator);
            return;
        };
        let key = text.to_ascii_lowercase();
        let encoded: Result<(), Problem> = match feature.kind {
            FeatureKind::Numeric => numeric(feature, prepared.age_at, text).map(|x| {
                self.row.push(x);
            }),
            FeatureKind::Binary => {
                if prepared.positive.contains(&key) {
                    self.row.push(1.0);
                    Ok(())
                } else if prepared.negative.contains(&key) {
                    self.row.push(-1.0);
                    Ok(())
                } else {
                    Err((
                        IssueKind::Unreadable,
                        format!(
                            "{text:?} is neither a yes ({}) nor a no ({}) of this binary column",
                            feature_tokens(&feature.positive, "1"),
                            feature_tokens(&feature.negative, "0"),
                        ),
                    ))
                }
            }
            FeatureKind::Categorical => {
                let slot = prepared
                    .categories
                    .iter()
                    .position(|category| *category == key);
                let start = self.row.len();
                self.row.resize(start + own_inputs, 0.0);
                match slot {
                    Some(slot) => {
                        self.row[start + slot] = 1.0;
                        Ok(())
                    }
                    None => {
                        // Unseen: the "other" input, counted; not missing.
                        self.row[start + own_inputs - 1] = 1.0;
                        stats.unseen += 1;
                        if let Some(count) = stats.unseen_values.get_mut(text) {
                            *count += 1;
                        } else if stats.unseen_values.len() < MAX_UNSEEN_VALUES {
                            stats.unseen_values.insert(text.to_owned(), 1);
                        }
                        let issue = Issue {
                            source: located.source.to_owned(),
                            line: located.line,
                            column: Some(feature.column.clone()),
                            kind: IssueKind::UnseenCategory,
                            reason: format!(
                                "{text:?} is not one of the federation's categories; encoded as other"
                            ),
                        };
                        self.report.record(issue);
                        if feature.indicator {
                            self.row.push(0.0);
                        }
                        return;
                    }
                }
            }
        };
        match encoded {
            Ok(()) => {
                if feature.indicator {
                    self.row.push(0.0);
                }
            }
            Err((kind, reason)) => {
                match kind {
                    IssueKind::OutOfRange => stats.out_of_range += 1,
                    _ => stats.unreadable += 1,
                }
                let issue = Issue {
                    source: located.source.to_owned(),
                    line: located.line,
                    column: Some(feature.column.clone()),
                    kind,
                    reason,
                };
                self.report.record(issue);
                push_missing(&mut self.row, own_inputs, feature.indicator);
            }
        }
    }

    fn label(&self, field: &Field<'_>) -> Result<f32, Problem> {
        let text = match field {
            Field::Absent => return Err((IssueKind::MissingLabel, "label is missing".to_owned())),
            Field::Unreadable(reason) => return Err((IssueKind::BadLabel, reason.clone())),
            Field::Value(text) => text.trim(),
        };
        if text.is_empty() {
            return Err((IssueKind::MissingLabel, "label is missing".to_owned()));
        }
        let rule: Option<&LabelRule> = self.schema.label_rule.as_ref();
        match (rule, &self.label_rule) {
            (Some(rule), Some((positive, negative))) if !positive.is_empty() => {
                let key = text.to_ascii_lowercase();
                if positive.contains(&key) {
                    Ok(1.0)
                } else if negative.contains(&key) {
                    Ok(0.0)
                } else {
                    Err((
                        IssueKind::BadLabel,
                        format!(
                            "label {text:?} is neither a positive ({}) nor a negative ({})",
                            rule.positive.join(", "),
                            rule.negative.join(", ")
                        ),
                    ))
                }
            }
            (Some(rule), _) => {
                let value = parse_number(text).map_err(|reason| (IssueKind::BadLabel, reason))?;
                let positive = match (rule.greater_than, rule.less_than) {
                    (Some(threshold), _) => value > threshold,
                    (_, Some(threshold)) => value < threshold,
                    // Validation allows no rule without a style.
                    (None, None) => value == 1.0,
                };
                Ok(if positive { 1.0 } else { 0.0 })
            }
            (None, _) => match text.parse::<f64>() {
                Ok(0.0) => Ok(0.0),
                Ok(1.0) => Ok(1.0),
                _ => Err((
                    IssueKind::BadLabel,
                    format!("label must be 0 or 1, got {text:?}"),
                )),
            },
        }
    }
}

fn feature_tokens(tokens: &[String], default: &str) -> String {
    if tokens.is_empty() {
        default.to_owned()
    } else {
        tokens.join(", ")
    }
}

fn push_missing(row: &mut Vec<f32>, own_inputs: usize, indicator: bool) {
    row.extend(std::iter::repeat_n(0.0, own_inputs));
    if indicator {
        row.push(1.0);
    }
}

/// A numeric feature's standardised input, or why the value cannot be used.
fn numeric(feature: &super::Feature, age_at: Option<Date>, text: &str) -> Result<f32, Problem> {
    let value = match age_at {
        Some(reference) => {
            let born = parse_date(text).ok_or_else(|| {
                (
                    IssueKind::Unreadable,
                    format!("cannot read {text:?} as a date (YYYY-MM-DD)"),
                )
            })?;
            if born > reference {
                return Err((
                    IssueKind::OutOfRange,
                    format!(
                        "date {text:?} is after the federation's reference date {}",
                        reference
                    ),
                ));
            }
            f64::from(reference.years_since(born))
        }
        None => parse_number(text).map_err(|reason| (IssueKind::Unreadable, reason))?,
    };
    let unit = if feature.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", feature.unit)
    };
    if feature.min.is_some_and(|min| value < min) || feature.max.is_some_and(|max| value > max) {
        let bound = |b: Option<f64>| b.map_or_else(|| "any".to_owned(), |b| b.to_string());
        return Err((
            IssueKind::OutOfRange,
            format!(
                "{value}{unit} is outside the plausible range {} to {}{unit}",
                bound(feature.min),
                bound(feature.max)
            ),
        ));
    }
    let standardised = ((value - feature.center) / feature.scale) as f32;
    // A finite value can still overflow f32 once standardised (1e300): refuse it rather
    // than train on an infinite input.
    if !standardised.is_finite() {
        return Err((
            IssueKind::OutOfRange,
            format!("{text:?} is out of range for this column"),
        ));
    }
    Ok(standardised)
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

/// A calendar date, ordered by (year, month, day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Date {
    year: i32,
    month: u32,
    day: u32,
}

impl Date {
    /// Completed years from `born` to `self` (`self >= born`).
    fn years_since(self, born: Date) -> i32 {
        let mut years = self.year - born.year;
        if (self.month, self.day) < (born.month, born.day) {
            years -= 1;
        }
        years
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// `YYYY-MM-DD`, or an ISO 8601 timestamp that starts with one (`…T…`); the day must exist.
pub(crate) fn parse_date(text: &str) -> Option<Date> {
    let text = text.trim();
    let date = match text.as_bytes().get(10) {
        None => text,
        Some(b'T' | b' ') => &text[..10],
        Some(_) => return None,
    };
    let bytes = date.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| {
        let part = &date[range];
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse::<u32>().ok())
            .flatten()
    };
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    Some(Date {
        year: year as i32,
        month,
        day,
    })
}
