//! OpsSentinal worker: a durable JetStream pull consumer that applies events to PostgreSQL,
//! acknowledging each only after the transaction that applied it committed. Any number of
//! workers may run at once; see `apply` for how per-key order is kept.

pub mod apply;
pub mod config;
pub mod consumer;
pub mod ownership;
pub mod partitions;
pub mod roles;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use common::config::NatsConfig;
use common::http::{Dependency, Readiness, health_router};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{WorkerConfig, WorkerSettings};
use consumer::Applier;
use ownership::Leases;
use partitions::Coordinator;

/// Starts the worker: `settings.concurrency` lanes, the coordinator that owns this process's
/// share of the partitions and fetches them into the lanes, the background roles (retention,
/// upkeep), and a task that publishes the backlog gauge. Waits (with backoff) for NATS to set up the streams;
/// an empty set if `shutdown` fires first. Wait on the returned set to know when they have
/// drained after `shutdown`.
pub async fn start(
    settings: &WorkerSettings,
    nats: &NatsConfig,
    pool: PgPool,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    settings.validate()?;
    nats.validate()?;
    let js = jetstream::new(client.clone());
    let Some(stream) = common::nats::ensure_streams_when_reachable(&js, nats, &shutdown).await? else {
        return Ok(JoinSet::new());
    };
    let leases =
        Leases::new((*pool.connect_options()).clone(), &ownership::lock_name(&nats.stream, &settings.consumer));
    let mut tasks = JoinSet::new();
    tasks.spawn(roles::retention::run(pool.clone(), settings.retention_days, shutdown.clone()));
    tasks.spawn(roles::upkeep::run(pool.clone(), shutdown.clone()));
    tasks.spawn(roles::relay::run(pool.clone(), js.clone(), nats.clone(), shutdown.clone()));
    tasks.spawn(roles::webhooks::fanout::run(pool.clone(), js.clone(), nats.clone(), shutdown.clone()));
    tasks.spawn(roles::webhooks::send::run(pool.clone(), settings.webhooks.clone(), shutdown.clone()));
    tasks.spawn(roles::escalation::run(pool.clone(), shutdown.clone()));
    let (webhooks, notify) = (settings.webhooks.clone(), settings.notify.clone());
    tasks.spawn(roles::notify::run(pool.clone(), webhooks, notify, shutdown.clone()));
    tasks.spawn(roles::heartbeats::run(pool.clone(), js.clone(), nats.clone(), shutdown.clone()));
    let applier = Arc::new(Applier {
        pool,
        stream: nats.stream.clone(),
        js,
        dlq_subject: nats.dlq_subject(),
        settings: settings.clone(),
    });
    let mut lanes = Vec::with_capacity(settings.concurrency);
    for _ in 0..settings.concurrency {
        let (sender, lane) = consumer::lane(applier.clone(), shutdown.clone());
        lanes.push(sender);
        tasks.spawn(lane);
    }
    let buffer = Arc::new(tokio::sync::Semaphore::new(settings.max_buffered_bytes as usize));
    let coordinator =
        Coordinator { applier, client, stream: stream.clone(), nats: nats.clone(), leases, lanes, buffer };
    tasks.spawn(coordinator.run(shutdown.clone()));
    tasks.spawn(report_backlog(stream, shutdown));
    Ok(tasks)
}

/// Publishes the number of JetStream messages accepted and not yet applied (on a work-queue
/// stream, the messages it holds; each is a frame of one or more events) and their size in bytes
/// (against `NATS_STREAM_MAX_BYTES`).
async fn report_backlog(mut stream: jetstream::stream::Stream, shutdown: CancellationToken) {
    loop {
        if let Ok(info) = stream.info().await {
            metrics::gauge!("worker_stream_backlog").set(info.state.messages as f64);
            metrics::gauge!("worker_stream_bytes").set(info.state.bytes as f64);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Runs a standalone worker with its health and metrics endpoint on `listener`. Serves `/readyz`
/// (503, naming what is missing) at once, whatever is down, and starts working when PostgreSQL
/// and NATS can be reached.
pub async fn run(config: WorkerConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let pool = common::db::pool(&config.database)?;
    let client = common::nats::connect(&config.nats, "opssentinal-worker").await?;
    let working = Arc::new(AtomicBool::new(false));
    let readiness = Readiness {
        required: vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Nats(client.clone()),
            Dependency::SetUp("consumers", working.clone()),
        ],
        optional: vec![],
    };
    common::telemetry::export_counters(&[
        "events_applied_total",
        "events_duplicate_total",
        "events_dead_lettered_total",
        "worker_refolds_total",
        "worker_retries_total",
        "worker_transient_failures_total",
        "worker_database_unavailable_total",
        "webhook_deliveries_made_total",
        "webhook_deliveries_given_up_total",
        "webhook_changes_expired_total",
        "webhook_changes_unreadable_total",
        "escalation_steps_total",
        "notifications_total",
        "heartbeats_missed_total",
    ]);
    let app = health_router(readiness).fallback(common::http::not_found);
    tracing::info!(listen = %listener.local_addr()?, "worker running");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let work = async {
        common::db::migrate_when_reachable(&pool, &shutdown).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut tasks = start(&config.worker, &config.nats, pool.clone(), client.clone(), shutdown.clone()).await?;
        working.store(true, Ordering::Release);
        while tasks.join_next().await.is_some() {}
        anyhow::Ok(())
    };
    let (served, worked) = tokio::join!(server, work);
    // Acks are buffered in the client: send them, if NATS can still be reached.
    common::nats::flush_bounded(&client).await;
    served?;
    worked
}
