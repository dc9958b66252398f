//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, ingest and the worker export spans over
//! OTLP/HTTP to a real receiver (a small collector this test runs), and the trace context travels
//! inside the JetStream message, so the worker's span of an event belongs to the trace of the HTTP
//! request that brought it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::servers::ServiceProcess;
use e2e::{TestEnv, trigger, wait_until};
use serde_json::Value;

/// A span as received: (service, trace id, span id, parent span id, name).
type Received = (String, String, String, String, String);

/// Spans out of an OTLP/HTTP JSON export request.
fn spans_of(body: &Value) -> Vec<Received> {
    let mut spans = Vec::new();
    for resource in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| span[k].as_str().unwrap_or_default().to_owned();
                spans.push((service.clone(), text("traceId"), text("spanId"), text("parentSpanId"), text("name")));
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_request_at_ingest_and_the_worker_that_applied_the_event() {
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let collector = {
        let received = received.clone();
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    received.lock().unwrap().extend(spans_of(&body));
                    axum::Json(serde_json::json!({}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let env = TestEnv::new().await;
    let mut vars = env.service_env();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    vars.push(("OTEL_BSP_SCHEDULE_DELAY", "200".into()));
    vars.push(("RUST_LOG", "info".into()));
    let ingest = ServiceProcess::start("opssentinal-ingest", &vars);
    let worker = ServiceProcess::start("opssentinal-worker", &vars);
    for service in [&ingest, &worker] {
        service.wait_ready(&env.http, Duration::from_secs(30)).await;
    }
    let key = env.admin_key().await;
    let rk = env.service("Traced").await.routing_key;
    assert_eq!(env.post_event(&ingest.url(), &key, &trigger(&rk, "traced", "follow me")).await.status(), 202);
    env.wait_for_applied(1, Duration::from_secs(30)).await;

    wait_until(Duration::from_secs(30), "the worker's span to join the ingest request's trace", || async {
        let spans = received.lock().unwrap().clone();
        spans.iter().any(|(service, trace, _, parent, name)| {
            service == "opssentinal-worker"
                && name == "apply_event"
                && !parent.is_empty()
                && spans.iter().any(|(s, t, id, _, _)| s == "opssentinal-ingest" && t == trace && id == parent)
        })
    })
    .await;
}
