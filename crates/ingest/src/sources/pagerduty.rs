//! PagerDuty's Events API v2, normalised: a pure function from the request's JSON (one event) to
//! the event or the structural problems that refuse it. Never lose a page to strictness:
//! everything but a structural problem is repaired, and each repair is kept in the event's custom
//! details (`opssentinal_repairs`) and returned, for the route to count
//! ([`REPAIRS_METRIC`]`{kind}`).

use common::event::{
    AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_DETAILS_DEPTH, MAX_SHORT_FIELD, MAX_SUMMARY, Severity,
};
use serde_json::{Map, Value};

use super::{Normalized, Refusal, Repairs, severity, truncate};

/// The counter of this source's repairs, by kind.
pub const REPAIRS_METRIC: &str = "pagerduty_repairs_total";

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The event a request's body is (its JSON), repaired where it breaks our rules; refused only
/// for a structural problem: not an object, no routing key, an unknown `event_action`, or an
/// acknowledge or resolve without `dedup_key`.
pub fn normalize(mut body: Value) -> Result<Normalized, Refusal> {
    let mut repairs = Repairs::default();
    repairs.nul_removed(common::event::strip_nul(&mut body));
    let Some(event) = body.as_object() else { return Err(Refusal::body("the event must be a JSON object")) };
    let mut refusal = Refusal::default();
    let routing_key = event.get("routing_key").and_then(Value::as_str).map(str::trim).unwrap_or_default().to_owned();
    if routing_key.is_empty() {
        refusal.add("routing_key", "is missing or blank");
    }
    let action = match event.get("event_action").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("trigger") => Some(EventAction::Trigger),
        Some("acknowledge") => Some(EventAction::Acknowledge),
        Some("resolve") => Some(EventAction::Resolve),
        _ => {
            refusal.add("event_action", "must be trigger, acknowledge or resolve");
            None
        }
    };
    let mut dedup_key = event.get("dedup_key").and_then(as_text).filter(|k| !k.trim().is_empty());
    if let Some(key) = dedup_key.as_mut().filter(|k| k.chars().count() > MAX_DEDUP_KEY) {
        *key = key.chars().take(MAX_DEDUP_KEY).collect();
        repairs.record("dedup_key_truncated", format!("dedup_key cut to {MAX_DEDUP_KEY} characters"));
    }
    if matches!(action, Some(EventAction::Acknowledge | EventAction::Resolve)) && dedup_key.is_none() {
        refusal.add("dedup_key", "is required for acknowledge and resolve");
    }
    let (Some(action), true) = (action, refusal.is_empty()) else { return Err(refusal) };
    let payload = (action == EventAction::Trigger).then(|| trigger_payload(event, &mut repairs));
    Ok(Normalized { routing_key: Some(routing_key), event_id: None, action, dedup_key, payload, repairs })
}

/// A trigger's payload; the repairs made so far and its own are kept in its custom details.
fn trigger_payload(event: &Map<String, Value>, repairs: &mut Repairs) -> AlertPayload {
    let empty = Map::new();
    let payload = event.get("payload").and_then(Value::as_object).unwrap_or(&empty);
    let summary = match payload.get("summary").and_then(as_text).filter(|s| !s.trim().is_empty()) {
        Some(summary) => repairs.cut("summary_truncated", "summary", &summary, MAX_SUMMARY),
        None => {
            repairs.record("summary_missing", "summary missing");
            "(no summary)".into()
        }
    };
    let client = event.get("client").and_then(Value::as_str).filter(|c| !c.trim().is_empty());
    let source = match payload.get("source").and_then(as_text).filter(|s| !s.trim().is_empty()) {
        Some(source) => repairs.cut("field_truncated", "source", &source, MAX_SHORT_FIELD),
        None => {
            let filled = client.map_or_else(|| "unknown".to_owned(), |c| truncate(c, MAX_SHORT_FIELD));
            repairs.record("source_missing", format!("source missing, used {filled:?}"));
            filled
        }
    };
    let raw_severity = payload.get("severity").and_then(as_text).unwrap_or_default();
    let severity = severity(&raw_severity).unwrap_or_else(|| {
        repairs.record("severity_unknown", format!("severity {raw_severity:?} unknown, used \"error\""));
        Severity::Error
    });
    let timestamp = payload.get("timestamp").and_then(Value::as_str).and_then(|t| match t.parse() {
        Ok(ts) => Some(ts),
        Err(_) => {
            repairs.record("timestamp_invalid", format!("timestamp {t:?} is not ISO 8601, dropped"));
            None
        }
    });
    let mut short = |name: &str| {
        payload.get(name).and_then(as_text).map(|v| repairs.cut("field_truncated", name, &v, MAX_SHORT_FIELD))
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
        repairs.record(
            "details_too_deep",
            format!("{flattened} values nested deeper than {MAX_DETAILS_DEPTH} levels kept as JSON text"),
        );
    }
    repairs.keep_in(&mut details);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn real_senders_rule_breaking_is_repaired_and_recorded() {
        let long = "x".repeat(1500);
        let event = normalize(json!({
            "routing_key": "rk", "event_action": "trigger", "client": "Alertmanager",
            "payload": {"summary": long, "severity": "LOUD", "timestamp": "yesterday", "custom_details": "just text"}
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
        let kinds: Vec<_> = event.repairs.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, ["summary_truncated", "source_missing", "severity_unknown", "timestamp_invalid"]);
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
        assert!(ack.payload.is_none() && ack.repairs.is_empty());
        assert_eq!((ack.routing_key.as_deref(), ack.event_id), (Some("rk"), None));
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
            let errors = normalize(body.clone()).err().unwrap().messages();
            assert!(errors.iter().any(|e| e.contains(error)), "{body}: {errors:?}");
        }
    }
}
