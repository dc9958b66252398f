//! What the services endpoints are sent and answer.

use common::fields::{Id, Name};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_text! {
    /// What a service is for: at most 4096 characters.
    pub struct ServiceDescription { min: 0, max: 4096, trim: false }
}

common::bounded_integer! {
    /// Events per minute through a routing key.
    pub struct EventsPerMinute(u32) { min: 1, max: u32::MAX }
}

/// A new service.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"name": "Checkout", "description": "Payments and carts", "rateLimit": 600}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewService {
    pub name: Name,
    #[serde(default)]
    pub description: Option<ServiceDescription>,
    /// Events per minute for the routing key; default the server's.
    #[serde(default)]
    pub rate_limit: Option<EventsPerMinute>,
    /// The escalation policy its new incidents start (DESIGN §11); none by default.
    #[serde(default)]
    pub escalation_policy_id: Option<Id>,
}

/// What changes on a service; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"escalationPolicyId": "esc_0193c1d1a3b87f00a1b2c3d4e5f60718"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePatch {
    #[serde(default)]
    pub name: Option<Name>,
    #[serde(default)]
    pub description: Option<ServiceDescription>,
    /// An escalation policy id, or null for none: incidents opened from now on start it.
    #[serde(default, deserialize_with = "common::fields::nullable")]
    #[schema(value_type = Option<String>)]
    pub escalation_policy_id: Option<Option<Id>>,
}

/// A service: where incidents are opened, with its status derived from its open incidents.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: ServiceStatus,
    pub open_incidents: OpenIncidents,
    /// The escalation policy its new incidents start, if any.
    pub escalation_policy_id: Option<String>,
    /// Whether a maintenance window covers it now (its new incidents are `SUPPRESSED`).
    pub in_maintenance: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Shown only to keys with `services:write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Events per minute for this routing key (null: the default). Shown only to keys with `services:write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub rate_limit: Option<Option<i32>>,
}

/// `CRITICAL` with a HIGH-urgency open incident, `DEGRADED` with any other, else `OPERATIONAL`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServiceStatus {
    Critical,
    Degraded,
    Operational,
}

/// Incidents not yet resolved, by urgency.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub struct OpenIncidents {
    pub high: i64,
    pub medium: i64,
    pub low: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceBody {
    pub service: Service,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<Service>,
    pub total: i64,
    pub pagination: Pagination,
}

/// A service with its routing key, as the CLI lists and rotates them.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceWithKey {
    pub id: String,
    pub name: String,
    pub description: String,
    pub routing_key: String,
    pub rate_limit: Option<u32>,
}

/// The routing key authenticates `/v2/enqueue`: not in `Debug` output.
impl std::fmt::Debug for ServiceWithKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceWithKey").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}
