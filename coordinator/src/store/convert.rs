//! Checked conversions between public rows and database models.
//!
//! Public rows use `u32`/`u64`; every column is a signed BIGINT. Going in, a
//! value above `i64::MAX` is the caller's error (`OutOfRange`); coming out, a
//! negative or oversized value is a row this code did not write (`CorruptRow`).

use sea_orm::ActiveValue::Set;

use super::entity::{agent, federation, model_version, participant, round};
use super::{
    AgentRow, FederationRow, MetricsRow, ModelVersionRow, ParticipantRow, RoundRow, StoreError,
};

pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange {
        field,
        value: value.to_string(),
    })
}

pub(crate) fn round_id_to_i64(round_id: u64) -> Result<i64, StoreError> {
    to_i64("round_id", round_id)
}

fn to_u64(table: &'static str, field: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::CorruptRow {
        table,
        detail: format!("{field} = {value}"),
    })
}

fn to_u32(table: &'static str, field: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::CorruptRow {
        table,
        detail: format!("{field} = {value}"),
    })
}

/// SQLite cannot store NaN (it binds it as NULL), so NaN is NULL everywhere.
fn nan_to_null(value: f64) -> Option<f64> {
    (!value.is_nan()).then_some(value)
}

fn null_to_nan(value: Option<f64>) -> f64 {
    value.unwrap_or(f64::NAN)
}

pub(crate) fn federation_from_model(m: federation::Model) -> FederationRow {
    FederationRow {
        name: m.name,
        config_json: m.config_json,
        created_ms: m.created_ms,
    }
}

pub(crate) fn federation_to_active(row: &FederationRow) -> federation::ActiveModel {
    federation::ActiveModel {
        name: Set(row.name.clone()),
        config_json: Set(row.config_json.clone()),
        created_ms: Set(row.created_ms),
    }
}

pub(crate) fn model_version_from_model(
    m: model_version::Model,
) -> Result<ModelVersionRow, StoreError> {
    const T: &str = "model_versions";
    Ok(ModelVersionRow {
        version: to_u32(T, "version", m.version)?,
        size_bytes: to_u64(T, "size_bytes", m.size_bytes)?,
        n_params: to_u64(T, "n_params", m.n_params)?,
        round_id: m.round_id.map(|id| to_u64(T, "round_id", id)).transpose()?,
        federation: m.federation,
        digest: m.digest,
        created_ms: m.created_ms,
        server_state: m.server_state,
    })
}

pub(crate) fn model_version_to_active(
    row: &ModelVersionRow,
) -> Result<model_version::ActiveModel, StoreError> {
    if !crate::store::blobs::is_valid_digest(&row.digest) {
        return Err(StoreError::InvalidInput(format!(
            "model version {} of federation {:?}: digest is not 64 lowercase hex characters",
            row.version, row.federation
        )));
    }
    Ok(model_version::ActiveModel {
        federation: Set(row.federation.clone()),
        version: Set(i64::from(row.version)),
        digest: Set(row.digest.clone()),
        size_bytes: Set(to_i64("size_bytes", row.size_bytes)?),
        n_params: Set(to_i64("n_params", row.n_params)?),
        round_id: Set(row.round_id.map(round_id_to_i64).transpose()?),
        created_ms: Set(row.created_ms),
        server_state: Set(row.server_state.clone()),
    })
}

pub(crate) fn round_from_model(m: round::Model) -> Result<RoundRow, StoreError> {
    const T: &str = "rounds";
    Ok(RoundRow {
        id: to_u64(T, "id", m.id)?,
        number: to_u32(T, "number", m.number)?,
        state: m.state.parse().map_err(|e| StoreError::CorruptRow {
            table: T,
            detail: format!("round {}: {e}", m.id),
        })?,
        base_version: to_u32(T, "base_version", m.base_version)?,
        result_version: m
            .result_version
            .map(|v| to_u32(T, "result_version", v))
            .transpose()?,
        federation: m.federation,
        failure_reason: m.failure_reason,
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
    })
}

pub(crate) fn participant_from_model(m: participant::Model) -> Result<ParticipantRow, StoreError> {
    const T: &str = "participants";
    let metrics = match m.metrics_n_samples {
        None => None,
        Some(n_samples) => Some(MetricsRow {
            n_samples: to_u64(T, "metrics_n_samples", n_samples)?,
            loss: null_to_nan(m.metrics_loss),
            accuracy: null_to_nan(m.metrics_accuracy),
            auc: null_to_nan(m.metrics_auc),
            n_positives: m
                .metrics_n_positives
                .map(|n| to_u64(T, "metrics_n_positives", n))
                .transpose()?
                .unwrap_or(0),
            sensitivity: null_to_nan(m.metrics_sensitivity),
            specificity: null_to_nan(m.metrics_specificity),
            ece: null_to_nan(m.metrics_ece),
        }),
    };
    Ok(ParticipantRow {
        round_id: to_u64(T, "round_id", m.round_id)?,
        status: m.status.parse().map_err(|e| StoreError::CorruptRow {
            table: T,
            detail: format!("round {} facility {:?}: {e}", m.round_id, m.facility),
        })?,
        n_samples: to_u64(T, "n_samples", m.n_samples)?,
        facility: m.facility,
        update_sha256: m.update_sha256,
        detail: m.detail,
        metrics,
    })
}

/// `round_id` is the round being written; rows must agree with it.
pub(crate) fn participant_to_active(
    round_id: u64,
    row: &ParticipantRow,
) -> Result<participant::ActiveModel, StoreError> {
    if row.round_id != round_id {
        return Err(StoreError::InvalidInput(format!(
            "participant {:?} belongs to round {}, not round {round_id}",
            row.facility, row.round_id
        )));
    }
    let metrics = row.metrics.as_ref();
    Ok(participant::ActiveModel {
        round_id: Set(round_id_to_i64(round_id)?),
        facility: Set(row.facility.clone()),
        status: Set(row.status.as_str().to_owned()),
        n_samples: Set(to_i64("n_samples", row.n_samples)?),
        update_sha256: Set(row.update_sha256.clone()),
        detail: Set(row.detail.clone()),
        metrics_n_samples: Set(metrics
            .map(|m| to_i64("metrics.n_samples", m.n_samples))
            .transpose()?),
        metrics_loss: Set(metrics.and_then(|m| nan_to_null(m.loss))),
        metrics_accuracy: Set(metrics.and_then(|m| nan_to_null(m.accuracy))),
        metrics_auc: Set(metrics.and_then(|m| nan_to_null(m.auc))),
        metrics_n_positives: Set(metrics
            .map(|m| to_i64("metrics.n_positives", m.n_positives))
            .transpose()?),
        metrics_sensitivity: Set(metrics.and_then(|m| nan_to_null(m.sensitivity))),
        metrics_specificity: Set(metrics.and_then(|m| nan_to_null(m.specificity))),
        metrics_ece: Set(metrics.and_then(|m| nan_to_null(m.ece))),
    })
}

pub(crate) fn agent_from_model(m: agent::Model) -> AgentRow {
    AgentRow {
        facility: m.facility,
        cert_sha256: m.cert_sha256,
        first_seen_ms: m.first_seen_ms,
        last_seen_ms: m.last_seen_ms,
    }
}
