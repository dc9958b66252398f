//! PostgreSQL side of the incident write path, shared by workers (applying events) and people
//! (manual changes): the per-key lock both take, reading an incident's event-derived state, and the
//! one column-wise writer each for incidents, the event log and the change outbox.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::event::Urgency;
use crate::incident::state::{IncidentState, IncidentStatus, Outcome};

/// Columns [`incident_from_row`] reads, for a table aliased `i`.
pub const INCIDENT_COLUMNS: &str = "i.id, i.service_id, i.dedup_key, i.title, i.description, i.status, i.urgency, \
     i.alert_count, i.opened_seq, i.created_at, i.updated_at, i.acknowledged_at, i.resolved_at, i.snoozed_until";

/// Locks the keys' rows (creating missing ones) in one statement, in the order given (callers
/// pass keys sorted bytewise, so concurrent lockers never deadlock), and raises each key's last
/// applied stream sequence to `newest` (0 leaves it). Returns each key's last applied sequence as
/// it was before. Index lookups only, whatever the table's size; a HOT update per key.
pub async fn lock_keys(
    tx: &mut PgConnection,
    services: &[&str],
    keys: &[&str],
    newest: &[i64],
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "insert into alert_keys as a (service_id, dedup_key, last_seq)
         select s, k, n from unnest($1::text[], $2::text[], $3::int8[]) with ordinality as t(s, k, n, o) order by o
         on conflict (service_id, dedup_key) do update
           set prev_seq = a.last_seq, last_seq = greatest(a.last_seq, excluded.last_seq)
         returning a.service_id, a.dedup_key, a.prev_seq",
    )
    .bind(services)
    .bind(keys)
    .bind(newest)
    .fetch_all(&mut *tx)
    .await
}

pub fn incident_from_row(row: &PgRow) -> Result<IncidentState, sqlx::Error> {
    let decode = |column: &str| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unexpected {column}").into(),
    };
    let status: String = row.try_get("status")?;
    let urgency: String = row.try_get("urgency")?;
    Ok(IncidentState {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        status: IncidentStatus::parse(&status).ok_or_else(|| decode("status"))?,
        urgency: Urgency::parse(&urgency).ok_or_else(|| decode("urgency"))?,
        alert_count: row.try_get("alert_count")?,
        opened_seq: row.try_get("opened_seq")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
        acknowledged_at: optional_timestamp(row, "acknowledged_at")?,
        resolved_at: optional_timestamp(row, "resolved_at")?,
        snoozed_until: optional_timestamp(row, "snoozed_until")?,
    })
}

pub fn timestamp(row: &PgRow, column: &str) -> Result<Timestamp, sqlx::Error> {
    Ok(row.try_get::<jiff_sqlx::Timestamp, _>(column)?.to_jiff())
}

pub fn optional_timestamp(row: &PgRow, column: &str) -> Result<Option<Timestamp>, sqlx::Error> {
    Ok(row.try_get::<Option<jiff_sqlx::Timestamp>, _>(column)?.map(|t| t.to_jiff()))
}

/// Incidents written column-wise with one statement. An existing incident keeps what people may
/// have set (title, description, urgency, priority, assignee); the event-derived state is replaced.
#[derive(Default)]
pub struct IncidentRows {
    id: Vec<String>,
    service_id: Vec<String>,
    dedup_key: Vec<String>,
    title: Vec<String>,
    description: Vec<Option<String>>,
    status: Vec<&'static str>,
    urgency: Vec<&'static str>,
    alert_count: Vec<i32>,
    opened_seq: Vec<Option<i64>>,
    created_at: Vec<String>,
    updated_at: Vec<String>,
    acknowledged_at: Vec<Option<String>>,
    resolved_at: Vec<Option<String>>,
    snoozed_until: Vec<Option<String>>,
    changes: Vec<i64>,
}

impl IncidentRows {
    /// An incident to write, with how many outbox changes this write records for it (its
    /// version rises by that many).
    pub fn push(&mut self, service_id: &str, dedup_key: &str, incident: IncidentState, changes: i64) {
        self.changes.push(changes);
        self.id.push(incident.id);
        self.service_id.push(service_id.to_owned());
        self.dedup_key.push(dedup_key.to_owned());
        self.title.push(incident.title);
        self.description.push(incident.description);
        self.status.push(incident.status.as_str());
        self.urgency.push(incident.urgency.as_str());
        self.alert_count.push(incident.alert_count);
        self.opened_seq.push(incident.opened_seq);
        self.created_at.push(incident.created_at.to_string());
        self.updated_at.push(incident.updated_at.to_string());
        self.acknowledged_at.push(incident.acknowledged_at.map(|t| t.to_string()));
        self.resolved_at.push(incident.resolved_at.map(|t| t.to_string()));
        self.snoozed_until.push(incident.snoozed_until.map(|t| t.to_string()));
    }

    /// Writes the incidents; returns each one's version after the write.
    pub async fn upsert(&self, tx: &mut PgConnection) -> Result<HashMap<String, i64>, sqlx::Error> {
        if self.id.is_empty() {
            return Ok(HashMap::new());
        }
        sqlx::query_as(
            // An incident that becomes OPEN on a service with an escalation policy starts its
            // escalation at step 1, due now; one that leaves OPEN stops it (DESIGN §11).
            "with policies as (
                select sv.id as service_id, p.id, p.version
                from services sv join escalation_policies p on p.id = sv.escalation_policy_id
                where sv.id = any($2::text[])
             )
             insert into incidents as i (id, service_id, dedup_key, title, description, status, urgency, alert_count,
                                    opened_seq, created_at, updated_at, acknowledged_at, resolved_at, snoozed_until, version,
                                    escalation_policy_id, escalation_policy_version, escalation_status, escalation_next_at)
             select t.id, t.s, t.k, t.title, t.d, t.st, t.u, t.n, t.seq, t.c::timestamptz, t.up::timestamptz,
                    t.a::timestamptz, t.r::timestamptz, t.z::timestamptz, t.v,
                    e.id, e.version, case when e.id is not null then 'ACTIVE' end, case when e.id is not null then now() end
             from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::int4[], $9::int8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                         $15::int8[]) with ordinality
               as t(id, s, k, title, d, st, u, n, seq, c, up, a, r, z, v, o)
             left join policies e on e.service_id = t.s and t.st = 'OPEN'
             order by t.o
             on conflict (id) do update set
               status = excluded.status, alert_count = excluded.alert_count, opened_seq = excluded.opened_seq,
               created_at = excluded.created_at, updated_at = excluded.updated_at,
               acknowledged_at = excluded.acknowledged_at, resolved_at = excluded.resolved_at,
               snoozed_until = excluded.snoozed_until, version = i.version + excluded.version,
               escalation_policy_id = case when excluded.status = 'OPEN' and i.status <> 'OPEN'
                                           then excluded.escalation_policy_id else i.escalation_policy_id end,
               escalation_policy_version = case when excluded.status = 'OPEN' and i.status <> 'OPEN'
                                                then excluded.escalation_policy_version else i.escalation_policy_version end,
               escalation_status = case when excluded.status = 'OPEN' and i.status <> 'OPEN' then excluded.escalation_status
                                        when excluded.status <> 'OPEN' and i.escalation_status = 'ACTIVE' then 'STOPPED'
                                        else i.escalation_status end,
               escalation_step = case when excluded.status = 'OPEN' and i.status <> 'OPEN' then 0 else i.escalation_step end,
               escalation_loop = case when excluded.status = 'OPEN' and i.status <> 'OPEN' then 0 else i.escalation_loop end,
               escalation_next_at = case when excluded.status = 'OPEN' and i.status <> 'OPEN' then excluded.escalation_next_at
                                         when excluded.status <> 'OPEN' then null else i.escalation_next_at end
             returning i.id, i.version",
        )
        .bind(&self.id)
        .bind(&self.service_id)
        .bind(&self.dedup_key)
        .bind(&self.title)
        .bind(&self.description)
        .bind(&self.status)
        .bind(&self.urgency)
        .bind(&self.alert_count)
        .bind(&self.opened_seq)
        .bind(&self.created_at)
        .bind(&self.updated_at)
        .bind(&self.acknowledged_at)
        .bind(&self.resolved_at)
        .bind(&self.snoozed_until)
        .bind(&self.changes)
        .fetch_all(&mut *tx)
        .await
        .map(|rows: Vec<(String, i64)>| rows.into_iter().collect())
    }
}

/// The snapshot a change carries: the incident as the state machine keeps it.
pub fn snapshot(service_id: &str, dedup_key: &str, incident: &IncidentState) -> Value {
    json!({
        "id": incident.id,
        "serviceId": service_id,
        "dedupKey": dedup_key,
        "title": incident.title,
        "status": incident.status,
        "urgency": incident.urgency,
        "alertCount": incident.alert_count,
        "createdAt": incident.created_at.to_string(),
        "updatedAt": incident.updated_at.to_string(),
        "acknowledgedAt": incident.acknowledged_at.map(|t| t.to_string()),
        "resolvedAt": incident.resolved_at.map(|t| t.to_string()),
        "snoozedUntil": incident.snoozed_until.map(|t| t.to_string()),
    })
}

/// What a change is, as its type in the change stream (DESIGN §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Triggered,
    AlertAdded,
    Acknowledged,
    Resolved,
    Snoozed,
    Reopened,
    Assigned,
    UrgencyChanged,
    PriorityChanged,
    NoteAdded,
    /// A late event re-ordered the incident's key; the snapshot is the incident re-folded.
    Reordered,
    /// An incident opened during a maintenance window: visible, but it pages nobody.
    Suppressed,
    /// An escalation step fired (DESIGN §11).
    Escalated,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Triggered => "triggered",
            Self::AlertAdded => "alert_added",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
            Self::Snoozed => "snoozed",
            Self::Reopened => "reopened",
            Self::Assigned => "assigned",
            Self::UrgencyChanged => "urgency_changed",
            Self::PriorityChanged => "priority_changed",
            Self::NoteAdded => "note_added",
            Self::Reordered => "reordered",
            Self::Suppressed => "suppressed",
            Self::Escalated => "escalated",
        }
    }

    /// The change an event's or status change's outcome is; `None` when nothing changed.
    pub fn of(outcome: Outcome) -> Option<Self> {
        Some(match outcome {
            Outcome::Created => Self::Triggered,
            Outcome::Absorbed => Self::AlertAdded,
            Outcome::Acknowledged => Self::Acknowledged,
            Outcome::Resolved => Self::Resolved,
            Outcome::Snoozed => Self::Snoozed,
            Outcome::Reopened => Self::Reopened,
            Outcome::Ignored => return None,
        })
    }
}

/// Outbox rows written column-wise with one statement, in the order pushed; each incident's
/// changes take the versions its write reached, oldest first.
#[derive(Default)]
pub struct ChangeRows {
    id: Vec<Uuid>,
    incident_id: Vec<String>,
    service_id: Vec<String>,
    kind: Vec<&'static str>,
    at: Vec<String>,
    actor: Vec<String>,
    snapshot: Vec<Value>,
    per_incident: HashMap<String, i64>,
}

impl ChangeRows {
    pub fn push(&mut self, service_id: &str, kind: ChangeKind, at: Timestamp, actor: &str, snapshot: Value) {
        let incident_id = snapshot["id"].as_str().unwrap_or_default().to_owned();
        *self.per_incident.entry(incident_id.clone()).or_insert(0) += 1;
        self.id.push(Uuid::now_v7());
        self.incident_id.push(incident_id);
        self.service_id.push(service_id.to_owned());
        self.kind.push(kind.as_str());
        self.at.push(at.to_string());
        self.actor.push(actor.to_owned());
        self.snapshot.push(snapshot);
    }

    /// How many changes incident `id` has here (what its write raises its version by).
    pub fn count(&self, id: &str) -> i64 {
        self.per_incident.get(id).copied().unwrap_or(0)
    }

    /// Inserts the changes, numbering each incident's from the version its write reached
    /// (`versions`, as [`IncidentRows::upsert`] returns them) back.
    pub async fn insert(mut self, tx: &mut PgConnection, versions: &HashMap<String, i64>) -> Result<(), sqlx::Error> {
        if self.id.is_empty() {
            return Ok(());
        }
        let mut left = std::mem::take(&mut self.per_incident);
        let mut version = Vec::with_capacity(self.id.len());
        let mut snapshots = Vec::with_capacity(self.id.len());
        for (incident, mut snapshot) in self.incident_id.iter().zip(std::mem::take(&mut self.snapshot)) {
            let n = left.get_mut(incident).map_or(0, |n| {
                *n -= 1;
                *n
            });
            let v = versions.get(incident).copied().unwrap_or_default() - n;
            snapshot["version"] = json!(v);
            version.push(v);
            snapshots.push(snapshot.to_string());
        }
        sqlx::query(
            "insert into incident_changes (id, incident_id, service_id, version, kind, at, actor, snapshot)
             select id, i, s, v, k, a::timestamptz, who, snap
             from unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[])
               with ordinality as t(id, i, s, v, k, a, who, snap, o) order by o",
        )
        .bind(&self.id)
        .bind(&self.incident_id)
        .bind(&self.service_id)
        .bind(&version)
        .bind(&self.kind)
        .bind(&self.at)
        .bind(&self.actor)
        .bind(&snapshots)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// One row of a key's event log: an alert source's event, or a person's change (`actor`).
pub struct LoggedEvent {
    pub event_id: Uuid,
    pub seq: i64,
    pub action: &'static str,
    pub payload: Option<String>,
    pub received_at: Timestamp,
    pub outcome: Outcome,
    pub incident_id: Option<String>,
    pub actor: Option<String>,
}

/// Event-log rows written column-wise with one statement: the only insert into `events`.
#[derive(Default)]
pub struct EventRows {
    event_id: Vec<Uuid>,
    seq: Vec<i64>,
    service_id: Vec<String>,
    dedup_key: Vec<String>,
    action: Vec<&'static str>,
    payload: Vec<Option<String>>,
    received_at: Vec<String>,
    outcome: Vec<&'static str>,
    incident_id: Vec<Option<String>>,
    actor_id: Vec<Option<String>>,
}

impl EventRows {
    pub fn push(&mut self, service_id: &str, dedup_key: &str, event: LoggedEvent) {
        self.event_id.push(event.event_id);
        self.seq.push(event.seq);
        self.service_id.push(service_id.to_owned());
        self.dedup_key.push(dedup_key.to_owned());
        self.action.push(event.action);
        self.payload.push(event.payload);
        self.received_at.push(event.received_at.to_string());
        self.outcome.push(event.outcome.as_str());
        self.incident_id.push(event.incident_id);
        self.actor_id.push(event.actor);
    }

    pub async fn insert(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.event_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into events (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome, incident_id, actor_id)
             select id, seq, s, k, a, p::jsonb, r::timestamptz, o, i, who
             from unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::text[])
               as t(id, seq, s, k, a, p, r, o, i, who)",
        )
        .bind(&self.event_id)
        .bind(&self.seq)
        .bind(&self.service_id)
        .bind(&self.dedup_key)
        .bind(&self.action)
        .bind(&self.payload)
        .bind(&self.received_at)
        .bind(&self.outcome)
        .bind(&self.incident_id)
        .bind(&self.actor_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
