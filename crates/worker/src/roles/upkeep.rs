//! Background role: every second, incidents whose snooze ended go back to `OPEN` (a system change
//! in their key's log, under the key's lock), and pending incident-count deltas are folded into
//! the counts. Safe on any number of workers: both steps lock what they change.

use std::time::Duration;

use common::incident::change::{fold_count_deltas, reopen_due_snoozes};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(1);

/// Runs the upkeep every second until `shutdown`.
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    loop {
        if let Err(err) = reopen_due_snoozes(&pool).await {
            tracing::warn!(error = %err, "could not reopen snoozed incidents");
        }
        if let Err(err) = fold_count_deltas(&pool).await {
            tracing::warn!(error = %err, "could not fold incident count deltas");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
