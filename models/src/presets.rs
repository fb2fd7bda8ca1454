//! Federation-fixed schemas for the bundled data sets.
//!
//! Why fixed: standardising with each facility's own mean and standard deviation would give every
//! facility a different input space, and pooling those statistics would mean publishing them.
//! Instead the federation agrees on a centre and scale per feature up front, taken from published
//! reference values rather than from anybody's data at run time, so no facility's raw statistics
//! leave it and every facility encodes its rows identically.

use crate::data::{Feature, FeatureKind, LabelRule, Schema};
use crate::fhir::FhirSource;

/// Schema for the UCI Heart Disease data, four sites (`heart_disease_uci_4sites.csv`, the
/// FLamby Fed-Heart-Disease benchmark). Label: `target` (1 = angiographic disease, `num > 0`).
///
/// Features, in UCI order: `age, sex, cp, trestbps, chol, fbs, restecg, thalach, exang, oldpeak,
/// slope, ca, thal`, followed in the input vector by missing-value indicators for `chol`, `slope`,
/// `ca` and `thal` (each placed right after its feature), 17 inputs in all. Those four columns are
/// missing for 22 % to 66 % of the 920 rows, with a pattern that differs by site; the others are
/// missing for at most 10 %.
///
/// Centre and scale are fixed reference values, chosen a priori:
/// - continuous measurements use clinical reference points: age 55 years with a decade as unit;
///   resting systolic pressure (`trestbps`) 120 mm Hg, the upper limit of normal in the 2017
///   ACC/AHA guideline, unit 20 mm Hg; serum cholesterol (`chol`) 200 mg/dl, the NCEP ATP III
///   "desirable" limit, unit 40 mg/dl; maximum heart rate (`thalach`) 140 bpm, the conventional
///   exercise-test target of 85 % of the age-predicted maximum `220 - age` at 55 years, unit
///   25 bpm; exercise ST depression (`oldpeak`)
///   1 mm, the usual threshold of a positive exercise ECG, unit 1 mm;
/// - coded attributes use the midpoint of the code range documented in the UCI
///   `heart-disease.names` file and half the range as unit, mapping codes into `[-1, 1]`:
///   `sex`, `fbs`, `exang` (0/1), `cp` (1-4), `restecg` (0-2), `slope` (1-3), `ca` (0-3),
///   `thal` (3, 6, 7).
///
/// Missing values: an empty field or `?` (the UCI source files' marker) everywhere; also `0` for
/// `chol` (not measured: every Switzerland row and 49 VA rows) and `trestbps` (once, VA).
///
/// Source: Janosi, Steinbrunn, Pfisterer and Detrano (1988), *Heart Disease*, UCI Machine
/// Learning Repository, <https://doi.org/10.24432/C52P4X>, CC BY 4.0.
pub fn heart_disease() -> Schema {
    let features = vec![
        feature("age", 55.0, 10.0),
        feature("sex", 0.5, 0.5),
        feature("cp", 2.5, 1.5),
        feature("trestbps", 120.0, 20.0).missing_token("0"),
        feature("chol", 200.0, 40.0)
            .missing_token("0")
            .with_indicator(),
        feature("fbs", 0.5, 0.5),
        feature("restecg", 1.0, 1.0),
        feature("thalach", 140.0, 25.0),
        feature("exang", 0.5, 0.5),
        feature("oldpeak", 1.0, 1.0),
        feature("slope", 2.0, 1.0).with_indicator(),
        feature("ca", 1.5, 1.5).with_indicator(),
        feature("thal", 5.0, 2.0).with_indicator(),
    ];
    Schema {
        label: "target".to_owned(),
        features: features.into_iter().map(|f| f.missing_token("?")).collect(),
        ..Schema::default()
    }
}

/// Schema for the Breast Cancer Wisconsin (Diagnostic) data, WDBC
/// (`breast_cancer_wisconsin_diagnostic.csv`). Label: `malignant` (1 = malignant). Features: the
/// 30 nucleus measurements in file order (`mean_*`, `*_error`, `worst_*`), 30 inputs, none
/// missing.
///
/// Centre and scale come from the published per-feature summary statistics that ship with the
/// data: the minimum and maximum of each feature in the "Summary Statistics" table of
/// scikit-learn's description of the data set (`sklearn/datasets/descr/breast_cancer.rst`,
/// scikit-learn 1.9.1, the package this copy of the data was taken from). The UCI `wdbc.names`
/// file itself lists no per-feature means or standard deviations, so the published range is used:
/// centre = (min + max) / 2, scale = (max - min) / 2, which maps the published range onto
/// `[-1, 1]`. The table rounds to three decimals, so a few small values fall just outside that
/// interval (by at most 0.05).
///
/// Source: Wolberg, Mangasarian, Street and Street (1995), *Breast Cancer Wisconsin
/// (Diagnostic)*, UCI Machine Learning Repository, <https://doi.org/10.24432/C5DW2B>, CC BY 4.0.
pub fn breast_cancer() -> Schema {
    Schema {
        label: "malignant".to_owned(),
        features: WDBC_RANGES
            .iter()
            .map(|&(column, min, max)| feature(column, (min + max) / 2.0, (max - min) / 2.0))
            .collect(),
        ..Schema::default()
    }
}

/// `(column, published minimum, published maximum)` for the 30 WDBC features.
const WDBC_RANGES: [(&str, f64, f64); 30] = [
    ("mean_radius", 6.981, 28.11),
    ("mean_texture", 9.71, 39.28),
    ("mean_perimeter", 43.79, 188.5),
    ("mean_area", 143.5, 2501.0),
    ("mean_smoothness", 0.053, 0.163),
    ("mean_compactness", 0.019, 0.345),
    ("mean_concavity", 0.0, 0.427),
    ("mean_concave_points", 0.0, 0.201),
    ("mean_symmetry", 0.106, 0.304),
    ("mean_fractal_dimension", 0.05, 0.097),
    ("radius_error", 0.112, 2.873),
    ("texture_error", 0.36, 4.885),
    ("perimeter_error", 0.757, 21.98),
    ("area_error", 6.802, 542.2),
    ("smoothness_error", 0.002, 0.031),
    ("compactness_error", 0.002, 0.135),
    ("concavity_error", 0.0, 0.396),
    ("concave_points_error", 0.0, 0.053),
    ("symmetry_error", 0.008, 0.079),
    ("fractal_dimension_error", 0.001, 0.03),
    ("worst_radius", 7.93, 36.04),
    ("worst_texture", 12.02, 49.54),
    ("worst_perimeter", 50.41, 251.2),
    ("worst_area", 185.2, 4254.0),
    ("worst_smoothness", 0.071, 0.223),
    ("worst_compactness", 0.027, 1.058),
    ("worst_concavity", 0.0, 1.252),
    ("worst_concave_points", 0.0, 0.291),
    ("worst_symmetry", 0.156, 0.664),
    ("worst_fractal_dimension", 0.055, 0.208),
];

fn feature(column: &str, center: f64, scale: f64) -> Feature {
    Feature {
        column: column.to_owned(),
        center,
        scale,
        ..Feature::default()
    }
}

/// The system of the codes the UCI heart-disease attributes get where LOINC has no exact
/// code (see [`heart_disease_fhir`]); `data/heart_to_fhir.py` writes the same.
pub const UCI_HEART_SYSTEM: &str = "urn:harambee:uci-heart-disease";

/// [`heart_disease`] with the FHIR R4 mapping of `data/heart_to_fhir.py`'s export, so that a
/// facility holding the heart data as a FHIR Bulk Data export encodes exactly the rows of
/// the CSV. The CSV encoding is unchanged (a CSV load ignores the mapping).
///
/// | column | FHIR |
/// |---|---|
/// | `age` | Observation LOINC 30525-0 *Age*, unit `a` |
/// | `sex` | `Patient.gender` (`male` = 1, `female` = 0) |
/// | `trestbps` | Observation LOINC 8480-6 *Systolic blood pressure*, `mm[Hg]` |
/// | `chol` | Observation LOINC 2093-3 *Cholesterol [Mass/volume] in Serum or Plasma*, `mg/dL` |
/// | `thalach` | Observation LOINC 8867-4 *Heart rate*, `/min` (no LOINC code names the peak of an exercise test; the value is that peak) |
/// | `cp`, `fbs`, `restecg`, `exang`, `oldpeak`, `slope`, `ca`, `thal` | Observation with code `cp`, … of [`UCI_HEART_SYSTEM`] (no exact LOINC code: these are the UCI study's own codings) |
/// | label `target` | Condition SNOMED CT 53741008 *Coronary arteriosclerosis* present (= `num > 0`) |
pub fn heart_disease_fhir() -> Schema {
    let loinc = |code: &str, unit: &str| FhirSource {
        code: format!("http://loinc.org|{code}"),
        unit: unit.to_owned(),
        ..FhirSource::default()
    };
    let local = |code: &str| FhirSource {
        code: format!("{UCI_HEART_SYSTEM}|{code}"),
        ..FhirSource::default()
    };
    let mut schema = heart_disease();
    for feature in &mut schema.features {
        feature.fhir = Some(match feature.column.as_str() {
            "age" => loinc("30525-0", "a"),
            "sex" => FhirSource {
                path: "gender".to_owned(),
                map: [("male", "1"), ("female", "0")]
                    .into_iter()
                    .map(|(from, to)| (from.to_owned(), to.to_owned()))
                    .collect(),
                ..FhirSource::default()
            },
            "trestbps" => loinc("8480-6", "mm[Hg]"),
            "chol" => loinc("2093-3", "mg/dL"),
            "thalach" => loinc("8867-4", "/min"),
            other => local(other),
        });
    }
    schema.label_fhir = Some(FhirSource {
        resource: "Condition".to_owned(),
        code: "http://snomed.info/sct|53741008".to_owned(),
        ..FhirSource::default()
    });
    schema
}

/// Schema for the Obstetrics and Periodontal Therapy trial, four clinics
/// (`opt_periodontal_4clinics.csv`): preterm birth from baseline data, with binary and
/// categorical columns as the trial coded them. Label: `Preg.ended...37.wk` by the rule
/// `Yes` = 1, `No` = 0 (a blank, lost to follow-up, leaves the row out).
///
/// Features, 24 columns and 28 inputs: the randomised arm `Group` (binary, `T` treated / `C` control),
/// `Age` (years, plausible 12-55), the self-identified `Black`, `White`, `Nat.Am`, `Asian`,
/// `Hisp` (binary `Yes`/`No`), `Education` (categorical: `LT 8 yrs`, `8-12 yrs`,
/// `MT 12 yrs`, and other), `Public.Asstce`, `Hypertension` (`Y`/`N`), `Diabetes`,
/// `Use.Tob`, `Use.Alc`, `Drug.Add`, `Prev.preg`, `Live.PTB` (binary), `BMI` (kg/m2,
/// plausible 12-80, with a missing indicator: 73 blanks), and the baseline periodontal
/// measures `N.qualifying.teeth`, `BL.GE` (gingival index), `BL..BOP` (% of sites bleeding),
/// `BL.PD.avg` (mean pocket depth, mm), `BL.CAL.avg` (mean attachment loss, mm),
/// `BL.Pl.I` (plaque index), `BL.Calc.I` (calculus index).
///
/// Centre and scale are fixed a priori from the trial's codebook, not from the data: the
/// 0-3 indices (Silness-Löe gingival, plaque and calculus) are centred on 1.5 with scale 1.5,
/// percentages on 50 with scale 50, pocket depth on 3 mm (periodontitis starts at 4 mm) and
/// attachment loss on 1.5 mm with 1 mm as unit, teeth on 14 (half of 28) with scale 7, age on
/// 25 years with scale 6, BMI on 25 kg/m2 (the WHO overweight threshold) with scale 5.
///
/// Source: Michalowicz et al. (2006), *Treatment of periodontal disease and the risk of
/// preterm birth*, N Engl J Med 355:1885-1894, doi:10.1056/NEJMoa062249; as distributed in
/// the R package medicaldata (MIT); provenance in `data/README.md`.
pub fn preterm_birth() -> Schema {
    let yes_no = |column: &str| binary(column, "Yes", "No");
    let index = |column: &str| feature(column, 1.5, 1.5).range(0.0, 3.0);
    let features = vec![
        binary("Group", "T", "C"),
        feature("Age", 25.0, 6.0).unit("a").range(12.0, 55.0),
        yes_no("Black"),
        yes_no("White"),
        yes_no("Nat.Am"),
        yes_no("Asian"),
        yes_no("Hisp"),
        Feature {
            column: "Education".to_owned(),
            kind: FeatureKind::Categorical,
            categories: ["LT 8 yrs", "8-12 yrs", "MT 12 yrs"]
                .map(str::to_owned)
                .to_vec(),
            ..Feature::default()
        },
        yes_no("Public.Asstce"),
        binary("Hypertension", "Y", "N"),
        yes_no("Diabetes"),
        yes_no("Use.Tob"),
        yes_no("Use.Alc"),
        yes_no("Drug.Add"),
        yes_no("Prev.preg"),
        yes_no("Live.PTB"),
        feature("BMI", 25.0, 5.0)
            .unit("kg/m2")
            .range(12.0, 80.0)
            .with_indicator(),
        feature("N.qualifying.teeth", 14.0, 7.0).range(0.0, 32.0),
        index("BL.GE"),
        feature("BL..BOP", 50.0, 50.0).unit("%").range(0.0, 100.0),
        feature("BL.PD.avg", 3.0, 1.0).unit("mm").range(0.0, 15.0),
        feature("BL.CAL.avg", 1.5, 1.0).unit("mm").range(0.0, 15.0),
        index("BL.Pl.I"),
        index("BL.Calc.I"),
    ];
    Schema {
        label: "Preg.ended...37.wk".to_owned(),
        features,
        label_rule: Some(LabelRule {
            positive: vec!["Yes".to_owned()],
            negative: vec!["No".to_owned()],
            ..LabelRule::default()
        }),
        label_fhir: None,
    }
}

fn binary(column: &str, positive: &str, negative: &str) -> Feature {
    Feature {
        column: column.to_owned(),
        kind: FeatureKind::Binary,
        positive: vec![positive.to_owned()],
        negative: vec![negative.to_owned()],
        ..Feature::default()
    }
}

impl Feature {
    fn missing_token(mut self, token: &str) -> Self {
        self.missing.push(token.to_owned());
        self
    }

    fn with_indicator(mut self) -> Self {
        self.indicator = true;
        self
    }

    fn unit(mut self, unit: &str) -> Self {
        self.unit = unit.to_owned();
        self
    }

    fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        let heart = heart_disease();
        heart.validate().unwrap();
        assert_eq!(heart.features.len(), 13);
        assert_eq!(heart.n_inputs(), 17);
        let cancer = breast_cancer();
        cancer.validate().unwrap();
        assert_eq!(cancer.n_inputs(), 30);
        let fhir = heart_disease_fhir();
        fhir.validate().unwrap();
        assert_eq!(fhir.n_inputs(), 17);
        assert!(fhir.features.iter().all(|f| f.fhir.is_some()));
        let opt = preterm_birth();
        opt.validate().unwrap();
        // 24 features: Education is 3 categories + other, BMI has an indicator.
        assert_eq!(opt.features.len(), 24);
        assert_eq!(opt.n_inputs(), 24 + 3 + 1);
    }

    #[test]
    fn the_heart_schema_serialises_as_before_kinds_existed() {
        // Federations, checkpoints and agents' schemas.json written before kinds, units and
        // FHIR mappings read the same, and a plain numeric schema writes no new field.
        let json = serde_json::to_value(heart_disease()).unwrap();
        assert_eq!(
            json["features"][0],
            serde_json::json!({"column": "age", "center": 55.0, "scale": 10.0, "missing": ["?"], "indicator": false})
        );
        assert!(json.get("label_rule").is_none());
        let old = r#"{"label":"target","features":[{"column":"age","center":55.0,"scale":10.0,"missing":["?"],"indicator":false}]}"#;
        let schema: Schema = serde_json::from_str(old).unwrap();
        assert_eq!(schema.features[0], heart_disease().features[0]);
    }

    #[test]
    fn breast_cancer_maps_the_published_range_to_unit_interval() {
        let area = &breast_cancer().features[3];
        assert_eq!(area.column, "mean_area");
        assert_eq!((143.5 - area.center) / area.scale, -1.0);
        assert_eq!((2501.0 - area.center) / area.scale, 1.0);
    }
}
