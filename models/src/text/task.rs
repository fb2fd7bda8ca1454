//! A federation's text classification task: which base model, which columns of the
//! facility's file, which classes, and the adapters to train (the `minilm_lora` model kind).

use std::path::Path;

use super::lora::{LoraConfig, TextClassifierSpec};
use super::train::TextDataset;
use super::{BertConfig, MINILM_SHA256, TextError};

/// What a `minilm_lora` federation fixes for every facility.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTask {
    /// SHA-256 (hex) of the base model's `model.safetensors`; every facility checks its copy
    /// against it before training ([`super::Minilm::load_pinned`]).
    #[serde(default = "default_sha256")]
    pub base_sha256: String,
    /// Column of the facility's file holding the text.
    pub text_column: String,
    /// Column holding the class, one of `classes` (rows with another value are skipped).
    pub label_column: String,
    /// The class names, in head output order; at least 2.
    pub classes: Vec<String>,
    /// Texts are truncated to this many tokens (special tokens included); 8 to 512.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// The adapters.
    #[serde(default)]
    pub lora: LoraConfig,
    /// FedPer-style local heads: only the adapters are federated (the prefix of
    /// [`TextClassifierSpec::adapter_len`] values), and each facility trains and keeps its own
    /// classification head, which never leaves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_head: bool,
}

fn default_sha256() -> String {
    MINILM_SHA256.to_owned()
}

fn default_max_tokens() -> usize {
    128
}

impl TextTask {
    /// The classifier this task trains on all-MiniLM-L6-v2's shape.
    pub fn classifier(&self) -> TextClassifierSpec {
        TextClassifierSpec {
            bert: BertConfig::minilm_l6(),
            lora: self.lora.clone(),
            n_classes: self.classes.len(),
        }
    }

    /// Checks columns, classes, token limit and adapters.
    pub fn check(&self) -> Result<(), TextError> {
        let bad = |reason: String| Err(TextError::Adapter(reason));
        if self.base_sha256.len() != 64 || !self.base_sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            return bad("base_sha256 must be 64 hex digits".to_owned());
        }
        if self.text_column.trim().is_empty() || self.label_column.trim().is_empty() {
            return bad("text_column and label_column must be named".to_owned());
        }
        if self.text_column == self.label_column {
            return bad("text_column and label_column must differ".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.classes.iter().find(|c| !seen.insert(c.as_str())) {
            return bad(format!("class {dup:?} is listed twice"));
        }
        if !(8..=512).contains(&self.max_tokens) {
            return bad(format!("max_tokens {} is not in 8..=512", self.max_tokens));
        }
        self.classifier().check()
    }

    /// Reads the labelled texts of a CSV (comma) or TSV (tab, by the `.tsv` extension) file
    /// with a header row. Rows whose label is not one of the classes are skipped and counted
    /// (second value); a missing column is an error naming it.
    pub fn load(&self, path: &Path) -> Result<(TextDataset, usize), TextError> {
        let io = |e: csv::Error| TextError::Adapter(format!("{}: {e}", path.display()));
        let tab = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(if tab { b'\t' } else { b',' })
            .from_path(path)
            .map_err(io)?;
        let headers = reader.headers().map_err(io)?.clone();
        let column = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                TextError::Adapter(format!("{}: no column {name:?}", path.display()))
            })
        };
        let (text, label) = (column(&self.text_column)?, column(&self.label_column)?);
        let mut data = TextDataset::default();
        let mut skipped = 0;
        for record in reader.records() {
            let record = record.map_err(io)?;
            let class = record.get(label).unwrap_or_default().trim();
            match self.classes.iter().position(|c| c == class) {
                Some(index) => {
                    data.texts
                        .push(record.get(text).unwrap_or_default().to_owned());
                    data.labels.push(index);
                }
                None => skipped += 1,
            }
        }
        Ok((data, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TextTask {
        TextTask {
            base_sha256: MINILM_SHA256.to_owned(),
            text_column: "review".to_owned(),
            label_column: "condition".to_owned(),
            classes: vec!["Acne".to_owned(), "Pain".to_owned()],
            max_tokens: 64,
            lora: LoraConfig::default(),
            local_head: false,
        }
    }

    #[test]
    fn loads_the_named_columns_and_skips_other_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.csv");
        std::fs::write(
            &path,
            "id,condition,review\n1,Pain,\"hurts, a lot\"\n2,Flu,cough\n3,Acne,spots\n",
        )
        .unwrap();
        let (data, skipped) = task().load(&path).unwrap();
        assert_eq!(data.texts, ["hurts, a lot", "spots"]);
        assert_eq!(data.labels, [1, 0]);
        assert_eq!(skipped, 1);
        let missing = TextTask {
            text_column: "note".to_owned(),
            ..task()
        };
        let error = missing.load(&path).unwrap_err().to_string();
        assert!(error.contains("no column \"note\""), "{error}");
    }

    #[test]
    fn bad_tasks_are_refused() {
        assert!(task().check().is_ok());
        for bad in [
            TextTask {
                classes: vec!["Acne".to_owned()],
                ..task()
            },
            TextTask {
                classes: vec!["Acne".to_owned(), "Acne".to_owned()],
                ..task()
            },
            TextTask {
                base_sha256: "abc".to_owned(),
                ..task()
            },
            TextTask {
                max_tokens: 4,
                ..task()
            },
            TextTask {
                label_column: "review".to_owned(),
                ..task()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
