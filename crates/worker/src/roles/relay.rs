//! Background role: publishes the change outbox to the change stream (DESIGN §9). One worker at
//! a time relays, holding a session advisory lock on a connection of its own; the others wait to
//! take over when it stops or dies. Changes go out in outbox order with at most one change per
//! incident in flight, so each incident's changes are stored in commit order; each is published
//! under its id as `Nats-Msg-Id`, so a relay that dies after publishing and before deleting the
//! rows republishes copies JetStream drops.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use common::config::NatsConfig;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Key of the advisory lock the relaying worker holds.
pub const LOCK: i64 = 0x0f55_e17e_0003;
/// Most changes read from the outbox at once.
const BATCH: i64 = 2000;
/// How long an idle relay waits before looking at the outbox again.
const IDLE: Duration = Duration::from_millis(20);
/// Relays until `shutdown`, taking over whenever no other worker relays.
pub async fn run(pool: PgPool, js: jetstream::Context, nats: NatsConfig, shutdown: CancellationToken) {
    crate::roles::one_at_a_time(&pool, LOCK, "change relay", &shutdown, |holder| {
        let (pool, js, nats, shutdown) = (pool.clone(), js.clone(), nats.clone(), shutdown.clone());
        async move { lead(holder, &pool, &js, &nats, &shutdown).await }
    })
    .await;
}

/// Relays until `shutdown` or a failure, holding the lock on `holder`.
async fn lead(
    mut holder: PgConnection,
    pool: &PgPool,
    js: &jetstream::Context,
    nats: &NatsConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!("relaying incident changes");
    let mut end = None;
    while !shutdown.is_cancelled() {
        // Still holding the lock: a lost connection means another worker may be relaying.
        holder.ping().await?;
        if relay_once(pool, js, nats, &mut end).await? == 0 {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(IDLE) => {}
            }
        }
    }
    Ok(())
}

type Row = (i64, Uuid, Option<String>, String, i64, String, String, String, String, f64);

/// Publishes the oldest changes of the outbox and deletes those JetStream stored; returns how
/// many. `end` is the change stream's last position as this relay last saw it (`None`: unknown).
///
/// The usual way costs one acknowledgement per batch: the changes go out in outbox order, each
/// expecting the stream to end exactly where the one before it left it
/// (`Nats-Expected-Last-Sequence`), and only the last waits for JetStream's answer. If that one
/// is stored, every one before it was, in order, exactly once. If anything differs (another
/// publisher, a copy JetStream dropped by its id, an unknown end), the batch goes again the
/// careful way: every change acknowledged, at most one per incident in flight, and a change not
/// stored stops its incident's later changes until the next call.
async fn relay_once(
    pool: &PgPool,
    js: &jetstream::Context,
    nats: &NatsConfig,
    end: &mut Option<u64>,
) -> anyhow::Result<usize> {
    let rows: Vec<Row> = sqlx::query_as(
        "select seq, id, incident_id, service_id, version, kind, to_jsonb(at)::text, actor, snapshot,
                extract(epoch from clock_timestamp() - written_at)::float8
         from incident_changes order by seq limit $1",
    )
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let rows_waited: std::collections::HashMap<i64, f64> = rows.iter().map(|row| (row.0, row.9)).collect();
    let read = std::time::Instant::now();
    let last = match *end {
        Some(last) => last,
        None => js.get_stream(nats.changes_stream()).await?.info().await?.state.last_sequence,
    };
    *end = in_sequence(js, nats, &rows, last).await;
    let relayed = match *end {
        Some(_) => rows.iter().map(|row| row.0).collect(),
        None => acknowledged_each(js, nats, rows).await?,
    };
    // From the writing transaction's start (a little before its commit) to the stream.
    let since_read = read.elapsed().as_secs_f64();
    let lag = metrics::histogram!("change_relay_lag_seconds");
    for waited in relayed.iter().filter_map(|seq| rows_waited.get(seq)) {
        lag.record(waited + since_read);
    }
    sqlx::query("delete from incident_changes where seq = any($1)").bind(&relayed).execute(pool).await?;
    metrics::counter!("changes_relayed_total").increment(relayed.len() as u64);
    Ok(relayed.len())
}

/// Publishes `rows` in order after position `last`, waiting for the last one's acknowledgement
/// only; the stream's new end if all were stored.
async fn in_sequence(js: &jetstream::Context, nats: &NatsConfig, rows: &[Row], last: u64) -> Option<u64> {
    let client = js.client();
    let (mut expected, final_row) = (last, rows.len() - 1);
    for (i, row) in rows.iter().enumerate() {
        let (subject, mut headers, body) = message(nats, row);
        headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
        expected += 1;
        if i < final_row {
            client.publish_with_headers(subject, headers, body.into()).await.ok()?;
        } else {
            let ack = js.publish_with_headers(subject, headers, body.into()).await.ok()?.await.ok()?;
            return (ack.sequence == expected && !ack.duplicate).then_some(ack.sequence);
        }
    }
    None
}

/// Publishes `rows`, each acknowledged, at most one change per incident in flight; the outbox
/// positions of those stored. A change not stored stops its incident's later changes.
async fn acknowledged_each(js: &jetstream::Context, nats: &NatsConfig, mut rows: Vec<Row>) -> anyhow::Result<Vec<i64>> {
    let mut stored = Vec::new();
    let mut failure = None;
    while !rows.is_empty() && failure.is_none() {
        // One change per incident per round, in outbox order.
        let mut in_round = HashSet::new();
        let (round, rest): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|row| in_round.insert(row.2.clone()));
        rows = rest;
        let publishes = round.iter().map(|row| publish(js, nats, row));
        for (row, result) in round.iter().zip(futures_util::future::join_all(publishes).await) {
            match result {
                Ok(()) => stored.push(row.0),
                Err(err) => failure = Some(err),
            }
        }
    }
    match failure {
        Some(err) if stored.is_empty() => Err(err),
        Some(err) => {
            tracing::warn!(error = %format!("{err:#}"), "a change was not stored; its incident's later changes wait");
            Ok(stored)
        }
        None => Ok(stored),
    }
}

async fn publish(js: &jetstream::Context, nats: &NatsConfig, row: &Row) -> anyhow::Result<()> {
    let (subject, headers, body) = message(nats, row);
    js.publish_with_headers(subject, headers, body.into()).await?.await?;
    Ok(())
}

/// A change's subject, headers (its id as `Nats-Msg-Id`) and body.
fn message(nats: &NatsConfig, row: &Row) -> (String, async_nats::HeaderMap, String) {
    let (_, id, incident_id, service_id, version, kind, at, actor, snapshot, _) = row;
    // The snapshot and time are stored as the JSON they are published as: spliced in unparsed.
    let quoted = |text: &str| Value::from(text).to_string();
    // A service's change carries the service (its version is the service's); an incident's, the incident.
    let (about, incident_id) = match incident_id {
        Some(incident_id) => ("incident", quoted(incident_id)),
        None => ("service", "null".to_owned()),
    };
    let body = format!(
        r#"{{"id":"{id}","type":{},"at":{at},"actor":{},"incidentId":{incident_id},"serviceId":{},"version":{version},"{about}":{snapshot}}}"#,
        quoted(kind),
        quoted(actor),
        quoted(service_id),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    (nats.changes_subject(service_id), headers, body)
}
