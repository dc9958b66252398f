//! Changes made by people (through the API or CLI) and by upkeep. A status change takes the same
//! per-key lock as workers applying events and is recorded in the key's event log at the key's
//! current stream position, so a re-fold replays it in its place.

use jiff::Timestamp;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::event::Urgency;
use crate::ids::new_id;
use crate::incident::state::{FoldAction, FoldEvent, IncidentState, IncidentStatus, KeyFold, ManualChange};
use crate::incident::store::{EventRows, INCIDENT_COLUMNS, IncidentRows, LoggedEvent, incident_from_row, lock_keys};
use crate::{ApiError, ErrorCode};

/// An incident opened by hand.
pub struct NewIncident {
    pub service_id: String,
    pub title: String,
    pub description: Option<String>,
    pub urgency: Urgency,
    pub priority: Option<String>,
}

/// Opens an incident by hand on its own key; returns its id. An unknown service is a `400` on
/// `serviceId`.
pub async fn open(pool: &PgPool, new: &NewIncident, actor: &str) -> Result<String, ApiError> {
    let id = new_id("inc");
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "insert into incidents (id, service_id, dedup_key, title, description, status, urgency, priority, alert_count,
                                created_at, updated_at)
         select $1, s.id, $3, $4, $5, 'OPEN', $6, $7, 0, now(), now() from services s where s.id = $2",
    )
    .bind(&id)
    .bind(&new.service_id)
    .bind(format!("manual-{}", Uuid::now_v7().simple()))
    .bind(new.title.trim())
    .bind(&new.description)
    .bind(new.urgency.as_str())
    .bind(&new.priority)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::validation("serviceId", format!("no service {}", new.service_id)));
    }
    sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, message) values ($1, 'created', $2, 'created by hand')")
        .bind(&id)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// What a person changes on an incident; absent parts stay as they are.
#[derive(Default)]
pub struct Update {
    pub status: Option<ManualChange>,
    pub urgency: Option<Urgency>,
    pub priority: Option<String>,
    /// `Some(None)` unassigns.
    pub assignee: Option<Option<String>>,
    pub note: Option<String>,
}

/// Applies `update` to incident `id` in one transaction: `404` for an unknown incident, `409` for
/// an impossible transition, `400` on `assigneeId` for an unknown user.
pub async fn update(pool: &PgPool, id: &str, update: Update, actor: &str) -> Result<(), ApiError> {
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
    if let Some(change) = update.status {
        if snooze_ended(&incident) {
            incident.status = IncidentStatus::Open;
        }
        check_transition(incident.status, change)?;
        apply_status(&mut tx, &service_id, &dedup_key, position, incident, change, actor).await?;
    }
    if let Some(urgency) = update.urgency {
        set_field(&mut tx, id, "urgency", Some(urgency.as_str().to_owned())).await?;
        log_change(&mut tx, id, actor, json!({"urgency": urgency.as_str()})).await?;
    }
    if let Some(priority) = update.priority {
        set_field(&mut tx, id, "priority", Some(priority.clone())).await?;
        log_change(&mut tx, id, actor, json!({"priority": priority})).await?;
    }
    if let Some(assignee) = update.assignee {
        if let Some(user) = &assignee {
            let exists: Option<String> =
                sqlx::query_scalar("select id from users where id = $1").bind(user).fetch_optional(&mut *tx).await?;
            if exists.is_none() {
                return Err(ApiError::validation("assigneeId", format!("no user {user}")));
            }
        }
        set_field(&mut tx, id, "assignee_id", assignee.clone()).await?;
        log_change(&mut tx, id, actor, json!({"assigneeId": assignee})).await?;
    }
    if let Some(note) = update.note {
        sqlx::query("insert into incident_timeline (incident_id, kind, actor_id, message) values ($1, 'note', $2, $3)")
            .bind(id)
            .bind(actor)
            .bind(note.trim())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Returns incidents whose snooze ended to `OPEN` (a system change in their key's log), at most
/// 100 per call; returns how many were reopened.
pub async fn reopen_due_snoozes(pool: &PgPool) -> Result<usize, ApiError> {
    let due: Vec<(String, String, String)> = sqlx::query_as(
        "select id, service_id, dedup_key from incidents where status = 'SNOOZED' and snoozed_until <= now() limit 100",
    )
    .fetch_all(pool)
    .await?;
    let mut reopened = 0;
    for (id, service_id, dedup_key) in due {
        let mut tx = pool.begin().await?;
        let Some((position, incident)) = lock_incident(&mut tx, &service_id, &dedup_key, &id).await? else {
            continue;
        };
        if incident.status == IncidentStatus::Snoozed && snooze_ended(&incident) {
            apply_status(&mut tx, &service_id, &dedup_key, position, incident, ManualChange::Reopen, "system").await?;
            reopened += 1;
        }
        tx.commit().await?;
    }
    Ok(reopened)
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

fn snooze_ended(incident: &IncidentState) -> bool {
    incident.status == IncidentStatus::Snoozed && incident.snoozed_until.is_some_and(|u| u <= Timestamp::now())
}

/// The key's lock (the one workers take), then the incident's row: no lost updates either way.
/// Returns the key's stream position and the incident, or `None` if a re-fold merged the
/// incident away before the lock was had.
async fn lock_incident(
    tx: &mut PgConnection,
    service_id: &str,
    dedup_key: &str,
    id: &str,
) -> Result<Option<(i64, IncidentState)>, sqlx::Error> {
    let locked = lock_keys(tx, &[service_id], &[dedup_key], &[0]).await?;
    let position = locked.first().map_or(0, |(_, _, seq)| *seq);
    let sql = format!("select {INCIDENT_COLUMNS} from incidents i where i.id = $1 for update");
    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await? else { return Ok(None) };
    Ok(Some((position, incident_from_row(&row)?)))
}

fn check_transition(from: IncidentStatus, change: ManualChange) -> Result<(), ApiError> {
    let conflict = |why: &str| Err(ApiError::new(ErrorCode::Conflict, why.to_owned()));
    match (from, change) {
        (IncidentStatus::Resolved, _) => conflict("the incident is resolved; a new trigger opens a new incident"),
        (IncidentStatus::Open, ManualChange::Reopen) => conflict("the incident is already open"),
        _ => Ok(()),
    }
}

/// Applies a status change through the state machine and records it in the key's event log at
/// the key's current stream position.
async fn apply_status(
    tx: &mut PgConnection,
    service_id: &str,
    dedup_key: &str,
    position: i64,
    incident: IncidentState,
    change: ManualChange,
    actor: &str,
) -> Result<(), sqlx::Error> {
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
    let mut log = EventRows::default();
    log.push(
        service_id,
        dedup_key,
        LoggedEvent {
            event_id,
            seq: position,
            action: change.action(),
            payload: match change {
                ManualChange::Snooze(until) => Some(json!({"until": until.to_string()}).to_string()),
                _ => None,
            },
            received_at: at,
            outcome,
            incident_id: Some(target),
            actor: Some(actor.to_owned()),
        },
    );
    log.insert(tx).await
}

/// Sets one column a person may change; `column` is one of ours, never the client's.
async fn set_field(tx: &mut PgConnection, id: &str, column: &str, value: Option<String>) -> Result<(), sqlx::Error> {
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
