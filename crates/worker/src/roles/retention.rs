//! Background role: keeps the event log (and the webhook delivery log) bounded. The log is partitioned by the UTC day an event
//! was accepted; this role creates the coming days' partitions and drops the days older than
//! `EVENT_RETENTION_DAYS` whole (never row by row). Safe on any number of workers: one
//! transaction-scoped advisory lock lets one process at a time do it.
//!
//! What a dropped day leaves behind:
//! - incidents keep their own state (alert count, first alert as `createdAt`, every timestamp);
//! - each incident that had events that day gets one `events_expired` timeline entry summarising
//!   them (how many, how many alerts, first and last);
//! - the events a still-open incident needs for order repair (its key's events since the event
//!   that opened it) move to the default partition, so a late event still re-folds exactly.

use std::time::Duration;

use jiff::civil::Date;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the role runs.
const INTERVAL: Duration = Duration::from_secs(3600);

/// Days ahead whose partitions exist before events arrive.
const DAYS_AHEAD: i32 = 3;

/// Days the webhook delivery log keeps a finished delivery.
const DELIVERY_LOG_DAYS: u32 = 30;

/// Key of the advisory lock that lets one process at a time maintain the log.
const LOCK: i64 = 0x0f55_e17e_0001;

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Another process held the lock: nothing done.
    pub skipped: bool,
    /// Day partitions dropped.
    pub dropped: Vec<String>,
    /// Events moved to the default partition because open incidents need them.
    pub kept: u64,
    /// Days whose partition could not be made because their events already sit in the default partition.
    pub unpartitioned: Vec<Date>,
}

/// Runs a pass at start and every hour until `shutdown`.
pub async fn run(pool: PgPool, retention_days: u32, shutdown: CancellationToken) {
    loop {
        let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
        match maintain(&pool, retention_days, today).await {
            Ok(report) if !report.dropped.is_empty() || !report.unpartitioned.is_empty() => {
                tracing::info!(dropped = ?report.dropped, kept = report.kept, unpartitioned = ?report.unpartitioned,
                    "event log maintained");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "event log maintenance failed; retrying in an hour"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// One pass for `today` (UTC): partitions for yesterday to `today + 3`, and every day before
/// `today - retention_days` dropped.
pub async fn maintain(pool: &PgPool, retention_days: u32, today: Date) -> Result<Report, sqlx::Error> {
    let mut report = Report::default();
    let mut tx = pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("select pg_try_advisory_xact_lock($1)").bind(LOCK).fetch_one(&mut *tx).await?;
    if !locked {
        report.skipped = true;
        return Ok(report);
    }
    sqlx::query("delete from apply_failures where updated_at < now() - interval '7 days'").execute(&mut *tx).await?;
    // The webhook delivery log keeps finished deliveries (and their attempts) for 30 days.
    sqlx::query(&format!(
        "delete from webhook_deliveries where status <> 'pending' and finished_at < now() - interval '{DELIVERY_LOG_DAYS} days'"
    ))
    .execute(&mut *tx)
    .await?;
    // Sent, failed and cancelled notifications likewise (their outcomes stay in the timelines),
    // and console sessions a day after they expired or were revoked.
    sqlx::query(&format!(
        "delete from notifications where status <> 'pending' and finished_at < now() - interval '{DELIVERY_LOG_DAYS} days'"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from console_sessions where coalesce(revoked_at, expires_at) < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    for offset in -1..=DAYS_AHEAD {
        let day =
            today.checked_add(jiff::Span::new().days(offset)).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let made: bool =
            sqlx::query_scalar("select events_ensure_day($1::date)").bind(day.to_string()).fetch_one(&mut *tx).await?;
        if !made {
            report.unpartitioned.push(day);
        }
    }
    let cutoff = today
        .checked_sub(jiff::Span::new().days(i64::from(retention_days)))
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let expired: Vec<String> = sqlx::query_scalar(
        r"select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
          where i.inhparent = 'events'::regclass and c.relname ~ '^events_[0-9]{8}$'
            and to_date(substr(c.relname, 8), 'YYYYMMDD') < $1::date
          order by c.relname",
    )
    .bind(cutoff.to_string())
    .fetch_all(&mut *tx)
    .await?;
    for partition in expired {
        report.kept += drop_day(&mut tx, &partition).await?;
        report.dropped.push(partition);
    }
    // Retried events are recognised as long as the log keeps events.
    sqlx::query("delete from idempotent_events where received_at < ($1::date)::timestamp at time zone 'UTC'")
        .bind(cutoff.to_string())
        .execute(&mut *tx)
        .await?;
    // Kept events whose incident has since been resolved are no longer needed.
    sqlx::query(
        "delete from events_default e
         where e.received_at < ($1::date)::timestamp at time zone 'UTC'
           and not exists (select 1 from incidents i
                           where i.service_id = e.service_id and i.dedup_key = e.dedup_key
                             and i.status <> 'RESOLVED' and e.seq >= i.opened_seq)",
    )
    .bind(cutoff.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("event_log_partitions_dropped_total").increment(report.dropped.len() as u64);
    Ok(report)
}

/// How long one attempt to detach a day may wait for a lock; see `detach`.
const DETACH_LOCK_WAIT: &str = "200ms";

/// Pause between attempts to detach a day.
const DETACH_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Detaches `table` from `events`. The detach holds `events` exclusively while it waits for the
/// day's own lock, and an autovacuum of the day (routine on a large or old partition) holds that
/// lock until PostgreSQL cancels it after `deadlock_timeout`, or for its whole run if it prevents
/// wraparound: waiting for it would stall every writer of `events` that long. So each attempt
/// waits at most `DETACH_LOCK_WAIT` for either lock, gives both back if it cannot have them, and
/// tries again a moment later, until the day is free.
async fn detach(tx: &mut sqlx::PgConnection, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("set local lock_timeout = '{DETACH_LOCK_WAIT}'")).execute(&mut *tx).await?;
    loop {
        sqlx::query("savepoint detach").execute(&mut *tx).await?;
        match sqlx::query(&format!("alter table events detach partition {table}")).execute(&mut *tx).await {
            Ok(_) => break,
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("55P03") => {
                sqlx::query("rollback to savepoint detach").execute(&mut *tx).await?;
                tokio::time::sleep(DETACH_RETRY_PAUSE).await;
            }
            Err(err) => return Err(err),
        }
    }
    sqlx::query("release savepoint detach").execute(&mut *tx).await?;
    sqlx::query("set local lock_timeout to default").execute(&mut *tx).await?;
    Ok(())
}

/// Summarises one day into its incidents' timelines and sets aside what open incidents need, both
/// while the day is still attached (reading it locks nothing workers write), then detaches it,
/// puts back what was set aside, and drops it: `events` is locked exclusively only for that last
/// short step, never for the length of the summary. (No event is added to an expired day
/// meanwhile: workers refuse events older than the log, see `consumer::decode`.) Returns how many
/// events were kept.
async fn drop_day(tx: &mut sqlx::PgConnection, partition: &str) -> Result<u64, sqlx::Error> {
    // `partition` comes from pg_class and matches ^events_[0-9]{8}$: safe to quote as an identifier.
    let table = format!("\"{partition}\"");
    sqlx::query(&format!(
        "insert into incident_timeline (incident_id, at, kind, actor_id, data)
         select e.incident_id, max(e.received_at), 'events_expired', 'system',
                jsonb_build_object('events', count(*),
                                   'alerts', count(*) filter (where e.action = 'trigger' and e.actor_id is null),
                                   'first', min(e.received_at), 'last', max(e.received_at))
         from {table} e join incidents i on i.id = e.incident_id
         group by e.incident_id"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "create temporary table kept_events on commit drop as
         select e.* from {table} e
         where exists (select 1 from incidents i
                       where i.service_id = e.service_id and i.dedup_key = e.dedup_key
                         and i.status <> 'RESOLVED' and e.seq >= i.opened_seq)"
    ))
    .execute(&mut *tx)
    .await?;
    detach(tx, &table).await?;
    let kept = sqlx::query("insert into events select * from kept_events").execute(&mut *tx).await?.rows_affected();
    sqlx::query("drop table kept_events").execute(&mut *tx).await?;
    sqlx::query(&format!("drop table {table}")).execute(&mut *tx).await?;
    Ok(kept)
}
