//! What the heartbeats endpoints are sent and answer.

use common::fields::{Id, Name, blank_as_none};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_integer! {
    /// Seconds between the pings a heartbeat expects: 5 s to a week.
    pub struct IntervalSeconds(i32) { min: 5, max: 604_800 }
}

common::bounded_integer! {
    /// Seconds a ping may be late before the heartbeat is missed: up to a day, 60 by default.
    pub struct GraceSeconds(i32) { min: 0, max: 86_400, default: 60 }
}

/// A new heartbeat: missed when no ping comes for `intervalSeconds` + `graceSeconds`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"serviceId": "svc_0193c1d1a3b87f00a1b2c3d4e5f60718", "name": "Nightly backup", "intervalSeconds": 86400, "graceSeconds": 600}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewHeartbeat {
    /// The service its incident opens on.
    pub service_id: Id,
    pub name: Name,
    pub interval_seconds: IntervalSeconds,
    /// Default 60.
    #[serde(default)]
    pub grace_seconds: Option<GraceSeconds>,
}

/// Whether a heartbeat's pings arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatState {
    /// Pinged in time, or new.
    Up,
    /// Missed: its incident (dedup key `heartbeat:<id>`) was triggered; the next ping resolves it.
    Down,
}

impl std::str::FromStr for HeartbeatState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "up" => Ok(Self::Up),
            "down" => Ok(Self::Down),
            _ => Err(format!("unknown heartbeat state {text:?}")),
        }
    }
}

/// The filter of `GET /api/heartbeats`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct HeartbeatQuery {
    /// Only this service's heartbeats (also service_id)
    #[serde(default, rename = "serviceId", alias = "service_id", deserialize_with = "blank_as_none")]
    #[param(value_type = Option<String>)]
    pub service_id: Option<Id>,
}

/// A heartbeat. Its ping URL (holding its secret token) is shown only when it is created.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub id: String,
    pub service_id: String,
    pub name: String,
    pub interval_seconds: i32,
    pub grace_seconds: i32,
    pub state: HeartbeatState,
    /// Null until the first ping.
    pub last_ping_at: Option<Timestamp>,
    /// When it is missed unless a ping comes first.
    pub due_at: Timestamp,
    pub created_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct HeartbeatBody {
    pub heartbeat: Heartbeat,
}

/// A new heartbeat with its ping URL, shown this once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatWithPingUrl {
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// `GET` or `POST` it (no API key) at least every `intervalSeconds`. It holds the
    /// heartbeat's secret token: it is not shown again.
    pub ping_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct NewHeartbeatBody {
    pub heartbeat: HeartbeatWithPingUrl,
}

#[derive(Serialize, ToSchema)]
pub struct HeartbeatList {
    pub heartbeats: Vec<Heartbeat>,
    /// How many heartbeats match the filter.
    pub total: i64,
    pub pagination: Pagination,
}
