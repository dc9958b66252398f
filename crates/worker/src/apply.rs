//! Applying a batch of events to PostgreSQL in one transaction and a few round trips. Knows
//! nothing of NATS: the consumer decides what to acknowledge from the result.
//!
//! Per-key order: each `(service, dedup_key)` has a row in `alert_keys` that is locked (in one
//! sorted statement, so workers never deadlock each other) while its events are applied, and
//! that remembers the highest stream sequence applied. Events newer than that are folded onto
//! the key's open incident. An event older than that (a redelivery overtaken by later events) or
//! a duplicate found at an earlier sequence makes the worker re-fold the key: from the last
//! resolve before it (after a resolve the key has no open incident, whatever came before), all
//! of the key's events are applied again in sequence order and the incidents rewritten. Incident
//! ids derive from the opening event, so a re-fold keeps them stable. The final state is always
//! that of applying the key's events in stream order, whatever the workers' timing.

use std::collections::{BTreeMap, HashMap, HashSet};

use common::event::{AlertPayload, EventAction, EventEnvelope};
use common::fold::{FoldEvent, IncidentState, IncidentStatus, KeyFold, Outcome};
use jiff::Timestamp;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// An event as delivered from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    /// JetStream stream sequence: the order ingest accepted it in.
    pub seq: i64,
    pub envelope: EventEnvelope,
}

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Outcome of every newly applied event.
    pub outcomes: Vec<Outcome>,
    /// Events already applied before (redeliveries, duplicate publishes).
    pub duplicates: usize,
    /// Keys whose events were re-folded because one arrived out of order.
    pub refolded_keys: usize,
}

type KeyRef<'a> = (&'a str, &'a str);

/// Applies `events` (any order, any keys, duplicates allowed) in one transaction.
pub async fn apply_batch(
    pool: &PgPool,
    events: &[QueuedEvent],
) -> Result<BatchReport, sqlx::Error> {
    let mut report = BatchReport::default();
    if events.is_empty() {
        return Ok(report);
    }
    let by_key = group_by_key(events);
    let (services, keys): (Vec<&str>, Vec<&str>) = by_key.keys().copied().unzip();
    let mut tx = pool.begin().await?;

    let last_seq = lock_keys(&mut tx, &services, &keys).await?;
    let event_ids: Vec<Uuid> = by_key
        .values()
        .flatten()
        .map(|e| e.envelope.event_id)
        .collect();
    let stored: HashMap<Uuid, i64> =
        sqlx::query_as("select event_id, seq from events where event_id = any($1)")
            .bind(&event_ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let mut open = load_open_incidents(&mut tx, &services, &keys).await?;

    let mut writes = Writes::default();
    for (&(service_id, dedup_key), key_events) in &by_key {
        let mut fresh = Vec::new();
        let mut moved = Vec::new();
        for &event in key_events {
            match stored.get(&event.envelope.event_id) {
                None => fresh.push(event),
                Some(&stored_seq) if event.seq < stored_seq => moved.push(event),
                Some(_) => report.duplicates += 1,
            }
        }
        let Some(first_seq) = fresh.iter().chain(&moved).map(|e| e.seq).min() else {
            continue;
        };
        let key_last = last_seq
            .get(&(service_id.to_owned(), dedup_key.to_owned()))
            .copied()
            .unwrap_or(0);
        if moved.is_empty() && first_seq > key_last {
            let mut fold =
                KeyFold::new(open.remove(&(service_id.to_owned(), dedup_key.to_owned())));
            for event in &fresh {
                let (outcome, incident) = fold.apply(&fold_event(event));
                writes.new_event(event, outcome, incident);
                report.outcomes.push(outcome);
            }
            writes.incidents(service_id, dedup_key, fold.into_incidents());
        } else {
            let outcomes = refold(
                &mut tx,
                (service_id, dedup_key),
                first_seq,
                &fresh,
                &moved,
                &mut writes,
            )
            .await?;
            report.outcomes.extend(outcomes);
            report.refolded_keys += 1;
            metrics::counter!("worker_refolds_total").increment(1);
        }
        let newest = fresh
            .iter()
            .chain(&moved)
            .map(|e| e.seq)
            .max()
            .unwrap_or(first_seq);
        writes.key_seq(service_id, dedup_key, newest);
    }
    report.duplicates += by_key
        .values()
        .map(Vec::len)
        .sum::<usize>()
        .abs_diff(events.len());
    writes.flush(&mut tx).await?;
    tx.commit().await?;
    Ok(report)
}

/// Groups events by key (sorted, for a stable lock order), each key's events by sequence, keeping
/// one copy of an event delivered twice in the batch (the earliest).
fn group_by_key(events: &[QueuedEvent]) -> BTreeMap<KeyRef<'_>, Vec<&QueuedEvent>> {
    let mut sorted: Vec<&QueuedEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.seq);
    let mut seen = HashSet::new();
    let mut by_key: BTreeMap<KeyRef<'_>, Vec<&QueuedEvent>> = BTreeMap::new();
    for event in sorted {
        if seen.insert(event.envelope.event_id) {
            by_key
                .entry((&event.envelope.service_id, &event.envelope.dedup_key))
                .or_default()
                .push(event);
        }
    }
    by_key
}

/// Creates missing key rows, locks all of them in one sorted statement, returns their last
/// applied sequence.
async fn lock_keys(
    tx: &mut PgConnection,
    services: &[&str],
    keys: &[&str],
) -> Result<HashMap<(String, String), i64>, sqlx::Error> {
    sqlx::query(
        r#"insert into alert_keys (service_id, dedup_key, last_seq)
           select s, k, 0 from unnest($1::text[], $2::text[]) as t(s, k)
           order by s collate "C", k collate "C"
           on conflict do nothing"#,
    )
    .bind(services)
    .bind(keys)
    .execute(&mut *tx)
    .await?;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        r#"select a.service_id, a.dedup_key, a.last_seq
           from alert_keys a join unnest($1::text[], $2::text[]) as t(s, k) on a.service_id = t.s and a.dedup_key = t.k
           order by a.service_id collate "C", a.dedup_key collate "C"
           for update of a"#,
    )
    .bind(services)
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(s, k, seq)| ((s, k), seq)).collect())
}

const INCIDENT_COLUMNS: &str = "i.id, i.service_id, i.dedup_key, i.title, i.description, i.status, i.urgency, \
     i.alert_count, i.opened_seq, i.created_at, i.updated_at, i.acknowledged_at, i.resolved_at";

async fn load_open_incidents(
    tx: &mut PgConnection,
    services: &[&str],
    keys: &[&str],
) -> Result<HashMap<(String, String), IncidentState>, sqlx::Error> {
    let sql = format!(
        "select {INCIDENT_COLUMNS} from incidents i
         join unnest($1::text[], $2::text[]) as t(s, k) on i.service_id = t.s and i.dedup_key = t.k
         where i.status <> 'RESOLVED'"
    );
    let rows = sqlx::query(&sql)
        .bind(services)
        .bind(keys)
        .fetch_all(&mut *tx)
        .await?;
    rows.iter()
        .map(|row| {
            let key = (row.try_get("service_id")?, row.try_get("dedup_key")?);
            Ok((key, incident_from_row(row)?))
        })
        .collect()
}

fn incident_from_row(row: &sqlx::postgres::PgRow) -> Result<IncidentState, sqlx::Error> {
    let decode = |column: &str, what: &str| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown {what}").into(),
    };
    let status: String = row.try_get("status")?;
    let urgency: String = row.try_get("urgency")?;
    Ok(IncidentState {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        status: IncidentStatus::parse(&status).ok_or_else(|| decode("status", "status"))?,
        urgency: serde_json::from_value(serde_json::Value::String(urgency))
            .map_err(|_| decode("urgency", "urgency"))?,
        alert_count: row.try_get("alert_count")?,
        opened_seq: row.try_get("opened_seq")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
        acknowledged_at: optional_timestamp(row, "acknowledged_at")?,
        resolved_at: optional_timestamp(row, "resolved_at")?,
    })
}

fn timestamp(row: &sqlx::postgres::PgRow, column: &str) -> Result<Timestamp, sqlx::Error> {
    Ok(row.try_get::<jiff_sqlx::Timestamp, _>(column)?.to_jiff())
}

fn optional_timestamp(
    row: &sqlx::postgres::PgRow,
    column: &str,
) -> Result<Option<Timestamp>, sqlx::Error> {
    Ok(row
        .try_get::<Option<jiff_sqlx::Timestamp>, _>(column)?
        .map(|t| t.to_jiff()))
}

fn fold_event(event: &QueuedEvent) -> FoldEvent<'_> {
    FoldEvent {
        event_id: event.envelope.event_id,
        seq: event.seq,
        action: event.envelope.action,
        payload: event.envelope.payload.as_ref(),
        received_at: event.envelope.received_at,
    }
}

/// An event already in the log, as a re-fold reads it back.
struct StoredEvent {
    event_id: Uuid,
    seq: i64,
    action: EventAction,
    payload: Option<AlertPayload>,
    received_at: Timestamp,
}

/// Re-applies a key's events in sequence order from the last resolve before `first_seq`.
async fn refold(
    tx: &mut PgConnection,
    (service_id, dedup_key): KeyRef<'_>,
    first_seq: i64,
    fresh: &[&QueuedEvent],
    moved: &[&QueuedEvent],
    writes: &mut Writes,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let (floor,): (i64,) = sqlx::query_as(
        "select coalesce(max(seq), 0) from events
         where service_id = $1 and dedup_key = $2 and action = 'resolve' and seq < $3",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(first_seq)
    .fetch_one(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "select event_id, seq, action, payload, received_at from events
         where service_id = $1 and dedup_key = $2 and seq > $3",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(floor)
    .fetch_all(&mut *tx)
    .await?;
    let new_seq: HashMap<Uuid, i64> = moved.iter().map(|e| (e.envelope.event_id, e.seq)).collect();
    let mut stored = Vec::with_capacity(rows.len());
    for row in &rows {
        let event_id: Uuid = row.try_get("event_id")?;
        let action: String = row.try_get("action")?;
        stored.push(StoredEvent {
            event_id,
            seq: new_seq
                .get(&event_id)
                .copied()
                .unwrap_or(row.try_get("seq")?),
            action: serde_json::from_value(serde_json::Value::String(action)).map_err(|e| {
                sqlx::Error::ColumnDecode {
                    index: "action".into(),
                    source: e.into(),
                }
            })?,
            payload: row
                .try_get::<Option<Json<AlertPayload>>, _>("payload")?
                .map(|Json(p)| p),
            received_at: timestamp(row, "received_at")?,
        });
    }

    enum Entry<'a> {
        Stored(&'a StoredEvent),
        Fresh(&'a QueuedEvent),
    }
    let mut entries: Vec<(i64, Entry<'_>)> =
        stored.iter().map(|s| (s.seq, Entry::Stored(s))).collect();
    entries.extend(fresh.iter().map(|e| (e.seq, Entry::Fresh(e))));
    entries.sort_by_key(|(seq, _)| *seq);

    let mut fold = KeyFold::new(None);
    let mut outcomes = Vec::new();
    for (_, entry) in entries {
        match entry {
            Entry::Stored(s) => {
                let (outcome, incident) = fold.apply(&FoldEvent {
                    event_id: s.event_id,
                    seq: s.seq,
                    action: s.action,
                    payload: s.payload.as_ref(),
                    received_at: s.received_at,
                });
                writes.stored_event(s.event_id, s.seq, outcome, incident);
            }
            Entry::Fresh(event) => {
                let (outcome, incident) = fold.apply(&fold_event(event));
                writes.new_event(event, outcome, incident);
                outcomes.push(outcome);
            }
        }
    }
    let incidents = fold.into_incidents();
    let keep: Vec<&str> = incidents.iter().map(|i| i.id.as_str()).collect();
    sqlx::query(
        "delete from incidents where service_id = $1 and dedup_key = $2 and opened_seq > $3 and id <> all($4)",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(floor)
    .bind(&keep)
    .execute(&mut *tx)
    .await?;
    writes.incidents(service_id, dedup_key, incidents);
    Ok(outcomes)
}

/// Column-wise rows written at the end of a batch with one statement each.
#[derive(Default)]
struct Writes {
    closed: IncidentRows,
    open: IncidentRows,
    events: EventRows,
    stored_ids: Vec<Uuid>,
    stored_seqs: Vec<i64>,
    stored_outcomes: Vec<&'static str>,
    stored_incidents: Vec<Option<String>>,
    key_services: Vec<String>,
    key_keys: Vec<String>,
    key_seqs: Vec<i64>,
}

#[derive(Default)]
struct IncidentRows {
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
}

#[derive(Default)]
struct EventRows {
    event_id: Vec<Uuid>,
    seq: Vec<i64>,
    service_id: Vec<String>,
    dedup_key: Vec<String>,
    action: Vec<&'static str>,
    payload: Vec<Option<String>>,
    received_at: Vec<String>,
    outcome: Vec<&'static str>,
    incident_id: Vec<Option<String>>,
}

impl Writes {
    fn new_event(&mut self, event: &QueuedEvent, outcome: Outcome, incident: Option<String>) {
        let e = &event.envelope;
        let rows = &mut self.events;
        rows.event_id.push(e.event_id);
        rows.seq.push(event.seq);
        rows.service_id.push(e.service_id.clone());
        rows.dedup_key.push(e.dedup_key.clone());
        rows.action.push(e.action.as_str());
        rows.payload.push(
            e.payload
                .as_ref()
                .and_then(|p| serde_json::to_string(p).ok()),
        );
        rows.received_at.push(e.received_at.to_string());
        rows.outcome.push(outcome.as_str());
        rows.incident_id.push(incident);
    }

    fn stored_event(
        &mut self,
        event_id: Uuid,
        seq: i64,
        outcome: Outcome,
        incident: Option<String>,
    ) {
        self.stored_ids.push(event_id);
        self.stored_seqs.push(seq);
        self.stored_outcomes.push(outcome.as_str());
        self.stored_incidents.push(incident);
    }

    fn incidents(&mut self, service_id: &str, dedup_key: &str, incidents: Vec<IncidentState>) {
        for incident in incidents {
            let rows = if incident.status == IncidentStatus::Resolved {
                &mut self.closed
            } else {
                &mut self.open
            };
            rows.id.push(incident.id);
            rows.service_id.push(service_id.to_owned());
            rows.dedup_key.push(dedup_key.to_owned());
            rows.title.push(incident.title);
            rows.description.push(incident.description);
            rows.status.push(incident.status.as_str());
            rows.urgency.push(incident.urgency.as_str());
            rows.alert_count.push(incident.alert_count);
            rows.opened_seq.push(incident.opened_seq);
            rows.created_at.push(incident.created_at.to_string());
            rows.updated_at.push(incident.updated_at.to_string());
            rows.acknowledged_at
                .push(incident.acknowledged_at.map(|t| t.to_string()));
            rows.resolved_at
                .push(incident.resolved_at.map(|t| t.to_string()));
        }
    }

    fn key_seq(&mut self, service_id: &str, dedup_key: &str, seq: i64) {
        self.key_services.push(service_id.to_owned());
        self.key_keys.push(dedup_key.to_owned());
        self.key_seqs.push(seq);
    }

    async fn flush(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        // Resolved incidents first, so a key never has two open incidents mid-statement.
        upsert_incidents(tx, &self.closed).await?;
        upsert_incidents(tx, &self.open).await?;
        let e = &self.events;
        if !e.event_id.is_empty() {
            sqlx::query(
                "insert into events (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome, incident_id)
                 select id, seq, s, k, a, p::jsonb, r::timestamptz, o, i
                 from unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
                   as t(id, seq, s, k, a, p, r, o, i)",
            )
            .bind(&e.event_id)
            .bind(&e.seq)
            .bind(&e.service_id)
            .bind(&e.dedup_key)
            .bind(&e.action)
            .bind(&e.payload)
            .bind(&e.received_at)
            .bind(&e.outcome)
            .bind(&e.incident_id)
            .execute(&mut *tx)
            .await?;
        }
        if !self.stored_ids.is_empty() {
            sqlx::query(
                "update events e set seq = t.seq, outcome = t.o, incident_id = t.i
                 from unnest($1::uuid[], $2::int8[], $3::text[], $4::text[]) as t(id, seq, o, i)
                 where e.event_id = t.id",
            )
            .bind(&self.stored_ids)
            .bind(&self.stored_seqs)
            .bind(&self.stored_outcomes)
            .bind(&self.stored_incidents)
            .execute(&mut *tx)
            .await?;
        }
        if !self.key_seqs.is_empty() {
            sqlx::query(
                "update alert_keys a set last_seq = greatest(a.last_seq, t.seq)
                 from unnest($1::text[], $2::text[], $3::int8[]) as t(s, k, seq)
                 where a.service_id = t.s and a.dedup_key = t.k",
            )
            .bind(&self.key_services)
            .bind(&self.key_keys)
            .bind(&self.key_seqs)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

async fn upsert_incidents(tx: &mut PgConnection, rows: &IncidentRows) -> Result<(), sqlx::Error> {
    if rows.id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into incidents (id, service_id, dedup_key, title, description, status, urgency, alert_count,
                                opened_seq, created_at, updated_at, acknowledged_at, resolved_at)
         select id, s, k, title, d, st, u, n, seq, c::timestamptz, up::timestamptz, a::timestamptz, r::timestamptz
         from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int4[],
                     $9::int8[], $10::text[], $11::text[], $12::text[], $13::text[])
           as t(id, s, k, title, d, st, u, n, seq, c, up, a, r)
         on conflict (id) do update set
           title = excluded.title, description = excluded.description, status = excluded.status,
           urgency = excluded.urgency, alert_count = excluded.alert_count, opened_seq = excluded.opened_seq,
           created_at = excluded.created_at, updated_at = excluded.updated_at,
           acknowledged_at = excluded.acknowledged_at, resolved_at = excluded.resolved_at",
    )
    .bind(&rows.id)
    .bind(&rows.service_id)
    .bind(&rows.dedup_key)
    .bind(&rows.title)
    .bind(&rows.description)
    .bind(&rows.status)
    .bind(&rows.urgency)
    .bind(&rows.alert_count)
    .bind(&rows.opened_seq)
    .bind(&rows.created_at)
    .bind(&rows.updated_at)
    .bind(&rows.acknowledged_at)
    .bind(&rows.resolved_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
