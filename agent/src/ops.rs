//! The agent's optional ops port (`[ops] listen` in agent.toml, or `run --ops-listen`):
//! plain HTTP/1.1 with `GET /healthz` (200 while the agent runs) and `GET /metrics` in the
//! Prometheus text format:
//!
//! | metric | type |
//! |---|---|
//! | `harambee_agent_training_seconds` | histogram: local training runs |
//! | `harambee_agent_sent_bytes_total` | counter: updates, masked inputs, secure-aggregation messages, metrics |
//! | `harambee_agent_epsilon_spent` | gauge: patient-level ε spent over all federations (the facility's accountant) |
//! | `harambee_agent_epsilon_budget` | gauge: the policy's `max_epsilon`, when set |
//! | `harambee_agent_last_contact_age_seconds` | gauge: since the coordinator last answered a heartbeat |
//!
//! It serves counts and durations only, nothing from the data or the updates; still, keep it
//! on loopback or the facility's internal network (a warning is logged otherwise).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use harambee_link::metrics::{CONTENT_TYPE, Metrics, SECONDS_BUCKETS};
use tracing::{info, warn};

use crate::runtime::AgentStats;

/// Stops the ops port when dropped.
pub struct OpsPort {
    task: tokio::task::AbortHandle,
    /// The address it is bound to.
    pub addr: SocketAddr,
}

impl Drop for OpsPort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The instruments reading `stats`, and `stats`'s training histogram set to record into them.
pub fn metrics(stats: Arc<AgentStats>) -> anyhow::Result<Metrics> {
    let metrics = Metrics::new()?;
    let meter = metrics.meter("harambee-agent");
    let training = meter
        .f64_histogram("harambee_agent_training")
        .with_unit("s")
        .with_description("Local training runs")
        .with_boundaries(SECONDS_BUCKETS.to_vec())
        .build();
    // Set once per AgentStats: a second ops port on the same stats keeps the first's.
    let _ = stats.training_seconds.set(training);
    let sent = stats.clone();
    meter
        .u64_observable_counter("harambee_agent_sent")
        .with_unit("By")
        .with_description(
            "Bytes of updates, masked inputs, secure-aggregation messages and metrics sent",
        )
        .with_callback(move |observer| {
            observer.observe(
                sent.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
                &[],
            )
        })
        .build();
    let privacy = stats.clone();
    meter
        .f64_observable_gauge("harambee_agent_epsilon_spent")
        .with_description("Patient-level epsilon spent over all federations, at the policy's delta")
        .with_callback(move |observer| {
            if let Some((spent, _)) = privacy.privacy() {
                observer.observe(spent, &[]);
            }
        })
        .build();
    let budget = stats.clone();
    meter
        .f64_observable_gauge("harambee_agent_epsilon_budget")
        .with_description("The policy's max_epsilon (absent without a budget)")
        .with_callback(move |observer| {
            if let Some((_, Some(max))) = budget.privacy() {
                observer.observe(max, &[]);
            }
        })
        .build();
    meter
        .f64_observable_gauge("harambee_agent_last_contact_age")
        .with_unit("s")
        .with_description(
            "Since the coordinator last answered a heartbeat (absent before it ever did)",
        )
        .with_callback(move |observer| {
            if let Some(age) = stats.since_contact() {
                observer.observe(age.as_secs_f64(), &[]);
            }
        })
        .build();
    Ok(metrics)
}

/// Binds `addr` and serves `/healthz` and `/metrics` until the returned handle is dropped.
pub async fn start(addr: SocketAddr, stats: Arc<AgentStats>) -> anyhow::Result<OpsPort> {
    let metrics = Arc::new(metrics(stats)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the ops port {addr}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        warn!(%bound, "the ops port (health, metrics) is plain HTTP without authentication: keep it on loopback or the facility's internal network");
    }
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()) }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "the ops port stopped");
        }
    });
    info!(%bound, "ops port listening (/healthz, /metrics)");
    Ok(OpsPort {
        task: task.abort_handle(),
        addr: bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_once_known() {
        let stats = Arc::new(AgentStats::default());
        let metrics = metrics(stats.clone()).unwrap();
        let text = metrics.render();
        assert!(text.contains("harambee_agent_sent_bytes_total 0"), "{text}");
        assert!(
            !text.contains("harambee_agent_last_contact_age_seconds "),
            "{text}"
        );
        assert!(!text.contains("harambee_agent_epsilon_budget "), "{text}");
        stats.record_for_test(Some((0.25, Some(2.0))), 4096);
        stats.training_seconds.get().unwrap().record(1.5, &[]);
        let text = metrics.render();
        for line in [
            "harambee_agent_sent_bytes_total 4096",
            "harambee_agent_epsilon_spent 0.25",
            "harambee_agent_epsilon_budget 2",
            "harambee_agent_training_seconds_count 1",
            "harambee_agent_training_seconds_bucket{le=\"2.5\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        let age = text
            .lines()
            .find_map(|l| l.strip_prefix("harambee_agent_last_contact_age_seconds "))
            .expect("the last contact's age once there was one");
        assert!(age.parse::<f64>().unwrap() < 60.0, "{age}");
    }
}
