//! `POST /api/integrations/alertmanager`: Prometheus Alertmanager's webhook (payload version 4).
//! The service is named by its routing key (`?routing_key=` or `/api/integrations/alertmanager/{key}`),
//! or by `?service_id=` with an API key holding `events:write`. Each alert becomes one event keyed
//! by its fingerprint: firing → trigger, resolved → resolve.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use common::ApiError;
use common::auth::{Scope, key_from_headers};
use common::event::{AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_SHORT_FIELD, MAX_SUMMARY, ServiceRef, Severity};
use common::http::ApiJson;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{accept, check_routing_key_limit};
use crate::services::ServiceTarget;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(webhook)).routes(routes!(webhook_with_key))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    #[serde(default)]
    alerts: Vec<Alert>,
    #[serde(default, rename = "externalURL")]
    external_url: Option<String>,
    #[serde(default)]
    receiver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Target {
    routing_key: Option<String>,
    service_id: Option<String>,
}

fn cut(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

/// Alertmanager's `severity` label onto ours; anything else is `error`.
fn severity(label: Option<&String>) -> Severity {
    match label.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("critical" | "page" | "fatal" | "emergency" | "p1") => Severity::Critical,
        Some("warning" | "warn" | "minor" | "p3") => Severity::Warning,
        Some("info" | "informational" | "none" | "low" | "p4" | "p5") => Severity::Info,
        _ => Severity::Error,
    }
}

/// One alert as an event: its action, dedup key and (for a firing alert) payload.
fn event_of(
    alert: &Alert,
    notification: &Notification,
    index: usize,
) -> Result<(EventAction, String, Option<AlertPayload>), ApiError> {
    let action = match alert.status.as_str() {
        "firing" => EventAction::Trigger,
        "resolved" => EventAction::Resolve,
        other => {
            return Err(ApiError::validation(
                &format!("alerts[{index}].status"),
                format!("{other:?} is neither firing nor resolved"),
            ));
        }
    };
    let dedup_key = match alert.fingerprint.as_deref().filter(|f| !f.is_empty()) {
        Some(fingerprint) => cut(fingerprint, MAX_DEDUP_KEY),
        None => cut(&serde_json::to_string(&alert.labels).unwrap_or_default(), MAX_DEDUP_KEY),
    };
    if action == EventAction::Resolve {
        return Ok((action, dedup_key, None));
    }
    let summary = ["summary", "description"]
        .iter()
        .find_map(|k| alert.annotations.get(*k).filter(|v| !v.trim().is_empty()))
        .or_else(|| alert.labels.get("alertname"))
        .map_or_else(|| "Alertmanager alert".to_owned(), |s| cut(s, MAX_SUMMARY));
    let source = ["instance", "job"]
        .iter()
        .find_map(|k| alert.labels.get(*k))
        .map_or_else(|| "alertmanager".to_owned(), |s| cut(s, MAX_SHORT_FIELD));
    let mut details = Map::new();
    details.insert("labels".into(), json!(alert.labels));
    details.insert("annotations".into(), json!(alert.annotations));
    for (key, value) in [
        ("startsAt", &alert.starts_at),
        ("endsAt", &alert.ends_at),
        ("generatorURL", &alert.generator_url),
        ("externalURL", &notification.external_url),
        ("receiver", &notification.receiver),
    ] {
        if let Some(value) = value {
            details.insert(key.into(), json!(value));
        }
    }
    Ok((
        action,
        dedup_key,
        Some(AlertPayload {
            summary,
            source,
            severity: severity(alert.labels.get("severity")),
            timestamp: alert.starts_at.as_deref().and_then(|t| t.parse().ok()),
            component: alert.labels.get("job").map(|j| cut(j, MAX_SHORT_FIELD)),
            group: None,
            class: alert.labels.get("alertname").map(|a| cut(a, MAX_SHORT_FIELD)),
            custom_details: Some(details),
        }),
    ))
}

/// Receive an Alertmanager webhook notification (version 4) for the service named by `routing_key`, or by `service_id` with an API key.
#[utoipa::path(post, path = "/api/integrations/alertmanager", tag = "events",
    params(("routing_key" = Option<String>, Query, description = "The service's routing key"),
           ("service_id" = Option<String>, Query, description = "With an API key holding events:write, instead of routing_key")),
    request_body(content = Object, description = "Alertmanager webhook payload, version 4"),
    responses((status = 202, description = "One event per alert was stored"), (status = 400, description = "A bad payload or routing key"),
              (status = 401, description = "No routing key and no valid API key"), (status = 429, description = "Rate limited"),
              (status = 503, description = "The pipeline cannot accept now")))]
async fn webhook(
    State(state): State<Arc<AppState>>,
    Query(target): Query<Target>,
    headers: HeaderMap,
    ApiJson(notification): ApiJson<Notification>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let service = resolve(&state, &target, &headers).await?;
    receive(&state, &service, notification).await
}

/// The same, with the routing key in the path.
#[utoipa::path(post, path = "/api/integrations/alertmanager/{routing_key}", tag = "events",
    params(("routing_key" = String, Path, description = "The service's routing key")),
    request_body(content = Object, description = "Alertmanager webhook payload, version 4"),
    responses((status = 202, description = "One event per alert was stored"), (status = 400, description = "A bad payload or routing key"),
              (status = 429, description = "Rate limited"), (status = 503, description = "The pipeline cannot accept now")))]
async fn webhook_with_key(
    State(state): State<Arc<AppState>>,
    Path(routing_key): Path<String>,
    ApiJson(notification): ApiJson<Notification>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let service = state.services.resolve(&ServiceRef::RoutingKey(routing_key)).await?;
    receive(&state, &service, notification).await
}

async fn resolve(state: &AppState, target: &Target, headers: &HeaderMap) -> Result<ServiceTarget, ApiError> {
    if let Some(key) = target.routing_key.as_deref().filter(|k| !k.is_empty()) {
        return state.services.resolve(&ServiceRef::RoutingKey(key.to_owned())).await;
    }
    let service_id = target.service_id.clone().ok_or_else(|| {
        ApiError::validation("routing_key", "routing_key, or service_id with an API key, is required")
    })?;
    let secret =
        key_from_headers(headers).ok_or_else(|| ApiError::unauthorized("an API key is required with service_id"))?;
    let principal = state
        .gate
        .keys
        .lookup(secret)
        .await
        .map_err(|_| ApiError::unavailable("cannot verify API keys right now, retry later", 5))?
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
    principal.require(Scope::EventsWrite)?;
    state.services.resolve(&ServiceRef::ServiceId(service_id)).await
}

async fn receive(
    state: &AppState,
    service: &ServiceTarget,
    notification: Notification,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let events = notification
        .alerts
        .iter()
        .enumerate()
        .map(|(i, alert)| event_of(alert, &notification, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut accepted = Vec::with_capacity(events.len());
    for (action, dedup_key, payload) in events {
        if let Some(decision) = check_routing_key_limit(state, service).await.filter(|d| !d.allowed) {
            return Err(ApiError::rate_limited(decision.retry_after));
        }
        let envelope = accept(state, service, action, Some(dedup_key), payload, None).await?;
        accepted.push(
            json!({"dedup_key": envelope.dedup_key, "event_id": envelope.event_id, "event_action": action.as_str()}),
        );
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "success", "message": "Events processed", "events": accepted}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(alerts: Value) -> Notification {
        serde_json::from_value(json!({"version": "4", "status": "firing", "receiver": "ops", "alerts": alerts}))
            .unwrap()
    }

    #[test]
    fn a_firing_alert_becomes_a_trigger_keyed_by_its_fingerprint() {
        let n = notification(json!([{"status": "firing", "fingerprint": "abc123",
            "labels": {"alertname": "DiskFull", "severity": "page", "instance": "web-01"},
            "annotations": {"description": "disk 95%"}, "startsAt": "2026-11-26T10:00:00Z"}]));
        let (action, key, payload) = event_of(&n.alerts[0], &n, 0).unwrap();
        let payload = payload.unwrap();
        assert_eq!((action, key.as_str()), (EventAction::Trigger, "abc123"));
        assert_eq!((payload.summary.as_str(), payload.source.as_str()), ("disk 95%", "web-01"));
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.custom_details.unwrap()["labels"]["alertname"], "DiskFull");
    }

    #[test]
    fn summary_falls_back_to_the_alert_name_and_severity_to_error() {
        let n = notification(
            json!([{"status": "firing", "fingerprint": "f", "labels": {"alertname": "Down", "severity": "bad"}}]),
        );
        let payload = event_of(&n.alerts[0], &n, 0).unwrap().2.unwrap();
        assert_eq!((payload.summary.as_str(), payload.severity), ("Down", Severity::Error));
        let resolved = notification(json!([{"status": "resolved", "fingerprint": "f"}]));
        assert_eq!(event_of(&resolved.alerts[0], &resolved, 0).unwrap().0, EventAction::Resolve);
        let odd = notification(json!([{"status": "pending", "fingerprint": "f"}]));
        assert_eq!(event_of(&odd.alerts[0], &odd, 0).unwrap_err().details.unwrap()["field"], "alerts[0].status");
    }
}
