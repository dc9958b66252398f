//! Background role: every second, incidents whose snooze ended go back to `OPEN` (a system change
//! in their key's log, under the key's lock), so do incidents an ended maintenance window kept
//! `SUPPRESSED`, and pending incident-count deltas are folded into
//! the counts. One worker at a time does a round: a transaction-scoped advisory lock held for the
//! round lets the others skip it (both steps would also be safe concurrently; they lock what
//! they change).

use std::time::Duration;

use common::ApiError;
use common::incident::change::{apply_status, lock_incident, snooze_ended};
use common::incident::state::{IncidentStatus, ManualChange};
use serde_json::json;
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

/// Returns incidents whose snooze ended to `OPEN` (a system change in their key's log), at most
/// 100 per call; returns how many were reopened.
pub async fn reopen_due_snoozes(pool: &PgPool) -> Result<usize, ApiError> {
    let due: Vec<(String, String, String)> = sqlx::query_as(
        "select id, service_id, dedup_key from incidents where status = 'SNOOZED' and snoozed_until <= now() limit 100",
    )
    .fetch_all(pool)
    .await?;
    let mut reopened = 0;
    for (id, service_id, dedup_key) in due {
        let mut tx = pool.begin().await?;
        let Some((position, incident)) = lock_incident(&mut tx, &service_id, &dedup_key, &id).await? else {
            continue;
        };
        if incident.status == IncidentStatus::Snoozed && snooze_ended(&incident) {
            apply_status(&mut tx, &service_id, &dedup_key, position, incident, ManualChange::Reopen, "system").await?;
            reopened += 1;
        }
        tx.commit().await?;
    }
    Ok(reopened)
}

/// Opens what maintenance kept quiet once it is over (DESIGN §12): each `SUPPRESSED` incident
/// whose service no window covers now becomes `OPEN` (a system change in its key's log, with a
/// timeline entry naming the window that ended last), which starts its escalation. Whatever the
/// window's end was (on time, ended early), and also for a trigger accepted inside a window but
/// applied after it ended. At most 100 per call; returns how many were opened.
pub async fn end_maintenance_windows(pool: &PgPool) -> Result<usize, ApiError> {
    let quiet: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "select i.id, i.service_id, i.dedup_key,
                (select w.id from maintenance_window_services o join maintenance_windows w on w.id = o.window_id
                 where o.service_id = i.service_id and w.ends_at <= now() order by w.ends_at desc limit 1)
         from incidents i
         where i.status = 'SUPPRESSED'
           and not exists (select 1 from maintenance_window_services o join maintenance_windows w on w.id = o.window_id
                           where o.service_id = i.service_id and w.starts_at <= now() and w.ends_at > now())
         limit 100",
    )
    .fetch_all(pool)
    .await?;
    let mut opened = 0;
    for (id, service_id, dedup_key, window) in quiet {
        let mut tx = pool.begin().await?;
        let Some((position, incident)) = lock_incident(&mut tx, &service_id, &dedup_key, &id).await? else {
            continue;
        };
        if incident.status == IncidentStatus::Suppressed {
            apply_status(&mut tx, &service_id, &dedup_key, position, incident, ManualChange::Reopen, "system").await?;
            sqlx::query(
                "insert into incident_timeline (incident_id, kind, actor_id, message, data)
                 values ($1, 'maintenance_ended', 'system', 'maintenance window ended: the incident is open', $2)",
            )
            .bind(&id)
            .bind(json!({"maintenanceWindowId": window}))
            .execute(&mut *tx)
            .await?;
            opened += 1;
        }
        tx.commit().await?;
    }
    sqlx::query("update maintenance_windows set ended_at = now() where ended_at is null and ends_at <= now()")
        .execute(pool)
        .await?;
    Ok(opened)
}

/// Folds the pending count deltas into the counts, in one statement (so any reader sees either
/// the deltas or their sum, never both or neither).
pub async fn fold_count_deltas(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "with moved as (delete from incident_count_deltas returning service_id, status, urgency, n)
         insert into incident_counts (service_id, status, urgency, n)
         select service_id, status, urgency, sum(n) from moved group by 1, 2, 3 order by 1, 2, 3
         on conflict (service_id, status, urgency) do update set n = incident_counts.n + excluded.n",
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
