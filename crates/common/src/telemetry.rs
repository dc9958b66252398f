//! Logging, tracing and metrics set-up.
//!
//! Tracing: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/HTTP (JSON) to
//! that collector (`OTEL_SERVICE_NAME` overrides the service's name), and the W3C trace context
//! travels inside each JetStream message (`traceparent` header), so one trace covers an event from
//! the HTTP request at ingest to the worker that applied it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Keeps the span exporter alive; dropping it sends the spans still buffered.
#[must_use = "spans are exported until this is dropped"]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("could not flush the last spans: {err}");
        }
    }
}

/// Installs the global `tracing` subscriber (and, with `OTEL_EXPORTER_OTLP_ENDPOINT`, the OTLP
/// exporter) for `service`. A second call (tests) is a no-op. An invalid filter is an error
/// naming `RUST_LOG`, not a silent fallback.
pub fn init_tracing(config: &LogConfig, service: &'static str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::builder()
        .parse(&config.filter)
        .map_err(|err| anyhow::anyhow!("RUST_LOG {:?} is not a valid log filter: {err}", config.filter))?;
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => Some(otlp(service)?),
        _ => None,
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _already_set = match config.format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true)).try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    Ok(Telemetry(provider))
}

/// A tracer provider exporting in batches over OTLP/HTTP JSON to `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn otlp(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()
        .map_err(|err| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: {err}"))?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

/// The current span's trace context as a W3C `traceparent`, for the next hop; `None` when
/// tracing is off.
pub fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Injector(Option<String>);
    impl opentelemetry::propagation::Injector for Injector {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                self.0 = Some(value);
            }
        }
    }
    let context = tracing::Span::current().context();
    let mut injector = Injector(None);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut injector));
    injector.0
}

/// A span for work continuing the trace of `traceparent`; `None` without one (tracing off at
/// the sender), so untraced work costs nothing.
pub fn continue_trace(traceparent: Option<&str>, make: impl FnOnce() -> tracing::Span) -> Option<tracing::Span> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Extractor<'a>(&'a str);
    impl opentelemetry::propagation::Extractor for Extractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let traceparent = traceparent.filter(|t| *t != "-")?;
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extractor(traceparent)));
    let span = make();
    let _linked = span.set_parent(parent);
    Some(span)
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

/// Buckets of the histograms that count events (per JetStream message, per transaction).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The process-wide Prometheus recorder (installed on first call).
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .expect("static buckets are valid")
                .set_buckets_for_metric(Matcher::Full("ingest_frame_events".into()), COUNT_BUCKETS)
                .expect("static buckets are valid")
                .set_buckets_for_metric(Matcher::Full("worker_batch_size".into()), COUNT_BUCKETS)
                .expect("static buckets are valid")
                // How long changes take from their transaction to the stream: under a second.
                .set_buckets_for_metric(
                    Matcher::Full("change_relay_lag_seconds".into()),
                    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0],
                )
                .expect("static buckets are valid")
                // Escalation steps fire within 2 s of their due time.
                .set_buckets_for_metric(
                    Matcher::Full("escalation_lag_seconds".into()),
                    &[0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 60.0],
                )
                .expect("static buckets are valid")
                // Webhook attempts give up after 10 s.
                .set_buckets_for_metric(
                    Matcher::Full("webhook_attempt_seconds".into()),
                    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
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
        let err = init_tracing(&config, "test").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("RUST_LOG") && err.contains("loudest"), "{err}");
    }
}
