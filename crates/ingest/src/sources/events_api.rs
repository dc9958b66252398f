//! The Events API (`POST /api/events`): the request as alert sources send it, typed field by
//! field (`common::fields`), and the rules between fields checked after parsing. Strict, unlike
//! the integrations: a bad event is refused with the field named, so its sender can fix it.

use common::ApiError;
use common::event::{AlertPayload, EventAction, MAX_DETAILS_DEPTH, ServiceRef, Severity, depth};
use common::fields::ShortText;
use serde::Deserialize;
use serde_json::{Map, Value};

common::bounded_text! {
    /// Events with the same key (per service) act on the same incident: 1 to 255 characters,
    /// kept as sent.
    pub struct DedupKey { min: 1, max: common::event::MAX_DEDUP_KEY, trim: false }
}

common::bounded_text! {
    /// The incident's title: 1 to 1024 characters, kept as sent.
    pub struct Summary { min: 1, max: common::event::MAX_SUMMARY, trim: false }
}

common::bounded_text! {
    /// What sent the alert (host, check): 1 to 255 characters.
    pub struct Source { min: 1, max: common::event::MAX_SHORT_FIELD, trim: false }
}

/// `POST /api/events` as sent by an alert source: `routing_key` or `service_id` names the
/// service; `dedup_key` is required to acknowledge or resolve; `payload` to trigger.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"routing_key": "R0UT1NGK3Y", "event_action": "trigger", "dedup_key": "disk-full-web-01",
    "payload": {"summary": "Disk 95% full on web-01", "source": "web-01", "severity": "critical"}}))]
pub struct EventRequest {
    /// The service's routing key (integration key).
    #[serde(default)]
    pub routing_key: Option<ShortText>,
    /// The service's id, instead of `routing_key`.
    #[serde(default)]
    pub service_id: Option<ShortText>,
    pub event_action: EventAction,
    /// Default a new UUID.
    #[serde(default)]
    pub dedup_key: Option<DedupKey>,
    #[serde(default)]
    pub payload: Option<EventPayload>,
}

/// What the alert says: the `payload` of a trigger.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct EventPayload {
    pub summary: Summary,
    pub source: Source,
    pub severity: Severity,
    /// When the condition began (RFC 3339).
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub timestamp: Option<jiff::Timestamp>,
    #[serde(default)]
    pub component: Option<ShortText>,
    #[serde(default)]
    pub group: Option<ShortText>,
    #[serde(default)]
    pub class: Option<ShortText>,
    /// Any JSON object, at most 64 levels deep, without NUL characters.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub custom_details: Option<Map<String, Value>>,
}

/// A checked event: where it goes and what it carries.
pub struct Event {
    pub service: ServiceRef,
    pub action: EventAction,
    pub dedup_key: Option<String>,
    pub payload: Option<AlertPayload>,
}

impl EventRequest {
    /// Checks the rules between fields; returns the event.
    pub fn validate(self) -> Result<Event, ApiError> {
        let present =
            |value: &Option<ShortText>| value.as_ref().map(|v| v.as_str().trim().to_owned()).filter(|v| !v.is_empty());
        let service = match (present(&self.routing_key), present(&self.service_id)) {
            (Some(key), _) => ServiceRef::RoutingKey(key),
            (None, Some(id)) => ServiceRef::ServiceId(id),
            (None, None) => {
                return Err(ApiError::validation("routing_key", "routing_key or service_id is required"));
            }
        };
        if self.dedup_key.is_none() && self.event_action != EventAction::Trigger {
            return Err(ApiError::validation("dedup_key", format!("is required for {}", self.event_action.as_str())));
        }
        let payload = match self.payload {
            Some(payload) => Some(payload.validate()?),
            None if self.event_action == EventAction::Trigger => {
                return Err(ApiError::validation("payload", "is required for trigger"));
            }
            None => None,
        };
        Ok(Event { service, action: self.event_action, dedup_key: self.dedup_key.map(DedupKey::into_inner), payload })
    }
}

impl EventPayload {
    /// The details' rules (no NUL at any depth, a bounded depth), then the payload as stored.
    fn validate(self) -> Result<AlertPayload, ApiError> {
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
        Ok(AlertPayload {
            summary: self.summary.into_inner(),
            source: self.source.into_inner(),
            severity: self.severity,
            timestamp: self.timestamp,
            component: self.component.map(ShortText::into_inner),
            group: self.group.map(ShortText::into_inner),
            class: self.class.map(ShortText::into_inner),
            custom_details: self.custom_details,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The request read and checked as the route does: a field's problem named at its path.
    fn check(value: Value) -> Result<Event, ApiError> {
        common::http::parse_value::<EventRequest>(value).and_then(EventRequest::validate)
    }

    fn field_of(value: Value) -> String {
        check(value).err().expect("refused").details.unwrap()["field"].as_str().unwrap().to_owned()
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
        assert_eq!(check(trigger()).unwrap().service, ServiceRef::RoutingKey("rk".into()));
    }

    #[test]
    fn resolve_without_dedup_key_names_the_field() {
        let err = field_of(json!({"routing_key": "rk", "event_action": "resolve"}));
        assert_eq!(err, "dedup_key");
    }

    #[test]
    fn summary_is_counted_in_characters() {
        let mut body = trigger();
        body["payload"]["summary"] = json!("é".repeat(Summary::MAX_CHARS));
        assert!(check(body.clone()).is_ok());
        body["payload"]["summary"] = json!("é".repeat(Summary::MAX_CHARS + 1));
        let err = field_of(body);
        assert_eq!(err, "payload.summary");
    }

    #[test]
    fn trigger_needs_a_payload_and_a_service() {
        let err = field_of(json!({"routing_key": "rk", "event_action": "trigger"}));
        assert_eq!(err, "payload");
        let mut body = trigger();
        body.as_object_mut().unwrap().remove("routing_key");
        let err = field_of(body);
        assert_eq!(err, "routing_key");
    }

    #[test]
    fn a_nul_character_is_refused_naming_its_field() {
        let mut body = trigger();
        body["dedup_key"] = json!("a\u{0}b");
        assert_eq!(field_of(body), "dedup_key");
        let mut body = trigger();
        body["payload"]["summary"] = json!("cpu\u{0}");
        assert_eq!(field_of(body), "payload.summary");
        let mut body = trigger();
        body["payload"]["custom_details"] = json!({"hosts": ["a", "b\u{0}"]});
        let err = field_of(body);
        assert_eq!(err, "payload.custom_details.hosts[1]");
        let mut body = trigger();
        body["payload"]["custom_details"] = json!({"k\u{0}": 1});
        assert_eq!(field_of(body), "payload.custom_details.k\u{0}");
    }

    #[test]
    fn details_nested_too_deep_are_refused() {
        let nested = |levels: usize| -> Value { (0..levels).fold(json!(1), |inner, _| json!({ "a": inner })) };
        let mut body = trigger();
        body["payload"]["custom_details"] = nested(MAX_DETAILS_DEPTH);
        assert!(check(body.clone()).is_ok());
        body["payload"]["custom_details"] = nested(MAX_DETAILS_DEPTH + 1);
        assert_eq!(field_of(body), "payload.custom_details");
    }
}
