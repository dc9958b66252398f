//! Background role: raises an incident for each missed heartbeat (DESIGN §12). Every worker runs
//! it; a heartbeat is claimed with `for update skip locked`. A heartbeat not pinged by its due
//! time (last ping, or creation, plus interval and grace) gets a trigger event with key
//! `heartbeat:<id>` published to the event stream, the normal pipeline from there; it is marked
//! `down` in the same transaction, after the publish was stored. Ingest's ping endpoint marks it
//! `up` again and publishes the resolve.

use std::time::Duration;

use async_nats::jetstream;
use common::config::NatsConfig;
use common::event::{AlertPayload, Severity, heartbeat_event};
use serde_json::json;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(1);

/// Checks every second until `shutdown`.
pub async fn run(pool: PgPool, js: jetstream::Context, nats: NatsConfig, shutdown: CancellationToken) {
    loop {
        if let Err(err) = round(&pool, &js, &nats).await {
            tracing::warn!(error = %format!("{err:#}"), "heartbeat check failed; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// Raises the missed heartbeats due now (at most 100); returns how many.
async fn round(pool: &PgPool, js: &jetstream::Context, nats: &NatsConfig) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let missed = sqlx::query(
        "select id, service_id, name, interval_seconds, grace_seconds, last_ping_at::text as last_ping
         from heartbeats where state = 'up' and due_at <= now() order by due_at limit 100 for update skip locked",
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &missed {
        let (id, name): (String, String) = (row.try_get("id")?, row.try_get("name")?);
        let (interval, grace): (i32, i32) = (row.try_get("interval_seconds")?, row.try_get("grace_seconds")?);
        let last_ping: Option<String> = row.try_get("last_ping")?;
        let details =
            json!({"heartbeatId": id, "lastPingAt": last_ping, "intervalSeconds": interval, "graceSeconds": grace});
        let payload = AlertPayload {
            summary: format!("Heartbeat {name} missed: no ping for {} s", interval + grace),
            source: "opssentinal-heartbeats".into(),
            severity: Severity::Critical,
            timestamp: None,
            component: None,
            group: None,
            class: Some("heartbeat".into()),
            custom_details: details.as_object().cloned(),
        };
        let event = heartbeat_event(&id, &row.try_get::<String, _>("service_id")?, Some(payload));
        publish_event(js, nats, &event).await?;
        sqlx::query("update heartbeats set state = 'down' where id = $1").bind(&id).execute(&mut *tx).await?;
        metrics::counter!("heartbeats_missed_total").increment(1);
        tracing::info!(heartbeat = %id, %name, "heartbeat missed; incident triggered");
    }
    tx.commit().await?;
    Ok(missed.len())
}

/// Publishes one event in a message of its own (`Nats-Msg-Id` = its id, so a re-published copy
/// is dropped) on its partition's subject, and waits for JetStream to store it: how the system
/// itself raises an event (a missed heartbeat) through the normal pipeline.
pub async fn publish_event(
    js: &jetstream::Context,
    config: &NatsConfig,
    event: &common::event::EventEnvelope,
) -> anyhow::Result<u64> {
    let partition = common::config::partition_of(&event.service_id, &event.dedup_key, config.partitions);
    let message = jetstream::message::PublishMessage::build()
        .payload(serde_json::to_vec(event)?.into())
        .message_id(event.event_id.to_string());
    let stored = tokio::time::timeout(config.publish_timeout(), async {
        js.send_publish(config.partition_subject(partition), message).await?.await
    })
    .await??;
    Ok(stored.sequence)
}
