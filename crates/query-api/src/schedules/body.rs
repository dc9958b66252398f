//! What the schedules endpoints are sent and answer.

use std::str::FromStr;

use common::fields::{Id, Instant, Name, blank_as_none};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_integer! {
    /// Shift length in hours with rotation `hours` (at most 30 days).
    pub struct RotationHours(i64) { min: 1, max: 720, default: 24 }
}

/// An IANA time zone, e.g. `Europe/Berlin`: rotations hand off at local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneName(String);

impl ZoneName {
    /// Longest accepted name.
    pub const MAX_CHARS: usize = 255;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ZoneName {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let name = common::fields::check_text(value, 1, Self::MAX_CHARS, true)?;
        TimeZone::get(&name).map_err(|_| format!("{name:?} is not an IANA time zone"))?;
        Ok(Self(name))
    }
}

common::bounded_text! {
    /// A layer's name: at most 255 characters (blank: `Layer`).
    pub struct LayerName { min: 0, max: 255, trim: true }
}

/// The users of a layer, in rotation order: at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(Vec<Id>);

impl Members {
    /// Fewest users a layer rotates through.
    pub const MIN_ITEMS: usize = 1;

    pub fn new(users: Vec<Id>) -> Result<Self, String> {
        if users.len() < Self::MIN_ITEMS {
            return Err("must list at least one user id".into());
        }
        Ok(Self(users))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Id> {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(Vec::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Members {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, Ref};
        ArrayBuilder::new().items(Ref::from_schema_name(Id::name())).min_items(Some(Self::MIN_ITEMS)).into()
    }
}

impl ToSchema for Members {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push((Id::name().into_owned(), <Id as utoipa::PartialSchema>::schema()));
    }
}

/// A local time of day, `HH:MM` (24-hour clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffTime(pub jiff::civil::Time);

impl HandoffTime {
    /// The format read, and the pattern the schema states for it.
    pub const FORMAT: &str = "%H:%M";
    pub const PATTERN: &str = "^([01][0-9]|2[0-3]):[0-5][0-9]$";
}

impl Default for HandoffTime {
    fn default() -> Self {
        Self(jiff::civil::time(9, 0, 0, 0))
    }
}

impl FromStr for HandoffTime {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        // strptime also takes one-digit hours and minutes (`9:5`); the schema's pattern does not.
        let two_digits = value.len() == 5 && value.as_bytes()[2] == b':';
        let time = jiff::civil::Time::strptime(Self::FORMAT, value).ok().filter(|_| two_digits);
        time.map(Self).ok_or("must be HH:MM")
    }
}

common::deserialize_from_str!(ZoneName, HandoffTime, RotationKind);

impl utoipa::PartialSchema for ZoneName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        common::fields::text_schema(1, Self::MAX_CHARS)
    }
}

impl ToSchema for ZoneName {}

impl utoipa::PartialSchema for HandoffTime {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(Self::PATTERN)).into()
    }
}

impl ToSchema for HandoffTime {}

/// A new schedule, with optional layers and overrides.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"name": "Primary", "timeZone": "Europe/Berlin"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewSchedule {
    pub name: Name,
    /// An IANA time zone, e.g. `Europe/Berlin`: rotations hand off at local time.
    pub time_zone: ZoneName,
    #[serde(default)]
    pub layers: Vec<NewLayer>,
    #[serde(default)]
    pub overrides: Vec<NewOverride>,
}

/// A rotation layer; later layers win over earlier ones.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"start": "2026-12-01T08:00:00Z", "rotation": "weekly", "handoffTime": "09:00", "users": ["usr_0192"]}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewLayer {
    /// Default `Layer`.
    #[serde(default)]
    pub name: Option<LayerName>,
    pub start: Instant,
    #[serde(default)]
    pub end: Option<Instant>,
    pub rotation: RotationKind,
    /// Shift length with rotation `hours`.
    #[serde(default)]
    pub rotation_hours: Option<RotationHours>,
    /// Local hand-off time, default 09:00.
    #[serde(default)]
    pub handoff_time: Option<HandoffTime>,
    /// User ids in rotation order.
    pub users: Members,
}

#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RotationKind {
    Daily,
    Weekly,
    Hours,
}

impl RotationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Hours => "hours",
        }
    }
}

impl FromStr for RotationKind {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "daily" => Ok(Self::Daily),
            "weekly" => Ok(Self::Weekly),
            "hours" => Ok(Self::Hours),
            _ => Err("must be daily, weekly or hours"),
        }
    }
}

/// A user on call for an interval, over all layers.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"userId": "usr_0192", "start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewOverride {
    pub user_id: Id,
    pub start: Instant,
    pub end: Instant,
}

/// `GET /api/schedules/{id}/on-call`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct OnCallQuery {
    /// RFC 3339, default now
    #[serde(default, deserialize_with = "blank_as_none")]
    pub at: Option<Instant>,
}

/// `GET /api/schedules/{id}/shifts`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ShiftsQuery {
    /// RFC 3339, default now; 1900-01-01 to 9000-01-01
    #[serde(default, deserialize_with = "blank_as_none")]
    pub from: Option<Instant>,
    /// RFC 3339, default from + 7 days; at most 93 days after from
    #[serde(default, deserialize_with = "blank_as_none")]
    pub to: Option<Instant>,
}

/// A schedule as listed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSummary {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A schedule with its layers (bottom first) and overrides.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    #[serde(flatten)]
    pub summary: ScheduleSummary,
    pub layers: Vec<LayerView>,
    pub overrides: Vec<OverrideView>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerView {
    pub id: String,
    pub name: String,
    pub position: i32,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub rotation: RotationKind,
    pub rotation_hours: Option<i32>,
    pub handoff_time: String,
    pub users: Vec<UserName>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserName {
    pub id: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct OverrideView {
    pub id: String,
    pub user: UserName,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// An override as created.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedOverride {
    pub id: String,
    pub user_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleBody {
    pub schedule: Schedule,
}

#[derive(Serialize, ToSchema)]
pub struct LayerBody {
    pub layer: LayerView,
}

#[derive(Serialize, ToSchema)]
pub struct OverrideBody {
    #[serde(rename = "override")]
    pub created: CreatedOverride,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleSummary>,
    pub total: i64,
    pub pagination: Pagination,
}

/// Who is on call at `at`; `onCall` is null when nobody is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnCallBody {
    pub at: Timestamp,
    pub on_call: Option<OnCall>,
}

#[derive(Serialize, ToSchema)]
pub struct OnCall {
    pub user: OnCallUser,
    pub start: Timestamp,
    pub end: Timestamp,
    #[serde(flatten)]
    pub source: ShiftSource,
}

#[derive(Serialize, ToSchema)]
pub struct OnCallUser {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// What put the user on call: an override (`override` true, `overrideId`) or a layer
/// (`override` false, `layerId`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShiftSource {
    #[serde(rename = "override")]
    pub is_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_id: Option<String>,
}

/// The final shifts of a window.
#[derive(Serialize, ToSchema)]
pub struct ShiftsBody {
    pub from: Timestamp,
    pub to: Timestamp,
    pub shifts: Vec<ShiftView>,
}

#[derive(Serialize, ToSchema)]
pub struct ShiftView {
    pub start: Timestamp,
    pub end: Timestamp,
    pub user: ShiftUser,
    #[serde(flatten)]
    pub source: ShiftSource,
}

#[derive(Serialize, ToSchema)]
pub struct ShiftUser {
    pub id: String,
    /// Null for a user deleted since.
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::HandoffTime;

    #[test]
    fn a_handoff_time_is_read_exactly_as_the_schema_states_it() {
        let read = |text: &str| text.parse::<HandoffTime>().ok().map(|t| t.0.strftime(HandoffTime::FORMAT).to_string());
        assert_eq!(read(" 09:30 ").as_deref(), Some("09:30"));
        assert_eq!(read("23:59").as_deref(), Some("23:59"));
        for refused in ["9:30", "09:5", "09:00:30", "24:00", "12:60", "noon", ""] {
            assert_eq!(read(refused), None, "{refused:?}");
        }
    }
}
