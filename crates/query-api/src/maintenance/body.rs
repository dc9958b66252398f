//! What the maintenance windows endpoints are sent and answer.

use std::str::FromStr;

use common::fields::{Id, Instant, List, blank_as_none};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_text! {
    /// Why a window is planned: at most 1024 characters.
    pub struct MaintenanceDescription { min: 0, max: 1024, trim: false }
}

/// The services of a window: 1 to 100 service ids.
pub type ServiceIds = List<Id, 1, 100>;

/// A new maintenance window. A `start` in the past is taken as the moment it is created.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"serviceIds": ["svc_0193c1d1a3b87f00a1b2c3d4e5f60718"], "start": "2026-12-01T22:00:00Z", "end": "2026-12-01T23:30:00Z", "description": "Database upgrade"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewMaintenanceWindow {
    /// The services whose triggers it suppresses (a repeated id counts once).
    #[schema(inline)]
    pub service_ids: ServiceIds,
    pub start: Instant,
    /// After `start`, and in the future.
    pub end: Instant,
    #[serde(default)]
    pub description: Option<MaintenanceDescription>,
}

/// Where a window stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceState {
    /// Started and not yet over: its services' triggers open `SUPPRESSED` incidents.
    Ongoing,
    /// Not yet started.
    Future,
    /// Over.
    Past,
}

impl MaintenanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ongoing => "ongoing",
            Self::Future => "future",
            Self::Past => "past",
        }
    }
}

impl FromStr for MaintenanceState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "ongoing" => Ok(Self::Ongoing),
            "future" => Ok(Self::Future),
            "past" => Ok(Self::Past),
            _ => Err("must be ongoing, future or past".into()),
        }
    }
}

common::deserialize_from_str!(MaintenanceState);

/// The filters of `GET /api/maintenance-windows`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct MaintenanceQuery {
    /// ongoing, future or past
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(inline)]
    pub state: Option<MaintenanceState>,
    /// Only windows covering this service (also service_id)
    #[serde(default, rename = "serviceId", alias = "service_id", deserialize_with = "blank_as_none")]
    #[param(value_type = Option<String>)]
    pub service_id: Option<Id>,
}

/// A maintenance window.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    pub id: String,
    /// The services it covers, sorted.
    pub service_ids: Vec<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub description: String,
    pub state: MaintenanceState,
    pub created_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindowBody {
    pub maintenance_window: MaintenanceWindow,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindowList {
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// How many windows match the filters.
    pub total: i64,
    pub pagination: Pagination,
}
