//! PostgreSQL pool and migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The channel a new or replayed webhook delivery is announced on (`pg_notify`), so idle
/// senders wake at once.
pub const WEBHOOK_WAKE_CHANNEL: &str = "webhook_deliveries";

/// The channel a step made due now (`POST /api/incidents/{id}/escalate`) is announced on, so an
/// idle escalator fires it at once.
pub const ESCALATION_WAKE_CHANNEL: &str = "escalations";

use crate::config::DatabaseConfig;

/// The schema, embedded in every binary.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool that connects lazily, so a service can start (and ingest keep accepting) while
/// PostgreSQL is down.
pub fn pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(&config.url)
        .context("DATABASE_URL")
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")
}

/// Whether an error means "the database is not reachable right now" (retry later) rather than
/// "this statement is wrong".
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // class 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown, cannot connect now;
            // 53300: too many connections
            db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300")
        }
        _ => false,
    }
}

/// Applies migrations, waiting (with backoff) for PostgreSQL to become reachable. Returns `Ok`
/// without migrating if `shutdown` fires first (callers check the token).
pub async fn migrate_when_reachable(
    pool: &PgPool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let attempt = (|| MIGRATOR.run(pool))
        .retry(backoff)
        .when(|err| matches!(err, sqlx::migrate::MigrateError::Execute(e) if is_unavailable(e)))
        .notify(|err, delay| tracing::warn!(error = %err, retry_in_ms = delay.as_millis(), "database unreachable, waiting to migrate"));
    tokio::select! {
        result = attempt => result.context("applying database migrations"),
        () = shutdown.cancelled() => Ok(()),
    }
}
