//! The coordinator's figures, served in the Prometheus text format on the ops port
//! (`server/ops.rs`). The round drivers, the registry, the enrolment service and the TLS
//! listener record into one [`Metrics`] per coordinator; nothing here does IO.
//!
//! Labels take values from small fixed sets (stages, outcomes, refusal kinds) or from the
//! enrolled facilities' names: never free text, keys or update values.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `harambee_rounds_total` | counter | `outcome`: `committed`, `failed` |
//! | `harambee_round_stage_duration_seconds` | histogram | `stage` |
//! | `harambee_agents_connected` | gauge | |
//! | `harambee_dropouts_total` | counter | `stage` |
//! | `harambee_received_bytes_total`, `harambee_sent_bytes_total` | counter | |
//! | `harambee_update_rejections_total` | counter | `reason` ([`rejection_reason`]) |
//! | `harambee_enrolments_total` | counter | `outcome`: `enrolled`, `refused` |
//! | `harambee_ledger_entries` | gauge | |
//! | `harambee_facility_epsilon_spent` | gauge | `facility` |
//! | `harambee_secagg_unmasking_seconds` | histogram | |

use std::sync::Arc;
use std::time::Duration;

use harambee_core::params::UpdateError;
use harambee_core::round::{RoundError, Stage};
use harambee_link::metrics::SECONDS_BUCKETS;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

use crate::round::registry::Registry;

/// The instruments of one coordinator, and the exporter that reads them out.
pub struct Metrics {
    exporter: harambee_link::metrics::Metrics,
    rounds: Counter<u64>,
    stage_duration: Histogram<f64>,
    dropouts: Counter<u64>,
    rejections: Counter<u64>,
    enrolments: Counter<u64>,
    ledger_entries: Gauge<u64>,
    epsilon_spent: Gauge<f64>,
    unmasking: Histogram<f64>,
    traffic: Traffic,
}

/// Bytes through the gRPC port's connections (HTTP/2 after TLS decryption), counted by the
/// listener's connections.
#[derive(Clone)]
pub struct Traffic {
    received: Counter<u64>,
    sent: Counter<u64>,
}

impl Traffic {
    pub fn received(&self, n_bytes: usize) {
        self.received.add(n_bytes as u64, &[]);
    }

    pub fn sent(&self, n_bytes: usize) {
        self.sent.add(n_bytes as u64, &[]);
    }
}

/// How a round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Failed,
}

impl Metrics {
    /// Instruments reading connected agents from `registry`.
    pub fn new(registry: Arc<Registry>) -> Metrics {
        let exporter = harambee_link::metrics::Metrics::new()
            .expect("a fresh Prometheus registry accepts the exporter");
        let meter = exporter.meter("harambee-coordinator");
        let _connected = meter
            .u64_observable_gauge("harambee_agents_connected")
            .with_description("Facilities whose agent holds an open task stream")
            .with_callback(move |observer| observer.observe(registry.n_connected() as u64, &[]))
            .build();
        Metrics {
            rounds: meter
                .u64_counter("harambee_rounds")
                .with_description("Rounds ended, by outcome")
                .build(),
            stage_duration: meter
                .f64_histogram("harambee_round_stage_duration")
                .with_unit("s")
                .with_description("Time rounds spent in each stage")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            dropouts: meter
                .u64_counter("harambee_dropouts")
                .with_description("Selected facilities dropped from a round, by the stage it was in")
                .build(),
            rejections: meter
                .u64_counter("harambee_update_rejections")
                .with_description("Updates and secure-aggregation messages refused, by reason")
                .build(),
            enrolments: meter
                .u64_counter("harambee_enrolments")
                .with_description("Enrolment attempts, by outcome")
                .build(),
            ledger_entries: meter
                .u64_gauge("harambee_ledger_entries")
                .with_description("Entries in the privacy ledger")
                .build(),
            epsilon_spent: meter
                .f64_gauge("harambee_facility_epsilon_spent")
                .with_description(
                    "Patient-level epsilon each facility's latest ledgered receipt states",
                )
                .build(),
            unmasking: meter
                .f64_histogram("harambee_secagg_unmasking")
                .with_unit("s")
                .with_description(
                    "Computing time of secure aggregation's unmasking (share reconstruction and mask removal)",
                )
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            traffic: Traffic {
                received: meter
                    .u64_counter("harambee_received")
                    .with_unit("By")
                    .with_description("Bytes received on the gRPC port (after TLS)")
                    .build(),
                sent: meter
                    .u64_counter("harambee_sent")
                    .with_unit("By")
                    .with_description("Bytes sent on the gRPC port (before TLS)")
                    .build(),
            },
            exporter,
        }
    }

    /// Every figure in the Prometheus text format.
    pub fn render(&self) -> String {
        self.exporter.render()
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }

    pub fn round_ended(&self, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Committed => "committed",
            Outcome::Failed => "failed",
        };
        self.rounds.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub fn stage_ended(&self, stage: Stage, spent: Duration) {
        self.stage_duration.record(
            spent.as_secs_f64(),
            &[KeyValue::new("stage", stage_label(stage))],
        );
    }

    pub fn dropped(&self, stage: Stage) {
        self.dropouts
            .add(1, &[KeyValue::new("stage", stage_label(stage))]);
    }

    pub fn rejected(&self, error: &RoundError) {
        self.rejections
            .add(1, &[KeyValue::new("reason", rejection_reason(error))]);
    }

    pub fn enrolment(&self, enrolled: bool) {
        let outcome = if enrolled { "enrolled" } else { "refused" };
        self.enrolments.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub fn ledger_size(&self, entries: u64) {
        self.ledger_entries.record(entries, &[]);
    }

    pub fn epsilon_spent(&self, facility: &str, epsilon: f64) {
        if epsilon.is_finite() {
            self.epsilon_spent
                .record(epsilon, &[KeyValue::new("facility", facility.to_owned())]);
        }
    }

    pub fn unmasked(&self, spent: Duration) {
        self.unmasking.record(spent.as_secs_f64(), &[]);
    }
}

/// The `stage` label of a round stage.
pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Selecting => "selecting",
        Stage::Training => "training",
        Stage::AdvertiseKeys => "advertise_keys",
        Stage::ShareKeys => "share_keys",
        Stage::MaskedInput => "masked_input",
        Stage::Unmasking => "unmasking",
        Stage::Evaluating => "evaluating",
        Stage::Committed => "committed",
        Stage::Failed => "failed",
    }
}

/// The `reason` label of a refused update or secure-aggregation message: its kind, never
/// its text (which names facilities and values).
pub fn rejection_reason(error: &RoundError) -> &'static str {
    match error {
        RoundError::Invalid { source, .. } => match source {
            UpdateError::WrongLength { .. } => "wrong_length",
            UpdateError::NonFinite { .. } => "non_finite",
            UpdateError::NoSamples(_) | UpdateError::TooManySamples { .. } => "sample_count",
            UpdateError::RaggedBytes(_) => "malformed",
            UpdateError::Refused(_) => "federation_rule",
        },
        RoundError::SecAgg { .. } => "secagg_refused",
        RoundError::WrongStage(_) => "wrong_stage",
        RoundError::NotSelected(_) => "not_selected",
        RoundError::Duplicate(_) => "duplicate",
        RoundError::SecureOnly | RoundError::PlainOnly => "wrong_aggregation",
        RoundError::BaseLength { .. } | RoundError::Strategy(_) | RoundError::Mechanism(_) => {
            "round_setup"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_out_with_prometheus_names_and_bounded_labels() {
        let metrics = Metrics::new(Arc::default());
        metrics.round_ended(Outcome::Committed);
        metrics.round_ended(Outcome::Committed);
        metrics.round_ended(Outcome::Failed);
        metrics.stage_ended(Stage::AdvertiseKeys, Duration::from_millis(300));
        metrics.dropped(Stage::MaskedInput);
        metrics.rejected(&RoundError::Invalid {
            agent: "clinic-a".into(),
            source: UpdateError::NonFinite {
                index: 3,
                value: f32::NAN,
            },
        });
        metrics.enrolment(true);
        metrics.ledger_size(17);
        metrics.epsilon_spent("clinic-a", 0.5);
        metrics.unmasked(Duration::from_millis(20));
        metrics.traffic().received(1000);
        metrics.traffic().sent(10);
        let text = metrics.render();
        for line in [
            "harambee_rounds_total{outcome=\"committed\"} 2",
            "harambee_rounds_total{outcome=\"failed\"} 1",
            "harambee_round_stage_duration_seconds_bucket{stage=\"advertise_keys\",le=\"0.5\"} 1",
            "harambee_round_stage_duration_seconds_count{stage=\"advertise_keys\"} 1",
            "harambee_agents_connected 0",
            "harambee_dropouts_total{stage=\"masked_input\"} 1",
            "harambee_update_rejections_total{reason=\"non_finite\"} 1",
            "harambee_enrolments_total{outcome=\"enrolled\"} 1",
            "harambee_ledger_entries 17",
            "harambee_facility_epsilon_spent{facility=\"clinic-a\"} 0.5",
            "harambee_secagg_unmasking_seconds_count 1",
            "harambee_received_bytes_total 1000",
            "harambee_sent_bytes_total 10",
            "# TYPE harambee_round_stage_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        // The refusal's text (facility, index, value) is not a label.
        assert!(!text.contains("NaN\""), "{text}");
        assert!(!text.contains("index"), "{text}");
    }

    #[test]
    fn stage_labels_are_identifiers() {
        for stage in [
            Stage::Selecting,
            Stage::Training,
            Stage::AdvertiseKeys,
            Stage::ShareKeys,
            Stage::MaskedInput,
            Stage::Unmasking,
            Stage::Evaluating,
            Stage::Committed,
            Stage::Failed,
        ] {
            let label = stage_label(stage);
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
    }
}
