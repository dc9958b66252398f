//! Alertmanager's webhook (version 4), normalised: each alert becomes one event, firing a
//! trigger and resolved a resolve, keyed by its fingerprint (or a hash of its labels), with an id
//! derived from its content so a re-sent notification is the same events. Pure: no I/O.
//!
//! A notification is [`read`] (NUL characters removed, a repair of each alert they were in), then
//! each alert [`normalize`]d; its repairs are kept in its event's custom details
//! (`opssentinal_repairs`) and returned, for the route to count ([`REPAIRS_METRIC`]`{kind}`).

use std::collections::BTreeMap;

use common::ApiError;
use common::event::{AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_SHORT_FIELD, MAX_SUMMARY, Severity, strip_nul};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Normalized, Refusal, Repairs, severity};
use crate::idempotency::derived_id;

/// The counter of this source's repairs, by kind.
pub const REPAIRS_METRIC: &str = "alertmanager_repairs_total";

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
#[schema(as = AlertmanagerAlert)]
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
    /// What reading the alert repaired (NUL characters removed), for [`normalize`] to go on from.
    #[serde(skip)]
    repairs: Repairs,
}

/// A notification from its JSON, NUL characters removed (PostgreSQL stores none): each alert
/// records those removed from it as a repair. `400` naming the field that does not fit.
pub fn read(mut body: Value) -> Result<Notification, ApiError> {
    let removed: Vec<usize> = match body.get_mut("alerts").and_then(Value::as_array_mut) {
        Some(alerts) => alerts.iter_mut().map(strip_nul).collect(),
        None => Vec::new(),
    };
    strip_nul(&mut body);
    let mut notification: Notification = common::http::parse_value(body)?;
    for (alert, removed) in notification.alerts.iter_mut().zip(removed) {
        alert.repairs.nul_removed(removed);
    }
    Ok(notification)
}

/// An alert as [`normalize`] takes it: with the notification it came in and the service it was
/// sent to.
pub struct Incoming<'a> {
    pub alert: &'a Alert,
    /// Its place in the notification's `alerts`, naming it in a refusal.
    pub index: usize,
    pub notification: &'a Notification,
    /// The service's id, which the event's id derives from.
    pub service_id: &'a str,
}

/// One alert as an event: its action, dedup key, content-derived id and (for a firing alert)
/// payload. Refused only for a status other than firing or resolved.
pub fn normalize(incoming: Incoming<'_>) -> Result<Normalized, Refusal> {
    let Incoming { alert, index, notification, service_id } = incoming;
    let mut repairs = alert.repairs.clone();
    let action = match alert.status.as_str() {
        "firing" => EventAction::Trigger,
        "resolved" => EventAction::Resolve,
        other => {
            return Err(Refusal::field(
                format!("alerts[{index}].status"),
                format!("{other:?} is neither firing nor resolved"),
            ));
        }
    };
    let dedup_key = match alert.fingerprint.as_deref().filter(|f| !f.is_empty()) {
        Some(fingerprint) => repairs.cut("field_truncated", "fingerprint", fingerprint, MAX_DEDUP_KEY),
        // The labels identify an alert; their JSON (keys sorted) can be any length, its hash cannot.
        None => {
            let labels = serde_json::to_vec(&alert.labels).unwrap_or_default();
            format!("labels:{}", hex::encode(Sha256::digest(labels)))
        }
    };
    let event_id = Some(content_id(service_id, alert, &dedup_key));
    let payload = (action == EventAction::Trigger).then(|| trigger_payload(alert, notification, &mut repairs));
    Ok(Normalized { routing_key: None, event_id, action, dedup_key: Some(dedup_key), payload, repairs })
}

/// A firing alert's payload, cut to our limits (each cut recorded); its repairs are kept in its
/// custom details, with its labels and annotations.
fn trigger_payload(alert: &Alert, notification: &Notification, repairs: &mut Repairs) -> AlertPayload {
    let summary = ["summary", "description"]
        .iter()
        .find_map(|k| alert.annotations.get(*k).filter(|v| !v.trim().is_empty()))
        .or_else(|| alert.labels.get("alertname"))
        .map_or_else(
            || "Alertmanager alert".to_owned(),
            |s| repairs.cut("summary_truncated", "summary", s, MAX_SUMMARY),
        );
    let source = ["instance", "job"]
        .iter()
        .find_map(|k| alert.labels.get(*k))
        .map_or_else(|| "alertmanager".to_owned(), |s| repairs.cut("field_truncated", "source", s, MAX_SHORT_FIELD));
    let component = alert.labels.get("job").map(|j| repairs.cut("field_truncated", "component", j, MAX_SHORT_FIELD));
    let class = alert.labels.get("alertname").map(|a| repairs.cut("field_truncated", "class", a, MAX_SHORT_FIELD));
    let severity = match alert.labels.get("severity") {
        None => Severity::Error,
        Some(label) => severity(label).unwrap_or_else(|| {
            repairs.record("severity_unknown", format!("severity {label:?} unknown, used \"error\""));
            Severity::Error
        }),
    };
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
    repairs.keep_in(&mut details);
    AlertPayload {
        summary,
        source,
        severity,
        timestamp: alert.starts_at.as_deref().and_then(|t| t.parse().ok()),
        component,
        group: None,
        class,
        custom_details: Some(details),
    }
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
        read(json!({"version": "4", "status": "firing", "receiver": "ops", "alerts": alerts})).unwrap()
    }

    fn event(n: &Notification, index: usize) -> Result<Normalized, Refusal> {
        normalize(Incoming { alert: &n.alerts[index], index, notification: n, service_id: "svc" })
    }

    #[test]
    fn a_firing_alert_becomes_a_trigger_keyed_by_its_fingerprint() {
        let n = notification(json!([{"status": "firing", "fingerprint": "abc123",
            "labels": {"alertname": "DiskFull", "severity": "page", "instance": "web-01"},
            "annotations": {"description": "disk 95%"}, "startsAt": "2026-11-26T10:00:00Z"}]));
        let event = event(&n, 0).unwrap();
        let payload = event.payload.unwrap();
        assert_eq!((event.action, event.dedup_key.as_deref()), (EventAction::Trigger, Some("abc123")));
        assert_eq!((payload.summary.as_str(), payload.source.as_str()), ("disk 95%", "web-01"));
        assert_eq!(payload.severity, Severity::Critical);
        let details = payload.custom_details.unwrap();
        assert_eq!(details["labels"]["alertname"], "DiskFull");
        assert!(!details.contains_key("opssentinal_repairs") && event.repairs.is_empty());
        assert_eq!(event.event_id, Some(content_id("svc", &n.alerts[0], "abc123")));
        assert_eq!(event.routing_key, None);
    }

    #[test]
    fn cuts_and_unknown_severities_are_recorded_as_the_other_sources_record_them() {
        let long = "x".repeat(MAX_SUMMARY + 500);
        let n = notification(json!([{"status": "firing", "fingerprint": "f",
            "labels": {"alertname": "Big", "severity": "sev1"}, "annotations": {"summary": long}}]));
        let event = event(&n, 0).unwrap();
        let kinds: Vec<_> = event.repairs.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, ["summary_truncated", "severity_unknown"]);
        let payload = event.payload.unwrap();
        assert_eq!((payload.summary.chars().count(), payload.severity), (MAX_SUMMARY, Severity::Error));
        let kept = &payload.custom_details.unwrap()["opssentinal_repairs"];
        assert_eq!(kept[0], format!("summary cut from {} to {MAX_SUMMARY} characters", MAX_SUMMARY + 500));
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
        let key = |i| event(&n, i).unwrap().dedup_key.unwrap();
        let (first, second) = (key(0), key(1));
        assert_ne!(first, second);
        assert!(first.len() <= MAX_DEDUP_KEY);
        assert_eq!(first, key(0));
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
        assert_eq!(event(&n, 2).unwrap().event_id, Some(id(&n, 2)));
    }

    #[test]
    fn summary_falls_back_to_the_alert_name_and_severity_to_error() {
        let n = notification(
            json!([{"status": "firing", "fingerprint": "f", "labels": {"alertname": "Down", "severity": "bad"}}]),
        );
        let payload = event(&n, 0).unwrap().payload.unwrap();
        assert_eq!((payload.summary.as_str(), payload.severity), ("Down", Severity::Error));
        let resolved = notification(json!([{"status": "resolved", "fingerprint": "f"}]));
        assert_eq!(event(&resolved, 0).unwrap().action, EventAction::Resolve);
        let odd = notification(json!([{"status": "pending", "fingerprint": "f"}]));
        let refusal = event(&odd, 0).unwrap_err();
        assert_eq!(ApiError::from(refusal).details.unwrap()["field"], "alerts[0].status");
    }

    #[test]
    fn nul_characters_are_removed_on_reading_and_each_alert_records_its_own() {
        let n = notification(json!([
            {"status": "firing", "fingerprint": "a\u{0}", "annotations": {"summary": "disk\u{0}\u{0}"}},
            {"status": "firing", "fingerprint": "b"},
            {"status": "resolved", "fingerprint": "c\u{0}"}]));
        let first = event(&n, 0).unwrap();
        assert_eq!(first.dedup_key.as_deref(), Some("a"));
        let kinds: Vec<_> = first.repairs.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, ["nul_removed"]);
        let payload = first.payload.unwrap();
        assert_eq!(payload.summary, "disk");
        let repairs = &payload.custom_details.unwrap()["opssentinal_repairs"];
        assert_eq!(repairs, &json!(["3 NUL characters removed (PostgreSQL stores none)"]));
        assert!(event(&n, 1).unwrap().repairs.is_empty());
        let resolved = event(&n, 2).unwrap();
        assert_eq!((resolved.dedup_key.as_deref(), resolved.repairs.iter().count()), (Some("c"), 1));
    }
}
