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
use common::ids::incident_id_for_event;
use common::incident::state::{FoldAction, FoldEvent, IncidentState, IncidentStatus, KeyFold, ManualChange, Outcome};
use common::incident::store::{
    ChangeKind, ChangeRows, EventRows, INCIDENT_COLUMNS, IncidentRows, LoggedEvent, incident_from_row, lock_keys,
    snapshot, timestamp,
};
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
pub async fn apply_batch(pool: &PgPool, events: &[QueuedEvent]) -> Result<BatchReport, sqlx::Error> {
    let mut report = BatchReport::default();
    if events.is_empty() {
        return Ok(report);
    }
    let by_key = group_by_key(events);
    let (services, keys): (Vec<&str>, Vec<&str>) = by_key.keys().copied().unzip();
    // Each key's last applied sequence becomes the newest in the batch (a duplicate among them at
    // worst makes a later event look late, which costs a re-fold, never a wrong result).
    let newest: Vec<i64> = by_key.values().map(|events| events.iter().map(|e| e.seq).max().unwrap_or(0)).collect();
    let mut tx = pool.begin().await?;

    let last_seq: HashMap<(String, String), i64> =
        lock_keys(&mut tx, &services, &keys, &newest).await?.into_iter().map(|(s, k, seq)| ((s, k), seq)).collect();
    let event_ids: Vec<Uuid> = by_key.values().flatten().map(|e| e.envelope.event_id).collect();
    let received: Vec<String> = by_key.values().flatten().map(|e| e.envelope.received_at.to_string()).collect();
    let stored: HashMap<Uuid, i64> = sqlx::query_as(
        // One primary-key lookup per event in the partition of its day, whatever the plan cache
        // holds: a filter or hash join over the whole log would grow with it. (`limit 1` keeps
        // the planner from flattening the lateral subquery into a join.)
        "select e.event_id, e.seq from unnest($1::uuid[], $2::text[]) as t(id, r)
         join lateral (select event_id, seq from events e
                       where e.event_id = t.id and e.received_at = t.r::timestamptz limit 1) e on true",
    )
    .bind(&event_ids)
    .bind(&received)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let copies = claim_derived_ids(&mut tx, &by_key, &stored).await?;
    let mut open = load_open_incidents(&mut tx, &services, &keys).await?;
    let windows = Windows::load(&mut tx, &services).await?;

    let mut writes = Writes::default();
    for (&(service_id, dedup_key), key_events) in &by_key {
        let mut fresh = Vec::new();
        let mut moved = Vec::new();
        for &event in key_events {
            match stored.get(&event.envelope.event_id) {
                None if copies.contains(&event.envelope.event_id) => report.duplicates += 1,
                None => fresh.push(event),
                Some(&stored_seq) if event.seq < stored_seq => moved.push(event),
                Some(_) => report.duplicates += 1,
            }
        }
        let Some(first_seq) = fresh.iter().chain(&moved).map(|e| e.seq).min() else {
            continue;
        };
        let key_last = last_seq.get(&(service_id.to_owned(), dedup_key.to_owned())).copied().unwrap_or(0);
        if moved.is_empty() && first_seq > key_last {
            let mut fold = KeyFold::new(open.remove(&(service_id.to_owned(), dedup_key.to_owned())));
            for event in &fresh {
                let (outcome, incident) = fold.apply(&fold_event(event, &windows));
                writes.change(service_id, dedup_key, &fold, event, outcome, incident.as_deref());
                writes.new_event(event, outcome, incident);
                report.outcomes.push(outcome);
            }
            writes.incidents(service_id, dedup_key, fold.into_incidents(), false);
        } else {
            let open = open.remove(&(service_id.to_owned(), dedup_key.to_owned()));
            let key = (service_id, dedup_key);
            let outcomes = match open.filter(|_| moved.is_empty()) {
                Some(open) => match refold_tail(&mut tx, key, first_seq, &fresh, open, &windows, &mut writes).await? {
                    Some(outcomes) => outcomes,
                    None => refold(&mut tx, key, first_seq, &fresh, &moved, &windows, &mut writes).await?,
                },
                None => refold(&mut tx, key, first_seq, &fresh, &moved, &windows, &mut writes).await?,
            };
            report.outcomes.extend(outcomes);
            report.refolded_keys += 1;
        }
    }
    report.duplicates += by_key.values().map(Vec::len).sum::<usize>().abs_diff(events.len());
    writes.flush(&mut tx).await?;
    tx.commit().await?;
    Ok(report)
}

/// Claims, in `idempotent_events`, the ids of the batch's events that derive from what makes
/// them the same event (UUIDv8: an `Idempotency-Key`, an Alertmanager alert's content) and are not
/// in the log under their receive time; returns those whose claim an earlier acceptance already
/// holds: copies of an event applied before under another receive time, which change nothing.
/// The claims commit with the batch, so an event that fails to apply claims nothing.
async fn claim_derived_ids(
    tx: &mut PgConnection,
    by_key: &BTreeMap<KeyRef<'_>, Vec<&QueuedEvent>>,
    stored: &HashMap<Uuid, i64>,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut derived: Vec<&QueuedEvent> = by_key
        .values()
        .flatten()
        .copied()
        .filter(|e| e.envelope.event_id.get_version_num() == 8 && !stored.contains_key(&e.envelope.event_id))
        .collect();
    if derived.is_empty() {
        return Ok(HashSet::new());
    }
    // In id order, so concurrent claimers never wait on each other in a cycle.
    derived.sort_by_key(|e| e.envelope.event_id);
    let ids: Vec<Uuid> = derived.iter().map(|e| e.envelope.event_id).collect();
    let received: Vec<String> = derived.iter().map(|e| e.envelope.received_at.to_string()).collect();
    let claimed: HashSet<Uuid> = sqlx::query_scalar(
        "insert into idempotent_events (event_id, received_at)
         select id, r::timestamptz from unnest($1::uuid[], $2::text[]) as t(id, r)
         on conflict (event_id) do nothing returning event_id",
    )
    .bind(&ids)
    .bind(&received)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(ids.into_iter().filter(|id| !claimed.contains(id)).collect())
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
            by_key.entry((&event.envelope.service_id, &event.envelope.dedup_key)).or_default().push(event);
        }
    }
    by_key
}

async fn load_open_incidents(
    tx: &mut PgConnection,
    services: &[&str],
    keys: &[&str],
) -> Result<HashMap<(String, String), IncidentState>, sqlx::Error> {
    let sql = format!(
        "select {INCIDENT_COLUMNS} from unnest($1::text[], $2::text[]) as t(s, k)
         join lateral (select * from incidents i
                       where i.service_id = t.s and i.dedup_key = t.k and i.status <> 'RESOLVED' limit 1) i
           on true"
    );
    let rows = sqlx::query(&sql).bind(services).bind(keys).fetch_all(&mut *tx).await?;
    rows.iter()
        .map(|row| {
            let key = (row.try_get("service_id")?, row.try_get("dedup_key")?);
            Ok((key, incident_from_row(row)?))
        })
        .collect()
}

fn fold_event<'a>(event: &'a QueuedEvent, windows: &Windows) -> FoldEvent<'a> {
    FoldEvent {
        event_id: event.envelope.event_id,
        seq: event.seq,
        action: FoldAction::Event(event.envelope.action, event.envelope.payload.as_ref()),
        received_at: event.envelope.received_at,
        in_maintenance: windows.cover(&event.envelope.service_id, event.envelope.received_at),
    }
}

/// An event or manual change already in the log, as a re-fold reads it back.
struct StoredEvent {
    event_id: Uuid,
    seq: i64,
    kind: StoredKind,
    received_at: Timestamp,
}

enum StoredKind {
    Event(EventAction, Option<AlertPayload>),
    Manual { incident_id: String, change: ManualChange },
}

impl StoredEvent {
    fn from_row(row: &sqlx::postgres::PgRow, new_seq: &HashMap<Uuid, i64>) -> Result<Self, sqlx::Error> {
        let event_id: Uuid = row.try_get("event_id")?;
        let action: String = row.try_get("action")?;
        let bad = |what: &str| sqlx::Error::ColumnDecode { index: "action".into(), source: what.to_owned().into() };
        let kind = if row.try_get::<Option<String>, _>("actor_id")?.is_some() {
            let incident_id: String = row
                .try_get::<Option<String>, _>("incident_id")?
                .ok_or_else(|| bad("manual change without incident"))?;
            let change = match action.as_str() {
                "acknowledge" => ManualChange::Acknowledge,
                "resolve" => ManualChange::Resolve,
                "reopen" => ManualChange::Reopen,
                "snooze" => {
                    let payload: Option<Json<serde_json::Value>> = row.try_get("payload")?;
                    let until = payload
                        .and_then(|Json(p)| p.get("until").and_then(|u| u.as_str()).and_then(|u| u.parse().ok()))
                        .ok_or_else(|| bad("snooze without until"))?;
                    ManualChange::Snooze(until)
                }
                other => return Err(bad(other)),
            };
            StoredKind::Manual { incident_id, change }
        } else {
            let action = serde_json::from_value(serde_json::Value::String(action)).map_err(|e| bad(&e.to_string()))?;
            let payload = row.try_get::<Option<Json<AlertPayload>>, _>("payload")?.map(|Json(p)| p);
            StoredKind::Event(action, payload)
        };
        Ok(Self {
            event_id,
            seq: new_seq.get(&event_id).copied().unwrap_or(row.try_get("seq")?),
            kind,
            received_at: timestamp(row, "received_at")?,
        })
    }

    fn fold_event(&self, service_id: &str, windows: &Windows) -> FoldEvent<'_> {
        let action = match &self.kind {
            StoredKind::Event(action, payload) => FoldAction::Event(*action, payload.as_ref()),
            StoredKind::Manual { incident_id, change } => FoldAction::Manual { incident_id, change: *change },
        };
        let in_maintenance = windows.cover(service_id, self.received_at);
        FoldEvent { event_id: self.event_id, seq: self.seq, action, received_at: self.received_at, in_maintenance }
    }
}

/// Most stored events after a late one that [`refold_tail`] re-folds; past that, [`refold`].
const TAIL_LIMIT: i64 = 10_000;

/// Re-folds a key from just before its late events when every event the key stored after
/// `first_seq` is an alert its open incident absorbed (the usual late event: one that a killed
/// worker had in flight while the key kept firing). The state before `first_seq` is then that
/// incident less those alerts, so only the events after `first_seq` are read, and only those
/// whose outcome changes are rewritten: the cost does not grow with what the incident absorbed
/// before. `None` (nothing written) when the key's tail is anything else: [`refold`] then.
async fn refold_tail(
    tx: &mut PgConnection,
    (service_id, dedup_key): KeyRef<'_>,
    first_seq: i64,
    fresh: &[&QueuedEvent],
    open: IncidentState,
    windows: &Windows,
    writes: &mut Writes,
) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
    if open.opened_seq.is_none_or(|opened| opened >= first_seq) {
        return Ok(None);
    }
    let rows = sqlx::query(
        "select event_id, seq, action, payload, received_at, actor_id, incident_id, outcome from events
         where service_id = $1 and dedup_key = $2 and seq > $3 order by seq limit $4",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(first_seq)
    .bind(TAIL_LIMIT + 1)
    .fetch_all(&mut *tx)
    .await?;
    let absorbed_by_open = |row: &sqlx::postgres::PgRow| -> Result<bool, sqlx::Error> {
        Ok(row.try_get::<Option<String>, _>("actor_id")?.is_none()
            && row.try_get::<String, _>("outcome")? == Outcome::Absorbed.as_str()
            && row.try_get::<Option<String>, _>("incident_id")?.as_deref() == Some(open.id.as_str()))
    };
    if rows.len() as i64 > TAIL_LIMIT
        || !rows.iter().map(absorbed_by_open).collect::<Result<Vec<_>, _>>()?.iter().all(|a| *a)
    {
        return Ok(None);
    }
    // The incident's last change before the late events: its `updated_at` then.
    let last_before = sqlx::query(
        "select received_at from events
         where incident_id = $1 and seq < $2 and outcome <> 'ignored' order by seq desc limit 1",
    )
    .bind(&open.id)
    .bind(first_seq)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(last_before) = last_before else { return Ok(None) };
    let incident_id = open.id.clone();
    let mut before = open;
    before.alert_count -= i32::try_from(rows.len()).unwrap_or(i32::MAX);
    before.updated_at = timestamp(&last_before, "received_at")?;

    let no_moves = HashMap::new();
    let stored = rows.iter().map(|row| StoredEvent::from_row(row, &no_moves)).collect::<Result<Vec<_>, _>>()?;
    let mut entries: Vec<(i64, Result<&StoredEvent, &QueuedEvent>)> = stored.iter().map(|s| (s.seq, Ok(s))).collect();
    entries.extend(fresh.iter().map(|e| (e.seq, Err(*e))));
    entries.sort_by_key(|(seq, _)| *seq);
    let mut fold = KeyFold::new(Some(before));
    let mut outcomes = Vec::new();
    for (_, entry) in entries {
        match entry {
            Ok(s) => {
                let (outcome, incident) = fold.apply(&s.fold_event(service_id, windows));
                if outcome != Outcome::Absorbed || incident.as_deref() != Some(incident_id.as_str()) {
                    writes.stored_event(s, outcome, incident);
                }
            }
            Err(event) => {
                let (outcome, incident) = fold.apply(&fold_event(event, windows));
                writes.change(service_id, dedup_key, &fold, event, outcome, incident.as_deref());
                writes.new_event(event, outcome, incident);
                outcomes.push(outcome);
            }
        }
    }
    writes.incidents(service_id, dedup_key, fold.into_incidents(), false);
    Ok(Some(outcomes))
}

/// Re-applies a key's events in sequence order from the last resolve before `first_seq`.
async fn refold(
    tx: &mut PgConnection,
    (service_id, dedup_key): KeyRef<'_>,
    first_seq: i64,
    fresh: &[&QueuedEvent],
    moved: &[&QueuedEvent],
    windows: &Windows,
    writes: &mut Writes,
) -> Result<Vec<Outcome>, sqlx::Error> {
    // Only an alert source's resolve certainly leaves the key with no open incident.
    let (floor,): (i64,) = sqlx::query_as(
        "select coalesce(max(seq), 0) from events
         where service_id = $1 and dedup_key = $2 and action = 'resolve' and actor_id is null and seq < $3",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(first_seq)
    .fetch_one(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "select event_id, seq, action, payload, received_at, actor_id, incident_id from events
         where service_id = $1 and dedup_key = $2 and seq > $3",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(floor)
    .fetch_all(&mut *tx)
    .await?;
    let new_seq: HashMap<Uuid, i64> = moved.iter().map(|e| (e.envelope.event_id, e.seq)).collect();
    let stored = rows.iter().map(|row| StoredEvent::from_row(row, &new_seq)).collect::<Result<Vec<_>, _>>()?;

    enum Entry<'a> {
        Stored(&'a StoredEvent),
        Fresh(&'a QueuedEvent),
    }
    // Stream order; a manual change comes right after the stream event it followed.
    let mut entries: Vec<((i64, bool, Uuid), Entry<'_>)> = stored
        .iter()
        .map(|s| ((s.seq, matches!(s.kind, StoredKind::Manual { .. }), s.event_id), Entry::Stored(s)))
        .collect();
    entries.extend(fresh.iter().map(|e| ((e.seq, false, e.envelope.event_id), Entry::Fresh(e))));
    entries.sort_by_key(|(order, _)| *order);

    // What a stored event belonged to before this re-fold.
    let before: HashMap<Uuid, String> = rows
        .iter()
        .filter_map(|row| Some((row.try_get("event_id").ok()?, row.try_get::<Option<String>, _>("incident_id").ok()??)))
        .collect();
    let mut fold = KeyFold::new(None);
    let mut outcomes = Vec::new();
    // An incident whose opening alert another incident now holds is merged into that one: what
    // people did to it (manual changes, notes, assignee, priority) follows.
    let mut merged_into: HashMap<String, String> = HashMap::new();
    for (_, entry) in entries {
        match entry {
            Entry::Stored(s) => {
                let mut event = s.fold_event(service_id, windows);
                if let FoldAction::Manual { incident_id, change } = event.action
                    && let Some(target) = merged_into.get(incident_id)
                {
                    event.action = FoldAction::Manual { incident_id: target, change };
                }
                let (outcome, incident) = fold.apply(&event);
                if let (Some(was), Some(now)) = (before.get(&s.event_id), incident.as_ref())
                    && *was == incident_id_for_event(s.event_id)
                    && was != now
                {
                    merged_into.insert(was.clone(), now.clone());
                }
                writes.stored_event(s, outcome, incident);
            }
            Entry::Fresh(event) => {
                let (outcome, incident) = fold.apply(&fold_event(event, windows));
                writes.change(service_id, dedup_key, &fold, event, outcome, incident.as_deref());
                writes.new_event(event, outcome, incident);
                outcomes.push(outcome);
            }
        }
    }
    let incidents = fold.into_incidents();
    let keep: Vec<&str> = incidents.iter().map(|i| i.id.as_str()).collect();
    // Only incidents opened by an event this re-fold read can be replaced: older ones (whose
    // events may have aged out of the log) are left as they are.
    let read: Vec<i64> = rows.iter().map(|row| row.try_get::<i64, _>("seq")).collect::<Result<_, _>>()?;
    let dropped: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "select id, priority, assignee_id from incidents
         where service_id = $1 and dedup_key = $2 and opened_seq = any($3) and id <> all($4)",
    )
    .bind(service_id)
    .bind(dedup_key)
    .bind(&read)
    .bind(&keep)
    .fetch_all(&mut *tx)
    .await?;
    let (mut from, mut into) = (Vec::new(), Vec::new());
    for (id, _, _) in &dropped {
        if let Some(target) = merged_into.get(id).filter(|t| keep.contains(&t.as_str())) {
            from.push(id.clone());
            into.push(target.clone());
        }
    }
    if !from.is_empty() {
        // Before the delete would cascade to them; the target may be written only at the end of
        // the batch, which the deferred reference allows.
        sqlx::query(
            "update incident_timeline t set incident_id = m.into_id
             from unnest($1::text[], $2::text[]) as m(from_id, into_id) where t.incident_id = m.from_id",
        )
        .bind(&from)
        .bind(&into)
        .execute(&mut *tx)
        .await?;
    }
    let ids: Vec<&str> = dropped.iter().map(|(id, _, _)| id.as_str()).collect();
    sqlx::query("delete from incidents where id = any($1)").bind(&ids).execute(&mut *tx).await?;
    for (id, priority, assignee) in dropped {
        if let Some(target) = merged_into.get(&id).filter(|t| keep.contains(&t.as_str())) {
            writes.merged(id, target.clone(), priority, assignee);
        }
    }
    writes.incidents(service_id, dedup_key, incidents, true);
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
    stored_received: Vec<String>,
    merges: Merges,
    changes: ChangeRows,
    pending_alert: Option<PendingChange>,
}

/// A change waiting for the outbox: service, kind, time, actor, snapshot.
type PendingChange = (String, ChangeKind, jiff::Timestamp, String, serde_json::Value);

/// Incidents a re-fold merged into another (from → into), with what people had set on them.
#[derive(Default)]
struct Merges {
    from: Vec<String>,
    into: Vec<String>,
    priority: Vec<Option<String>>,
    assignee: Vec<Option<String>>,
}

impl Writes {
    fn new_event(&mut self, event: &QueuedEvent, outcome: Outcome, incident: Option<String>) {
        let e = &event.envelope;
        self.events.push(
            &e.service_id,
            &e.dedup_key,
            LoggedEvent {
                event_id: e.event_id,
                seq: event.seq,
                action: e.action.as_str(),
                payload: e.payload.as_ref().and_then(|p| serde_json::to_string(p).ok()),
                received_at: e.received_at,
                outcome,
                incident_id: incident,
                actor: None,
            },
        );
    }

    fn stored_event(&mut self, stored: &StoredEvent, outcome: Outcome, incident: Option<String>) {
        let (event_id, seq) = (stored.event_id, stored.seq);
        self.stored_received.push(stored.received_at.to_string());
        self.stored_ids.push(event_id);
        self.stored_seqs.push(seq);
        self.stored_outcomes.push(outcome.as_str());
        self.stored_incidents.push(incident);
    }

    fn merged(&mut self, from: String, into: String, priority: Option<String>, assignee: Option<String>) {
        let merges = &mut self.merges;
        merges.from.push(from);
        merges.into.push(into);
        merges.priority.push(priority);
        merges.assignee.push(assignee);
    }

    /// Records the change an event made to `incident` (as `fold` has it now) in the outbox. An
    /// incident's alert-count-only changes are coalesced: one waits, replaced by the next, until
    /// a state change or the end of its key's events.
    fn change(
        &mut self,
        service_id: &str,
        dedup_key: &str,
        fold: &KeyFold,
        event: &QueuedEvent,
        outcome: Outcome,
        incident: Option<&str>,
    ) {
        let Some((kind, state)) = ChangeKind::of(outcome).zip(incident.and_then(|id| fold.incident(id))) else {
            return;
        };
        let kind = match (kind, state.status) {
            (ChangeKind::Triggered, IncidentStatus::Suppressed) => ChangeKind::Suppressed,
            (kind, _) => kind,
        };
        let actor = format!("event:{}", event.envelope.event_id);
        let change =
            (service_id.to_owned(), kind, event.envelope.received_at, actor, snapshot(service_id, dedup_key, state));
        if kind == ChangeKind::AlertAdded {
            if self.pending_alert.as_ref().is_some_and(|waiting| waiting.4["id"] != change.4["id"]) {
                self.flush_alert();
            }
            self.pending_alert = Some(change);
            return;
        }
        self.flush_alert();
        self.push_change(change);
    }

    fn flush_alert(&mut self) {
        if let Some(waiting) = self.pending_alert.take() {
            self.push_change(waiting);
        }
    }

    fn push_change(&mut self, (service_id, kind, at, actor, snapshot): PendingChange) {
        self.changes.push(&service_id, kind, at, &actor, snapshot);
    }

    /// Writes the key's incidents with their changes; after a re-fold (`reordered`), an incident
    /// no event of the batch changed gets a `reordered` change with its re-folded state.
    fn incidents(&mut self, service_id: &str, dedup_key: &str, incidents: Vec<IncidentState>, reordered: bool) {
        self.flush_alert();
        for incident in incidents {
            if reordered && self.changes.count(&incident.id) == 0 {
                let change = snapshot(service_id, dedup_key, &incident);
                self.push_change((
                    service_id.to_owned(),
                    ChangeKind::Reordered,
                    incident.updated_at,
                    "system".into(),
                    change,
                ));
            }
            let changes = self.changes.count(&incident.id);
            let rows = if incident.status == IncidentStatus::Resolved { &mut self.closed } else { &mut self.open };
            rows.push(service_id, dedup_key, incident, changes);
        }
    }

    async fn flush(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        // Resolved incidents first, so a key never has two open incidents mid-statement.
        let mut versions = self.closed.upsert(tx).await?;
        versions.extend(self.open.upsert(tx).await?);
        self.changes.insert(tx, &versions).await?;
        self.events.insert(tx).await?;
        let m = &self.merges;
        if !m.from.is_empty() {
            // The merged incidents' assignee and priority where the target has none, and a
            // timeline entry saying what happened (their timelines were moved by the re-fold).
            sqlx::query(
                "with merge as (select * from unnest($1::text[], $2::text[], $3::text[], $4::text[]) as t(from_id, into_id, p, a)),
                 kept as (update incidents i set priority = coalesce(i.priority, m.p), assignee_id = coalesce(i.assignee_id, m.a)
                          from merge m where i.id = m.into_id)
                 insert into incident_timeline (incident_id, kind, actor_id, message, data)
                 select into_id, 'merged', 'system',
                        'incident ' || from_id || ' was merged into this one: a late alert re-ordered this key''s events',
                        jsonb_build_object('mergedIncidentId', from_id)
                 from merge",
            )
            .bind(&m.from)
            .bind(&m.into)
            .bind(&m.priority)
            .bind(&m.assignee)
            .execute(&mut *tx)
            .await?;
        }
        if !self.stored_ids.is_empty() {
            sqlx::query(
                "update events e set seq = t.seq, outcome = t.o, incident_id = t.i
                 from unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[]) as t(id, seq, o, i, r)
                 where e.event_id = t.id and e.received_at = t.r::timestamptz",
            )
            .bind(&self.stored_ids)
            .bind(&self.stored_seqs)
            .bind(&self.stored_outcomes)
            .bind(&self.stored_incidents)
            .bind(&self.stored_received)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// The maintenance windows of a batch's services (DESIGN §12), ending at most 90 days ago: a
/// trigger accepted inside one opens its incident `SUPPRESSED`. Decided by acceptance time, so a
/// re-fold decides as the first fold did.
#[derive(Default)]
struct Windows(HashMap<String, Vec<(Timestamp, Timestamp)>>);

impl Windows {
    async fn load(tx: &mut PgConnection, services: &[&str]) -> Result<Self, sqlx::Error> {
        let rows = sqlx::query(
            "select s.service_id, w.starts_at, w.ends_at from maintenance_window_services s
             join maintenance_windows w on w.id = s.window_id
             where s.service_id = any($1) and w.ends_at > now() - interval '90 days'",
        )
        .bind(services)
        .fetch_all(&mut *tx)
        .await?;
        let mut windows = Self::default();
        for row in &rows {
            let interval = (timestamp(row, "starts_at")?, timestamp(row, "ends_at")?);
            windows.0.entry(row.try_get("service_id")?).or_default().push(interval);
        }
        Ok(windows)
    }

    fn cover(&self, service_id: &str, at: Timestamp) -> bool {
        self.0.get(service_id).is_some_and(|w| w.iter().any(|(start, end)| *start <= at && at < *end))
    }
}
