//! The model card of an export (`harambee_privacy::card`), assembled from the federation, the
//! round that produced the version (as `GetRound` answers it) and the ledger.

use harambee_privacy::card::{
    CARD_FORMAT, CardFacility, CardLedger, CardMetrics, CardModel, CardPrivacy, CardQuality,
    CardTraining, ModelCard, TO_COMPLETE, ledger_figures,
};
use harambee_privacy::ledger::{LedgerEvent, LedgerLine, Sha256Digest, SignedTreeHead};
use harambee_proto::pb;

use crate::federation::FederationSpec;
use crate::store::ModelVersionRow;

/// What the card is built from besides the federation and the version.
pub struct CardInputs<'a> {
    /// The round behind the version, `None` for version 0.
    pub round: Option<&'a pb::Round>,
    pub lines: &'a [LedgerLine],
    pub head: SignedTreeHead,
    pub ledger_key_hex: String,
    /// Inclusion proof of the commit entry ([`commit_index`]) under `head`.
    pub inclusion_proof: Vec<Sha256Digest>,
}

/// Index of the `RoundCommitted` entry that produced `version` of `federation`.
pub fn commit_index(lines: &[LedgerLine], federation: &str, version: u32) -> Option<u64> {
    lines.iter().find_map(|l| match &l.event {
        LedgerEvent::RoundCommitted {
            federation: f,
            model_version,
            ..
        } if f == federation && *model_version == u64::from(version) => Some(l.index),
        _ => None,
    })
}

pub fn model_card(
    spec: &FederationSpec,
    version: &ModelVersionRow,
    digest: Sha256Digest,
    inputs: CardInputs<'_>,
) -> ModelCard {
    let federation = spec.name.as_str();
    let commit = commit_index(inputs.lines, federation, version.version);
    let round_id = version.round_id.unwrap_or(0);
    let figures = ledger_figures(inputs.lines, federation, round_id, commit);
    let mut facilities = Vec::new();
    if let Some(round) = inputs.round {
        for p in &round.participants {
            if p.status() != pb::ParticipantStatus::Uploaded {
                continue;
            }
            let facility = p.facility.as_str();
            let receipt = figures
                .in_round
                .get(facility)
                .map(|(_, c)| (c.epsilon_spent, c.receipt.receipt.delta));
            facilities.push(CardFacility {
                facility: p.facility.clone(),
                rows: p.n_samples,
                rounds_contributed: figures
                    .rounds_contributed
                    .get(facility)
                    .copied()
                    .unwrap_or(0),
                metrics: p.metrics.as_ref().map(card_metrics),
                epsilon_spent: receipt.map(|r| r.0),
                delta: receipt.map(|r| r.1),
            });
        }
    }
    facilities.sort_by(|a, b| a.facility.cmp(&b.facility));

    let aucs: Vec<(&str, f64)> = facilities
        .iter()
        .filter_map(|f| Some((f.facility.as_str(), f.metrics.as_ref()?.auc?)))
        .collect();
    let worst = aucs
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    let best = aucs.iter().map(|a| a.1).max_by(f64::total_cmp);
    let quality = CardQuality {
        pooled: inputs
            .round
            .and_then(|r| r.global_metrics.as_ref())
            .map(card_metrics),
        worst_facility: worst.map(|w| w.0.to_owned()),
        worst_auc: worst.map(|w| w.1),
        best_auc: best,
        auc_gap: worst.zip(best).map(|(w, b)| b - w.1),
    };

    let federation_privacy = figures
        .created
        .map_or(serde_json::Value::Null, |(_, privacy)| privacy.clone());
    let facility_epsilon = inputs.round.and_then(|r| r.facility_epsilon);
    let model = crate::wire::model_spec(spec, version.n_params as usize);
    ModelCard {
        format: CARD_FORMAT.to_owned(),
        federation: federation.to_owned(),
        intended_use: if spec.intended_use.trim().is_empty() {
            format!(
                "{TO_COMPLETE}: what the model is for, for whom, and what it must not be used \
                 for (set `intended_use` in the federation's configuration)"
            )
        } else {
            spec.intended_use.clone()
        },
        model: CardModel {
            kind: model.kind,
            hidden: model.hidden,
            n_params: version.n_params,
            version: u64::from(version.version),
            round_id,
            sha256: digest,
            label: spec.label().to_owned(),
            inputs: spec
                .schema
                .features
                .iter()
                .map(|f| f.column.clone())
                .collect(),
            schema: serde_json::to_value(&spec.schema).unwrap_or(serde_json::Value::Null),
        },
        training: CardTraining {
            rounds_committed: figures.rounds_committed,
            rounds_failed: figures.rounds_failed,
            strategy: serde_json::to_value(&spec.strategy).unwrap_or(serde_json::Value::Null),
            train: serde_json::to_value(&spec.train).unwrap_or(serde_json::Value::Null),
            secure_aggregation: spec.secure_aggregation.enabled,
            min_agents: u64::from(spec.min_agents),
        },
        facilities,
        quality,
        privacy: CardPrivacy {
            federation: federation_privacy,
            facility_epsilon,
            facility_delta: facility_epsilon.map(|_| spec.privacy.delta),
        },
        ledger: CardLedger {
            commit_index: commit,
            signed_tree_head: inputs.head,
            ledger_key: inputs.ledger_key_hex,
            inclusion_proof: inputs.inclusion_proof,
        },
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn card_metrics(m: &pb::Metrics) -> CardMetrics {
    CardMetrics {
        n_samples: m.n_samples,
        auc: finite(m.auc),
        accuracy: finite(m.accuracy),
        sensitivity: finite(m.sensitivity),
        specificity: finite(m.specificity),
        ece: finite(m.ece),
    }
}
