//! Logging and metrics set-up.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global `tracing` subscriber. A second call (tests) is a no-op. An invalid filter
/// is an error naming `RUST_LOG`, not a silent fallback.
pub fn init_tracing(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::builder()
        .parse(&config.filter)
        .map_err(|err| anyhow::anyhow!("RUST_LOG {:?} is not a valid log filter: {err}", config.filter))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _already_set = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    Ok(())
}

/// Counters a service exports from its start (at 0), so dashboards and alert rules find every
/// series before its first event.
pub fn export_counters(names: &[&'static str]) {
    metrics_handle();
    for name in names {
        metrics::counter!(*name).increment(0);
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first call).
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then ours only renders.
            let _installed = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_log_filter_is_named_not_ignored() {
        let config = LogConfig { format: LogFormat::Pretty, filter: "info,worker=loudest".into() };
        let err = init_tracing(&config).unwrap_err().to_string();
        assert!(err.contains("RUST_LOG") && err.contains("loudest"), "{err}");
    }
}
