//! The Events API (`POST /api/events`): the request as alert sources send it, and the rules it
//! must meet beyond its JSON types. Strict, unlike the integrations: a bad event is refused with
//! the field named, so its sender can fix it.

use common::ApiError;
use common::event::{
    AlertPayload, EventAction, MAX_DEDUP_KEY, MAX_DETAILS_DEPTH, MAX_SHORT_FIELD, MAX_SUMMARY, ServiceRef, depth,
};
use serde::Deserialize;
use serde_json::Value;

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
            Some(payload) => validate_payload(payload)?,
            None if self.event_action == EventAction::Trigger => {
                return Err(ApiError::validation("payload", "is required for trigger"));
            }
            None => {}
        }
        Ok(service)
    }
}

/// The payload's rules beyond its JSON types.
fn validate_payload(payload: &AlertPayload) -> Result<(), ApiError> {
    {
        if let Some(details) = &payload.custom_details {
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
        check_text("payload.summary", &payload.summary, MAX_SUMMARY, true)?;
        check_text("payload.source", &payload.source, MAX_SHORT_FIELD, true)?;
        for (field, value) in [
            ("payload.component", &payload.component),
            ("payload.group", &payload.group),
            ("payload.class", &payload.class),
        ] {
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

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
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
    fn details_nested_too_deep_are_refused() {
        let nested = |levels: usize| -> Value { (0..levels).fold(json!(1), |inner, _| json!({ "a": inner })) };
        let mut body = trigger();
        body["payload"]["custom_details"] = nested(MAX_DETAILS_DEPTH);
        assert!(request(body.clone()).validate().is_ok());
        body["payload"]["custom_details"] = nested(MAX_DETAILS_DEPTH + 1);
        assert_eq!(request(body).validate().unwrap_err().details.unwrap()["field"], "payload.custom_details");
    }
}
