//! Incidents in PostgreSQL: listing with filters, sort and paging (totals from the maintained
//! counts), detail with timeline and alerts, and people's changes, which take the same per-key
//! lock as workers applying events (`common::incident::change`).

use common::ApiError;
use common::event::Urgency;
use common::ids::new_id;
use common::incident::change::{apply_status, lock_incident, record_change, snooze_ended};
use common::incident::state::{IncidentStatus, ManualChange, Priority};
use common::incident::store::ChangeKind;
use common::incident::store::{optional_timestamp, timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::body::{
    Alert, Assignee, CreateIncident, DescribedIncident, Escalation, EscalationStatus, Incident, IncidentChange,
    IncidentDetail, IncidentList, IncidentQuery, LoggedEntry, NoteEntry, ServiceName, SortField, SortOrder,
    StatusChange, StoredPayload, TimelineEntry,
};
use crate::constraint::OnConstraint;
use crate::page::PageRequest;

/// An incident whose snooze has ended reads as `OPEN` at once, before the background task
/// stores it.
const SNOOZE_ENDED: &str = "(i.status = 'SNOOZED' and i.snoozed_until <= now())";

const SELECT: &str =
    "select i.id, i.title, i.description, i.status as stored_status, i.urgency, i.priority, i.dedup_key,
        i.service_id, s.name as service_name, i.assignee_id, u.name as assignee_name, u.email as assignee_email,
        i.alert_count, i.created_at, i.updated_at, i.acknowledged_at, i.resolved_at, i.snoozed_until,
        i.escalation_status, i.escalation_step, i.escalation_loop, i.escalation_firings, i.escalation_next_at,
        i.escalation_policy_id, i.escalation_policy_version,
        (case when i.status = 'SNOOZED' and i.snoozed_until <= now() then 'OPEN' else i.status end) as status";
const FROM: &str = " from incidents i join services s on s.id = i.service_id left join users u on u.id = i.assignee_id";

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
    let priority: Option<String> = row.try_get("priority")?;
    Ok(Incident {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        status,
        urgency: Urgency::parse(&urgency).unwrap_or(Urgency::High),
        priority: priority.and_then(|p| p.parse::<Priority>().ok()),
        dedup_key: row.try_get("dedup_key")?,
        service: ServiceName { id: row.try_get("service_id")?, name: row.try_get("service_name")? },
        assignee,
        alert_count: row.try_get("alert_count")?,
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
        acknowledged_at: optional_timestamp(row, "acknowledged_at")?.map(Into::into),
        resolved_at: optional_timestamp(row, "resolved_at")?.map(Into::into),
        snoozed_until: snoozed_until.map(Into::into),
        escalation: escalation_of(row)?,
    })
}

fn escalation_of(row: &PgRow) -> Result<Option<Escalation>, sqlx::Error> {
    let Some(status) = row.try_get::<Option<String>, _>("escalation_status")? else { return Ok(None) };
    let Some(policy_id) = row.try_get::<Option<String>, _>("escalation_policy_id")? else { return Ok(None) };
    let status = match status.as_str() {
        "ACTIVE" => EscalationStatus::Active,
        "COMPLETED" => EscalationStatus::Completed,
        _ => EscalationStatus::Stopped,
    };
    Ok(Some(Escalation {
        status,
        step: row.try_get::<i32, _>("escalation_step")? + 1,
        repeat_loop: row.try_get("escalation_loop")?,
        firings: row.try_get("escalation_firings")?,
        next_at: optional_timestamp(row, "escalation_next_at")?.map(Into::into),
        policy_id,
        policy_version: row.try_get::<Option<i32>, _>("escalation_policy_version")?.unwrap_or(1),
    }))
}

/// Fires the next step of `id`'s escalation now (DESIGN §11: `POST /api/incidents/{id}/escalate`):
/// its due time becomes now and the workers are woken. `409` unless it is escalating.
pub async fn escalate(pool: &PgPool, id: &str) -> Result<(), ApiError> {
    let state: Option<(String, Option<String>)> =
        sqlx::query_as("select status, escalation_status from incidents where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some((status, escalation)) = state else { return Err(ApiError::not_found(format!("incident {id}"))) };
    if escalation.as_deref() != Some("ACTIVE") {
        let why = match escalation {
            None => "its service has no escalation policy".to_owned(),
            Some(e) => format!("it is {status} and its escalation is {e}"),
        };
        return Err(ApiError::conflict(format!("incident {id} is not escalating: {why}")));
    }
    sqlx::query("update incidents set escalation_next_at = now() where id = $1 and escalation_status = 'ACTIVE'")
        .bind(id)
        .execute(pool)
        .await?;
    sqlx::query("select pg_notify($1, '')").bind(common::db::ESCALATION_WAKE_CHANNEL).execute(pool).await?;
    Ok(())
}

/// One incident with its description; `404` when missing.
pub async fn get(pool: &PgPool, id: &str) -> Result<DescribedIncident, ApiError> {
    let sql = format!("{SELECT}{FROM} where i.id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("incident {id}")))?;
    Ok(DescribedIncident { incident: incident_of(&row)?, description: row.try_get("description")? })
}

// ---------------------------------------------------------------------------------------------
// Listing

impl SortField {
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

/// The filters of a listing, as SQL values.
struct Filter {
    statuses: Option<Vec<String>>,
    urgencies: Option<Vec<String>>,
    service_id: Option<String>,
    assignee_id: Option<String>,
    created_after: Option<jiff::Timestamp>,
    created_before: Option<jiff::Timestamp>,
}

impl Filter {
    fn of(query: &IncidentQuery) -> Self {
        Self {
            statuses: query.status.as_ref().map(|s| s.0.iter().map(|s| s.as_str().to_owned()).collect()),
            urgencies: query.urgency.as_ref().map(|u| u.0.iter().map(|u| u.as_str().to_owned()).collect()),
            service_id: query.service_id.clone(),
            assignee_id: query.assignee_id.clone(),
            created_after: query.created_after.map(|t| t.0),
            created_before: query.created_before.map(|t| t.0),
        }
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
pub struct Cursor {
    s: String,
    o: String,
    v: String,
    id: String,
}

/// A page of incidents matching `query`, with the exact total from the same snapshot.
pub async fn list(pool: &PgPool, query: &IncidentQuery, page: &PageRequest<Cursor>) -> Result<IncidentList, ApiError> {
    let filter = Filter::of(query);
    let sort = query.sort.unwrap_or_default();
    let order = match query.order.unwrap_or_default() {
        SortOrder::Asc => "asc",
        SortOrder::Desc => "desc",
    };
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
        .push_bind(page.skip());
    // The page and its total from one snapshot, so they agree while incidents are being created.
    let mut snapshot = pool.begin_with("begin isolation level repeatable read read only").await?;
    let mut rows = query.build().fetch_all(&mut *snapshot).await?;
    let total = filter.total(&mut snapshot).await?;
    snapshot.commit().await?;

    let pagination = page.finish(&mut rows, |last| {
        Ok::<_, sqlx::Error>(Cursor {
            s: sort.name().into(),
            o: order.to_owned(),
            v: last.try_get("sort_value")?,
            id: last.try_get("id")?,
        })
    })?;
    let incidents = rows.iter().map(incident_of).collect::<Result<Vec<_>, _>>()?;
    Ok(IncidentList { incidents, total, pagination })
}

// ---------------------------------------------------------------------------------------------
// Detail

/// How many timeline entries and alerts the detail shows (newest first).
const DETAIL_ENTRIES: i64 = 100;

/// One incident with its timeline and alerts (newest first, at most 100 each); `404` when missing.
pub async fn detail(pool: &PgPool, id: &str) -> Result<IncidentDetail, ApiError> {
    let incident = get(pool, id).await?;
    let events = sqlx::query(
        "select event_id, action, outcome, received_at, actor_id, payload from events
         where incident_id = $1 order by received_at desc, seq desc limit $2",
    )
    .bind(id)
    .bind(DETAIL_ENTRIES)
    .fetch_all(pool)
    .await?;
    let notes = sqlx::query(
        "select kind, at, actor_id, message, data from incident_timeline where incident_id = $1 order by at desc, id desc limit $2",
    )
    .bind(id)
    .bind(DETAIL_ENTRIES)
    .fetch_all(pool)
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
    Ok(IncidentDetail { incident, timeline, alerts })
}
// ---------------------------------------------------------------------------------------------
// Changes by people

/// Opens an incident by hand on its own key; returns its id. An unknown service is a `400` on
/// `serviceId`.
pub async fn open(pool: &PgPool, new: &CreateIncident, actor: &str) -> Result<String, ApiError> {
    let id = new_id("inc");
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into incidents (id, service_id, dedup_key, title, description, status, urgency, priority, alert_count,
                                created_at, updated_at, escalation_policy_id, escalation_policy_version,
                                escalation_status, escalation_next_at)
         select $1, $2, $3, $4, $5, 'OPEN', $6, $7, 0, now(), now(), p.id, p.version,
                case when p.id is not null then 'ACTIVE' end, case when p.id is not null then now() end
         from (select $2::text as service_id) s
         left join services sv on sv.id = s.service_id left join escalation_policies p on p.id = sv.escalation_policy_id",
    )
    .bind(&id)
    .bind(new.service_id.as_str())
    .bind(format!("manual-{}", Uuid::now_v7().simple()))
    .bind(new.title.as_str())
    .bind(new.description.as_ref().map(|d| d.as_str()))
    .bind(new.urgency.unwrap_or(Urgency::High).as_str())
    .bind(new.priority.map(Priority::as_str))
    .execute(&mut *tx)
    .await
    .on_constraint(|name| {
        (name == "incidents_service_id_fkey")
            .then(|| ApiError::validation("serviceId", format!("no service {}", new.service_id)))
    })?;
    sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, message) values ($1, 'created', $2, 'created by hand')")
        .bind(&id)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
    record_change(&mut tx, &id, ChangeKind::Triggered, actor).await?;
    tx.commit().await?;
    Ok(id)
}

/// What a person asked for, checked against each other: a snooze needs a future end.
fn status_change(change: &IncidentChange) -> Result<Option<ManualChange>, ApiError> {
    let status = match (change.status, change.snoozed_until) {
        (None, Some(_)) => Some(StatusChange::Snoozed),
        (status, _) => status,
    };
    Ok(match status {
        Some(StatusChange::Snoozed) => {
            let until =
                change.snoozed_until.ok_or_else(|| ApiError::validation("snoozedUntil", "is required to snooze"))?;
            if until.0 <= jiff::Timestamp::now() {
                return Err(ApiError::validation("snoozedUntil", "must be in the future"));
            }
            Some(ManualChange::Snooze(until.0))
        }
        Some(StatusChange::Acknowledged) => Some(ManualChange::Acknowledge),
        Some(StatusChange::Resolved) => Some(ManualChange::Resolve),
        Some(StatusChange::Open) => Some(ManualChange::Reopen),
        None => None,
    })
}

/// Applies a person's change to incident `id` in one transaction: `404` for an unknown incident,
/// `409` for an impossible transition, `400` on `assigneeId` for an unknown user.
pub async fn update(pool: &PgPool, id: &str, change: &IncidentChange, actor: &str) -> Result<(), ApiError> {
    let status = status_change(change)?;
    let mut tx = pool.begin().await?;
    let key: Option<(String, String)> = sqlx::query_as("select service_id, dedup_key from incidents where id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let gone = || ApiError::not_found(format!("incident {id}"));
    let (service_id, dedup_key) = key.ok_or_else(gone)?;
    // Every change takes the key's lock first, as workers do: a re-fold of the key (which may
    // merge this incident into another) runs wholly before or after it, never in between.
    let Some((position, mut incident)) = lock_incident(&mut tx, &service_id, &dedup_key, id).await? else {
        let merged: Option<String> = sqlx::query_scalar(
            "select incident_id from incident_timeline where kind = 'merged' and data->>'mergedIncidentId' = $1 limit 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        return Err(match merged {
            Some(into) => {
                ApiError::not_found(format!("incident {id} (merged into {into} when a late alert re-ordered its key)"))
            }
            None => gone(),
        });
    };
    if let Some(change) = status {
        if snooze_ended(&incident) {
            incident.status = IncidentStatus::Open;
        }
        check_transition(incident.status, change)?;
        apply_status(&mut tx, &service_id, &dedup_key, position, incident, change, actor).await?;
    }
    if let Some(urgency) = change.urgency {
        set_field(&mut tx, id, "urgency", Some(urgency.as_str())).await?;
        log_change(&mut tx, id, actor, json!({"urgency": urgency.as_str()})).await?;
        record_change(&mut tx, id, ChangeKind::UrgencyChanged, actor).await?;
    }
    if let Some(priority) = change.priority {
        set_field(&mut tx, id, "priority", Some(priority.as_str())).await?;
        log_change(&mut tx, id, actor, json!({"priority": priority.as_str()})).await?;
        record_change(&mut tx, id, ChangeKind::PriorityChanged, actor).await?;
    }
    if let Some(assignee) = &change.assignee_id {
        let assignee = assignee.as_ref().map(|a| a.as_str()).filter(|a| !a.is_empty());
        set_field(&mut tx, id, "assignee_id", assignee).await.on_constraint(|name| {
            (name == "incidents_assignee_id_fkey")
                .then(|| ApiError::validation("assigneeId", format!("no user {}", assignee.unwrap_or_default())))
        })?;
        log_change(&mut tx, id, actor, json!({"assigneeId": assignee})).await?;
        record_change(&mut tx, id, ChangeKind::Assigned, actor).await?;
    }
    if let Some(note) = change.note.as_ref().map(|n| n.as_str()).filter(|n| !n.is_empty()) {
        sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, message) values ($1, 'note', $2, $3)")
            .bind(id)
            .bind(actor)
            .bind(note)
            .execute(&mut *tx)
            .await?;
        record_change(&mut tx, id, ChangeKind::NoteAdded, actor).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn check_transition(from: IncidentStatus, change: ManualChange) -> Result<(), ApiError> {
    match (from, change) {
        (IncidentStatus::Resolved, _) => {
            Err(ApiError::conflict("the incident is resolved; a new trigger opens a new incident"))
        }
        (IncidentStatus::Open, ManualChange::Reopen) => Err(ApiError::conflict("the incident is already open")),
        _ => Ok(()),
    }
}

/// Sets one column a person may change; `column` is one of ours, never the client's.
async fn set_field(tx: &mut PgConnection, id: &str, column: &str, value: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("update incidents set {column} = $2, updated_at = now() where id = $1"))
        .bind(id)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn log_change(tx: &mut PgConnection, id: &str, actor: &str, data: Value) -> Result<(), sqlx::Error> {
    sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, data) values ($1, 'change', $2, $3)")
        .bind(id)
        .bind(actor)
        .bind(sqlx::types::Json(data))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
