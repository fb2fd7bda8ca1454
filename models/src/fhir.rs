//! FHIR R4 input: a Bulk Data export (NDJSON, one resource per line) read into the same
//! rows as a CSV, by a mapping the federation declares in its schema.
//!
//! [`load_fhir`] reads every `*.ndjson` file of a directory (in name order; each line one
//! resource, whatever the file's name) and makes one row per `Patient`, in the order met.
//! Each feature's `fhir` ([`FhirSource`]) says where its value is:
//!
//! - `code = "http://loinc.org|8480-6"` (`system|code`, or a bare code for any system) on
//!   an `Observation` (the default resource when a code is given): the value of the
//!   patient's latest such observation (by `effectiveDateTime`, then file order):
//!   `valueQuantity.value`, whose unit (`valueQuantity.code`, else `.unit`) must equal
//!   `unit` when the mapping names one, or `valueCodeableConcept`'s first code,
//!   `valueString`, `valueInteger`, `valueBoolean`;
//! - `resource = "Condition"` (or `MedicationRequest`, `Encounter`) with a `code`
//!   (SNOMED CT, RxNorm, …): `1` when the patient has such a resource, `0` otherwise
//!   (conditions refuted or entered in error, and resources entered in error, do not count);
//! - `path = "gender"`: a field of the resource (`Patient` unless `resource` says otherwise;
//!   dotted, `[i]` indexes an array, an array without an index gives its first element);
//!   with a `code`, the path is read on the latest matching resource instead of its value.
//!
//! `map` then translates the value (`{ male = "1", female = "0" }`) before the feature's
//! own encoding, exactly as for a CSV field. Resources refer to their patient by
//! `subject` (or `patient`) `reference`, `Patient/ID` or `urn:uuid:ID`.
//!
//! Bad input follows the CSV rules: a line that is not a JSON resource is a broken row of
//! its file, a unit that does not match is an unreadable value, each counted and named by
//! file and line ([`crate::data::Issue`]); none stops the load.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use crate::data::{DataError, Dataset, Encoder, Field, Loaded, Located, Schema, file_name};

/// Where one feature's (or the label's) value is in a FHIR export.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSource {
    /// Resource type: `Observation` (default with a `code`), `Condition`,
    /// `MedicationRequest`, `Encounter`, `Patient` (default without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// `system|code` (e.g. `http://loinc.org|2093-3`), or a code of any system.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// The UCUM unit an observation's quantity must have (e.g. `mg/dL`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// A field of the resource (e.g. `gender`, `birthDate`, `class.code`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Value translations applied before the feature's encoding.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, String>,
}

impl FhirSource {
    fn resource_type(&self) -> &str {
        match (self.resource.as_str(), self.code.is_empty()) {
            ("", true) => "Patient",
            ("", false) => "Observation",
            (resource, _) => resource,
        }
    }
}

/// The resource types a mapping may name.
const RESOURCES: [&str; 5] = [
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
];

/// One resource and where it was read.
struct Resource {
    file: usize,
    line: u64,
    json: Value,
}

/// Reads the Bulk Data export in `dir` by `schema`'s FHIR mapping (every feature and the
/// label need one), with the report of everything that could not be used.
pub fn load_fhir(dir: &Path, schema: &Schema) -> Result<Loaded, DataError> {
    schema.validate()?;
    let dir_name = file_name(dir);
    let fhir_error = |reason: String| DataError::Fhir {
        source_name: dir_name.clone(),
        reason,
    };
    let mut sources = Vec::new();
    for feature in &schema.features {
        let source = feature.fhir.as_ref().ok_or_else(|| {
            fhir_error(format!(
                "the federation's schema has no FHIR mapping for column {}",
                feature.column
            ))
        })?;
        sources.push(source);
    }
    let label_source = schema.label_fhir.as_ref().ok_or_else(|| {
        fhir_error(format!(
            "the federation's schema has no FHIR mapping for the label {}",
            schema.label
        ))
    })?;
    for source in sources.iter().copied().chain([label_source]) {
        if !RESOURCES.contains(&source.resource_type()) {
            return Err(fhir_error(format!(
                "unsupported resource type {:?} in the schema's FHIR mapping",
                source.resource
            )));
        }
    }

    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| DataError::Io {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(fhir_error("no .ndjson file in the directory".to_owned()));
    }
    let names: Vec<String> = files.iter().map(|path| file_name(path)).collect();

    let mut encoder = Encoder::new(schema, &dir_name);
    let mut patients: Vec<(String, Resource)> = Vec::new();
    // By resource type, then patient id: the patient's resources in file order.
    let mut by_patient: HashMap<&'static str, HashMap<String, Vec<Resource>>> = HashMap::new();
    for (file_idx, path) in files.iter().enumerate() {
        let text = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        for (line_idx, line) in text.split(|&b| b == b'\n').enumerate() {
            let line_no = line_idx as u64 + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let json: Value = match serde_json::from_slice(line) {
                Ok(json @ Value::Object(_)) => json,
                Ok(_) => {
                    encoder.skip_row(
                        &names[file_idx],
                        line_no,
                        "not a FHIR resource (a JSON object)".to_owned(),
                    );
                    continue;
                }
                Err(err) => {
                    encoder.skip_row(&names[file_idx], line_no, format!("not JSON: {err}"));
                    continue;
                }
            };
            let resource = Resource {
                file: file_idx,
                line: line_no,
                json,
            };
            let Some(kind) = RESOURCES
                .iter()
                .copied()
                .find(|&kind| resource.json["resourceType"] == kind)
            else {
                continue;
            };
            if kind == "Patient" {
                match resource.json["id"].as_str() {
                    Some(id) => patients.push((id.to_owned(), resource)),
                    None => encoder.skip_row(
                        &names[file_idx],
                        line_no,
                        "Patient resource without an id".to_owned(),
                    ),
                }
            } else if let Some(id) = patient_of(&resource.json) {
                by_patient
                    .entry(kind)
                    .or_default()
                    .entry(id)
                    .or_default()
                    .push(resource);
            }
        }
    }

    let empty = Vec::new();
    for (id, patient) in &patients {
        let resources_of = |kind: &str| {
            by_patient
                .get(kind)
                .and_then(|of| of.get(id))
                .unwrap_or(&empty)
        };
        let values: Vec<(FhirValue, &Resource)> = sources
            .iter()
            .chain([&label_source])
            .map(|source| extract(source, patient, resources_of(source.resource_type())))
            .collect();
        let located: Vec<Located<'_>> = values
            .iter()
            .map(|(value, resource)| Located {
                field: match value {
                    FhirValue::Absent => Field::Absent,
                    FhirValue::Text(text) => Field::Value(text),
                    FhirValue::Bad(reason) => Field::Unreadable(reason.clone()),
                },
                source: &names[resource.file],
                line: resource.line,
            })
            .collect();
        let mut located = located;
        let label = located.pop().expect("the label's value");
        encoder.push_row(&located, label);
    }
    encoder.finish()
}

/// Reads the export in `dir` and returns only the rows.
pub fn load_fhir_dataset(dir: &Path, schema: &Schema) -> Result<Dataset, DataError> {
    load_fhir(dir, schema).map(|loaded| loaded.data)
}

/// A value found in the export.
enum FhirValue {
    Absent,
    Text(String),
    Bad(String),
}

/// The id of the patient a resource is about.
fn patient_of(resource: &Value) -> Option<String> {
    let reference = resource["subject"]["reference"]
        .as_str()
        .or_else(|| resource["patient"]["reference"].as_str())?;
    let id = reference
        .strip_prefix("urn:uuid:")
        .unwrap_or_else(|| reference.rsplit('/').next().unwrap_or(reference));
    Some(id.to_owned())
}

/// Finds `source`'s value for one patient, and the resource it came from (the patient's
/// own when nothing was found).
fn extract<'r>(
    source: &FhirSource,
    patient: &'r Resource,
    resources: &'r [Resource],
) -> (FhirValue, &'r Resource) {
    let kind = source.resource_type();
    if kind == "Patient" {
        let value = if source.path.is_empty() {
            FhirValue::Bad("the mapping names no path on Patient".to_owned())
        } else {
            read_path(&patient.json, &source.path)
        };
        return (translate(value, source), patient);
    }
    let latest = resources
        .iter()
        .filter(|resource| counts(resource, kind) && has_code(&resource.json, &source.code))
        .max_by(|a, b| when(&a.json).cmp(when(&b.json)));
    match (latest, source.path.is_empty(), kind) {
        (None, _, "Observation") => (FhirValue::Absent, patient),
        (None, true, _) => (translate(FhirValue::Text("0".to_owned()), source), patient),
        (None, false, _) => (FhirValue::Absent, patient),
        (Some(resource), false, _) => (
            translate(read_path(&resource.json, &source.path), source),
            resource,
        ),
        (Some(resource), true, "Observation") => (
            translate(observation_value(&resource.json, &source.unit), source),
            resource,
        ),
        (Some(resource), true, _) => (translate(FhirValue::Text("1".to_owned()), source), resource),
    }
}

/// Whether a resource counts: not entered in error, a condition not refuted.
fn counts(resource: &Resource, kind: &str) -> bool {
    let json = &resource.json;
    if json["status"] == "entered-in-error" || json["status"] == "cancelled" {
        return false;
    }
    if kind == "Condition" {
        let verification = &json["verificationStatus"]["coding"][0]["code"];
        if verification == "refuted" || verification == "entered-in-error" {
            return false;
        }
    }
    true
}

/// The time a resource is about, for "latest"; FHIR's ISO 8601 strings sort by time
/// when they share a format.
fn when(resource: &Value) -> &str {
    [
        &resource["effectiveDateTime"],
        &resource["effectivePeriod"]["start"],
        &resource["issued"],
        &resource["recordedDate"],
        &resource["onsetDateTime"],
        &resource["authoredOn"],
        &resource["period"]["start"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    .unwrap_or("")
}

/// Whether the resource's code (`code`, `medicationCodeableConcept`, or an Encounter's
/// `type`) has `wanted` (`system|code`, or a bare code); an empty `wanted` matches all.
fn has_code(resource: &Value, wanted: &str) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let (system, code) = match wanted.split_once('|') {
        Some((system, code)) => (Some(system), code),
        None => (None, wanted),
    };
    let concepts = [&resource["code"], &resource["medicationCodeableConcept"]]
        .into_iter()
        .chain(resource["type"].as_array().into_iter().flatten());
    concepts
        .flat_map(|concept| concept["coding"].as_array().into_iter().flatten())
        .any(|coding| {
            coding["code"] == code && system.is_none_or(|system| coding["system"] == system)
        })
}

/// An observation's value as text, its quantity's unit checked against `unit`.
fn observation_value(observation: &Value, unit: &str) -> FhirValue {
    if let Some(quantity) = observation.get("valueQuantity") {
        let Some(value) = quantity.get("value") else {
            return FhirValue::Absent;
        };
        let found = quantity["code"]
            .as_str()
            .or_else(|| quantity["unit"].as_str())
            .unwrap_or("");
        if !unit.is_empty() && found != unit {
            return FhirValue::Bad(format!(
                "unit {found:?} where the federation expects {unit:?}"
            ));
        }
        return scalar(value);
    }
    if let Some(concept) = observation.get("valueCodeableConcept") {
        return match concept["coding"][0]["code"].as_str() {
            Some(code) => FhirValue::Text(code.to_owned()),
            None => FhirValue::Bad("valueCodeableConcept without a code".to_owned()),
        };
    }
    for key in [
        "valueString",
        "valueInteger",
        "valueBoolean",
        "valueDateTime",
    ] {
        if let Some(value) = observation.get(key) {
            return scalar(value);
        }
    }
    FhirValue::Absent
}

/// Reads a dotted path (`a.b[1].c`); an array met without an index gives its first element.
fn read_path(resource: &Value, path: &str) -> FhirValue {
    let mut current = resource;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => {
                match rest.strip_suffix(']').and_then(|i| i.parse::<usize>().ok()) {
                    Some(index) => (name, Some(index)),
                    None => return FhirValue::Bad(format!("the path {path:?} is malformed")),
                }
            }
            None => (segment, None),
        };
        if let Value::Array(items) = current {
            match items.first() {
                Some(first) => current = first,
                None => return FhirValue::Absent,
            }
        }
        current = match current.get(name) {
            Some(value) => value,
            None => return FhirValue::Absent,
        };
        if let Some(index) = index {
            current = match current.get(index) {
                Some(value) => value,
                None => return FhirValue::Absent,
            };
        }
    }
    if let Value::Array(items) = current {
        match items.first() {
            Some(first) => current = first,
            None => return FhirValue::Absent,
        }
    }
    scalar(current)
}

fn scalar(value: &Value) -> FhirValue {
    match value {
        Value::Null => FhirValue::Absent,
        Value::String(text) => FhirValue::Text(text.clone()),
        Value::Number(number) => FhirValue::Text(number.to_string()),
        Value::Bool(flag) => FhirValue::Text(flag.to_string()),
        Value::Array(_) | Value::Object(_) => {
            FhirValue::Bad("not a single value (an object or a list)".to_owned())
        }
    }
}

/// Applies the mapping's translations (exact, then ignoring ASCII case).
fn translate(value: FhirValue, source: &FhirSource) -> FhirValue {
    match value {
        FhirValue::Text(text) if !source.map.is_empty() => {
            let mapped = source.map.get(&text).or_else(|| {
                source
                    .map
                    .iter()
                    .find(|(from, _)| from.eq_ignore_ascii_case(&text))
                    .map(|(_, to)| to)
            });
            FhirValue::Text(mapped.cloned().unwrap_or(text))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Derive, Feature, FeatureKind, LabelRule};

    fn source(resource: &str, code: &str, path: &str) -> Option<FhirSource> {
        Some(FhirSource {
            resource: resource.to_owned(),
            code: code.to_owned(),
            path: path.to_owned(),
            ..FhirSource::default()
        })
    }

    #[test]
    fn medication_requests_encounters_birth_dates_and_the_latest_observation() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, lines: &[&str]| {
            std::fs::write(dir.path().join(name), lines.join("\n") + "\n").unwrap();
        };
        write(
            "Patient.ndjson",
            &[
                r#"{"resourceType":"Patient","id":"p1","birthDate":"1970-07-01"}"#,
                r#"{"resourceType":"Patient","id":"p2","birthDate":"1990-01-15"}"#,
            ],
        );
        write(
            "Observation.ndjson",
            &[
                r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2160-0"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2024-03-01","valueQuantity":{"value":2.5,"code":"mg/dL"}}"#,
                r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2160-0"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2023-01-01","valueQuantity":{"value":1.0,"code":"mg/dL"}}"#,
                r#"{"resourceType":"Observation","status":"entered-in-error","code":{"coding":[{"system":"http://loinc.org","code":"2160-0"}]},"subject":{"reference":"Patient/p2"},"effectiveDateTime":"2024-01-01","valueQuantity":{"value":9.0,"code":"mg/dL"}}"#,
            ],
        );
        write(
            "MedicationRequest.ndjson",
            &[
                r#"{"resourceType":"MedicationRequest","status":"active","medicationCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"860975"}]},"subject":{"reference":"Patient/p2"}}"#,
            ],
        );
        write(
            "Encounter.ndjson",
            &[
                r#"{"resourceType":"Encounter","status":"finished","class":{"code":"IMP"},"subject":{"reference":"urn:uuid:p1"},"period":{"start":"2024-02-01"}}"#,
                r#"{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p1"},"period":{"start":"2024-05-01"}}"#,
            ],
        );
        write(
            "Condition.ndjson",
            &[
                r#"{"resourceType":"Condition","verificationStatus":{"coding":[{"code":"refuted"}]},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"subject":{"reference":"Patient/p1"}}"#,
                r#"{"resourceType":"Condition","code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"subject":{"reference":"Patient/p2"}}"#,
            ],
        );
        let schema = Schema {
            label: "diabetes".to_owned(),
            label_fhir: source("Condition", "http://snomed.info/sct|44054006", ""),
            label_rule: None,
            features: vec![
                Feature {
                    column: "age".to_owned(),
                    derive: Some(Derive::AgeAt("2024-06-30".to_owned())),
                    center: 50.0,
                    scale: 10.0,
                    fhir: source("Patient", "", "birthDate"),
                    ..Feature::default()
                },
                Feature {
                    column: "creatinine".to_owned(),
                    fhir: Some(FhirSource {
                        code: "http://loinc.org|2160-0".to_owned(),
                        unit: "mg/dL".to_owned(),
                        ..FhirSource::default()
                    }),
                    ..Feature::default()
                },
                Feature {
                    column: "metformin".to_owned(),
                    kind: FeatureKind::Binary,
                    fhir: source("MedicationRequest", "860975", ""),
                    ..Feature::default()
                },
                Feature {
                    column: "last_encounter".to_owned(),
                    kind: FeatureKind::Categorical,
                    categories: vec!["AMB".to_owned(), "IMP".to_owned()],
                    fhir: source("Encounter", "", "class.code"),
                    ..Feature::default()
                },
            ],
        };
        let loaded = load_fhir(dir.path(), &schema).unwrap();
        // p1: 53 on the reference date; the latest creatinine (2.5); no metformin; the
        // latest encounter ambulatory; its condition refuted, so label 0.
        assert_eq!(loaded.data.row(0), [0.3, 2.5, -1.0, 1.0, 0.0, 0.0]);
        // p2: 34; creatinine entered in error, so missing; metformin; no encounter;
        // diabetes.
        assert_eq!(loaded.data.row(1), [-1.6, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(loaded.data.y, [0.0, 1.0]);
        assert_eq!(loaded.report.features[1].missing, 1);
        assert_eq!(loaded.report.issues_total, 0);

        // A label read by a rule from an observation's value.
        let mut by_value = schema.clone();
        by_value.label_fhir = Some(FhirSource {
            code: "2160-0".to_owned(),
            ..FhirSource::default()
        });
        by_value.label_rule = Some(LabelRule {
            greater_than: Some(2.0),
            ..LabelRule::default()
        });
        let loaded = load_fhir(dir.path(), &by_value).unwrap();
        assert_eq!(loaded.data.y, [1.0], "p2 has no usable value: left out");
        assert_eq!(loaded.report.rows_left_out, 1);
    }
}
