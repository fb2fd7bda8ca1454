//! Conversions between wire types (`harambee_proto::pb`) and the coordinator's own, and the
//! one place where errors become gRPC statuses.

use std::collections::HashMap;

use harambee_core::FacilityId;
use harambee_core::round::SecAggOut;
use harambee_models::data::Schema;
use harambee_models::metrics::Metrics;
use harambee_privacy::ledger::Sha256Digest;
use harambee_proto::pb;

use crate::federation::{
    Deadlines, DpSgdSpec, FederationSpec, KindName, Mechanism, ModelSection, OptimizerName,
    PrivacySpec, SecureAggregationSpec, TrainSpec,
};
use crate::store::{
    self, MetricsRow, ModelVersionRow, ParticipantRow, RoundRow, RoundState, StageRow,
};

/// A wire message that does not make a valid value: what is wrong with it, for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

impl WireError {
    pub fn new(message: impl Into<String>) -> Self {
        WireError(message.into())
    }
}

pub fn schema(schema: &Schema) -> pb::FeatureSchema {
    harambee_link::convert::schema_to_pb(schema)
}

pub fn schema_from_pb(schema: pb::FeatureSchema) -> Result<Schema, WireError> {
    harambee_link::convert::schema(&schema).map_err(|e| WireError::new(e.0))
}

pub fn model_spec(spec: &FederationSpec, n_params: usize) -> pb::ModelSpec {
    let text = spec.model.text.as_ref();
    pb::ModelSpec {
        kind: spec.model.kind.as_str().to_owned(),
        hidden: spec.model.hidden.iter().map(|&h| h as u32).collect(),
        // A text model's columns are in its text task.
        schema: text.is_none().then(|| schema(&spec.schema)),
        n_params: n_params as u64,
        text: text.map(harambee_link::convert::text_task_to_pb),
    }
}

pub fn train_config(spec: &FederationSpec) -> pb::TrainConfig {
    pb::TrainConfig {
        epochs: spec.train.epochs,
        batch_size: spec.train.batch_size,
        learning_rate: spec.train.learning_rate,
        optimizer: spec.train.optimizer.as_str().to_owned(),
        seed: spec.train.seed,
        proximal_mu: spec.strategy.proximal_mu(),
        frozen_layers: spec.train.frozen_layers,
    }
}

pub fn federation_config(spec: &FederationSpec, n_params: usize) -> pb::FederationConfig {
    pb::FederationConfig {
        name: spec.name.clone(),
        model: Some(model_spec(spec, n_params)),
        train: Some(train_config(spec)),
        min_agents: spec.min_agents,
        facilities: spec.facilities.clone(),
        deadlines: Some(pb::StageDeadlines {
            selecting_s: spec.deadlines.selecting_s,
            training_s: spec.deadlines.training_s,
            evaluating_s: spec.deadlines.evaluating_s,
        }),
        init_seed: spec.init_seed,
        retry_interrupted: spec.retry_interrupted,
        intended_use: spec.intended_use.clone(),
        secure_aggregation: Some(pb::SecureAggregationConfig {
            enabled: spec.secure_aggregation.enabled,
            clip: spec.secure_aggregation.clip,
            max_weight: spec.secure_aggregation.max_weight,
            stage_s: spec.secure_aggregation.stage_s,
            consistency_check: spec.secure_aggregation.consistency_check,
            failure_probability: spec.secure_aggregation.failure_probability,
        }),
        strategy: serde_json::to_string(&spec.strategy).expect("strategy serializes"),
        privacy: privacy_config(&spec.privacy),
    }
}

/// The federation's privacy parameters on the wire; `None` when it has none.
pub fn privacy_config(p: &PrivacySpec) -> Option<pb::PrivacyConfig> {
    (!p.is_off()).then(|| pb::PrivacyConfig {
        dp_sgd: p.dp_sgd.as_ref().map(|d| pb::DpSgdConfig {
            clip_norm: d.clip_norm,
            noise_multiplier: d.noise_multiplier,
            sampling_rate: d.sampling_rate,
        }),
        mechanism: p.mechanism.as_str().to_owned(),
        clip_norm: p.clip_norm,
        noise_multiplier: p.noise_multiplier,
        delta: p.delta,
    })
}

fn privacy_spec(p: Option<pb::PrivacyConfig>) -> Result<PrivacySpec, WireError> {
    let Some(p) = p else {
        return Ok(PrivacySpec::default());
    };
    let mechanism = Mechanism::parse(&p.mechanism).ok_or_else(|| {
        WireError::new(format!(
            "unknown privacy mechanism {:?} (none, distributed or central)",
            p.mechanism
        ))
    })?;
    Ok(PrivacySpec {
        dp_sgd: p.dp_sgd.map(|d| DpSgdSpec {
            clip_norm: d.clip_norm,
            noise_multiplier: d.noise_multiplier,
            sampling_rate: d.sampling_rate,
        }),
        mechanism,
        clip_norm: p.clip_norm,
        noise_multiplier: p.noise_multiplier,
        delta: if p.delta == 0.0 {
            PrivacySpec::default_delta()
        } else {
            p.delta
        },
    })
}

/// Reads an operator's federation definition; the result still needs `validate()`.
pub fn federation_spec(config: pb::FederationConfig) -> Result<FederationSpec, WireError> {
    let model = config
        .model
        .ok_or_else(|| WireError::new("federation config has no model"))?;
    let kind = KindName::parse(&model.kind).ok_or_else(|| {
        WireError::new(format!(
            "unknown model kind {:?} (logistic_regression, mlp, personalized or minilm_lora)",
            model.kind
        ))
    })?;
    let text = model
        .text
        .as_ref()
        .map(|t| harambee_link::convert::text_task(t).map_err(|e| WireError::new(e.0)))
        .transpose()?;
    let schema = match (model.schema, &text) {
        (Some(schema), _) => schema_from_pb(schema)?,
        (None, Some(_)) => Default::default(),
        (None, None) => return Err(WireError::new("federation config has no feature schema")),
    };
    let train = config
        .train
        .ok_or_else(|| WireError::new("federation config has no train section"))?;
    let optimizer = OptimizerName::parse(&train.optimizer).ok_or_else(|| {
        WireError::new(format!(
            "unknown optimizer {:?} (adam or sgd)",
            train.optimizer
        ))
    })?;
    let secure_aggregation = match config.secure_aggregation {
        Some(s) => SecureAggregationSpec {
            enabled: s.enabled,
            clip: s.clip,
            max_weight: s.max_weight,
            stage_s: s.stage_s,
            consistency_check: s.consistency_check,
            // 0: a client that predates the field, which meant the default graph.
            failure_probability: if s.failure_probability == 0.0 {
                harambee_secagg::DESIGN_FAILURE_PROBABILITY
            } else {
                s.failure_probability
            },
        },
        None => SecureAggregationSpec::default(),
    };
    let deadlines = config
        .deadlines
        .map(|d| Deadlines {
            selecting_s: d.selecting_s,
            training_s: d.training_s,
            evaluating_s: d.evaluating_s,
        })
        .unwrap_or_default();
    Ok(FederationSpec {
        name: config.name,
        model: ModelSection {
            kind,
            hidden: model.hidden.iter().map(|&h| h as usize).collect(),
            text,
        },
        schema,
        train: TrainSpec {
            epochs: train.epochs,
            batch_size: train.batch_size,
            learning_rate: train.learning_rate,
            optimizer,
            seed: train.seed,
            frozen_layers: train.frozen_layers,
        },
        min_agents: config.min_agents,
        facilities: config.facilities,
        deadlines,
        init_seed: config.init_seed,
        secure_aggregation,
        strategy: if config.strategy.is_empty() {
            Default::default()
        } else {
            serde_json::from_str(&config.strategy)
                .map_err(|e| WireError::new(format!("unreadable strategy: {e}")))?
        },
        privacy: privacy_spec(config.privacy)?,
        retry_interrupted: config.retry_interrupted,
        intended_use: config.intended_use,
    })
}

/// The train task of a round: the base model, the federation's training configuration and,
/// where they apply, its secure-aggregation and privacy terms.
pub fn train_task(
    spec: &FederationSpec,
    round_id: u64,
    n_params: usize,
    base: &ModelVersionRow,
    deadline_unix_ms: i64,
) -> pb::Task {
    let task = pb::TrainTask {
        round_id,
        federation: spec.name.clone(),
        model: Some(model_spec(spec, n_params)),
        base: Some(model_ref(base)),
        config: Some(train_config(spec)),
        deadline_unix_ms,
        secure: spec
            .secure_aggregation
            .enabled
            .then(|| pb::SecureAggregation {
                clip: spec.secure_aggregation.clip,
                max_weight: spec.effective_max_weight(),
                min_survivors: spec.min_agents,
                failure_probability: spec.secure_aggregation.failure_probability,
            }),
        privacy: privacy_config(&spec.privacy),
    };
    pb::Task {
        kind: Some(pb::task::Kind::Train(task)),
    }
}

/// The evaluate task of a round: the candidate model to score on the held-out split.
pub fn evaluate_task(
    spec: &FederationSpec,
    round_id: u64,
    n_params: usize,
    candidate: pb::ModelRef,
    deadline_unix_ms: i64,
) -> pb::Task {
    let task = pb::EvaluateTask {
        round_id,
        federation: spec.name.clone(),
        model: Some(model_spec(spec, n_params)),
        candidate: Some(candidate),
        deadline_unix_ms,
        config: Some(train_config(spec)),
    };
    pb::Task {
        kind: Some(pb::task::Kind::Evaluate(task)),
    }
}

/// Tells a facility to drop its part in a round.
pub fn cancel_task(round_id: u64, reason: String) -> pb::Task {
    pb::Task {
        kind: Some(pb::task::Kind::Cancel(pb::CancelTask { round_id, reason })),
    }
}

/// The ledger evidence a peer-key stage carries: each participant's `FacilityEnrolled`
/// entry (export line) with its audit path, and the signed head they lead to, proven to
/// extend the head the receiving agent saw last.
pub struct PeerLedger<'a> {
    pub head: pb::LedgerHead,
    pub enrolments: &'a HashMap<FacilityId, (String, Vec<Sha256Digest>)>,
}

/// Proof hashes for the wire.
pub fn hashes(hashes: Vec<Sha256Digest>) -> Vec<Vec<u8>> {
    hashes.into_iter().map(|h| h.0.to_vec()).collect()
}

/// Turns one secure-aggregation message into the facility's task; `certificates` are the
/// participants' certificate chains (leaf first), forwarded with their advertisements and,
/// in `ledger`, the ledger's record of their keys.
pub fn secagg_task(
    round_id: u64,
    out: SecAggOut,
    certificates: &HashMap<FacilityId, Vec<Vec<u8>>>,
    ledger: Option<PeerLedger<'_>>,
    deadline_unix_ms: i64,
) -> pb::Task {
    use harambee_secagg::Message;
    let kind = match out {
        SecAggOut::Advertise { params, my_id } => {
            pb::task::Kind::SecaggAdvertise(pb::SecAggAdvertise {
                round_id,
                params: Some(harambee_link::convert::params_to_pb(&params)),
                my_id,
                deadline_unix_ms,
            })
        }
        SecAggOut::PeerKeys {
            advertisements,
            peers,
        } => pb::task::Kind::SecaggShareKeys(pb::SecAggShareKeys {
            round_id,
            advertisements: advertisements.iter().map(Message::encode).collect(),
            peers: peers
                .into_iter()
                .map(|(id, facility)| {
                    let chain = certificates
                        .get(facility.as_str())
                        .cloned()
                        .unwrap_or_default();
                    let mut chain = chain.into_iter();
                    let (enrolment, enrolment_proof) = ledger
                        .as_ref()
                        .and_then(|l| l.enrolments.get(facility.as_str()))
                        .map(|(entry, proof)| (entry.clone(), hashes(proof.clone())))
                        .unwrap_or_default();
                    pb::SecAggPeer {
                        id,
                        certificate: chain.next().unwrap_or_default(),
                        intermediates: chain.collect(),
                        facility: facility.into_string(),
                        enrolment,
                        enrolment_proof,
                    }
                })
                .collect(),
            deadline_unix_ms,
            ledger: ledger.map(|l| l.head),
        }),
        SecAggOut::Shares(shares) => pb::task::Kind::SecaggMaskedInput(pb::SecAggMaskedInput {
            round_id,
            shares: shares.iter().map(Message::encode).collect(),
            deadline_unix_ms,
        }),
        SecAggOut::Unmask {
            request,
            sign_first,
        } => pb::task::Kind::SecaggUnmask(pb::SecAggUnmask {
            round_id,
            request: request.encode(),
            sign_first,
            deadline_unix_ms,
        }),
        SecAggOut::Consistency(proof) => pb::task::Kind::SecaggConsistency(pb::SecAggConsistency {
            round_id,
            proof: proof.encode(),
            deadline_unix_ms,
        }),
    };
    pb::Task { kind: Some(kind) }
}

pub fn model_ref(row: &ModelVersionRow) -> pb::ModelRef {
    pb::ModelRef {
        digest: row.digest.clone(),
        size_bytes: row.size_bytes,
        version: row.version,
    }
}

pub fn metrics(m: &MetricsRow) -> pb::Metrics {
    harambee_link::convert::metrics(&metrics_of_row(m))
}

pub fn metrics_row(m: &Metrics) -> MetricsRow {
    MetricsRow {
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

fn metrics_of_row(m: &MetricsRow) -> Metrics {
    Metrics {
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

/// Metrics reported by an agent: only values in range are accepted (a rate may be NaN when
/// the facility's held-out split lacks a class).
pub fn metrics_from_pb(m: pb::Metrics) -> Result<Metrics, WireError> {
    let rate = |x: f64| x.is_nan() || (0.0..=1.0).contains(&x);
    let ok = m.loss.is_finite()
        && m.loss >= 0.0
        && (0.0..=1.0).contains(&m.accuracy)
        && rate(m.auc)
        && rate(m.sensitivity)
        && rate(m.specificity)
        && rate(m.ece)
        && m.n_positives <= m.n_samples;
    if !ok {
        return Err(WireError::new(
            "metrics out of range: loss >= 0, accuracy in [0, 1], auc, sensitivity, specificity and ece in [0, 1] or NaN, n_positives <= n_samples",
        ));
    }
    Ok(Metrics {
        n_samples: m.n_samples,
        loss: m.loss,
        accuracy: m.accuracy,
        auc: m.auc,
        n_positives: m.n_positives,
        sensitivity: m.sensitivity,
        specificity: m.specificity,
        ece: m.ece,
    })
}

pub fn round_state(state: RoundState) -> pb::RoundState {
    match state {
        RoundState::Created => pb::RoundState::Created,
        RoundState::Selecting => pb::RoundState::Selecting,
        RoundState::Training => pb::RoundState::Training,
        RoundState::AdvertiseKeys => pb::RoundState::AdvertiseKeys,
        RoundState::ShareKeys => pb::RoundState::ShareKeys,
        RoundState::MaskedInput => pb::RoundState::MaskedInput,
        RoundState::Unmasking => pb::RoundState::Unmasking,
        RoundState::Evaluating => pb::RoundState::Evaluating,
        RoundState::Committed => pb::RoundState::Committed,
        RoundState::Failed => pb::RoundState::Failed,
    }
}

pub fn participant(p: &ParticipantRow) -> pb::Participant {
    pb::Participant {
        facility: p.facility.clone(),
        status: match p.status {
            store::ParticipantStatus::Selected | store::ParticipantStatus::Trained => {
                pb::ParticipantStatus::Selected
            }
            store::ParticipantStatus::Uploaded => pb::ParticipantStatus::Uploaded,
            store::ParticipantStatus::Rejected => pb::ParticipantStatus::Rejected,
            store::ParticipantStatus::Dropped => pb::ParticipantStatus::Dropped,
        } as i32,
        n_samples: p.n_samples,
        update_sha256: p.update_sha256.clone().unwrap_or_default(),
        detail: p.detail.clone().unwrap_or_default(),
        metrics: p.metrics.as_ref().map(metrics),
    }
}

pub fn round(
    row: &RoundRow,
    participants: &[ParticipantRow],
    base: Option<&ModelVersionRow>,
    result: Option<&ModelVersionRow>,
    secure_aggregation: bool,
) -> pb::Round {
    let reported: Vec<Metrics> = participants
        .iter()
        .filter_map(|p| p.metrics.as_ref())
        .map(metrics_of_row)
        .collect();
    let global = (!reported.is_empty()).then(|| {
        metrics(&metrics_row(&harambee_models::metrics::weighted_mean(
            &reported,
        )))
    });
    pb::Round {
        id: row.id,
        federation: row.federation.clone(),
        number: row.number,
        state: round_state(row.state) as i32,
        failure_reason: row.failure_reason.clone().unwrap_or_default(),
        base: base.map(model_ref),
        result: result.map(model_ref),
        participants: participants.iter().map(participant).collect(),
        created_unix_ms: row.created_ms,
        updated_unix_ms: row.updated_ms,
        global_metrics: global,
        secure_aggregation,
        facility_epsilon: None,
        not_selected: Vec::new(),
        stages: Vec::new(),
    }
}

pub fn round_stage(stage: &StageRow) -> pb::RoundStage {
    pb::RoundStage {
        state: round_state(stage.state) as i32,
        started_unix_ms: stage.started_ms,
    }
}
