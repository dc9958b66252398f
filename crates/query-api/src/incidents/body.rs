//! What the incidents endpoints are sent and answer.

use common::event::Urgency;
use common::fields::{CommaList, Id, Instant, blank_as_none};
use common::incident::state::{IncidentStatus, Priority};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_text! {
    /// An incident's title: 1 to 1024 characters, not blank.
    pub struct Title { min: 1, max: 1024, trim: true }
}

common::bounded_text! {
    /// An incident's description: at most 65,536 characters.
    pub struct IncidentDescription { min: 0, max: 65_536, trim: false }
}

common::bounded_text! {
    /// A note for the timeline: at most 10,000 characters (a blank one adds nothing).
    pub struct Note { min: 0, max: 10_000, trim: true }
}

common::bounded_text! {
    /// A user id, or "" for nobody.
    pub struct AssigneeRef { min: 0, max: 64, trim: false }
}

// ---------------------------------------------------------------------------------------------
// Listing

/// The filters and order of `GET /api/incidents`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct IncidentQuery {
    /// Comma list of OPEN, ACKNOWLEDGED, RESOLVED, SNOOZED, SUPPRESSED (case-insensitive; triggered = OPEN)
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(value_type = Option<String>)]
    pub status: Option<CommaList<IncidentStatus>>,
    /// Comma list of HIGH, MEDIUM, LOW (case-insensitive)
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(value_type = Option<String>)]
    pub urgency: Option<CommaList<Urgency>>,
    /// Only this service (also service_id)
    #[serde(default, rename = "serviceId", alias = "service_id", deserialize_with = "blank_as_none")]
    pub service_id: Option<String>,
    /// Only this assignee (also assignee_id)
    #[serde(default, rename = "assigneeId", alias = "assignee_id", deserialize_with = "blank_as_none")]
    pub assignee_id: Option<String>,
    /// RFC 3339
    #[serde(default, deserialize_with = "blank_as_none")]
    pub created_after: Option<Instant>,
    /// RFC 3339
    #[serde(default, deserialize_with = "blank_as_none")]
    pub created_before: Option<Instant>,
    /// Default created_at (camelCase names are accepted too)
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(inline)]
    pub sort: Option<SortField>,
    /// Default desc
    #[serde(default, deserialize_with = "blank_as_none")]
    #[param(inline)]
    pub order: Option<SortOrder>,
}

/// The orders incidents can be listed in.
#[derive(ToSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[schema(rename_all = "snake_case")]
pub enum SortField {
    #[default]
    CreatedAt,
    UpdatedAt,
    Urgency,
    Status,
}

impl std::str::FromStr for SortField {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value {
            "created_at" | "createdAt" => Self::CreatedAt,
            "updated_at" | "updatedAt" => Self::UpdatedAt,
            "urgency" => Self::Urgency,
            "status" => Self::Status,
            _ => return Err("must be created_at, updated_at, urgency or status"),
        })
    }
}

#[derive(ToSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[schema(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

impl std::str::FromStr for SortOrder {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "asc" => Ok(Self::Asc),
            "desc" => Ok(Self::Desc),
            _ => Err("must be asc or desc"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Create and update

/// An incident opened by hand.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"title": "Checkout is slow", "serviceId": "svc_0192", "urgency": "HIGH", "priority": "P2"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateIncident {
    pub title: Title,
    pub service_id: Id,
    #[serde(default)]
    pub description: Option<IncidentDescription>,
    /// Default HIGH (case-insensitive).
    #[serde(default)]
    pub urgency: Option<Urgency>,
    /// P1 to P5 (case-insensitive).
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// A person's change to an incident; every part is optional.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"status": "ACKNOWLEDGED", "priority": "P2", "note": "looking into it"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IncidentChange {
    /// The new status (case-insensitive); `SNOOZED` needs `snoozedUntil`.
    #[serde(default)]
    pub status: Option<StatusChange>,
    /// When a snooze ends (in the future); alone, it snoozes.
    #[serde(default)]
    pub snoozed_until: Option<Instant>,
    #[serde(default)]
    pub urgency: Option<Urgency>,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// A user id; null or "" unassigns.
    #[serde(default, deserialize_with = "present")]
    pub assignee_id: Option<Option<AssigneeRef>>,
    /// A note added to the timeline.
    #[serde(default)]
    pub note: Option<Note>,
}

/// The statuses a person may set (case-insensitive; TRIGGERED means OPEN).
#[derive(ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[schema(rename_all = "UPPERCASE")]
pub enum StatusChange {
    Open,
    Acknowledged,
    Resolved,
    Snoozed,
}

impl std::str::FromStr for StatusChange {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.parse() {
            Ok(IncidentStatus::Open) => Ok(Self::Open),
            Ok(IncidentStatus::Acknowledged) => Ok(Self::Acknowledged),
            Ok(IncidentStatus::Resolved) => Ok(Self::Resolved),
            Ok(IncidentStatus::Snoozed) => Ok(Self::Snoozed),
            Ok(IncidentStatus::Suppressed) | Err(_) => Err("must be OPEN, ACKNOWLEDGED, RESOLVED or SNOOZED"),
        }
    }
}

common::deserialize_from_str!(SortField, SortOrder, StatusChange);

/// A field that is present (even as null) is `Some`, so null can mean "clear it".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Answers

/// An incident as listed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: String,
    pub title: String,
    /// An ended snooze reads as `OPEN`.
    pub status: IncidentStatus,
    pub urgency: Urgency,
    pub priority: Option<Priority>,
    pub dedup_key: String,
    pub service: ServiceName,
    pub assignee: Option<Assignee>,
    #[schema(minimum = 0)]
    pub alert_count: i32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub acknowledged_at: Option<Timestamp>,
    pub resolved_at: Option<Timestamp>,
    /// Set while `SNOOZED`.
    pub snoozed_until: Option<Timestamp>,
    /// The escalation it runs (DESIGN §11); null on a service without a policy.
    pub escalation: Option<Escalation>,
}

/// Where an incident's escalation stands.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// `ACTIVE` (steps fire while it is `OPEN`), `STOPPED` (acknowledged, resolved, snoozed or
    /// suppressed; starts over at step 1 if it opens again) or `COMPLETED` (the last step of the
    /// last repeat fired).
    pub status: EscalationStatus,
    /// The next step to fire, from 1 (the last one fired, once `COMPLETED`).
    pub step: i32,
    /// How many times the steps started over, from 0.
    #[serde(rename = "loop")]
    pub repeat_loop: i32,
    /// How many steps fired.
    pub firings: i32,
    /// When the next step fires; null unless `ACTIVE`.
    pub next_at: Option<Timestamp>,
    pub policy_id: String,
    /// The policy version it follows (a later `PUT` does not change it).
    pub policy_version: i32,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum EscalationStatus {
    Active,
    Stopped,
    Completed,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceName {
    pub id: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct Assignee {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// An incident with its description.
#[derive(Serialize, ToSchema)]
pub struct DescribedIncident {
    #[serde(flatten)]
    pub incident: Incident,
    pub description: Option<String>,
}

/// An incident with its description, timeline and alerts (newest first, at most 100 each).
#[derive(Serialize, ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: DescribedIncident,
    pub timeline: Vec<TimelineEntry>,
    pub alerts: Vec<Alert>,
}

/// An entry of the timeline: an event or status change from the key's log, or a note, field
/// change, merge or retention summary.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TimelineEntry {
    Event(LoggedEntry),
    Note(NoteEntry),
}

/// An alert source's event (`type` `event`) or a person's status change (`type` `change`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggedEntry {
    #[schema(pattern = "^(event|change)$")]
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub at: Timestamp,
    pub action: String,
    pub outcome: String,
    pub actor: Option<String>,
    pub event_id: Uuid,
    pub summary: Option<String>,
}

/// A timeline entry: `created`, `note`, `change` (urgency, priority, assignee), `merged`,
/// `events_expired`.
#[derive(Serialize, ToSchema)]
pub struct NoteEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub at: Timestamp,
    #[schema(required = true)]
    pub actor: Option<String>,
    #[schema(required = true)]
    pub message: Option<String>,
    #[schema(required = true, value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// One alert (a trigger) on the incident.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub event_id: Uuid,
    pub received_at: Timestamp,
    #[serde(flatten)]
    pub payload: StoredPayload,
}

/// What the alert said, as stored.
#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredPayload {
    pub summary: Option<String>,
    pub source: Option<String>,
    pub severity: Option<String>,
    pub component: Option<String>,
    pub group: Option<String>,
    pub class: Option<String>,
    #[serde(alias = "custom_details")]
    #[schema(value_type = Option<Object>)]
    pub custom_details: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct IncidentBody {
    pub incident: DescribedIncident,
}

#[derive(Serialize, ToSchema)]
pub struct IncidentDetailBody {
    pub incident: IncidentDetail,
}

#[derive(Serialize, ToSchema)]
pub struct IncidentList {
    pub incidents: Vec<Incident>,
    /// Every incident matching the filters, in the same snapshot as the page.
    pub total: i64,
    pub pagination: Pagination,
}
