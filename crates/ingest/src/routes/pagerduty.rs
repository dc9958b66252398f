//! `POST /v2/enqueue`: PagerDuty's Events API v2, unchanged, so any sender that speaks it
//! (Alertmanager's `pagerduty_configs`, Grafana, Datadog, Zabbix, pdpyras) switches by changing
//! one URL. The routing key alone authenticates, as at PagerDuty.
//!
//! Never lose a page to strictness: only structurally invalid events (not JSON, no or unknown
//! routing key, unknown `event_action`, acknowledge/resolve without `dedup_key`) are refused.
//! Everything else is repaired — an over-long summary truncated, an unknown severity made
//! `error`, a missing source filled in — and each repair is kept in the event's custom details
//! (`opssentinal_repairs`) and counted (`pagerduty_repairs_total{kind}`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::event::ServiceRef;
use common::event::{
    AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_DETAILS_DEPTH, MAX_SHORT_FIELD, MAX_SUMMARY, Severity,
};
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{check_routing_key_limit, envelope, publish};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(enqueue))
}

/// An event as PagerDuty's Events API v2 takes it. Only `routing_key`, `event_action` and (to
/// acknowledge or resolve) `dedup_key` are checked; the rest is repaired where it breaks the rules.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"routing_key": "R0UT1NGK3Y", "event_action": "trigger",
    "payload": {"summary": "Disk 95% full on web-01", "source": "web-01", "severity": "critical"}}))]
pub struct PagerDutyEvent {
    pub routing_key: String,
    #[schema(value_type = EventAction)]
    pub event_action: String,
    pub dedup_key: Option<String>,
    pub payload: Option<PagerDutyPayload>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub images: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub links: Option<Value>,
    pub client: Option<String>,
    pub client_url: Option<String>,
}

#[derive(utoipa::ToSchema)]
pub struct PagerDutyPayload {
    pub summary: String,
    pub source: String,
    /// critical, error, warning or info (others become error).
    pub severity: String,
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    pub component: Option<String>,
    pub group: Option<String>,
    pub class: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub custom_details: Option<Value>,
}

/// An answer in PagerDuty's format.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PdBody {
    /// `success`, `invalid event`, `throttle event`, `unavailable` or `error`.
    pub status: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

impl PdBody {
    fn new(status: &str, message: impl Into<String>) -> Self {
        Self { status: status.into(), message: message.into(), dedup_key: None, errors: None }
    }
}

/// An answer in PagerDuty's format, with its status and headers.
struct PdResponse {
    status: StatusCode,
    body: PdBody,
    retry_after: Option<u64>,
    rate_limit: Option<common::ratelimit::Decision>,
}

impl PdResponse {
    fn invalid(errors: Vec<String>) -> Self {
        metrics::counter!("events_rejected_total", "reason" => "PAGERDUTY_INVALID").increment(1);
        let body = PdBody { errors: Some(errors), ..PdBody::new("invalid event", "Event object is invalid") };
        Self { status: StatusCode::BAD_REQUEST, body, retry_after: None, rate_limit: None }
    }

    fn from_api_error(err: ApiError) -> Self {
        metrics::counter!("events_rejected_total", "reason" => err.code.as_str()).increment(1);
        let status = err.code.status();
        let body = match status {
            StatusCode::SERVICE_UNAVAILABLE => PdBody::new("unavailable", err.message),
            StatusCode::PAYLOAD_TOO_LARGE => {
                PdBody { errors: Some(vec![err.message]), ..PdBody::new("invalid event", "Request entity too large") }
            }
            _ => PdBody::new("error", err.message),
        };
        Self { status, body, retry_after: err.retry_after, rate_limit: None }
    }
}

impl IntoResponse for PdResponse {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(decision) = self.rate_limit {
            decision.write_headers(response.headers_mut());
        }
        response
    }
}

/// Records a repair: kept in the event and counted.
fn repaired(repairs: &mut Vec<String>, kind: &'static str, what: String) {
    metrics::counter!("pagerduty_repairs_total", "kind" => kind).increment(1);
    repairs.push(what);
}

fn truncate(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        return value.to_owned();
    }
    let mut cut: String = value.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A structurally valid event, repaired where needed.
struct Normalized {
    routing_key: String,
    action: EventAction,
    dedup_key: Option<String>,
    payload: Option<AlertPayload>,
}

fn normalize(mut body: Value) -> Result<Normalized, Vec<String>> {
    let mut repairs = Vec::new();
    let removed = common::event::strip_nul(&mut body);
    if removed > 0 {
        repaired(&mut repairs, "nul_removed", format!("{removed} NUL characters removed (PostgreSQL stores none)"));
    }
    let Some(event) = body.as_object() else { return Err(vec!["the event must be a JSON object".into()]) };
    let mut errors = Vec::new();
    let routing_key = event.get("routing_key").and_then(Value::as_str).map(str::trim).unwrap_or_default().to_owned();
    if routing_key.is_empty() {
        errors.push("'routing_key' is missing or blank".into());
    }
    let action = match event.get("event_action").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("trigger") => Some(EventAction::Trigger),
        Some("acknowledge") => Some(EventAction::Acknowledge),
        Some("resolve") => Some(EventAction::Resolve),
        _ => {
            errors.push("'event_action' must be trigger, acknowledge or resolve".into());
            None
        }
    };
    let mut dedup_key = event.get("dedup_key").and_then(as_text).filter(|k| !k.trim().is_empty());
    if let Some(key) = dedup_key.as_mut().filter(|k| k.chars().count() > MAX_DEDUP_KEY) {
        *key = key.chars().take(MAX_DEDUP_KEY).collect();
        repaired(&mut repairs, "dedup_key_truncated", format!("dedup_key cut to {MAX_DEDUP_KEY} characters"));
    }
    if matches!(action, Some(EventAction::Acknowledge | EventAction::Resolve)) && dedup_key.is_none() {
        errors.push("'dedup_key' is required for acknowledge and resolve".into());
    }
    let (Some(action), true) = (action, errors.is_empty()) else { return Err(errors) };
    let payload = (action == EventAction::Trigger).then(|| trigger_payload(event, &mut repairs));
    Ok(Normalized { routing_key, action, dedup_key, payload })
}

fn trigger_payload(event: &Map<String, Value>, repairs: &mut Vec<String>) -> AlertPayload {
    let empty = Map::new();
    let payload = event.get("payload").and_then(Value::as_object).unwrap_or(&empty);
    let summary = match payload.get("summary").and_then(as_text).filter(|s| !s.trim().is_empty()) {
        Some(summary) if summary.chars().count() > MAX_SUMMARY => {
            repaired(
                repairs,
                "summary_truncated",
                format!("summary cut from {} to {MAX_SUMMARY} characters", summary.chars().count()),
            );
            truncate(&summary, MAX_SUMMARY)
        }
        Some(summary) => summary,
        None => {
            repaired(repairs, "summary_missing", "summary missing".into());
            "(no summary)".into()
        }
    };
    let client = event.get("client").and_then(Value::as_str).filter(|c| !c.trim().is_empty());
    let source = match payload.get("source").and_then(as_text).filter(|s| !s.trim().is_empty()) {
        Some(source) => truncate(&source, MAX_SHORT_FIELD),
        None => {
            let filled = client.map_or_else(|| "unknown".to_owned(), |c| truncate(c, MAX_SHORT_FIELD));
            repaired(repairs, "source_missing", format!("source missing, used {filled:?}"));
            filled
        }
    };
    let raw_severity = payload.get("severity").and_then(as_text).unwrap_or_default();
    let severity = match raw_severity.trim().to_ascii_lowercase().as_str() {
        "critical" => Severity::Critical,
        "error" => Severity::Error,
        "warning" => Severity::Warning,
        "info" => Severity::Info,
        _ => {
            repaired(repairs, "severity_unknown", format!("severity {raw_severity:?} unknown, used \"error\""));
            Severity::Error
        }
    };
    let timestamp = payload.get("timestamp").and_then(Value::as_str).and_then(|t| match t.parse() {
        Ok(ts) => Some(ts),
        Err(_) => {
            repaired(repairs, "timestamp_invalid", format!("timestamp {t:?} is not ISO 8601, dropped"));
            None
        }
    });
    let mut short = |name: &str| {
        payload.get(name).and_then(as_text).map(|v| {
            if v.chars().count() > MAX_SHORT_FIELD {
                repaired(repairs, "field_truncated", format!("{name} cut to {MAX_SHORT_FIELD} characters"));
            }
            truncate(&v, MAX_SHORT_FIELD)
        })
    };
    let (component, group, class) = (short("component"), short("group"), short("class"));
    let mut details = match payload.get("custom_details") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => Map::from_iter([("details".to_owned(), other.clone())]),
    };
    let extras: Map<String, Value> = ["images", "links", "client", "client_url"]
        .into_iter()
        .filter_map(|k| event.get(k).filter(|v| !v.is_null()).map(|v| (k.to_owned(), v.clone())))
        .collect();
    if !extras.is_empty() {
        details.insert("pagerduty".into(), Value::Object(extras));
    }
    // The details object is the first level.
    let flattened: usize = details.values_mut().map(|v| common::event::flatten_deep(v, MAX_DETAILS_DEPTH - 1)).sum();
    if flattened > 0 {
        repaired(
            repairs,
            "details_too_deep",
            format!("{flattened} values nested deeper than {MAX_DETAILS_DEPTH} levels kept as JSON text"),
        );
    }
    if !repairs.is_empty() {
        details.insert("opssentinal_repairs".into(), json!(repairs));
    }
    AlertPayload {
        summary,
        source,
        severity,
        timestamp,
        component,
        group,
        class,
        custom_details: (!details.is_empty()).then_some(details),
    }
}

/// Send an event in PagerDuty Events API v2 format; the routing key authenticates.
#[utoipa::path(post, path = "/v2/enqueue", tag = "events", request_body = PagerDutyEvent,
    responses((status = 202, description = "Stored; applied asynchronously", body = PdBody),
              (status = 400, description = "Structurally invalid: status `invalid event` with `errors`", body = PdBody),
              (status = 413, description = "Body over 512 KiB", body = PdBody), (status = 429, description = "Too many events for this routing key", body = PdBody),
              (status = 503, description = "The pipeline cannot accept now; retry after Retry-After", body = PdBody)))]
async fn enqueue(
    State(state): State<Arc<AppState>>,
    _headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> PdResponse {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return PdResponse::from_api_error(ApiError::new(
                common::ErrorCode::PayloadTooLarge,
                "the body is over 512 KiB",
            ));
        }
        Err(_) => return PdResponse::invalid(vec!["the request body could not be read".into()]),
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return PdResponse::invalid(vec!["the body is not valid JSON".into()]);
    };
    let event = match normalize(value) {
        Ok(event) => event,
        Err(errors) => return PdResponse::invalid(errors),
    };
    let service = match state.services.resolve(&ServiceRef::RoutingKey(event.routing_key.clone())).await {
        Ok(service) => service,
        Err(err) if err.code == common::ErrorCode::InvalidRoutingKey => {
            return PdResponse::invalid(vec!["'routing_key' does not match any integration".into()]);
        }
        Err(err) => return PdResponse::from_api_error(err),
    };
    let decision = check_routing_key_limit(&state, &service, 1).await;
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        metrics::counter!("rate_limited_total", "bucket" => "RoutingKey").increment(1);
        let body =
            PdBody::new("throttle event", "Requests for this service are arriving too quickly. Please retry later.");
        return PdResponse {
            status: StatusCode::TOO_MANY_REQUESTS,
            body,
            retry_after: Some(decision.retry_after),
            rate_limit: Some(decision),
        };
    }
    let envelope = envelope(&service, event.action, event.dedup_key, event.payload, None);
    match publish(&state, &envelope).await {
        Ok(()) => PdResponse {
            status: StatusCode::ACCEPTED,
            body: PdBody { dedup_key: Some(envelope.dedup_key.clone()), ..PdBody::new("success", "Event processed") },
            retry_after: None,
            rate_limit: decision,
        },
        Err(err) => PdResponse { rate_limit: decision, ..PdResponse::from_api_error(err) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_senders_rule_breaking_is_repaired_and_recorded() {
        let long = "x".repeat(1500);
        let event = normalize(json!({
            "routing_key": "rk", "event_action": "trigger", "client": "Alertmanager",
            "payload": {"summary": long, "severity": "PAGE", "timestamp": "yesterday", "custom_details": "just text"}
        }))
        .ok()
        .unwrap();
        let payload = event.payload.unwrap();
        assert_eq!(payload.summary.chars().count(), MAX_SUMMARY);
        assert!(payload.summary.ends_with('…'));
        assert_eq!(payload.severity, Severity::Error);
        assert_eq!(payload.source, "Alertmanager");
        assert_eq!(payload.timestamp, None);
        let details = payload.custom_details.unwrap();
        assert_eq!(details["details"], "just text");
        assert_eq!(details["pagerduty"]["client"], "Alertmanager");
        assert_eq!(details["opssentinal_repairs"].as_array().unwrap().len(), 4);
        assert!(event.dedup_key.is_none());
    }

    #[test]
    fn severity_is_case_insensitive_and_acknowledge_needs_no_payload() {
        let event = normalize(json!({"routing_key": "rk", "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "Warning"}}))
        .ok()
        .unwrap();
        assert_eq!(event.payload.unwrap().severity, Severity::Warning);
        let ack =
            normalize(json!({"routing_key": "rk", "event_action": "acknowledge", "dedup_key": "k"})).ok().unwrap();
        assert!(ack.payload.is_none());
    }

    #[test]
    fn nul_characters_are_removed_and_the_repair_recorded() {
        let event = normalize(json!({"routing_key": "rk", "event_action": "trigger", "dedup_key": "k\u{0}1",
            "payload": {"summary": "disk\u{0}", "source": "h", "severity": "info", "custom_details": {"a\u{0}": "\u{0}"}}}))
        .ok()
        .unwrap();
        assert_eq!(event.dedup_key.as_deref(), Some("k1"));
        let payload = event.payload.unwrap();
        assert_eq!(payload.summary, "disk");
        let details = payload.custom_details.unwrap();
        assert_eq!(details["a"], "");
        assert!(details["opssentinal_repairs"][0].as_str().unwrap().contains("4 NUL"));
    }

    #[test]
    fn only_structural_problems_are_refused() {
        for (body, error) in [
            (json!([1]), "JSON object"),
            (json!({"event_action": "trigger"}), "routing_key"),
            (json!({"routing_key": "rk", "event_action": "explode"}), "event_action"),
            (json!({"routing_key": "rk", "event_action": "resolve"}), "dedup_key"),
        ] {
            let errors = normalize(body.clone()).err().unwrap();
            assert!(errors.iter().any(|e| e.contains(error)), "{body}: {errors:?}");
        }
    }
}
