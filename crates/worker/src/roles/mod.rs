//! Background roles every worker runs beside applying events. Each is safe on any number of
//! workers at once; add a new one as a module here and spawn it in [`crate::start`].

pub mod escalation;
pub mod heartbeats;
pub mod notify;
pub mod relay;
pub mod retention;
pub mod upkeep;
pub mod webhooks;

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// How long a worker that does not hold a role waits before trying to take it over.
const STANDBY: Duration = Duration::from_secs(1);

/// Runs a role on one worker at a time until `shutdown`. Whoever takes the session advisory lock
/// `lock`, on a connection of its own, runs `lead` with that connection (the lock goes with it:
/// `lead` pings it to know it still holds the lock); the others try again every second, so one of
/// them takes over within a second of the holder's death, each trying on the connection it keeps
/// while it stands by (a new session per attempt costs PostgreSQL a backend each time). A failed
/// `lead` is logged and retried.
pub async fn one_at_a_time<Lead: Future<Output = anyhow::Result<()>>>(
    pool: &PgPool,
    lock: i64,
    role: &str,
    shutdown: &CancellationToken,
    mut lead: impl FnMut(PgConnection) -> Lead,
) {
    let mut standing_by: Option<PgConnection> = None;
    while !shutdown.is_cancelled() {
        let held = async {
            let mut holder = match standing_by.take() {
                Some(connection) => connection,
                None => PgConnection::connect_with(&pool.connect_options()).await?,
            };
            let ours: bool =
                sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(lock).fetch_one(&mut holder).await?;
            if ours {
                lead(holder).await
            } else {
                standing_by = Some(holder);
                Ok(())
            }
        };
        if let Err(err) = held.await {
            tracing::warn!(role, error = %format!("{err:#}"), "failed; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STANDBY) => {}
        }
    }
}
