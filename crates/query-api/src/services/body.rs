//! What the services endpoints are sent and answer.

use common::fields::Name;
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
