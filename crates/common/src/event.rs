//! Events: the Events API request, its validation, and the envelope ingest publishes to
//! JetStream and workers apply.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

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

/// Incident urgency, derived from the alert severity or set by hand; read in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

impl std::str::FromStr for Urgency {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value).ok_or("must be HIGH, MEDIUM or LOW")
    }
}

crate::deserialize_from_str!(Urgency);

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

/// Where a validated event goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceRef {
    RoutingKey(String),
    ServiceId(String),
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

/// The event a heartbeat raises through the pipeline (DESIGN §12): a trigger when it is missed
/// (with `payload`), a resolve when it is pinged again; its key is `heartbeat:<id>`.
pub fn heartbeat_event(heartbeat_id: &str, service_id: &str, payload: Option<AlertPayload>) -> EventEnvelope {
    let now = Timestamp::now();
    EventEnvelope {
        event_id: Uuid::now_v7(),
        service_id: service_id.to_owned(),
        dedup_key: format!("heartbeat:{heartbeat_id}"),
        action: if payload.is_some() { EventAction::Trigger } else { EventAction::Resolve },
        payload,
        received_at: now.round(jiff::Unit::Microsecond).unwrap_or(now),
        api_key_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_are_stripped_from_strings_and_keys() {
        let mut value = json!({"a\u{0}": ["x\u{0}\u{0}", {"b": "\u{0}"}], "n": 1});
        assert_eq!(strip_nul(&mut value), 4);
        assert_eq!(value, json!({"a": ["x", {"b": ""}], "n": 1}));
        assert_eq!(strip_nul(&mut value), 0);
    }

    #[test]
    fn details_nested_too_deep_are_flattened() {
        let nested = |levels: usize| -> Value { (0..levels).fold(json!(1), |inner, _| json!({ "a": inner })) };
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
