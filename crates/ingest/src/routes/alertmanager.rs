//! `POST /api/integrations/alertmanager`: Prometheus Alertmanager's webhook (payload version 4).
//! The service is named by its routing key (`?routing_key=` or `/api/integrations/alertmanager/{key}`),
//! or by `?service_id=` with an API key holding `events:write`. Each alert becomes one event keyed
//! by its fingerprint: firing → trigger, resolved → resolve.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::auth::{Principal, Scope};
use common::event::{
    AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_SHORT_FIELD, MAX_SUMMARY, ServiceRef, Severity, strip_nul,
};
use common::http::{ApiJson, ApiPath, ApiQuery, Bucket, parse_value};
use common::{ApiError, ErrorBody};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{check_routing_key_limit, envelope, publish};
use crate::idempotency::{First, derived_id};
use crate::services::ServiceTarget;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(webhook)).routes(routes!(webhook_with_key))
}

/// Alertmanager's webhook notification (version 4); other fields are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"version": "4", "receiver": "opssentinal", "alerts": [{"status": "firing",
    "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "web-01"},
    "annotations": {"summary": "Disk 95% full"}, "startsAt": "2026-11-26T10:00:00Z", "fingerprint": "5f1c2b"}]}))]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(default)]
    pub alerts: Vec<Alert>,
    #[serde(default, rename = "externalURL")]
    pub external_url: Option<String>,
    #[serde(default)]
    pub receiver: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` (a trigger) or `resolved` (a resolve).
    #[schema(pattern = "^(firing|resolved)$")]
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    /// The dedup key; without one, a hash of the labels.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The answer to an accepted notification: one event per alert.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AlertsAccepted {
    /// Always `success`.
    pub status: &'static str,
    pub message: &'static str,
    pub events: Vec<AcceptedAlert>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AcceptedAlert {
    pub dedup_key: String,
    pub event_id: uuid::Uuid,
    pub event_action: EventAction,
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
    nul_removed: usize,
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
        // The labels identify an alert; their JSON (keys sorted) can be any length, its hash cannot.
        None => {
            let labels = serde_json::to_vec(&alert.labels).unwrap_or_default();
            format!("labels:{}", hex::encode(Sha256::digest(labels)))
        }
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
    if nul_removed > 0 {
        metrics::counter!("alertmanager_repairs_total", "kind" => "nul_removed").increment(1);
        details.insert(
            "opssentinal_repairs".into(),
            json!([format!("{nul_removed} NUL characters removed (PostgreSQL stores none)")]),
        );
    }
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
/// A notification is admitted whole or not at all, and each alert's event id is derived from its content, so a re-sent notification is not counted twice.
#[utoipa::path(post, path = "/api/integrations/alertmanager", tag = "events",
    params(("routing_key" = Option<String>, Query, description = "The service's routing key"),
           ("service_id" = Option<String>, Query, description = "With an API key holding events:write, instead of routing_key")),
    request_body = Notification,
    responses((status = 202, description = "One event per alert was stored", body = AlertsAccepted), (status = 400, description = "A bad payload or routing key", body = ErrorBody),
              (status = 401, description = "No routing key and no valid API key", body = ErrorBody), (status = 403, description = "The key lacks events:write", body = ErrorBody),
              (status = 404, description = "Unknown service_id", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), (status = 429, description = "Rate limited", body = ErrorBody),
              (status = 503, description = "The pipeline cannot accept now", body = ErrorBody)))]
async fn webhook(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiQuery(target): ApiQuery<Target>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    match resolve(&state, &target, &headers, peer).await {
        Ok((service, principal)) => receive(&state, &service, principal.as_ref(), body).await,
        Err(err) => err.into_response(),
    }
}

/// The same, with the routing key in the path.
#[utoipa::path(post, path = "/api/integrations/alertmanager/{routing_key}", tag = "events",
    params(("routing_key" = String, Path, description = "The service's routing key")),
    request_body = Notification,
    responses((status = 202, description = "One event per alert was stored", body = AlertsAccepted), (status = 400, description = "A bad payload or routing key", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 429, description = "Rate limited", body = ErrorBody), (status = 503, description = "The pipeline cannot accept now", body = ErrorBody)))]
async fn webhook_with_key(
    State(state): State<Arc<AppState>>,
    ApiPath(routing_key): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    match state.services.resolve(&ServiceRef::RoutingKey(routing_key)).await {
        Ok(service) => receive(&state, &service, None, body).await,
        Err(err) => err.into_response(),
    }
}

/// The service, and the caller when an API key names it: the API-key form goes through the same
/// gate as every authenticated route (failed-authentication limit included).
async fn resolve(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<(ServiceTarget, Option<Principal>), ApiError> {
    if let Some(key) = target.routing_key.as_deref().filter(|k| !k.is_empty()) {
        return Ok((state.services.resolve(&ServiceRef::RoutingKey(key.to_owned())).await?, None));
    }
    let service_id = target.service_id.clone().ok_or_else(|| {
        ApiError::validation("routing_key", "routing_key, or service_id with an API key, is required")
    })?;
    let principal = state.gate.authenticate(headers, state.gate.client_address(peer, headers)).await?;
    principal.require(Scope::EventsWrite)?;
    Ok((state.services.resolve(&ServiceRef::ServiceId(service_id)).await?, Some(principal)))
}

/// Normalizes every alert (NUL characters removed and recorded), admits the notification as a
/// whole against the routing key's or the API key's limit, and publishes one event per alert
/// under an id derived from the alert's content.
async fn receive(
    state: &AppState,
    service: &ServiceTarget,
    principal: Option<&Principal>,
    mut body: Value,
) -> Response {
    let removed: Vec<usize> = match body.get_mut("alerts").and_then(Value::as_array_mut) {
        Some(alerts) => alerts.iter_mut().map(strip_nul).collect(),
        None => Vec::new(),
    };
    strip_nul(&mut body);
    let result = async {
        let notification: Notification = parse_value(body)?;
        notification
            .alerts
            .iter()
            .enumerate()
            .map(|(i, alert)| {
                let (action, dedup_key, payload) =
                    event_of(alert, &notification, i, removed.get(i).copied().unwrap_or(0))?;
                let mut envelope =
                    envelope(service, action, Some(dedup_key), payload, principal.map(|p| p.key_id.clone()));
                envelope.event_id = content_id(&service.id, alert, &envelope.dedup_key);
                Ok(envelope)
            })
            .collect::<Result<Vec<_>, ApiError>>()
    };
    let mut envelopes = match result.await {
        Ok(envelopes) => envelopes,
        Err(err) => return err.into_response(),
    };
    let cost = envelopes.len().max(1);
    let decision = match principal {
        Some(principal) => state.gate.limit(principal, Bucket::Events, cost).await,
        None => check_routing_key_limit(state, service, cost).await,
    };
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        metrics::counter!("rate_limited_total", "bucket" => "Alertmanager").increment(1);
        let mut response = ApiError::rate_limited(decision.retry_after).into_response();
        decision.write_headers(response.headers_mut());
        return response;
    }
    let firsts = state
        .idempotency
        .remember(
            envelopes
                .iter()
                .map(|e| (e.event_id, First { received_at: e.received_at, fingerprint: "alert".into() }))
                .collect(),
        )
        .await;
    let mut accepted = Vec::with_capacity(envelopes.len());
    for (envelope, first) in envelopes.iter_mut().zip(firsts) {
        envelope.received_at = first.received_at;
        if let Err(err) = publish(state, envelope).await {
            let mut response = err.into_response();
            if let Some(decision) = decision {
                decision.write_headers(response.headers_mut());
            }
            return response;
        }
        accepted.push(AcceptedAlert {
            dedup_key: envelope.dedup_key.clone(),
            event_id: envelope.event_id,
            event_action: envelope.action,
        });
    }
    let body = AlertsAccepted { status: "success", message: "Events processed", events: accepted };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Some(decision) = decision {
        decision.write_headers(response.headers_mut());
    }
    response
}

/// An alert's event id, from what makes a re-sent alert the same event: its service and key, its
/// status and when it started (and, resolved, when it ended).
fn content_id(service_id: &str, alert: &Alert, dedup_key: &str) -> uuid::Uuid {
    let started = alert.starts_at.as_deref().unwrap_or_default();
    let ended = if alert.status == "resolved" { alert.ends_at.as_deref().unwrap_or_default() } else { "" };
    derived_id(&["alertmanager", service_id, dedup_key, &alert.status, started, ended])
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
        let (action, key, payload) = event_of(&n.alerts[0], &n, 0, 0).unwrap();
        let payload = payload.unwrap();
        assert_eq!((action, key.as_str()), (EventAction::Trigger, "abc123"));
        assert_eq!((payload.summary.as_str(), payload.source.as_str()), ("disk 95%", "web-01"));
        assert_eq!(payload.severity, Severity::Critical);
        assert_eq!(payload.custom_details.unwrap()["labels"]["alertname"], "DiskFull");
    }

    #[test]
    fn alerts_without_a_fingerprint_are_keyed_by_a_hash_of_all_their_labels() {
        let pod = |name: &str| {
            json!({"status": "firing", "labels": {"alertname": "KubePodCrashLooping", "namespace": "production",
                "pod": name, "container": "checkout-api", "job": "kube-state-metrics", "severity": "warning",
                "instance": "10.42.7.19:8080", "cluster": "eu-west-1-prod-blue", "team": "payments-checkout",
                "runbook": "https://runbooks.example.com/kubernetes/KubePodCrashLooping-checkout-api"}})
        };
        let n = notification(json!([pod("checkout-api-7d9f8c6b5-x2k9q"), pod("checkout-api-7d9f8c6b5-m4p7z")]));
        assert!(serde_json::to_string(&n.alerts[0].labels).unwrap().len() > MAX_DEDUP_KEY);
        let first = event_of(&n.alerts[0], &n, 0, 0).unwrap().1;
        let second = event_of(&n.alerts[1], &n, 1, 0).unwrap().1;
        assert_ne!(first, second);
        assert!(first.len() <= MAX_DEDUP_KEY);
        assert_eq!(first, event_of(&n.alerts[0], &n, 0, 0).unwrap().1);
    }

    #[test]
    fn a_re_sent_alert_has_the_same_event_id_and_a_new_firing_another() {
        let n = notification(json!([
            {"status": "firing", "fingerprint": "f", "startsAt": "2026-11-26T10:00:00Z"},
            {"status": "firing", "fingerprint": "f", "startsAt": "2026-11-26T11:00:00Z"},
            {"status": "resolved", "fingerprint": "f", "startsAt": "2026-11-26T10:00:00Z", "endsAt": "2026-11-26T10:30:00Z"}]));
        let again = notification(json!([{"status": "firing", "fingerprint": "f", "startsAt": "2026-11-26T10:00:00Z"}]));
        let id = |n: &Notification, i: usize| content_id("svc", &n.alerts[i], "f");
        assert_eq!(id(&n, 0), id(&again, 0));
        assert_ne!(id(&n, 0), id(&n, 1));
        assert_ne!(id(&n, 0), id(&n, 2));
        assert_ne!(id(&n, 0), content_id("svc2", &n.alerts[0], "f"));
    }

    #[test]
    fn summary_falls_back_to_the_alert_name_and_severity_to_error() {
        let n = notification(
            json!([{"status": "firing", "fingerprint": "f", "labels": {"alertname": "Down", "severity": "bad"}}]),
        );
        let payload = event_of(&n.alerts[0], &n, 0, 0).unwrap().2.unwrap();
        assert_eq!((payload.summary.as_str(), payload.severity), ("Down", Severity::Error));
        let resolved = notification(json!([{"status": "resolved", "fingerprint": "f"}]));
        assert_eq!(event_of(&resolved.alerts[0], &resolved, 0, 0).unwrap().0, EventAction::Resolve);
        let odd = notification(json!([{"status": "pending", "fingerprint": "f"}]));
        assert_eq!(event_of(&odd.alerts[0], &odd, 0, 0).unwrap_err().details.unwrap()["field"], "alerts[0].status");
    }
}
