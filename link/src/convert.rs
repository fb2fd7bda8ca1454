//! Conversions between wire types (`harambee_proto::pb`) and the types of the pure crates and
//! `models`, used by both ends of the wire. Anything that arrives malformed becomes a
//! [`BadTask`] naming what is wrong.

use harambee_models::data::{Derive, Feature, FeatureKind, LabelRule, Schema};
use harambee_models::fhir::FhirSource;
use harambee_models::metrics::Metrics;
use harambee_models::model::{ModelKind, ModelSpec};
use harambee_models::text::{LoraConfig, LoraTarget, TextTask};
use harambee_models::train::{Optimizer, TrainConfig};
use harambee_proto::pb;
use harambee_secagg::{MaskPrg, Params, Word};

/// A task the agent cannot carry out as described.
#[derive(Debug, thiserror::Error)]
#[error("task is malformed: {0}")]
pub struct BadTask(pub String);

/// The schema a wire message describes; an unknown feature kind or a malformed derivation
/// is refused (the schema's own rules are [`Schema::validate`]'s).
pub fn schema(schema: &pb::FeatureSchema) -> Result<Schema, BadTask> {
    let features = schema
        .features
        .iter()
        .map(|f| {
            let kind = FeatureKind::parse(&f.kind).ok_or_else(|| {
                BadTask(format!(
                    "column {}: unknown feature kind {:?}",
                    f.column, f.kind
                ))
            })?;
            Ok(Feature {
                column: f.column.clone(),
                center: f.center,
                scale: f.scale,
                missing: f.missing.clone(),
                indicator: f.indicator,
                kind,
                unit: f.unit.clone(),
                min: f.min,
                max: f.max,
                categories: f.categories.clone(),
                positive: f.positive.clone(),
                negative: f.negative.clone(),
                derive: (!f.age_at.is_empty()).then(|| Derive::AgeAt(f.age_at.clone())),
                fhir: f.fhir.as_ref().map(fhir_source),
            })
        })
        .collect::<Result<Vec<_>, BadTask>>()?;
    Ok(Schema {
        label: schema.label.clone(),
        features,
        label_rule: schema.label_rule.as_ref().map(|r| LabelRule {
            positive: r.positive.clone(),
            negative: r.negative.clone(),
            greater_than: r.greater_than,
            less_than: r.less_than,
        }),
        label_fhir: schema.label_fhir.as_ref().map(fhir_source),
    })
}

fn fhir_source(f: &pb::FhirSource) -> FhirSource {
    FhirSource {
        resource: f.resource.clone(),
        code: f.code.clone(),
        unit: f.unit.clone(),
        path: f.path.clone(),
        map: f.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn fhir_source_to_pb(f: &FhirSource) -> pb::FhirSource {
    pb::FhirSource {
        resource: f.resource.clone(),
        code: f.code.clone(),
        unit: f.unit.clone(),
        path: f.path.clone(),
        map: f.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// The wire form of a schema: every field, so that [`schema`] gives it back.
pub fn schema_to_pb(schema: &Schema) -> pb::FeatureSchema {
    pb::FeatureSchema {
        label: schema.label.clone(),
        features: schema
            .features
            .iter()
            .map(|f| pb::Feature {
                column: f.column.clone(),
                center: f.center,
                scale: f.scale,
                missing: f.missing.clone(),
                indicator: f.indicator,
                kind: match f.kind {
                    FeatureKind::Numeric => String::new(),
                    other => other.as_str().to_owned(),
                },
                unit: f.unit.clone(),
                min: f.min,
                max: f.max,
                categories: f.categories.clone(),
                positive: f.positive.clone(),
                negative: f.negative.clone(),
                age_at: match &f.derive {
                    Some(Derive::AgeAt(date)) => date.clone(),
                    None => String::new(),
                },
                fhir: f.fhir.as_ref().map(fhir_source_to_pb),
            })
            .collect(),
        label_rule: schema.label_rule.as_ref().map(|r| pb::LabelRule {
            positive: r.positive.clone(),
            negative: r.negative.clone(),
            greater_than: r.greater_than,
            less_than: r.less_than,
        }),
        label_fhir: schema.label_fhir.as_ref().map(fhir_source_to_pb),
    }
}

/// The model and its input schema; checks the parameter count the coordinator announced.
pub fn model(spec: Option<&pb::ModelSpec>) -> Result<(ModelSpec, Schema), BadTask> {
    let spec = spec.ok_or_else(|| BadTask("no model spec".into()))?;
    if spec.kind == "minilm_lora" {
        let text = text_task(
            spec.text
                .as_ref()
                .ok_or_else(|| BadTask("a minilm_lora model needs its text task".into()))?,
        )?;
        let model = ModelSpec {
            kind: ModelKind::MinilmLora {
                text: Box::new(text),
            },
            n_inputs: 0,
        };
        return checked_count(model, spec.n_params).map(|model| (model, Schema::default()));
    }
    let schema = schema(
        spec.schema
            .as_ref()
            .ok_or_else(|| BadTask("no feature schema".into()))?,
    )?;
    schema.validate().map_err(|e| BadTask(e.to_string()))?;
    let kind = match spec.kind.as_str() {
        "logistic_regression" => ModelKind::LogisticRegression,
        "mlp" => ModelKind::Mlp {
            hidden: spec.hidden.iter().map(|&h| h as usize).collect(),
        },
        "personalized" => ModelKind::Personalized {
            hidden: spec.hidden.iter().map(|&h| h as usize).collect(),
        },
        other => return Err(BadTask(format!("unknown model kind {other:?}"))),
    };
    let model = ModelSpec {
        kind,
        n_inputs: schema.n_inputs(),
    };
    checked_count(model, spec.n_params).map(|model| (model, schema))
}

fn checked_count(model: ModelSpec, announced: u64) -> Result<ModelSpec, BadTask> {
    let n_params = model
        .checked_n_params()
        .ok_or_else(|| BadTask("the model's parameter count overflows".into()))?;
    if n_params as u64 != announced {
        return Err(BadTask(format!(
            "coordinator announced {announced} parameters, this agent's model has {n_params}",
        )));
    }
    Ok(model)
}

/// The text task of a `minilm_lora` model, checked.
pub fn text_task(text: &pb::TextModelSpec) -> Result<TextTask, BadTask> {
    let targets = text
        .lora_targets
        .iter()
        .map(|t| LoraTarget::from_name(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BadTask(e.to_string()))?;
    let task = TextTask {
        base_sha256: text.base_sha256.clone(),
        text_column: text.text_column.clone(),
        label_column: text.label_column.clone(),
        classes: text.classes.clone(),
        max_tokens: text.max_tokens as usize,
        lora: LoraConfig {
            rank: text.lora_rank as usize,
            alpha: text.lora_alpha,
            targets,
            top_layers: text.lora_top_layers.map(|n| n as usize),
        },
        local_head: text.local_head,
    };
    task.check().map_err(|e| BadTask(e.to_string()))?;
    Ok(task)
}

/// The wire form of a text task.
pub fn text_task_to_pb(task: &TextTask) -> pb::TextModelSpec {
    pb::TextModelSpec {
        base_sha256: task.base_sha256.clone(),
        text_column: task.text_column.clone(),
        label_column: task.label_column.clone(),
        classes: task.classes.clone(),
        max_tokens: task.max_tokens as u32,
        lora_rank: task.lora.rank as u32,
        lora_alpha: task.lora.alpha,
        lora_targets: task
            .lora
            .sorted_targets()
            .iter()
            .map(|t| t.name().to_owned())
            .collect(),
        lora_top_layers: task.lora.top_layers.map(|n| n as u32),
        local_head: task.local_head,
    }
}

pub fn train_config(config: Option<&pb::TrainConfig>) -> Result<TrainConfig, BadTask> {
    let c = config.ok_or_else(|| BadTask("no train config".into()))?;
    let optimizer = match c.optimizer.as_str() {
        "adam" => Optimizer::Adam,
        "sgd" => Optimizer::Sgd,
        other => return Err(BadTask(format!("unknown optimizer {other:?}"))),
    };
    Ok(TrainConfig {
        epochs: c.epochs as usize,
        batch_size: c.batch_size as usize,
        learning_rate: c.learning_rate,
        optimizer,
        seed: c.seed,
        proximal_mu: c.proximal_mu,
        frozen_layers: c.frozen_layers as usize,
    })
}

pub fn metrics(m: &Metrics) -> pb::Metrics {
    pb::Metrics {
        n_samples: m.n_samples,
        loss: m.loss,
        accuracy: m.accuracy,
        auc: m.auc,
        n_positives: m.n_positives,
        sensitivity: m.sensitivity,
        specificity: m.specificity,
        ece: m.ece,
    }
}

/// The wire form of the round's parameters.
pub fn params_to_pb(p: &Params) -> pb::SecAggParams {
    pb::SecAggParams {
        round_id: p.round_id,
        participants: p.participants.clone(),
        vector_len: p.vector_len as u64,
        neighbours: p.neighbours as u32,
        threshold: p.threshold as u32,
        clip: p.clip,
        quant_bits: p.quant_bits,
        max_weight: p.max_weight,
        word_bits: p.word.bits(),
        prg: match p.prg {
            MaskPrg::ChaCha20 => "chacha20",
            MaskPrg::Aes128Ctr => "aes128ctr",
        }
        .to_owned(),
        consistency_check: p.consistency_check,
        noise_stddev: p.noise_stddev,
        n_min: p.n_min as u64,
    }
}

/// The round's parameters as the coordinator sent them, checked for consistency (not for
/// whether this facility accepts them: that is its policy's job).
pub fn params_from_pb(p: &pb::SecAggParams) -> Result<Params, BadTask> {
    let params = Params {
        round_id: p.round_id,
        participants: p.participants.clone(),
        vector_len: usize::try_from(p.vector_len)
            .map_err(|_| BadTask("vector length out of range".into()))?,
        neighbours: p.neighbours as usize,
        threshold: p.threshold as usize,
        clip: p.clip,
        quant_bits: p.quant_bits,
        max_weight: p.max_weight,
        word: match p.word_bits {
            32 => Word::U32,
            64 => Word::U64,
            other => return Err(BadTask(format!("unsupported word size {other}"))),
        },
        prg: match p.prg.as_str() {
            "chacha20" => MaskPrg::ChaCha20,
            "aes128ctr" => MaskPrg::Aes128Ctr,
            other => return Err(BadTask(format!("unsupported mask generator {other:?}"))),
        },
        consistency_check: p.consistency_check,
        noise_stddev: p.noise_stddev,
        n_min: usize::try_from(p.n_min).map_err(|_| BadTask("n_min out of range".into()))?,
    };
    params
        .validate()
        .map_err(|e| BadTask(format!("secure-aggregation parameters: {e}")))?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use harambee_models::presets;

    #[test]
    fn every_schema_field_survives_the_wire() {
        for preset in [
            presets::heart_disease(),
            presets::heart_disease_fhir(),
            presets::preterm_birth(),
        ] {
            assert_eq!(schema(&schema_to_pb(&preset)).unwrap(), preset);
        }
        let mut derived = presets::heart_disease();
        derived.features[0].derive = Some(Derive::AgeAt("2024-06-30".to_owned()));
        assert_eq!(schema(&schema_to_pb(&derived)).unwrap(), derived);
        // An old peer's message (no kind) is numeric; an unknown kind is refused by name.
        let mut wire = schema_to_pb(&presets::heart_disease());
        assert_eq!(wire.features[0].kind, "");
        wire.features[0].kind = "ordinal".to_owned();
        assert_eq!(
            schema(&wire).unwrap_err().to_string(),
            "task is malformed: column age: unknown feature kind \"ordinal\""
        );
    }
}
