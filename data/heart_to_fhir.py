#!/usr/bin/env python3
"""Writes the bundled UCI heart-disease table as a FHIR R4 Bulk Data export.

    python3 data/heart_to_fhir.py --out DIR [--site cleveland] [--csv PATH]

DIR gets Patient.ndjson, Observation.ndjson and Condition.ndjson, one resource per line, as
a FHIR server's $export writes them. One Patient per CSV row, in the file's order (an agent
makes one row per Patient in the order met, so the hold-out split is the CSV's), with the
measured attributes as Observations and the outcome as a Condition. Read with the schema
`harambee_models::presets::heart_disease_fhir()`, the export encodes to exactly the rows of
the CSV (models/tests/it/fhir.rs trains on both and compares). Standard library only.

Codes. LOINC where a code means the attribute exactly:
  age       30525-0  Age                                              unit a
  trestbps   8480-6  Systolic blood pressure                          unit mm[Hg]
  chol       2093-3  Cholesterol [Mass/volume] in Serum or Plasma     unit mg/dL
and where none does:
  thalach    8867-4  Heart rate, unit /min. No LOINC code names "maximum heart rate
             achieved during the exercise test" (8873-2 is a 24-hour maximum, 55426-1 a
             pedometer's); the value is that peak. A real export would add a method or a
             local code to tell it from a resting heart rate.
  cp, fbs, restecg, exang, oldpeak, slope, ca, thal: the UCI study's own codings, which no
             LOINC code represents (fbs is "fasting glucose > 120 mg/dl", a flag; LOINC
             1558-6 is the glucose value itself, which the data does not hold; restecg and
             the stress-test attributes are study-specific codes). They get codes of the
             local system urn:harambee:uci-heart-disease named like the CSV columns.
Sex is Patient.gender (1 = male, 0 = female). The outcome `target` (= num > 0, angiographic
narrowing over 50 %) is a Condition, SNOMED CT 53741008 "Coronary arteriosclerosis", present
for the patients with target 1 only.

Missing values: an empty field writes no Observation; so do the zeros the data uses for
"not measured" (chol 0, trestbps 0: see data/README.md), which the CSV schema reads as
missing tokens. The encodings agree either way.
"""

import argparse
import csv
import json
import os
import sys

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:harambee:uci-heart-disease"

# column -> (system, code, display, UCUM unit or None, FHIR value type)
OBSERVATIONS = {
    "age": (LOINC, "30525-0", "Age", "a", "quantity"),
    "cp": (LOCAL, "cp", "Chest pain type (1 typical angina, 2 atypical, 3 non-anginal, 4 asymptomatic)", None, "integer"),
    "trestbps": (LOINC, "8480-6", "Systolic blood pressure", "mm[Hg]", "quantity"),
    "chol": (LOINC, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", "quantity"),
    "fbs": (LOCAL, "fbs", "Fasting blood sugar > 120 mg/dl (1 true, 0 false)", None, "integer"),
    "restecg": (LOCAL, "restecg", "Resting ECG (0 normal, 1 ST-T abnormality, 2 left ventricular hypertrophy)", None, "integer"),
    "thalach": (LOINC, "8867-4", "Heart rate", "/min", "quantity"),
    "exang": (LOCAL, "exang", "Exercise-induced angina (1 yes, 0 no)", None, "integer"),
    "oldpeak": (LOCAL, "oldpeak", "ST depression induced by exercise relative to rest", "mm", "quantity"),
    "slope": (LOCAL, "slope", "Slope of the peak exercise ST segment (1 up, 2 flat, 3 down)", None, "integer"),
    "ca": (LOCAL, "ca", "Major vessels coloured by fluoroscopy (0-3)", None, "integer"),
    "thal": (LOCAL, "thal", "Thallium scan (3 normal, 6 fixed defect, 7 reversible defect)", None, "integer"),
}
# Zeros that mean "not measured" (data/README.md), written as no Observation.
NOT_MEASURED = {"chol": "0", "trestbps": "0"}
MISSING = {"", "?"}


def number(text):
    """The CSV field as a JSON number: an int when it is one, else a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def observation(patient_id, column, text):
    system, code, display, unit, kind = OBSERVATIONS[column]
    resource = {
        "resourceType": "Observation",
        "id": f"{patient_id}-{column}",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if kind == "quantity":
        quantity = {"value": number(text)}
        if unit is not None:
            quantity.update({"unit": unit, "system": UCUM, "code": unit})
        resource["valueQuantity"] = quantity
    else:
        resource["valueInteger"] = int(text)
    return resource


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write the export to")
    parser.add_argument("--csv", default=os.path.join(here, "heart_disease_uci_4sites.csv"))
    parser.add_argument("--site", help="only this site's rows (e.g. cleveland)")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    counts = {"Patient": 0, "Observation": 0, "Condition": 0}
    with open(args.csv, newline="", encoding="utf-8") as table, \
            open(os.path.join(args.out, "Patient.ndjson"), "w", encoding="utf-8") as patients, \
            open(os.path.join(args.out, "Observation.ndjson"), "w", encoding="utf-8") as observations, \
            open(os.path.join(args.out, "Condition.ndjson"), "w", encoding="utf-8") as conditions:
        for row in csv.DictReader(table):
            if args.site and row["site"] != args.site:
                continue
            patient_id = f"{row['site'].replace('_', '-')}-{row['source_row']}"
            patient = {"resourceType": "Patient", "id": patient_id}
            if row["sex"] not in MISSING:
                patient["gender"] = {"1": "male", "0": "female"}[row["sex"]]
            patients.write(json.dumps(patient) + "\n")
            counts["Patient"] += 1
            for column in OBSERVATIONS:
                text = row[column].strip()
                if text in MISSING or NOT_MEASURED.get(column) == text:
                    continue
                observations.write(json.dumps(observation(patient_id, column, text)) + "\n")
                counts["Observation"] += 1
            if row["target"] == "1":
                condition = {
                    "resourceType": "Condition",
                    "id": f"{patient_id}-cad",
                    "clinicalStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active"}]},
                    "verificationStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed"}]},
                    "code": {"coding": [{"system": SNOMED, "code": "53741008",
                                         "display": "Coronary arteriosclerosis"}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                }
                conditions.write(json.dumps(condition) + "\n")
                counts["Condition"] += 1
    if counts["Patient"] == 0:
        sys.exit(f"no rows{' of site ' + args.site if args.site else ''} in {args.csv}")
    print(", ".join(f"{n} {kind}" for kind, n in counts.items()), "written to", args.out)


if __name__ == "__main__":
    main()
