//! Turns the change stream into webhook deliveries. One worker at a time does it, holding a
//! session advisory lock on a connection of its own (the others stand by); it reads the stream
//! in order with an ordered consumer from the position stored in `webhook_fanout`, and writes a
//! batch's deliveries and the new position in one transaction, so a fan-out that dies re-reads
//! at most what it had not committed, and `unique (webhook_id, change_id)` drops what it wrote
//! twice. Each delivery's body is made here, once: every attempt sends the same bytes.
//! While no webhook is enabled it reads nothing: it moves its position to the stream's end once
//! a second.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::config::NatsConfig;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// Key of the advisory lock the fanning-out worker holds.
pub const LOCK: i64 = 0x0f55_e17e_0004;
/// Most changes written in one transaction.
const BATCH: usize = 500;
/// How long a batch gathers changes after its first.
const GATHER: Duration = Duration::from_millis(20);
/// How long the fan-out waits for a change before checking it still holds the lock.
const IDLE: Duration = Duration::from_secs(1);
/// Fans out until `shutdown`, taking over whenever no other worker does.
pub async fn run(pool: PgPool, js: jetstream::Context, nats: NatsConfig, shutdown: CancellationToken) {
    crate::roles::one_at_a_time(&pool, LOCK, "webhook fan-out", &shutdown, |holder| {
        let (pool, js, nats, shutdown) = (pool.clone(), js.clone(), nats.clone(), shutdown.clone());
        async move { lead(holder, &pool, &js, &nats, &shutdown).await }
    })
    .await;
}

/// A webhook as the fan-out matches changes against it.
#[derive(sqlx::FromRow)]
struct Webhook {
    id: String,
    events: Option<Vec<String>>,
    service_ids: Option<Vec<String>>,
    /// When it was created, in microseconds since the epoch.
    created_at: i64,
}

impl Webhook {
    fn wants(&self, change: &Change) -> bool {
        let (kind, service_id) = (&change.kind, &change.service_id);
        change.at.as_microsecond() >= self.created_at
            && self.events.as_ref().is_none_or(|events| events.iter().any(|e| e == kind))
            && self.service_ids.as_ref().is_none_or(|ids| ids.iter().any(|id| id == service_id))
    }
}

/// One change read from the stream, made into the body every webhook that wants it is sent.
struct Change {
    seq: u64,
    id: uuid::Uuid,
    at: jiff::Timestamp,
    kind: String,
    incident_id: String,
    service_id: String,
    body: String,
}

/// A change as the relay publishes it; the parts the body carries as they are stay unparsed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Published<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    at: &'a RawValue,
    actor: &'a RawValue,
    incident_id: String,
    service_id: String,
    version: i64,
    incident: &'a RawValue,
}

/// Whether a published change is a service's (it names no incident).
fn of_service(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct About {
        incident_id: Option<String>,
    }
    serde_json::from_slice::<About>(payload).is_ok_and(|about| about.incident_id.is_none())
}

impl Change {
    fn read(seq: u64, payload: &[u8]) -> Option<Self> {
        let change: Published = serde_json::from_slice(payload).ok()?;
        let (at, kind) = (change.at.get(), change.kind);
        let body = format!(
            r#"{{"type":"incident.{kind}","timestamp":{at},"data":{{"incident":{},"change":{{"id":"{}","type":"{kind}","at":{at},"actor":{},"version":{},"sequence":{seq}}}}}}}"#,
            change.incident.get(),
            change.id,
            change.actor.get(),
            change.version,
        );
        Some(Self {
            seq,
            id: change.id,
            at: serde_json::from_str::<String>(at).ok()?.parse().ok()?,
            kind: format!("incident.{kind}"),
            incident_id: change.incident_id,
            service_id: change.service_id,
            body,
        })
    }
}

/// Fans out until `shutdown` or a failure, holding the lock on `holder`.
async fn lead(
    mut holder: PgConnection,
    pool: &PgPool,
    js: &jetstream::Context,
    nats: &NatsConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut stream = js.get_stream(nats.changes_stream()).await?;
    let state = stream.info().await?.state.clone();
    // The first fan-out starts at the stream's start; a webhook is sent the changes made after
    // it was created (see `Webhook::wants`), however far behind the fan-out is.
    let done: i64 = sqlx::query_scalar(
        "insert into webhook_fanout (stream_seq) values ($1)
         on conflict (one) do update set stream_seq = webhook_fanout.stream_seq returning stream_seq",
    )
    .bind(i64::try_from(state.first_sequence.saturating_sub(1))?)
    .fetch_one(pool)
    .await?;
    let start_sequence = u64::try_from(done)? + 1;
    if start_sequence < state.first_sequence {
        let lost = state.first_sequence - start_sequence;
        tracing::warn!(lost, "changes left the change stream before webhooks were sent them");
        metrics::counter!("webhook_changes_expired_total").increment(lost);
    }
    tracing::info!(from = start_sequence, "fanning out changes to webhooks");
    let mut next = start_sequence;
    let mut reading = None;
    while !shutdown.is_cancelled() {
        // Still holding the lock: a lost connection means another worker may be fanning out.
        holder.ping().await?;
        let Some(messages) = reading.as_mut() else {
            // Nobody wants changes: skip what the stream holds without reading it. The stream's
            // end is read before the webhooks, so a webhook created after the check wants none of
            // the changes skipped (they were all made before it).
            let end = stream.info().await?.state.last_sequence;
            if any_enabled(pool).await? {
                let deliver_policy = consumer::DeliverPolicy::ByStartSequence { start_sequence: next };
                let reader = stream
                    .create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
                    .await?;
                reading = Some(reader.messages().await?);
            } else {
                if end >= next {
                    record_position(pool, end).await?;
                    next = end + 1;
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(IDLE) => {}
                }
            }
            continue;
        };
        let mut batch = Vec::new();
        let mut wait = IDLE;
        while batch.len() < BATCH {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = tokio::time::timeout(wait, messages.next()) => message,
            };
            let Ok(message) = message else { break };
            let message = message.ok_or_else(|| anyhow::anyhow!("the change stream's consumer ended"))??;
            let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            batch.push((seq, message.payload.clone()));
            wait = GATHER;
        }
        if let Some(&(last, _)) = batch.last() {
            if !write(pool, &batch, last).await? {
                reading = None;
            }
            next = last + 1;
        }
    }
    Ok(())
}

async fn any_enabled(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from webhooks where enabled)").fetch_one(pool).await
}

async fn record_position(pool: &PgPool, last: u64) -> anyhow::Result<()> {
    sqlx::query("update webhook_fanout set stream_seq = $1").bind(i64::try_from(last)?).execute(pool).await?;
    Ok(())
}

/// Writes the deliveries of the changes in `batch` (position, message) for every enabled webhook
/// that wants them, and `last` as the position read, in one transaction. Returns whether any
/// webhook is enabled; with none the changes are not even read.
async fn write(pool: &PgPool, batch: &[(u64, bytes::Bytes)], last: u64) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let webhooks: Vec<Webhook> = sqlx::query_as(
        "select id, events, service_ids, (extract(epoch from created_at) * 1000000)::int8 as created_at
         from webhooks where enabled",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut changes = Vec::new();
    if !webhooks.is_empty() {
        // Webhooks are sent incidents' changes; a service's (`service.status_changed`) is not one.
        let incidents: Vec<_> = batch.iter().filter(|(_, payload)| !of_service(payload)).collect();
        changes.extend(incidents.iter().filter_map(|(seq, payload)| Change::read(*seq, payload)));
        if changes.len() < incidents.len() {
            let skipped = incidents.len() - changes.len();
            tracing::warn!(skipped, "change stream messages that are not changes; skipped");
            metrics::counter!("webhook_changes_unreadable_total").increment(skipped as u64);
        }
    }
    let (mut ids, mut webhook_ids, mut change_ids, mut seqs, mut incidents, mut kinds, mut bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for change in &changes {
        for webhook in webhooks.iter().filter(|w| w.wants(change)) {
            ids.push(common::ids::new_id("msg"));
            webhook_ids.push(webhook.id.as_str());
            change_ids.push(change.id);
            seqs.push(i64::try_from(change.seq)?);
            incidents.push(change.incident_id.as_str());
            kinds.push(change.kind.as_str());
            bodies.push(change.body.as_str());
        }
    }
    if !ids.is_empty() {
        let made = sqlx::query(
            "insert into webhook_deliveries (id, webhook_id, change_id, stream_seq, incident_id, type, body)
             select * from unnest($1::text[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::text[], $7::text[])
             on conflict (webhook_id, change_id) do nothing",
        )
        .bind(&ids)
        .bind(&webhook_ids)
        .bind(&change_ids)
        .bind(&seqs)
        .bind(&incidents)
        .bind(&kinds)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
        sqlx::query("select pg_notify($1, '')").bind(common::db::WEBHOOK_WAKE_CHANNEL).execute(&mut *tx).await?;
        metrics::counter!("webhook_deliveries_made_total").increment(made.rows_affected());
    }
    sqlx::query("update webhook_fanout set stream_seq = $1").bind(i64::try_from(last)?).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(!webhooks.is_empty())
}
