//! What the webhooks endpoints are sent and answer.

use std::str::FromStr;

use common::fields::{Id, blank_as_none};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_text! {
    /// What a webhook is for: at most 1024 characters.
    pub struct WebhookDescription { min: 0, max: 1024, trim: false }
}

/// Where deliveries are posted: an absolute `http` or `https` URL of at most 2048 characters,
/// without credentials in it.
#[derive(Debug, Clone)]
pub struct WebhookUrl(pub url::Url);

/// Longest webhook URL.
const URL_MAX: usize = 2048;

impl FromStr for WebhookUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.chars().count() > URL_MAX {
            return Err(format!("must be at most {URL_MAX} characters"));
        }
        let url = url::Url::parse(text).map_err(|err| format!("is not a URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if url.host().is_none() {
            return Err("must name a host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials; put a secret in the path or verify the signature".into());
        }
        Ok(Self(url))
    }
}

common::deserialize_from_str!(WebhookUrl);

impl utoipa::PartialSchema for WebhookUrl {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into())))
            .max_length(Some(URL_MAX))
            .into()
    }
}

impl utoipa::ToSchema for WebhookUrl {}

/// A change a webhook can be sent: the incident change types of the change stream as
/// `incident.<type>`, and `ping`, which every webhook is sent when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "incident.triggered")]
    Triggered,
    #[serde(rename = "incident.alert_added")]
    AlertAdded,
    #[serde(rename = "incident.acknowledged")]
    Acknowledged,
    #[serde(rename = "incident.resolved")]
    Resolved,
    #[serde(rename = "incident.snoozed")]
    Snoozed,
    #[serde(rename = "incident.reopened")]
    Reopened,
    #[serde(rename = "incident.assigned")]
    Assigned,
    #[serde(rename = "incident.urgency_changed")]
    UrgencyChanged,
    #[serde(rename = "incident.priority_changed")]
    PriorityChanged,
    #[serde(rename = "incident.note_added")]
    NoteAdded,
    #[serde(rename = "incident.reordered")]
    Reordered,
    #[serde(rename = "incident.suppressed")]
    Suppressed,
    #[serde(rename = "incident.escalated")]
    Escalated,
}

impl EventType {
    /// The name on the wire, e.g. `incident.acknowledged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Triggered => "incident.triggered",
            Self::AlertAdded => "incident.alert_added",
            Self::Acknowledged => "incident.acknowledged",
            Self::Resolved => "incident.resolved",
            Self::Snoozed => "incident.snoozed",
            Self::Reopened => "incident.reopened",
            Self::Assigned => "incident.assigned",
            Self::UrgencyChanged => "incident.urgency_changed",
            Self::PriorityChanged => "incident.priority_changed",
            Self::NoteAdded => "incident.note_added",
            Self::Reordered => "incident.reordered",
            Self::Suppressed => "incident.suppressed",
            Self::Escalated => "incident.escalated",
        }
    }
}

/// A list that, when given, names at least one entry.
fn non_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<Vec<T>>, D::Error> {
    match Option::<Vec<T>>::deserialize(deserializer)? {
        Some(list) if list.is_empty() => {
            Err(serde::de::Error::custom("must name at least one, or be left out for all"))
        }
        list => Ok(list),
    }
}

/// A nullable list that, when given, names at least one entry.
fn nullable_non_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<Vec<T>>>, D::Error> {
    non_empty(deserializer).map(Some)
}

/// A new webhook.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"url": "https://hooks.example.com/opssentinal", "events": ["incident.triggered", "incident.resolved"], "description": "Chat bot"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewWebhook {
    pub url: WebhookUrl,
    /// Change types to send; left out: all.
    #[serde(default, deserialize_with = "non_empty")]
    pub events: Option<Vec<EventType>>,
    /// Services whose incidents to send; left out: all.
    #[serde(default, deserialize_with = "non_empty")]
    pub service_ids: Option<Vec<Id>>,
    #[serde(default)]
    pub description: Option<WebhookDescription>,
}

/// Changes to a webhook; what is left out stays. `events` or `serviceIds` set to null mean all.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookPatch {
    /// `true` re-enables a webhook the system disabled.
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub url: Option<WebhookUrl>,
    #[serde(default, deserialize_with = "nullable_non_empty")]
    #[schema(value_type = Option<Vec<EventType>>)]
    pub events: Option<Option<Vec<EventType>>>,
    #[serde(default, deserialize_with = "nullable_non_empty")]
    #[schema(value_type = Option<Vec<String>>)]
    pub service_ids: Option<Option<Vec<Id>>>,
    #[serde(default, deserialize_with = "common::fields::nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<WebhookDescription>>,
}

/// A webhook. Its secret is shown only when it is made (created or rotated).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// Change types sent; null: all.
    pub events: Option<Vec<String>>,
    /// Services whose incidents are sent; null: all.
    pub service_ids: Option<Vec<String>>,
    pub description: String,
    pub enabled: bool,
    /// Why the system disabled it (every delivery failing for 24 hours); null otherwise.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed; null while deliveries succeed.
    pub failing_since: Option<Timestamp>,
    /// Until when the secret before the last rotation still signs deliveries too.
    pub previous_secret_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookBody {
    pub webhook: Webhook,
}

/// A webhook with its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct WebhookWithSecret {
    pub webhook: Webhook,
    /// `whsec_…`: verify deliveries' signatures with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
    pub total: i64,
    pub pagination: Pagination,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not yet delivered: due at `nextAttemptAt`.
    Pending,
    Succeeded,
    /// Refused by the receiver (a status that is not retried), or retried for 24 hours.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "pending" => Ok(Self::Pending),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            _ => Err("must be pending, succeeded or failed".into()),
        }
    }
}

common::deserialize_from_str!(DeliveryStatus);

/// The filter of `GET /api/webhooks/{id}/deliveries`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// pending, succeeded or failed
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(inline)]
    pub status: Option<DeliveryStatus>,
}

/// One try to deliver.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub at: Timestamp,
    /// The receiver's status; null when it did not answer.
    pub http_status: Option<i32>,
    pub latency_ms: i32,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// One change sent to one webhook, with every attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The `webhook-id` header: the same on every attempt, so receivers can drop repeats.
    pub id: String,
    pub webhook_id: String,
    /// `incident.acknowledged`, …, or `ping`.
    #[serde(rename = "type")]
    pub kind: String,
    pub incident_id: Option<String>,
    pub status: DeliveryStatus,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<Timestamp>,
    pub attempts: Vec<Attempt>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryBody {
    pub delivery: Delivery,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
    pub pagination: Pagination,
}
