//! `--output json`: what each read command prints for scripts, one JSON object per line.
//! Times are Unix milliseconds, states their lowercase names, and NaN metrics `null`.

use harambee_proto::pb;
use serde_json::{Value, json};

/// Prints one object per line.
pub fn print_lines(values: impl IntoIterator<Item = Value>) {
    for value in values {
        println!("{value}");
    }
}

pub fn agent(agent: &pb::Agent) -> Value {
    json!({
        "facility": agent.facility,
        "connected": agent.connected,
        "last_seen_unix_ms": agent.last_seen_unix_ms,
        "cert_sha256": agent.cert_sha256,
        "epsilon_spent": agent.epsilon_spent,
        "max_epsilon": agent.max_epsilon,
        "delta": agent.delta,
        "agent_version": agent.agent_version,
        "cert_not_after_unix_ms": agent.cert_not_after_unix_ms,
    })
}

pub fn model_ref(model: Option<&pb::ModelRef>) -> Value {
    match model {
        Some(m) => json!({
            "version": m.version,
            "digest": m.digest,
            "size_bytes": m.size_bytes,
        }),
        None => Value::Null,
    }
}

pub fn metrics(m: &pb::Metrics) -> Value {
    json!({
        "n_samples": m.n_samples,
        "n_positives": m.n_positives,
        "loss": m.loss,
        "accuracy": m.accuracy,
        "auc": m.auc,
        "sensitivity": m.sensitivity,
        "specificity": m.specificity,
        "ece": m.ece,
    })
}

pub fn round(round: &pb::Round) -> Value {
    let participants: Vec<Value> = round
        .participants
        .iter()
        .map(|p| {
            json!({
                "facility": p.facility,
                "status": super::status_name(p),
                "n_samples": p.n_samples,
                "update_sha256": p.update_sha256,
                "detail": p.detail,
                "metrics": p.metrics.as_ref().map(metrics),
            })
        })
        .collect();
    let not_selected: Vec<Value> = round
        .not_selected
        .iter()
        .map(|n| json!({"facility": n.facility, "reason": n.reason}))
        .collect();
    json!({
        "id": round.id,
        "federation": round.federation,
        "number": round.number,
        "state": super::state_name(round),
        "failure_reason": round.failure_reason,
        "secure_aggregation": round.secure_aggregation,
        "base": model_ref(round.base.as_ref()),
        "result": model_ref(round.result.as_ref()),
        "created_unix_ms": round.created_unix_ms,
        "updated_unix_ms": round.updated_unix_ms,
        "facility_epsilon": round.facility_epsilon,
        "global_metrics": round.global_metrics.as_ref().map(metrics),
        "participants": participants,
        "not_selected": not_selected,
    })
}

pub fn federation(fed: &pb::Federation) -> Value {
    let config = fed.config.clone().unwrap_or_default();
    let model = config.model.unwrap_or_default();
    json!({
        "name": config.name,
        "model_kind": model.kind,
        "min_agents": config.min_agents,
        "facilities": config.facilities,
        "secure_aggregation": config.secure_aggregation.is_some_and(|s| s.enabled),
        "created_unix_ms": fed.created_unix_ms,
        "latest": model_ref(fed.latest.as_ref()),
    })
}

pub fn facility(f: &pb::Facility) -> Value {
    json!({
        "name": f.name,
        "status": f.status,
        "connected": f.connected,
        "created_unix_ms": f.created_unix_ms,
        "created_by": f.created_by,
        "enrolled_unix_ms": f.enrolled_unix_ms,
        "revoked_unix_ms": f.revoked_unix_ms,
        "revoked_by": f.revoked_by,
        "revoked_reason": f.revoked_reason,
        "cert_not_after_unix_ms": f.cert_not_after_unix_ms,
    })
}

pub fn admin_action(a: &pb::AdminAction) -> Value {
    json!({
        "id": a.id,
        "at_unix_ms": a.at_unix_ms,
        "actor": a.actor,
        "actor_cert_sha256": a.actor_cert_sha256,
        "action": a.action,
        "subject": a.subject,
        "detail": a.detail,
    })
}

pub fn privacy_spend(f: &pb::PrivacySpend) -> Value {
    json!({
        "facility": f.facility,
        "epsilon_spent": f.epsilon_spent,
        "delta": f.delta,
        "contributions": f.contributions,
        "max_epsilon": f.max_epsilon,
    })
}
