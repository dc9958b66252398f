//! Events: the Events API request, its validation, and the envelope ingest publishes to
//! JetStream and workers apply.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::ApiError;

/// Longest accepted `dedup_key`, in characters.
pub const MAX_DEDUP_KEY: usize = 255;
/// Longest accepted `payload.summary`, in characters.
pub const MAX_SUMMARY: usize = 1024;
/// Longest accepted `payload.source`, `component`, `group`, `class`, in characters.
pub const MAX_SHORT_FIELD: usize = 255;
/// Deepest nesting of `payload.custom_details` (objects and arrays), so that the stored event,
/// which wraps the details in more levels, always stays within what JSON parsers accept.
pub const MAX_DETAILS_DEPTH: usize = 64;
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    Trigger,
    Acknowledge,
    Resolve,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Acknowledge => "acknowledge",
            Self::Resolve => "resolve",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

/// Incident urgency, derived from the alert severity or set by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Urgency {
    High,
    Medium,
    Low,
}

impl Urgency {
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_uppercase().as_str() {
            "HIGH" => Some(Self::High),
            "MEDIUM" => Some(Self::Medium),
            "LOW" => Some(Self::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "HIGH",
            Self::Medium => "MEDIUM",
            Self::Low => "LOW",
        }
    }
}

impl From<Severity> for Urgency {
    fn from(severity: Severity) -> Self {
        match severity {
            Severity::Critical => Self::High,
            Severity::Error | Severity::Warning => Self::Medium,
            Severity::Info => Self::Low,
        }
    }
}

/// What the alert says: the `payload` of a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertPayload {
    /// The incident's title.
    #[schema(min_length = 1, max_length = 1024, pattern = "\\S")]
    pub summary: String,
    /// What sent the alert (host, check).
    #[schema(min_length = 1, max_length = 255, pattern = "\\S")]
    pub source: String,
    pub severity: Severity,
    /// When the condition began (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub timestamp: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 255)]
    pub class: Option<String>,
    /// Any JSON object, at most 64 levels deep, without NUL characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub custom_details: Option<Map<String, Value>>,
}

/// `POST /api/events` as sent by an alert source: `routing_key` or `service_id` names the
/// service; `dedup_key` is required to acknowledge or resolve; `payload` to trigger.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"routing_key": "R0UT1NGK3Y", "event_action": "trigger", "dedup_key": "disk-full-web-01",
    "payload": {"summary": "Disk 95% full on web-01", "source": "web-01", "severity": "critical"}}))]
pub struct EventRequest {
    /// The service's routing key (integration key).
    #[serde(default)]
    #[schema(max_length = 255)]
    pub routing_key: Option<String>,
    /// The service's id, instead of `routing_key`.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub service_id: Option<String>,
    pub event_action: EventAction,
    /// Events with the same key (per service) act on the same incident; default a new UUID.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = "\\S")]
    pub dedup_key: Option<String>,
    #[serde(default)]
    pub payload: Option<AlertPayload>,
}

/// Where a validated event goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceRef {
    RoutingKey(String),
    ServiceId(String),
}

impl EventRequest {
    /// Checks the rules JSON types alone cannot express. Returns the service reference.
    pub fn validate(&self) -> Result<ServiceRef, ApiError> {
        for (field, value) in
            [("routing_key", &self.routing_key), ("service_id", &self.service_id), ("dedup_key", &self.dedup_key)]
        {
            no_nul(field, value.as_deref().unwrap_or_default())?;
        }
        let service = match (non_empty(&self.routing_key), non_empty(&self.service_id)) {
            (Some(key), _) => ServiceRef::RoutingKey(key.to_owned()),
            (None, Some(id)) => ServiceRef::ServiceId(id.to_owned()),
            (None, None) => {
                return Err(ApiError::validation("routing_key", "routing_key or service_id is required"));
            }
        };
        match &self.dedup_key {
            Some(key) if key.chars().count() > MAX_DEDUP_KEY => {
                return Err(ApiError::validation("dedup_key", format!("must be at most {MAX_DEDUP_KEY} characters")));
            }
            Some(key) if key.trim().is_empty() => {
                return Err(ApiError::validation("dedup_key", "must not be empty"));
            }
            None if self.event_action != EventAction::Trigger => {
                return Err(ApiError::validation(
                    "dedup_key",
                    format!("is required for {}", self.event_action.as_str()),
                ));
            }
            _ => {}
        }
        match &self.payload {
            Some(payload) => payload.validate()?,
            None if self.event_action == EventAction::Trigger => {
                return Err(ApiError::validation("payload", "is required for trigger"));
            }
            None => {}
        }
        Ok(service)
    }
}

impl AlertPayload {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(details) = &self.custom_details {
            if let Some(path) = details.iter().find_map(|(k, v)| nul_path_in(k, v, "payload.custom_details")) {
                return Err(ApiError::validation(&path, "must not contain NUL characters (\\u0000)"));
            }
            if 1 + details.values().map(depth).max().unwrap_or(0) > MAX_DETAILS_DEPTH {
                return Err(ApiError::validation(
                    "payload.custom_details",
                    format!("must not nest deeper than {MAX_DETAILS_DEPTH} levels"),
                ));
            }
        }
        check_text("payload.summary", &self.summary, MAX_SUMMARY, true)?;
        check_text("payload.source", &self.source, MAX_SHORT_FIELD, true)?;
        for (field, value) in
            [("payload.component", &self.component), ("payload.group", &self.group), ("payload.class", &self.class)]
        {
            if let Some(value) = value {
                check_text(field, value, MAX_SHORT_FIELD, false)?;
            }
        }
        Ok(())
    }
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    no_nul(field, value)?;
    if required && value.trim().is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(ApiError::validation(field, format!("must be at most {max} characters")));
    }
    Ok(())
}

/// PostgreSQL stores no NUL character, in text or in JSON: an event holding one could never be
/// applied, so the Events API refuses it, naming the field.
fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::validation(field, "must not contain NUL characters (\\u0000)"));
    }
    Ok(())
}

/// The path of the first NUL character under `key` (a key of the object at `parent`), if any.
fn nul_path_in(key: &str, value: &Value, parent: &str) -> Option<String> {
    let path = format!("{parent}.{key}");
    if key.contains('\0') {
        return Some(path);
    }
    match value {
        Value::String(s) => s.contains('\0').then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path_in(&format!("[{i}]"), item, &path).map(|p| p.replacen(".[", "[", 1))),
        Value::Object(map) => map.iter().find_map(|(k, v)| nul_path_in(k, v, &path)),
        _ => None,
    }
}

/// Removes every NUL character from the strings and keys of `value`, for the integrations that
/// repair rather than refuse. Returns how many were removed.
pub fn strip_nul(value: &mut Value) -> usize {
    fn clean(text: &str) -> (String, usize) {
        let removed = text.matches('\0').count();
        (text.replace('\0', ""), removed)
    }
    match value {
        Value::String(s) if s.contains('\0') => {
            let (cleaned, removed) = clean(s);
            *s = cleaned;
            removed
        }
        Value::Array(items) => items.iter_mut().map(strip_nul).sum(),
        Value::Object(map) => {
            let mut removed = 0;
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| {
                        let (k, n) = clean(&k);
                        removed += n;
                        (k, v)
                    })
                    .collect();
            }
            removed + map.values_mut().map(strip_nul).sum::<usize>()
        }
        _ => 0,
    }
}

/// Levels of objects and arrays in `value` (0 for a scalar).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Replaces every value that would make `value` deeper than `max` levels by its JSON text, for
/// the integrations that repair rather than refuse. Returns how many were replaced.
pub fn flatten_deep(value: &mut Value, max: usize) -> usize {
    if max == 0 && matches!(value, Value::Array(_) | Value::Object(_)) {
        *value = Value::String(value.to_string());
        return 1;
    }
    match value {
        Value::Array(items) => items.iter_mut().map(|v| flatten_deep(v, max - 1)).sum(),
        Value::Object(map) => map.values_mut().map(|v| flatten_deep(v, max - 1)).sum(),
        _ => 0,
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// An accepted event as stored in JetStream (one message per event) and applied by workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique per accepted event; also the JetStream `Nats-Msg-Id`.
    pub event_id: Uuid,
    pub service_id: String,
    pub dedup_key: String,
    pub action: EventAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<AlertPayload>,
    /// When ingest accepted the event.
    pub received_at: Timestamp,
    /// The API key that sent it, if any (routing-key integrations have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
}

impl EventEnvelope {
    /// Whether a worker can apply this envelope at all; a message that fails this is poison.
    pub fn check_applicable(&self) -> Result<(), String> {
        if self.action == EventAction::Trigger && self.payload.is_none() {
            return Err("trigger without payload".into());
        }
        if self.dedup_key.is_empty() || self.dedup_key.chars().count() > MAX_DEDUP_KEY {
            return Err("dedup_key empty or too long".into());
        }
        if self.service_id.is_empty() {
            return Err("service_id empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(value: Value) -> EventRequest {
        serde_json::from_value(value).expect("valid request JSON")
    }

    fn trigger() -> Value {
        json!({
            "routing_key": "rk",
            "event_action": "trigger",
            "payload": {"summary": "CPU high", "source": "prom", "severity": "critical"}
        })
    }

    #[test]
    fn a_plain_trigger_is_valid() {
        assert_eq!(request(trigger()).validate().unwrap(), ServiceRef::RoutingKey("rk".into()));
    }

    #[test]
    fn resolve_without_dedup_key_names_the_field() {
        let err = request(json!({"routing_key": "rk", "event_action": "resolve"})).validate().unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "dedup_key");
    }

    #[test]
    fn summary_is_counted_in_characters() {
        let mut body = trigger();
        body["payload"]["summary"] = json!("é".repeat(MAX_SUMMARY));
        assert!(request(body.clone()).validate().is_ok());
        body["payload"]["summary"] = json!("é".repeat(MAX_SUMMARY + 1));
        let err = request(body).validate().unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "payload.summary");
    }

    #[test]
    fn trigger_needs_a_payload_and_a_service() {
        let err = request(json!({"routing_key": "rk", "event_action": "trigger"})).validate().unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "payload");
        let mut body = trigger();
        body.as_object_mut().unwrap().remove("routing_key");
        let err = request(body).validate().unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "routing_key");
    }

    #[test]
    fn a_nul_character_is_refused_naming_its_field() {
        let mut body = trigger();
        body["dedup_key"] = json!("a\u{0}b");
        assert_eq!(request(body).validate().unwrap_err().details.unwrap()["field"], "dedup_key");
        let mut body = trigger();
        body["payload"]["summary"] = json!("cpu\u{0}");
        assert_eq!(request(body).validate().unwrap_err().details.unwrap()["field"], "payload.summary");
        let mut body = trigger();
        body["payload"]["custom_details"] = json!({"hosts": ["a", "b\u{0}"]});
        let err = request(body).validate().unwrap_err();
        assert_eq!(err.details.unwrap()["field"], "payload.custom_details.hosts[1]");
        let mut body = trigger();
        body["payload"]["custom_details"] = json!({"k\u{0}": 1});
        assert_eq!(request(body).validate().unwrap_err().details.unwrap()["field"], "payload.custom_details.k\u{0}");
    }

    #[test]
    fn nul_characters_are_stripped_from_strings_and_keys() {
        let mut value = json!({"a\u{0}": ["x\u{0}\u{0}", {"b": "\u{0}"}], "n": 1});
        assert_eq!(strip_nul(&mut value), 4);
        assert_eq!(value, json!({"a": ["x", {"b": ""}], "n": 1}));
        assert_eq!(strip_nul(&mut value), 0);
    }

    #[test]
    fn details_nested_too_deep_are_refused_or_flattened() {
        let nested = |levels: usize| -> Value { (0..levels).fold(json!(1), |inner, _| json!({ "a": inner })) };
        let mut body = trigger();
        body["payload"]["custom_details"] = nested(MAX_DETAILS_DEPTH);
        assert!(request(body.clone()).validate().is_ok());
        body["payload"]["custom_details"] = nested(MAX_DETAILS_DEPTH + 1);
        assert_eq!(request(body).validate().unwrap_err().details.unwrap()["field"], "payload.custom_details");

        let mut deep = nested(10);
        assert_eq!(depth(&deep), 10);
        assert_eq!(flatten_deep(&mut deep, 4), 1);
        assert_eq!(depth(&deep), 4);
        assert_eq!(deep["a"]["a"]["a"]["a"], json!(nested(6).to_string()));
    }

    #[test]
    fn severity_maps_to_urgency() {
        assert_eq!(Urgency::from(Severity::Critical), Urgency::High);
        assert_eq!(Urgency::from(Severity::Error), Urgency::Medium);
        assert_eq!(Urgency::from(Severity::Warning), Urgency::Medium);
        assert_eq!(Urgency::from(Severity::Info), Urgency::Low);
    }
}
