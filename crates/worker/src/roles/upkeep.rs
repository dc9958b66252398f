//! Background role: every second, incidents whose snooze ended go back to `OPEN` (a system change
//! in their key's log, under the key's lock), so do incidents an ended maintenance window kept
//! `SUPPRESSED`, and pending incident-count deltas are folded into
//! the counts. One worker at a time does a round: a transaction-scoped advisory lock held for the
//! round lets the others skip it (both steps would also be safe concurrently; they lock what
//! they change).

use std::time::Duration;

use common::incident::change::{end_maintenance_windows, fold_count_deltas, reopen_due_snoozes};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(1);

/// Key of the advisory lock that lets one process at a time do a round.
pub const LOCK: i64 = 0x0f55_e17e_0002;

/// Runs the upkeep every second until `shutdown`.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    loop {
        if let Err(err) = round(&pool).await {
            tracing::warn!(error = %err, "incident upkeep failed; retrying in a second");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// One round, unless another worker is doing one. Returns whether this worker did it.
pub async fn round(pool: &PgPool) -> Result<bool, common::ApiError> {
    let mut holder = pool.begin().await?;
    let ours: bool =
        sqlx::query_scalar("select pg_try_advisory_xact_lock($1)").bind(LOCK).fetch_one(&mut *holder).await?;
    if ours {
        reopen_due_snoozes(pool).await?;
        end_maintenance_windows(pool).await?;
        fold_count_deltas(pool).await?;
    }
    holder.commit().await?;
    Ok(ours)
}
