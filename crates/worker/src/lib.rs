//! OpsSentinal worker: a durable JetStream pull consumer that applies events to PostgreSQL,
//! acknowledging each only after the transaction that applied it committed. Any number of
//! workers may run at once; see `apply` for how per-key order is kept.

pub mod apply;
pub mod config;
pub mod consumer;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::config::NatsConfig;
use common::http::{Dependency, Readiness, health_router};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{WorkerConfig, WorkerSettings};
use consumer::Consumer;

/// Starts the consumer (with `settings.concurrency` partitions) and a task that publishes the
/// backlog gauge.
/// Wait on the returned set to know when they have drained after `shutdown`.
pub async fn start(
    settings: &WorkerSettings,
    nats: &NatsConfig,
    pool: PgPool,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    settings.validate()?;
    let js = jetstream::new(client);
    let stream = common::nats::ensure_streams(&js, nats).await?;
    let consumer =
        common::nats::ensure_consumer(&stream, &settings.consumer, settings.ack_wait(), settings.max_ack_pending)
            .await?;
    let worker = Arc::new(Consumer { pool, js, dlq_subject: nats.dlq_subject(), settings: settings.clone() });
    let mut tasks = JoinSet::new();
    tasks.spawn(worker.run(consumer.clone(), shutdown.clone()));
    tasks.spawn(report_backlog(consumer, shutdown));
    Ok(tasks)
}

async fn report_backlog(mut consumer: jetstream::consumer::PullConsumer, shutdown: CancellationToken) {
    loop {
        if let Ok(info) = consumer.info().await {
            metrics::gauge!("worker_consumer_pending").set(info.num_pending as f64);
            metrics::gauge!("worker_consumer_ack_pending").set(info.num_ack_pending as f64);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Runs a standalone worker with its health and metrics endpoint on `listener`.
pub async fn run(config: WorkerConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let pool = common::db::pool(&config.database)?;
    common::db::migrate_when_reachable(&pool, &shutdown).await?;
    let client = common::nats::connect(&config.nats, "opssentinal-worker").await?;
    let mut tasks = start(&config.worker, &config.nats, pool.clone(), client.clone(), shutdown.clone()).await?;
    let readiness =
        Readiness { required: vec![Dependency::Postgres(pool), Dependency::Nats(client.clone())], optional: vec![] };
    let app = health_router(readiness).fallback(common::http::not_found);
    tracing::info!(listen = %listener.local_addr()?, "worker running");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let (served, ()) = tokio::join!(server, async { while tasks.join_next().await.is_some() {} });
    // Acks are buffered in the client: send them before exiting.
    client.flush().await?;
    served?;
    Ok(())
}
