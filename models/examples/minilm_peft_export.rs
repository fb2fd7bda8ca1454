//! Writes the adapters that `models/text/reference.py peft` loads with Python's PEFT: for each
//! reference case, a deterministic classifier (adapters with non-zero `B`, so that they change
//! the encoder's output) exported with `text::lora::export_peft` into `OUT/<case>/`, with
//! Harambee's logits for the reference sentences (`harambee_logits.json`), and the list of cases
//! (`OUT/cases.json`). Run by `models/text/reference.sh`:
//!
//! ```text
//! minilm_peft_export OUT_DIR
//! ```

use std::path::PathBuf;

use harambee_models::text::Minilm;
use harambee_models::text::lora::{self, LoraConfig, LoraTarget, TextClassifierSpec};

/// Longest input in tokens, as `reference.py`'s `MAX_TOKENS`.
const MAX_TOKENS: usize = 128;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: minilm_peft_export OUT_DIR")?,
    );
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_embeddings.json"
    ))?)?;
    let sentences: Vec<String> = serde_json::from_value(fixture["sentences"].clone())?;
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let model = Minilm::load_default()?;
    let cases = [
        ("qv_r8", 7, 3, LoraConfig::default()),
        (
            "all_r4",
            11,
            2,
            LoraConfig {
                rank: 4,
                alpha: 12.0,
                targets: LoraTarget::ALL.to_vec(),
                top_layers: None,
            },
        ),
    ];
    let mut listed = Vec::new();
    for (name, seed, n_classes, lora_config) in cases {
        let spec = TextClassifierSpec {
            bert: model.config().clone(),
            lora: lora_config.clone(),
            n_classes,
        };
        let params = spec.random_params(seed);
        let dir = out.join(name);
        lora::export_peft(&spec, &params, model.sha256(), &dir)?;
        let logits = model.logits(&spec, &params, &sentences, MAX_TOKENS)?;
        std::fs::write(
            dir.join("harambee_logits.json"),
            serde_json::to_vec(&logits)?,
        )?;
        println!(
            "{name}: {} trainable values ({} in adapters), exported to {}",
            spec.n_params(),
            spec.adapter_len(),
            dir.display()
        );
        listed.push(serde_json::json!({
            "name": name,
            "seed": seed,
            "n_classes": n_classes,
            "lora": lora_config,
        }));
    }
    std::fs::write(out.join("cases.json"), serde_json::to_vec_pretty(&listed)?)?;
    Ok(())
}
