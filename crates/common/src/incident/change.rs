//! Status changes made outside the event stream: by people (query-api's incidents service builds
//! on these) and by the workers' upkeep (ended snoozes and maintenance windows). A status change
//! takes the same per-key lock as workers applying events and is recorded in the key's event log
//! at the key's current stream position, so a re-fold replays it in its place.

use jiff::Timestamp;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::incident::state::{FoldAction, FoldEvent, IncidentState, IncidentStatus, KeyFold, ManualChange};
use crate::incident::store::{
    ChangeKind, ChangeRows, EventRows, INCIDENT_COLUMNS, IncidentRows, LoggedEvent, incident_from_row, lock_keys,
    snapshot,
};

/// Whether the incident is snoozed with its snooze over (it reads as `OPEN`).
pub fn snooze_ended(incident: &IncidentState) -> bool {
    incident.status == IncidentStatus::Snoozed && incident.snoozed_until.is_some_and(|u| u <= Timestamp::now())
}

/// The key's lock (the one workers take), then the incident's row: no lost updates either way.
/// Returns the key's stream position and the incident, or `None` if a re-fold merged the
/// incident away before the lock was had.
pub async fn lock_incident(
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

/// Applies a status change through the state machine, records it in the key's event log at the
/// key's current stream position, and in the change outbox.
pub async fn apply_status(
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
        in_maintenance: false,
    });
    let mut changes = ChangeRows::default();
    if let Some((kind, state)) = ChangeKind::of(outcome).zip(fold.incident(&target)) {
        changes.push(service_id, kind, at, &actor_of(actor), snapshot(service_id, dedup_key, state));
    }
    let mut rows = IncidentRows::default();
    for incident in fold.into_incidents() {
        let n = changes.count(&incident.id);
        rows.push(service_id, dedup_key, incident, n);
    }
    let versions = rows.upsert(tx).await?;
    changes.insert(tx, &versions).await?;
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

/// A change's actor as the change stream names it: `user:<id>`, or `system`.
pub(crate) fn actor_of(actor: &str) -> String {
    if actor == "system" { actor.to_owned() } else { format!("user:{actor}") }
}

/// Records a person's change to incident `id` that the state machine does not make (created by
/// hand, assigned, urgency or priority changed, note added) in the change outbox: the incident's
/// version rises by one and the change carries the incident as it is now in this transaction.
pub async fn record_change(tx: &mut PgConnection, id: &str, kind: ChangeKind, actor: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with bumped as (update incidents set version = version + 1 where id = $1 returning *)
         insert into incident_changes (id, incident_id, service_id, version, kind, at, actor, snapshot)
         select $2, b.id, b.service_id, b.version, $3, now(), $4,
                jsonb_build_object('id', b.id, 'serviceId', b.service_id, 'dedupKey', b.dedup_key, 'title', b.title,
                    'status', b.status, 'urgency', b.urgency, 'priority', b.priority, 'assigneeId', b.assignee_id,
                    'alertCount', b.alert_count, 'createdAt', b.created_at, 'updatedAt', b.updated_at,
                    'acknowledgedAt', b.acknowledged_at, 'resolvedAt', b.resolved_at,
                    'snoozedUntil', b.snoozed_until, 'version', b.version)::text
         from bumped b",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(kind.as_str())
    .bind(actor_of(actor))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
