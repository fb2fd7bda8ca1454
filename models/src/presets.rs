//! Federation-fixed schemas for the bundled data sets.
//!
//! Why fixed: standardising with each facility's own mean and standard deviation would give every
//! facility a different input space, and pooling those statistics would mean publishing them.
//! Instead the federation agrees on a centre and scale per feature up front, taken from published
//! reference values rather than from anybody's data at run time, so no facility's raw statistics
//! leave it and every facility encodes its rows identically.

use crate::data::{Feature, Schema};

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
        missing: Vec::new(),
        indicator: false,
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
    }

    #[test]
    fn breast_cancer_maps_the_published_range_to_unit_interval() {
        let area = &breast_cancer().features[3];
        assert_eq!(area.column, "mean_area");
        assert_eq!((143.5 - area.center) / area.scale, -1.0);
        assert_eq!((2501.0 - area.center) / area.scale, 1.0);
    }
}
