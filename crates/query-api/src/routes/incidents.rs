//! Incidents (DESIGN §5): list with filters, sort and paging; detail with timeline and alerts;
//! create; and manual changes, which take the same per-key lock as workers applying events.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::auth::{Principal, Scope};
use common::event::Urgency;
use common::fold::{FoldAction, FoldEvent, IncidentStatus, KeyFold, ManualChange};
use common::http::{ApiJson, ApiPath};
use common::ids::new_id;
use common::store::{INCIDENT_COLUMNS, IncidentRows, incident_from_row, lock_keys, optional_timestamp, timestamp};
use common::{ApiError, ErrorCode};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Refusals;
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

fn ts(value: Option<Timestamp>) -> Value {
    value.map_or(Value::Null, |t| json!(t.to_string()))
}

fn incident_json(row: &PgRow, with_description: bool) -> Result<Value, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let assignee = match row.try_get::<Option<String>, _>("assignee_id")? {
        Some(id) => json!({"id": id, "name": row.try_get::<Option<String>, _>("assignee_name")?,
                           "email": row.try_get::<Option<String>, _>("assignee_email")?}),
        None => Value::Null,
    };
    let snoozed_until = if status == "SNOOZED" { optional_timestamp(row, "snoozed_until")? } else { None };
    let mut incident = json!({
        "id": row.try_get::<String, _>("id")?,
        "title": row.try_get::<String, _>("title")?,
        "status": status,
        "urgency": row.try_get::<String, _>("urgency")?,
        "priority": row.try_get::<Option<String>, _>("priority")?,
        "dedupKey": row.try_get::<String, _>("dedup_key")?,
        "service": {"id": row.try_get::<String, _>("service_id")?, "name": row.try_get::<String, _>("service_name")?},
        "assignee": assignee,
        "alertCount": row.try_get::<i32, _>("alert_count")?,
        "createdAt": timestamp(row, "created_at")?.to_string(),
        "updatedAt": timestamp(row, "updated_at")?.to_string(),
        "acknowledgedAt": ts(optional_timestamp(row, "acknowledged_at")?),
        "resolvedAt": ts(optional_timestamp(row, "resolved_at")?),
        "snoozedUntil": ts(snoozed_until),
    });
    if with_description {
        incident["description"] = json!(row.try_get::<Option<String>, _>("description")?);
    }
    Ok(incident)
}

async fn fetch(pool: &PgPool, id: &str) -> Result<Value, ApiError> {
    let sql = format!("{SELECT}{FROM} where i.id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("incident {id}")))?;
    Ok(incident_json(&row, true)?)
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
    created_after: Option<Timestamp>,
    created_before: Option<Timestamp>,
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

/// Folds the pending count deltas into the counts, in one statement (so any reader sees either
/// the deltas or their sum, never both or neither).
pub async fn fold_count_deltas(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "with moved as (delete from incident_count_deltas returning service_id, status, urgency, n)
         insert into incident_counts (service_id, status, urgency, n)
         select service_id, status, urgency, sum(n) from moved group by 1, 2, 3 order by 1, 2, 3
         on conflict (service_id, status, urgency) do update set n = incident_counts.n + excluded.n",
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Where the previous page ended: the sort value and id of its last incident.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    s: String,
    o: String,
    v: String,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(value: &str, sort: Sort, order: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::validation("cursor", "is not a cursor from this listing");
        let cursor: Self = hex::decode(value).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(invalid)?;
        if cursor.s != sort.name() || cursor.o != order {
            return Err(ApiError::validation("cursor", "was made for another sort or order"));
        }
        Ok(cursor)
    }
}

/// List incidents, newest first by default.
#[utoipa::path(get, path = "/api/incidents", tag = "incidents",
    params(
        ("status" = Option<String>, Query, description = "Comma list of OPEN, ACKNOWLEDGED, RESOLVED, SNOOZED, SUPPRESSED (case-insensitive; triggered = OPEN)"),
        ("urgency" = Option<String>, Query, description = "Comma list of HIGH, MEDIUM, LOW"),
        ("serviceId" = Option<String>, Query, description = "Only this service (also service_id)"),
        ("assigneeId" = Option<String>, Query, description = "Only this assignee (also assignee_id)"),
        ("created_after" = Option<String>, Query, description = "RFC 3339"),
        ("created_before" = Option<String>, Query, description = "RFC 3339"),
        ("sort" = Option<String>, Query, description = "created_at | updated_at | urgency | status"),
        ("order" = Option<String>, Query, description = "asc | desc (default)"),
        ("limit" = Option<i64>, Query, description = "1 to 200, default 50"),
        ("offset" = Option<i64>, Query, description = "Rows to skip"),
        ("cursor" = Option<String>, Query, description = "pagination.nextCursor of the previous page"),
    ),
    responses((status = 200, description = "A page of incidents with the exact total"), (status = 400, description = "A bad parameter, named in the error"), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
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
    let limit = params.integer("limit", 50, 1, 200)?;
    let offset = params.integer("offset", 0, 0, i64::MAX)?;
    let cursor = params.get(&["cursor"]).map(|(_, v)| Cursor::decode(v, sort, &order)).transpose()?;
    if cursor.is_some() && offset > 0 {
        return Err(ApiError::validation("offset", "cannot be combined with cursor"));
    }

    let mut query =
        QueryBuilder::new(format!("{SELECT}, ({})::text as sort_value{FROM} where true", sort.expression()));
    filter.push(&mut query);
    if let Some(cursor) = &cursor {
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
        .push_bind(limit + 1)
        .push(" offset ")
        .push_bind(offset);
    // The page and its total from one snapshot, so they agree while incidents are being created.
    let mut snapshot = state.pool.begin_with("begin isolation level repeatable read read only").await?;
    let rows = query.build().fetch_all(&mut *snapshot).await?;
    let total = filter.total(&mut snapshot).await?;
    snapshot.commit().await?;

    let has_more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next_cursor = match page.last() {
        Some(last) if has_more => Some(
            Cursor { s: sort.name().into(), o: order.clone(), v: last.try_get("sort_value")?, id: last.try_get("id")? }
                .encode(),
        ),
        _ => None,
    };
    let incidents = page.iter().map(|row| incident_json(row, false)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({
        "incidents": incidents,
        "total": total,
        "pagination": {"limit": limit, "offset": offset, "hasMore": has_more, "nextCursor": next_cursor},
    })))
}

// ---------------------------------------------------------------------------------------------
// Detail

/// How many timeline entries and alerts the detail shows (newest first).
const DETAIL_ENTRIES: i64 = 100;

/// One incident with its timeline and alerts (newest first, at most 100 each).
#[utoipa::path(get, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, description = "The incident"), (status = 404, description = "No such incident"), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::IncidentsRead)?;
    let mut incident = fetch(&state.pool, &id).await?;
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

    let mut timeline: Vec<(Timestamp, Value)> = Vec::new();
    let mut alerts = Vec::new();
    for row in &events {
        let at = timestamp(row, "received_at")?;
        let action: String = row.try_get("action")?;
        let actor: Option<String> = row.try_get("actor_id")?;
        let payload: Option<Value> = row.try_get::<Option<sqlx::types::Json<Value>>, _>("payload")?.map(|j| j.0);
        let event_id: Uuid = row.try_get("event_id")?;
        timeline.push((
            at,
            json!({"type": if actor.is_some() { "change" } else { "event" }, "at": at.to_string(), "action": action,
                   "outcome": row.try_get::<String, _>("outcome")?, "actor": actor, "eventId": event_id,
                   "summary": payload.as_ref().and_then(|p| p.get("summary")).cloned()}),
        ));
        if action == "trigger" && actor.is_none() {
            let payload = payload.unwrap_or(Value::Null);
            alerts.push(json!({
                "eventId": event_id, "receivedAt": at.to_string(), "summary": payload.get("summary"),
                "source": payload.get("source"), "severity": payload.get("severity"),
                "component": payload.get("component"), "group": payload.get("group"), "class": payload.get("class"),
                "customDetails": payload.get("custom_details"),
            }));
        }
    }
    for row in &notes {
        let at = timestamp(row, "at")?;
        timeline.push((
            at,
            json!({"type": row.try_get::<String, _>("kind")?, "at": at.to_string(),
                   "actor": row.try_get::<Option<String>, _>("actor_id")?,
                   "message": row.try_get::<Option<String>, _>("message")?,
                   "data": row.try_get::<Option<sqlx::types::Json<Value>>, _>("data")?.map(|j| j.0)}),
        ));
    }
    timeline.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    timeline.truncate(DETAIL_ENTRIES as usize);
    incident["timeline"] = Value::Array(timeline.into_iter().map(|(_, v)| v).collect());
    incident["alerts"] = Value::Array(alerts);
    Ok(Json(json!({ "incident": incident })))
}

// ---------------------------------------------------------------------------------------------
// Create and update

fn text(body: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(ApiError::validation(field, format!("must be at most {max} characters")))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(field, "must be a string")),
    }
}

fn urgency(body: &Map<String, Value>) -> Result<Option<Urgency>, ApiError> {
    text(body, "urgency", 16)?
        .map(|u| Urgency::parse(&u).ok_or_else(|| ApiError::validation("urgency", "must be HIGH, MEDIUM or LOW")))
        .transpose()
}

fn priority(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    text(body, "priority", 2)
        .map_err(|_| ApiError::validation("priority", "must be P1, P2, P3, P4 or P5"))?
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

fn reject_unknown(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(ApiError::validation(field, "is not a known field")),
        None => Ok(()),
    }
}

/// Open an incident by hand: `title`, `serviceId`; optional `description`, `urgency`, `priority`.
#[utoipa::path(post, path = "/api/incidents", tag = "incidents",
    request_body(content = Object, description = "title, serviceId, description?, urgency?, priority?"),
    responses((status = 201, description = "The new incident"), (status = 400, description = "A bad field, named in the error"), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    reject_unknown(&body, &["title", "serviceId", "description", "urgency", "priority"])?;
    let title = text(&body, "title", 1024)?.filter(|t| !t.trim().is_empty());
    let title = title.ok_or_else(|| ApiError::validation("title", "is required"))?;
    let service_id = text(&body, "serviceId", 64)?.ok_or_else(|| ApiError::validation("serviceId", "is required"))?;
    let description = text(&body, "description", 65_536)?;
    let urgency = urgency(&body)?.unwrap_or(Urgency::High);
    let priority = priority(&body)?;
    let id = new_id("inc");
    let mut tx = state.pool.begin().await?;
    let inserted = sqlx::query(
        "insert into incidents (id, service_id, dedup_key, title, description, status, urgency, priority, alert_count,
                                created_at, updated_at)
         select $1, s.id, $3, $4, $5, 'OPEN', $6, $7, 0, now(), now() from services s where s.id = $2",
    )
    .bind(&id)
    .bind(&service_id)
    .bind(format!("manual-{}", Uuid::now_v7().simple()))
    .bind(title.trim())
    .bind(&description)
    .bind(urgency.as_str())
    .bind(&priority)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::validation("serviceId", format!("no service {service_id}")));
    }
    sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, message) values ($1, 'created', $2, 'created by hand')")
        .bind(&id)
        .bind(&principal.user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "incident": fetch(&state.pool, &id).await? }))))
}

/// Change status (incl. SNOOZED with snoozedUntil), urgency, priority, assignee, or add a note.
#[utoipa::path(patch, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    request_body(content = Object, description = "status?, snoozedUntil?, urgency?, priority?, assigneeId?, note?"),
    responses((status = 200, description = "The updated incident"), (status = 400, description = "A bad field, named in the error"),
              (status = 404, description = "No such incident"), (status = 409, description = "Impossible transition"), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn update(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    reject_unknown(&body, &["status", "snoozedUntil", "urgency", "priority", "assigneeId", "note"])?;
    let snoozed_until = text(&body, "snoozedUntil", 64)?
        .map(|t| {
            t.parse::<Timestamp>().map_err(|_| ApiError::validation("snoozedUntil", "must be an RFC 3339 timestamp"))
        })
        .transpose()?;
    let status = match text(&body, "status", 16)? {
        Some(s) => Some(match IncidentStatus::parse(&s) {
            Some(IncidentStatus::Suppressed) | None => {
                return Err(ApiError::validation("status", "must be OPEN, ACKNOWLEDGED, RESOLVED or SNOOZED"));
            }
            Some(status) => status,
        }),
        None if snoozed_until.is_some() => Some(IncidentStatus::Snoozed),
        None => None,
    };
    let change = match status {
        Some(IncidentStatus::Snoozed) => {
            let until = snoozed_until.ok_or_else(|| ApiError::validation("snoozedUntil", "is required to snooze"))?;
            if until <= Timestamp::now() {
                return Err(ApiError::validation("snoozedUntil", "must be in the future"));
            }
            Some(ManualChange::Snooze(until))
        }
        Some(IncidentStatus::Acknowledged) => Some(ManualChange::Acknowledge),
        Some(IncidentStatus::Resolved) => Some(ManualChange::Resolve),
        Some(_) => Some(ManualChange::Reopen),
        None => None,
    };
    let urgency = urgency(&body)?;
    let priority = priority(&body)?;
    let assignee = match body.get("assigneeId") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) if s.is_empty() => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => {
            return Err(ApiError::validation("assigneeId", "must be a user id, null or \"\""));
        }
    };
    let note = text(&body, "note", 10_000)?.filter(|n| !n.trim().is_empty());

    let mut tx = state.pool.begin().await?;
    let key: Option<(String, String)> = sqlx::query_as("select service_id, dedup_key from incidents where id = $1")
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
    let (service_id, dedup_key) = key.ok_or_else(|| ApiError::not_found(format!("incident {id}")))?;
    if let Some(change) = change {
        // The same lock workers take for this key, then the incident: no lost updates either way.
        let locked = lock_keys(&mut tx, &[service_id.as_str()], &[dedup_key.as_str()], &[0]).await?;
        let position = locked.first().map_or(0, |(_, _, seq)| *seq);
        let sql = format!("select {INCIDENT_COLUMNS} from incidents i where i.id = $1 for update");
        let row = sqlx::query(&sql).bind(&id).fetch_one(&mut *tx).await?;
        let mut incident = incident_from_row(&row)?;
        if incident.status == IncidentStatus::Snoozed && incident.snoozed_until.is_some_and(|u| u <= Timestamp::now()) {
            incident.status = IncidentStatus::Open;
        }
        check_transition(incident.status, change)?;
        apply_manual(&mut tx, &service_id, &dedup_key, position, incident, change, &principal.user_id).await?;
    }
    if let Some(urgency) = urgency {
        sqlx::query("update incidents set urgency = $2, updated_at = now() where id = $1")
            .bind(&id)
            .bind(urgency.as_str())
            .execute(&mut *tx)
            .await?;
        log_change(&mut tx, &id, &principal.user_id, json!({"urgency": urgency.as_str()})).await?;
    }
    if let Some(priority) = priority {
        sqlx::query("update incidents set priority = $2, updated_at = now() where id = $1")
            .bind(&id)
            .bind(&priority)
            .execute(&mut *tx)
            .await?;
        log_change(&mut tx, &id, &principal.user_id, json!({"priority": priority})).await?;
    }
    if let Some(assignee) = assignee {
        if let Some(user) = &assignee {
            let exists: Option<String> =
                sqlx::query_scalar("select id from users where id = $1").bind(user).fetch_optional(&mut *tx).await?;
            if exists.is_none() {
                return Err(ApiError::validation("assigneeId", format!("no user {user}")));
            }
        }
        sqlx::query("update incidents set assignee_id = $2, updated_at = now() where id = $1")
            .bind(&id)
            .bind(&assignee)
            .execute(&mut *tx)
            .await?;
        log_change(&mut tx, &id, &principal.user_id, json!({"assigneeId": assignee})).await?;
    }
    if let Some(note) = note {
        sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, message) values ($1, 'note', $2, $3)")
            .bind(&id)
            .bind(&principal.user_id)
            .bind(note.trim())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "incident": fetch(&state.pool, &id).await? })))
}

fn check_transition(from: IncidentStatus, change: ManualChange) -> Result<(), ApiError> {
    let conflict = |why: &str| Err(ApiError::new(ErrorCode::Conflict, why.to_owned()));
    match (from, change) {
        (IncidentStatus::Resolved, _) => conflict("the incident is resolved; a new trigger opens a new incident"),
        (IncidentStatus::Open, ManualChange::Reopen) => conflict("the incident is already open"),
        _ => Ok(()),
    }
}

/// Applies a person's status change through the incident state machine and records it in the
/// key's event log at the key's current stream position.
pub async fn apply_manual(
    tx: &mut sqlx::PgConnection,
    service_id: &str,
    dedup_key: &str,
    position: i64,
    incident: common::fold::IncidentState,
    change: ManualChange,
    actor: &str,
) -> Result<(), ApiError> {
    let now = Timestamp::now();
    let at = now.round(jiff::Unit::Microsecond).unwrap_or(now);
    let event_id = Uuid::now_v7();
    let target = incident.id.clone();
    let mut fold = KeyFold::new(Some(incident));
    let (outcome, _) = fold.apply(&FoldEvent {
        event_id,
        seq: position,
        action: FoldAction::Manual { incident_id: &target, change },
        received_at: at,
    });
    let mut rows = IncidentRows::default();
    for incident in fold.into_incidents() {
        rows.push(service_id, dedup_key, incident);
    }
    rows.upsert(tx).await?;
    let payload = match change {
        ManualChange::Snooze(until) => Some(json!({"until": until.to_string()}).to_string()),
        _ => None,
    };
    sqlx::query(
        "insert into events (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome, incident_id, actor_id)
         values ($1, $2, $3, $4, $5, $6::jsonb, $7::timestamptz, $8, $9, $10)",
    )
    .bind(event_id)
    .bind(position)
    .bind(service_id)
    .bind(dedup_key)
    .bind(change.action())
    .bind(payload)
    .bind(at.to_string())
    .bind(outcome.as_str())
    .bind(&target)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn log_change(tx: &mut sqlx::PgConnection, id: &str, actor: &str, data: Value) -> Result<(), sqlx::Error> {
    sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, data) values ($1, 'change', $2, $3)")
        .bind(id)
        .bind(actor)
        .bind(sqlx::types::Json(data))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Returns incidents whose snooze ended to `OPEN` (a system change in their key's log).
/// Returns how many were reopened.
pub async fn reopen_due_snoozes(pool: &PgPool) -> Result<usize, ApiError> {
    let due: Vec<(String, String, String)> = sqlx::query_as(
        "select id, service_id, dedup_key from incidents where status = 'SNOOZED' and snoozed_until <= now() limit 100",
    )
    .fetch_all(pool)
    .await?;
    let mut reopened = 0;
    for (id, service_id, dedup_key) in due {
        let mut tx = pool.begin().await?;
        let locked = lock_keys(&mut tx, &[service_id.as_str()], &[dedup_key.as_str()], &[0]).await?;
        let position = locked.first().map_or(0, |(_, _, seq)| *seq);
        let sql = format!("select {INCIDENT_COLUMNS} from incidents i where i.id = $1 for update");
        let incident = incident_from_row(&sqlx::query(&sql).bind(&id).fetch_one(&mut *tx).await?)?;
        if incident.status == IncidentStatus::Snoozed && incident.snoozed_until.is_some_and(|u| u <= Timestamp::now()) {
            apply_manual(&mut tx, &service_id, &dedup_key, position, incident, ManualChange::Reopen, "system").await?;
            reopened += 1;
        }
        tx.commit().await?;
    }
    Ok(reopened)
}
