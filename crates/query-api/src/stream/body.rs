//! What the stream endpoints are sent and answer.

use common::fields::{CommaList, blank_as_none};
use common::incident::state::IncidentStatus;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Topic {
    Incidents,
    Services,
}

impl std::str::FromStr for Topic {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "incidents" => Ok(Self::Incidents),
            "services" => Ok(Self::Services),
            _ => Err("must be incidents or services"),
        }
    }
}

/// `GET /api/stream`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma list of incidents, services (default both)
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(value_type = Option<String>)]
    pub topics: Option<CommaList<Topic>>,
    /// Only this service's changes
    #[serde(default, rename = "serviceId", deserialize_with = "blank_as_none")]
    pub service_id: Option<String>,
    /// Comma list of statuses: only changes leaving an incident in one of them
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(value_type = Option<String>)]
    pub status: Option<CommaList<IncidentStatus>>,
    /// A stream token (`POST /api/stream/tokens`), for clients that cannot send headers
    #[serde(default, deserialize_with = "blank_as_none")]
    pub token: Option<String>,
}

/// The `data` of a stream event: a change (every event but `reset`), or why the client must
/// refetch (`reset`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[expect(dead_code, reason = "documents what the stream sends; the relay writes it as JSON")]
pub struct StreamEventData {
    /// The change's id (also `webhook-id` for its deliveries).
    id: Option<uuid::Uuid>,
    /// The change's type, as the SSE `event`: triggered, alert_added, acknowledged, resolved,
    /// snoozed, reopened, assigned, urgency_changed, priority_changed, note_added, reordered,
    /// suppressed (opened in a maintenance window), escalated (an escalation step fired), and
    /// service.status_changed (a service's derived status; `incidentId` null, `service` instead of `incident`).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// When it happened (RFC 3339).
    at: Option<String>,
    /// `event:<event id>`, `user:<user id>` or `system`.
    actor: Option<String>,
    incident_id: Option<String>,
    service_id: Option<String>,
    /// The incident's version after the change: 1, 2, 3, … per incident.
    version: Option<i64>,
    /// The incident after the change.
    #[schema(value_type = Option<Object>)]
    incident: Option<serde_json::Value>,
    /// With `reset` only.
    reason: Option<String>,
}

/// A single-use stream token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamToken {
    /// Pass as `?token=` to `GET /api/stream` within `expiresIn` seconds; it works once.
    pub token: String,
    pub expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StreamTokenBody {
    pub stream: StreamToken,
}
