//! Metrics for the ops ports: OpenTelemetry instruments, read out in the Prometheus text
//! exposition format by the `opentelemetry-prometheus` exporter.
//!
//! Every [`Metrics`] has its own meter provider and Prometheus registry, never the global
//! ones: tests run several coordinators and agents in one process, and each reports only
//! its own figures. Instrument names follow the Prometheus conventions once exported: the
//! unit becomes a suffix (`s` → `_seconds`, `By` → `_bytes`) and counters end in `_total`,
//! so `harambee_sent` with unit `By` reads `harambee_sent_bytes_total`. No scope labels and
//! no `target_info` series are added: Prometheus labels each target itself.

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) for durations from milliseconds to an hour: round stages,
/// unmasking, training.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up the Prometheus exporter: {0}")]
pub struct MetricsError(String);

/// A meter provider whose instruments are read out on demand as Prometheus text.
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Ok(Metrics { provider, registry })
    }

    /// The meter to create instruments with (`scope` names the crate).
    pub fn meter(&self, scope: &'static str) -> Meter {
        self.provider.meter(scope)
    }

    /// Every instrument's current value in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families the exporter never produces
        // (no name, no type); what was written so far is still returned.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    #[test]
    fn units_become_suffixes_and_counters_end_in_total() {
        let metrics = Metrics::new().unwrap();
        let meter = metrics.meter("test");
        meter
            .u64_counter("harambee_sent")
            .with_unit("By")
            .build()
            .add(42, &[]);
        meter
            .f64_histogram("harambee_stage_duration")
            .with_unit("s")
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build()
            .record(0.3, &[KeyValue::new("stage", "training")]);
        let text = metrics.render();
        assert!(text.contains("harambee_sent_bytes_total 42"), "{text}");
        assert!(
            text.contains(
                "harambee_stage_duration_seconds_bucket{stage=\"training\",le=\"0.5\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("otel_scope"), "{text}");
        assert!(!text.contains("target_info"), "{text}");
    }
}
