//! Alertmanager's webhook (version 4), normalised: each alert becomes one event, firing a
//! trigger and resolved a resolve, keyed by its fingerprint (or a hash of its labels), with an id
//! derived from its content so a re-sent notification is the same events. Pure: no I/O.

use std::collections::BTreeMap;

use common::ApiError;
use common::event::{AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_SHORT_FIELD, MAX_SUMMARY, Severity};
use serde::Deserialize;
use serde_json::{Map, json};
use sha2::{Digest, Sha256};

use super::{severity, truncate};
use crate::idempotency::derived_id;

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

/// One alert as an event: its action, dedup key and (for a firing alert) payload.
pub fn event_of(
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
        Some(fingerprint) => truncate(fingerprint, MAX_DEDUP_KEY),
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
        .map_or_else(|| "Alertmanager alert".to_owned(), |s| truncate(s, MAX_SUMMARY));
    let source = ["instance", "job"]
        .iter()
        .find_map(|k| alert.labels.get(*k))
        .map_or_else(|| "alertmanager".to_owned(), |s| truncate(s, MAX_SHORT_FIELD));
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
            severity: alert.labels.get("severity").and_then(|s| severity(s)).unwrap_or(Severity::Error),
            timestamp: alert.starts_at.as_deref().and_then(|t| t.parse().ok()),
            component: alert.labels.get("job").map(|j| truncate(j, MAX_SHORT_FIELD)),
            group: None,
            class: alert.labels.get("alertname").map(|a| truncate(a, MAX_SHORT_FIELD)),
            custom_details: Some(details),
        }),
    ))
}

/// An alert's event id, from what makes a re-sent alert the same event: its service and key, its
/// status and when it started (and, resolved, when it ended).
pub fn content_id(service_id: &str, alert: &Alert, dedup_key: &str) -> uuid::Uuid {
    let started = alert.starts_at.as_deref().unwrap_or_default();
    let ended = if alert.status == "resolved" { alert.ends_at.as_deref().unwrap_or_default() } else { "" };
    derived_id(&["alertmanager", service_id, dedup_key, &alert.status, started, ended])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
