//! Incidents (DESIGN §5): list with filters, sort and paging; detail with timeline and alerts;
//! create; and manual changes, which take the same per-key lock as workers applying events.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::event::Urgency;
use common::http::{ApiJson, ApiPath, parse_value};
use common::incident::change::{self, NewIncident, Update};
use common::incident::state::{IncidentStatus, ManualChange};
use common::incident::store::{optional_timestamp, timestamp};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ErrorBody, Refusals, Timestamp};
use crate::pagination::{PageRequest, Pagination};
use crate::params::Params;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail, update))
}

/// An incident whose snooze has ended reads as `OPEN` at once, before the background task
/// stores it.
const SNOOZE_ENDED: &str = "(i.status = 'SNOOZED' and i.snoozed_until <= now())";

const SELECT: &str =
    "select i.id, i.title, i.description, i.status as stored_status, i.urgency, i.priority, i.dedup_key,
        i.service_id, s.name as service_name, i.assignee_id, u.name as assignee_name, u.email as assignee_email,
        i.alert_count, i.created_at, i.updated_at, i.acknowledged_at, i.resolved_at, i.snoozed_until,
        (case when i.status = 'SNOOZED' and i.snoozed_until <= now() then 'OPEN' else i.status end) as status";
const FROM: &str = " from incidents i join services s on s.id = i.service_id left join users u on u.id = i.assignee_id";

/// An incident as listed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: String,
    pub title: String,
    /// An ended snooze reads as `OPEN`.
    pub status: IncidentStatus,
    pub urgency: Urgency,
    #[schema(pattern = "^P[1-5]$")]
    pub priority: Option<String>,
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

fn incident_of(row: &PgRow) -> Result<Incident, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let status = IncidentStatus::parse(&status).unwrap_or(IncidentStatus::Open);
    let assignee = match row.try_get::<Option<String>, _>("assignee_id")? {
        Some(id) => Some(Assignee { id, name: row.try_get("assignee_name")?, email: row.try_get("assignee_email")? }),
        None => None,
    };
    let snoozed_until =
        if status == IncidentStatus::Snoozed { optional_timestamp(row, "snoozed_until")? } else { None };
    let urgency: String = row.try_get("urgency")?;
    Ok(Incident {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        status,
        urgency: Urgency::parse(&urgency).unwrap_or(Urgency::High),
        priority: row.try_get("priority")?,
        dedup_key: row.try_get("dedup_key")?,
        service: ServiceName { id: row.try_get("service_id")?, name: row.try_get("service_name")? },
        assignee,
        alert_count: row.try_get("alert_count")?,
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
        acknowledged_at: optional_timestamp(row, "acknowledged_at")?.map(Into::into),
        resolved_at: optional_timestamp(row, "resolved_at")?.map(Into::into),
        snoozed_until: snoozed_until.map(Into::into),
    })
}

async fn fetch(pool: &PgPool, id: &str) -> Result<DescribedIncident, ApiError> {
    let sql = format!("{SELECT}{FROM} where i.id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("incident {id}")))?;
    Ok(DescribedIncident { incident: incident_of(&row)?, description: row.try_get("description")? })
}

// ---------------------------------------------------------------------------------------------
// Listing

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    CreatedAt,
    UpdatedAt,
    Urgency,
    Status,
}

impl Sort {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "created_at" | "createdAt" => Self::CreatedAt,
            "updated_at" | "updatedAt" => Self::UpdatedAt,
            "urgency" => Self::Urgency,
            "status" => Self::Status,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::Urgency => "urgency",
            Self::Status => "status",
        }
    }

    fn expression(self) -> &'static str {
        match self {
            Self::CreatedAt => "i.created_at",
            Self::UpdatedAt => "i.updated_at",
            Self::Urgency => "(case i.urgency when 'HIGH' then 3 when 'MEDIUM' then 2 else 1 end)",
            Self::Status => {
                "(case i.status when 'OPEN' then 1 when 'ACKNOWLEDGED' then 2 when 'SNOOZED' then 3 when 'SUPPRESSED' then 4 else 5 end)"
            }
        }
    }

    fn cast(self) -> &'static str {
        match self {
            Self::CreatedAt | Self::UpdatedAt => "::timestamptz",
            Self::Urgency | Self::Status => "::int",
        }
    }
}

struct Filter {
    statuses: Option<Vec<String>>,
    urgencies: Option<Vec<String>>,
    service_id: Option<String>,
    assignee_id: Option<String>,
    created_after: Option<jiff::Timestamp>,
    created_before: Option<jiff::Timestamp>,
}

fn comma_list<T>(
    params: &Params,
    names: &[&'static str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<Vec<T>>, ApiError> {
    let Some((name, value)) = params.get(names) else {
        return Ok(None);
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| parse(v).ok_or_else(|| ApiError::validation(name, format!("unknown value {v:?}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Filter {
    fn parse(params: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            statuses: comma_list(params, &["status"], |v| IncidentStatus::parse(v).map(|s| s.as_str().to_owned()))?,
            urgencies: comma_list(params, &["urgency"], |v| Urgency::parse(v).map(|u| u.as_str().to_owned()))?,
            service_id: params.get(&["serviceId", "service_id"]).map(|(_, v)| v.to_owned()),
            assignee_id: params.get(&["assigneeId", "assignee_id"]).map(|(_, v)| v.to_owned()),
            created_after: params.timestamp("created_after")?,
            created_before: params.timestamp("created_before")?,
        })
    }

    fn push(&self, query: &mut QueryBuilder<'_, Postgres>) {
        if let Some(statuses) = &self.statuses {
            // Written so the status indexes serve it: an ended snooze counts as OPEN, not SNOOZED.
            let (open, snoozed) = (statuses.iter().any(|s| s == "OPEN"), statuses.iter().any(|s| s == "SNOOZED"));
            query.push(" and (i.status = any(").push_bind(statuses.clone()).push(")");
            if open && !snoozed {
                query.push(format!(" or {SNOOZE_ENDED}"));
            }
            query.push(")");
            if snoozed && !open {
                query.push(format!(" and not {SNOOZE_ENDED}"));
            }
        }
        if let Some(urgencies) = &self.urgencies {
            query.push(" and i.urgency = any(").push_bind(urgencies.clone()).push(")");
        }
        if let Some(service) = &self.service_id {
            query.push(" and i.service_id = ").push_bind(service.clone());
        }
        if let Some(assignee) = &self.assignee_id {
            query.push(" and i.assignee_id = ").push_bind(assignee.clone());
        }
        if let Some(after) = self.created_after {
            query.push(" and i.created_at > ").push_bind(after.to_string()).push("::timestamptz");
        }
        if let Some(before) = self.created_before {
            query.push(" and i.created_at < ").push_bind(before.to_string()).push("::timestamptz");
        }
    }
}

impl Filter {
    /// The exact number of matching incidents. Filters on status, urgency and service are
    /// answered from the maintained counts (plus the pending deltas, in the same snapshot) and
    /// ended snoozes; others count rows.
    async fn total(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        if self.assignee_id.is_some() || self.created_after.is_some() || self.created_before.is_some() {
            let mut count = QueryBuilder::new("select count(*) from incidents i where true");
            self.push(&mut count);
            return count.build_query_scalar::<i64>().fetch_one(conn).await;
        }
        let (open, snoozed) = match &self.statuses {
            Some(statuses) => (statuses.iter().any(|s| s == "OPEN"), statuses.iter().any(|s| s == "SNOOZED")),
            None => (false, false),
        };
        let mut query = QueryBuilder::new(
            "select (select coalesce(sum(n), 0)::int8 from (select service_id, status, urgency, n from incident_counts
             union all select service_id, status, urgency, n from incident_count_deltas) i where true",
        );
        self.push_counted(&mut query, true);
        query.push(")");
        // An ended snooze is still counted as SNOOZED until the background task stores it as OPEN.
        let sign = match (open, snoozed) {
            (true, false) => Some(" + "),
            (false, true) => Some(" - "),
            _ => None,
        };
        if let Some(sign) = sign {
            query.push(sign).push("(select count(*) from incidents i where ").push(SNOOZE_ENDED);
            self.push_counted(&mut query, false);
            query.push(")");
        }
        query.build_query_scalar::<i64>().fetch_one(conn).await
    }

    /// The status (if `with_status`), urgency and service filters, on columns of `i`.
    fn push_counted(&self, query: &mut QueryBuilder<'_, Postgres>, with_status: bool) {
        if let Some(statuses) = self.statuses.as_ref().filter(|_| with_status) {
            query.push(" and i.status = any(").push_bind(statuses.clone()).push(")");
        }
        if let Some(urgencies) = &self.urgencies {
            query.push(" and i.urgency = any(").push_bind(urgencies.clone()).push(")");
        }
        if let Some(service) = &self.service_id {
            query.push(" and i.service_id = ").push_bind(service.clone());
        }
    }
}

/// Where the previous page ended: the sort, the order, and the sort value and id of its last
/// incident.
#[derive(Serialize, Deserialize)]
struct Cursor {
    s: String,
    o: String,
    v: String,
    id: String,
}

/// List incidents, newest first by default.
#[utoipa::path(get, path = "/api/incidents", tag = "incidents",
    params(
        ("status" = Option<String>, Query, description = "Comma list of OPEN, ACKNOWLEDGED, RESOLVED, SNOOZED, SUPPRESSED (case-insensitive; triggered = OPEN)"),
        ("urgency" = Option<String>, Query, description = "Comma list of HIGH, MEDIUM, LOW (case-insensitive)"),
        ("serviceId" = Option<String>, Query, description = "Only this service (also service_id)"),
        ("assigneeId" = Option<String>, Query, description = "Only this assignee (also assignee_id)"),
        ("created_after" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("created_before" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("sort" = inline(Option<SortField>), Query, description = "Default created_at (camelCase names are accepted too)"),
        ("order" = inline(Option<SortOrder>), Query, description = "Default desc"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page length, default 50"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Rows to skip (not with cursor)"),
        ("cursor" = Option<String>, Query, description = "pagination.nextCursor of the previous page (same sort and order)"),
    ),
    responses((status = 200, description = "A page of incidents with the exact total", body = IncidentList),
              (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Params,
) -> Result<Json<IncidentList>, ApiError> {
    principal.require(Scope::IncidentsRead)?;
    let filter = Filter::parse(&params)?;
    let sort = match params.get(&["sort"]) {
        Some((_, v)) => Sort::parse(v)
            .ok_or_else(|| ApiError::validation("sort", "must be created_at, updated_at, urgency or status"))?,
        None => Sort::CreatedAt,
    };
    let order = match params.get(&["order"]).map(|(_, v)| v.to_ascii_lowercase()) {
        None => "desc".to_owned(),
        Some(o) if o == "asc" || o == "desc" => o,
        Some(_) => return Err(ApiError::validation("order", "must be asc or desc")),
    };
    let page = PageRequest::<Cursor>::parse(&params)?;
    if page.cursor.as_ref().is_some_and(|c| c.s != sort.name() || c.o != order) {
        return Err(ApiError::validation("cursor", "was made for another sort or order"));
    }

    let mut query =
        QueryBuilder::new(format!("{SELECT}, ({})::text as sort_value{FROM} where true", sort.expression()));
    filter.push(&mut query);
    if let Some(cursor) = &page.cursor {
        let op = if order == "desc" { "<" } else { ">" };
        query
            .push(format!(" and ({}, i.id) {op} (", sort.expression()))
            .push_bind(cursor.v.clone())
            .push(sort.cast())
            .push(", ")
            .push_bind(cursor.id.clone())
            .push(")");
    }
    query
        .push(format!(" order by {} {order}, i.id {order} limit ", sort.expression()))
        .push_bind(page.fetch())
        .push(" offset ")
        .push_bind(page.offset);
    // The page and its total from one snapshot, so they agree while incidents are being created.
    let mut snapshot = state.pool.begin_with("begin isolation level repeatable read read only").await?;
    let mut rows = query.build().fetch_all(&mut *snapshot).await?;
    let total = filter.total(&mut snapshot).await?;
    snapshot.commit().await?;

    let pagination = page.finish(&mut rows, |last| {
        Ok::<_, sqlx::Error>(Cursor {
            s: sort.name().into(),
            o: order.clone(),
            v: last.try_get("sort_value")?,
            id: last.try_get("id")?,
        })
    })?;
    let incidents = rows.iter().map(incident_of).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(IncidentList { incidents, total, pagination }))
}

/// The orders incidents can be listed in.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SortField {
    CreatedAt,
    UpdatedAt,
    Urgency,
    Status,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

// ---------------------------------------------------------------------------------------------
// Detail

/// How many timeline entries and alerts the detail shows (newest first).
const DETAIL_ENTRIES: i64 = 100;

/// One incident with its timeline and alerts (newest first, at most 100 each).
#[utoipa::path(get, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, description = "The incident", body = IncidentDetailBody), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such incident", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<IncidentDetailBody>, ApiError> {
    principal.require(Scope::IncidentsRead)?;
    let incident = fetch(&state.pool, &id).await?;
    let events = sqlx::query(
        "select event_id, action, outcome, received_at, actor_id, payload from events
         where incident_id = $1 order by received_at desc, seq desc limit $2",
    )
    .bind(&id)
    .bind(DETAIL_ENTRIES)
    .fetch_all(&state.pool)
    .await?;
    let notes = sqlx::query(
        "select kind, at, actor_id, message, data from incident_timeline where incident_id = $1 order by at desc, id desc limit $2",
    )
    .bind(&id)
    .bind(DETAIL_ENTRIES)
    .fetch_all(&state.pool)
    .await?;

    let mut timeline: Vec<(jiff::Timestamp, TimelineEntry)> = Vec::new();
    let mut alerts = Vec::new();
    for row in &events {
        let at = timestamp(row, "received_at")?;
        let action: String = row.try_get("action")?;
        let actor: Option<String> = row.try_get("actor_id")?;
        let payload: Option<Value> = row.try_get::<Option<sqlx::types::Json<Value>>, _>("payload")?.map(|j| j.0);
        let payload: StoredPayload = payload.and_then(|p| serde_json::from_value(p).ok()).unwrap_or_default();
        let event_id: Uuid = row.try_get("event_id")?;
        let is_alert = action == "trigger" && actor.is_none();
        timeline.push((
            at,
            TimelineEntry::Event(LoggedEntry {
                kind: if actor.is_some() { "change" } else { "event" },
                at: at.into(),
                action,
                outcome: row.try_get("outcome")?,
                actor,
                event_id,
                summary: payload.summary.clone(),
            }),
        ));
        if is_alert {
            alerts.push(Alert { event_id, received_at: at.into(), payload });
        }
    }
    for row in &notes {
        let at = timestamp(row, "at")?;
        timeline.push((
            at,
            TimelineEntry::Note(NoteEntry {
                kind: row.try_get("kind")?,
                at: at.into(),
                actor: row.try_get("actor_id")?,
                message: row.try_get("message")?,
                data: row.try_get::<Option<sqlx::types::Json<Value>>, _>("data")?.map(|j| j.0),
            }),
        ));
    }
    timeline.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    timeline.truncate(DETAIL_ENTRIES as usize);
    let timeline = timeline.into_iter().map(|(_, entry)| entry).collect();
    Ok(Json(IncidentDetailBody { incident: IncidentDetail { incident, timeline, alerts } }))
}

// ---------------------------------------------------------------------------------------------
// Create and update

/// An incident opened by hand.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"title": "Checkout is slow", "serviceId": "svc_0192", "urgency": "HIGH", "priority": "P2"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateIncident {
    #[schema(min_length = 1, max_length = 1024, pattern = "\\S")]
    pub title: String,
    #[schema(max_length = 64)]
    pub service_id: String,
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    /// Default HIGH (case-insensitive).
    #[serde(default)]
    #[schema(value_type = Option<Urgency>)]
    pub urgency: Option<String>,
    /// P1 to P5 (case-insensitive).
    #[serde(default)]
    #[schema(pattern = "^[Pp][1-5]$")]
    pub priority: Option<String>,
}

/// A person's change to an incident; every part is optional.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"status": "ACKNOWLEDGED", "priority": "P2", "note": "looking into it"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IncidentChange {
    /// The new status (case-insensitive); `SNOOZED` needs `snoozedUntil`.
    #[serde(default)]
    #[schema(value_type = Option<StatusChange>)]
    pub status: Option<String>,
    /// When a snooze ends (in the future); alone, it snoozes.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub snoozed_until: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Urgency>)]
    pub urgency: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[Pp][1-5]$")]
    pub priority: Option<String>,
    /// A user id; null or "" unassigns.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub assignee_id: Option<Option<String>>,
    /// A note added to the timeline.
    #[serde(default)]
    #[schema(max_length = 10000)]
    pub note: Option<String>,
}

/// The statuses a person may set.
#[derive(ToSchema)]
#[schema(rename_all = "UPPERCASE")]
pub enum StatusChange {
    Open,
    Acknowledged,
    Resolved,
    Snoozed,
}

/// A field that is present (even as null) is `Some`, so null can mean "clear it".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

fn at_most(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.chars().count() > max => {
            Err(ApiError::validation(field, format!("must be at most {max} characters")))
        }
        other => Ok(other),
    }
}

fn urgency(value: Option<String>) -> Result<Option<Urgency>, ApiError> {
    value
        .map(|u| Urgency::parse(&u).ok_or_else(|| ApiError::validation("urgency", "must be HIGH, MEDIUM or LOW")))
        .transpose()
}

fn priority(value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|p| {
            let p = p.to_ascii_uppercase();
            if ["P1", "P2", "P3", "P4", "P5"].contains(&p.as_str()) {
                Ok(p)
            } else {
                Err(ApiError::validation("priority", "must be P1, P2, P3, P4 or P5"))
            }
        })
        .transpose()
}

/// Open an incident by hand.
#[utoipa::path(post, path = "/api/incidents", tag = "incidents", request_body = CreateIncident,
    responses((status = 201, description = "The new incident", body = IncidentBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<IncidentBody>), ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: CreateIncident = parse_value(body)?;
    let title = at_most("title", Some(body.title), 1024)?.filter(|t| !t.trim().is_empty());
    let new = NewIncident {
        title: title.ok_or_else(|| ApiError::validation("title", "is required"))?,
        service_id: at_most("serviceId", Some(body.service_id), 64)?.unwrap_or_default(),
        description: at_most("description", body.description, 65_536)?,
        urgency: urgency(body.urgency)?.unwrap_or(Urgency::High),
        priority: priority(body.priority)?,
    };
    let id = change::open(&state.pool, &new, &principal.user_id).await?;
    Ok((StatusCode::CREATED, Json(IncidentBody { incident: fetch(&state.pool, &id).await? })))
}

/// Change status (incl. SNOOZED with snoozedUntil), urgency, priority, assignee, or add a note.
#[utoipa::path(patch, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")), request_body = IncidentChange,
    responses((status = 200, description = "The updated incident", body = IncidentBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such incident", body = ErrorBody), (status = 409, description = "Impossible transition", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn update(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<IncidentBody>, ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: IncidentChange = parse_value(body)?;
    let snoozed_until = at_most("snoozedUntil", body.snoozed_until, 64)?
        .map(|t| {
            t.parse::<jiff::Timestamp>()
                .map_err(|_| ApiError::validation("snoozedUntil", "must be an RFC 3339 timestamp"))
        })
        .transpose()?;
    let status = match at_most("status", body.status, 16)? {
        Some(s) => Some(match IncidentStatus::parse(&s) {
            Some(IncidentStatus::Suppressed) | None => {
                return Err(ApiError::validation("status", "must be OPEN, ACKNOWLEDGED, RESOLVED or SNOOZED"));
            }
            Some(status) => status,
        }),
        None if snoozed_until.is_some() => Some(IncidentStatus::Snoozed),
        None => None,
    };
    let status = match status {
        Some(IncidentStatus::Snoozed) => {
            let until = snoozed_until.ok_or_else(|| ApiError::validation("snoozedUntil", "is required to snooze"))?;
            if until <= jiff::Timestamp::now() {
                return Err(ApiError::validation("snoozedUntil", "must be in the future"));
            }
            Some(ManualChange::Snooze(until))
        }
        Some(IncidentStatus::Acknowledged) => Some(ManualChange::Acknowledge),
        Some(IncidentStatus::Resolved) => Some(ManualChange::Resolve),
        Some(_) => Some(ManualChange::Reopen),
        None => None,
    };
    let update = Update {
        status,
        urgency: urgency(at_most("urgency", body.urgency, 16)?)?,
        priority: priority(at_most("priority", body.priority, 2)?)?,
        assignee: body.assignee_id.map(|a| a.filter(|id| !id.is_empty())),
        note: at_most("note", body.note, 10_000)?.filter(|n| !n.trim().is_empty()),
    };
    change::update(&state.pool, &id, update, &principal.user_id).await?;
    Ok(Json(IncidentBody { incident: fetch(&state.pool, &id).await? }))
}
