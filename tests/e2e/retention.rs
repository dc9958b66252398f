//! The event log stays bounded: days past the retention are dropped whole, incidents keep their
//! state and a summary, and a late event still re-folds exactly for a key whose old events are gone.

use common::event::EventAction;
use e2e::TestEnv;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use worker::apply::{QueuedEvent, apply_batch};
use worker::roles::retention::maintain;

fn event_on(day: Date, seq: i64, service_id: &str, dedup_key: &str, action: EventAction) -> QueuedEvent {
    let mut envelope = e2e::envelope(service_id, dedup_key, action, &format!("{dedup_key} is unhappy"));
    envelope.received_at = day.at(12, 0, (seq % 60) as i8, 0).to_zoned(TimeZone::UTC).expect("noon UTC").timestamp();
    QueuedEvent { seq, envelope }
}

async fn incident(env: &TestEnv, dedup_key: &str) -> (String, String, i32) {
    sqlx::query_as(
        "select id, status, alert_count from incidents where dedup_key = $1 order by created_at desc limit 1",
    )
    .bind(dedup_key)
    .fetch_one(&env.pool)
    .await
    .expect("incident")
}

async fn count(env: &TestEnv, sql: &str, dedup_key: &str) -> i64 {
    sqlx::query_scalar(sql).bind(dedup_key).fetch_one(&env.pool).await.expect("count")
}

/// Today (UTC), and a day 40 days ago with its partition made, as a log a month old would have.
async fn today_and_a_day_past_retention(env: &TestEnv) -> (Date, Date) {
    let today = jiff::Timestamp::now().to_zoned(TimeZone::UTC).date();
    let old = today.checked_sub(jiff::Span::new().days(40)).unwrap();
    let made: bool = sqlx::query_scalar("select events_ensure_day($1::date)")
        .bind(old.to_string())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(made);
    (today, old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_days_are_dropped_whole_and_open_incidents_keep_what_order_repair_needs() {
    let env = TestEnv::new().await;
    let service = env.service("API").await.id;
    let (today, old) = today_and_a_day_past_retention(&env).await;

    // 40 days ago: one incident opened and resolved, one opened and still open.
    apply_batch(
        &env.pool,
        &[
            event_on(old, 1, &service, "closed", EventAction::Trigger),
            event_on(old, 2, &service, "closed", EventAction::Resolve),
            event_on(old, 3, &service, "open", EventAction::Trigger),
            event_on(old, 4, &service, "open", EventAction::Trigger),
        ],
    )
    .await
    .unwrap();
    // Today: the open incident absorbs another alert.
    apply_batch(&env.pool, &[event_on(today, 10, &service, "open", EventAction::Trigger)]).await.unwrap();

    let report = maintain(&env.pool, 30, today).await.unwrap();
    let partition = format!("events_{}", old.strftime("%Y%m%d"));
    assert_eq!(report.dropped, vec![partition.clone()]);
    assert_eq!(report.kept, 2, "the open incident's two old events are kept");
    let gone: Option<String> =
        sqlx::query_scalar("select to_regclass($1)::text").bind(&partition).fetch_one(&env.pool).await.unwrap();
    assert_eq!(gone, None, "the day's partition was dropped, not emptied");
    assert_eq!(count(&env, "select count(*) from events where dedup_key = $1", "closed").await, 0);
    assert_eq!(count(&env, "select count(*) from events where dedup_key = $1", "open").await, 3);
    let closed = incident(&env, "closed").await;
    assert_eq!((closed.1.as_str(), closed.2), ("RESOLVED", 1), "incidents keep their state");
    let summaries = "select count(*) from incident_timeline t join incidents i on i.id = t.incident_id
                     where t.kind = 'events_expired' and i.dedup_key = $1";
    assert_eq!(count(&env, summaries, "closed").await, 1);
    assert_eq!(count(&env, summaries, "open").await, 1);

    // Late events: an acknowledge for the open key between its old and new alerts re-folds it
    // from what was kept; one for the resolved key (whose events are gone) is ignored and the
    // resolved incident stays.
    apply_batch(
        &env.pool,
        &[
            event_on(today, 5, &service, "open", EventAction::Acknowledge),
            event_on(today, 6, &service, "closed", EventAction::Acknowledge),
        ],
    )
    .await
    .unwrap();
    let open = incident(&env, "open").await;
    assert_eq!(
        (open.1.as_str(), open.2),
        ("ACKNOWLEDGED", 3),
        "the sequential result for trigger, trigger, ack, trigger"
    );
    assert_eq!(incident(&env, "closed").await, closed);

    // A second pass finds nothing to drop; once the open incident is resolved, its kept events go.
    assert!(maintain(&env.pool, 30, today).await.unwrap().dropped.is_empty());
    apply_batch(&env.pool, &[event_on(today, 11, &service, "open", EventAction::Resolve)]).await.unwrap();
    maintain(&env.pool, 30, today).await.unwrap();
    assert_eq!(count(&env, "select count(*) from events where dedup_key = $1 and seq < 5", "open").await, 0);
}

/// The upkeep role runs a round on one worker at a time, and a round folds the pending count
/// deltas (the snooze half is covered in `query_api.rs`).
#[tokio::test]
async fn upkeep_runs_one_round_at_a_time_and_folds_the_counts() {
    let env = TestEnv::new().await;
    let service = env.service("Upkeep").await;
    let today = jiff::Timestamp::now().to_zoned(TimeZone::UTC).date();
    apply_batch(&env.pool, &[event_on(today, 1, &service.id, "disk", EventAction::Trigger)]).await.unwrap();
    let pending = "select count(*) from incident_count_deltas where service_id = $1";
    assert!(count(&env, pending, &service.id).await > 0, "the trigger left a count delta");

    let mut other_worker = env.pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(worker::roles::upkeep::LOCK)
        .execute(&mut *other_worker)
        .await
        .unwrap();
    assert!(!worker::roles::upkeep::round(&env.pool).await.unwrap(), "a round while another runs is skipped");
    assert!(count(&env, pending, &service.id).await > 0);
    other_worker.commit().await.unwrap();

    assert!(worker::roles::upkeep::round(&env.pool).await.unwrap());
    assert_eq!(count(&env, pending, &service.id).await, 0);
    let counted: i64 = sqlx::query_scalar(
        "select coalesce(sum(n), 0)::int8 from incident_counts where service_id = $1 and status = 'OPEN'",
    )
    .bind(&service.id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(counted, 1);
}

/// DESIGN §1.3 at the edge of the log: with `EVENT_RETENTION_DAYS=1`, a dead letter from three
/// days ago replayed at its original position, before the key's live incident, is refused to the
/// dead-letter stream with its reason instead of re-folding the key from a history that is gone:
/// the key's incident, its state and count are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_the_log_is_dead_lettered_not_re_folded() {
    use std::time::Duration;
    let env = TestEnv::new().await;
    let service = env.service("API").await.id;
    let mut settings = env.worker_settings();
    settings.retention_days = 1;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let subject = env.nats.event_subject(&service, "disk");

    let live = e2e::envelope(&service, "disk", EventAction::Trigger, "disk full");
    js.publish(subject.clone(), serde_json::to_vec(&live).unwrap().into()).await.unwrap().await.unwrap();
    env.wait_for_applied(1, Duration::from_secs(30)).await;
    let before = incident(&env, "disk").await;

    let mut old = e2e::envelope(&service, "disk", EventAction::Trigger, "disk full, three days ago");
    old.received_at = jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_hours(72)).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(common::nats::ORIGINAL_SEQ_HEADER, "1");
    js.publish_with_headers(subject, headers, serde_json::to_vec(&old).unwrap().into()).await.unwrap().await.unwrap();
    let dlq = js.get_stream(env.nats.dlq_stream()).await.unwrap();
    e2e::wait_until(Duration::from_secs(30), "the old event to be dead-lettered", || async {
        dlq.clone().info().await.is_ok_and(|i| i.state.messages == 1)
    })
    .await;
    let letter = dlq.get_last_raw_message_by_subject(&env.nats.dlq_subject()).await.unwrap();
    let reason = letter.headers.get("OpsSentinal-Reason").map(|v| v.to_string()).unwrap_or_default();
    assert!(reason.contains("EVENT_RETENTION_DAYS"), "{reason}");
    env.wait_until_drained(Duration::from_secs(30)).await;
    assert_eq!(incident(&env, "disk").await, before, "the key's incident changed");
    assert_eq!(count(&env, "select count(*) from incidents where dedup_key = $1", "disk").await, 1);
}

/// Retention never stalls the pipeline: dropping an expired day of `RETENTION_TEST_ROWS` events
/// (2,000,000 by default) while batches of events are applied at 2,000 a second leaves no gap of a
/// second or more between batches, even while an autovacuum holds the day (the day is summarised
/// before `events` is locked; the lock covers only the detach and the drop, and the detach never
/// waits for the day while holding `events`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_large_expired_day_does_not_stall_applying() {
    use std::time::{Duration, Instant};
    let env = TestEnv::new().await;
    let service = env.service("API").await.id;
    let (today, old) = today_and_a_day_past_retention(&env).await;
    // 100 incidents opened and resolved that day, and the day's many events.
    let rows: u64 = std::env::var("RETENTION_TEST_ROWS").ok().and_then(|r| r.parse().ok()).unwrap_or(2_000_000);
    let mut opened = Vec::new();
    for k in 0..100 {
        let key = format!("old-{k}");
        opened.push(event_on(old, k * 2 + 1, &service, &key, EventAction::Trigger));
        opened.push(event_on(old, k * 2 + 2, &service, &key, EventAction::Resolve));
    }
    apply_batch(&env.pool, &opened).await.unwrap();
    let partition = format!("events_{}", old.strftime("%Y%m%d"));
    sqlx::query(&format!(
        "insert into {partition} (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome, incident_id)
         select gen_random_uuid(), 1000 + g, e.service_id, e.dedup_key, 'trigger', '{{\"summary\": \"old\"}}'::jsonb,
                e.received_at, 'absorbed', e.incident_id
         from generate_series(1, {rows}) g
         join (select *, row_number() over (order by seq) - 1 as n from {partition} where action = 'trigger') e
           on e.n = g % 100"
    ))
    .execute(&env.pool)
    .await
    .unwrap();

    // The load: a batch of 100 new events every 50 ms, each commit's time recorded.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (pool, service, stop) = (env.pool.clone(), service.clone(), stop.clone());
        tokio::spawn(async move {
            let mut commits = Vec::new();
            let mut seq = 10_000_000;
            while !stop.is_cancelled() {
                let batch: Vec<QueuedEvent> = (0..100)
                    .map(|i| {
                        seq += 1;
                        let envelope =
                            e2e::envelope(&service, &format!("live-{}", i % 20), EventAction::Trigger, "live");
                        QueuedEvent { seq, envelope }
                    })
                    .collect();
                apply_batch(&pool, &batch).await.unwrap();
                commits.push(Instant::now());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            commits
        })
    };
    // An autovacuum of the day holds its lock until PostgreSQL cancels it (after a second) or
    // for its whole run (one that prevents wraparound): this holds the same lock for longer.
    let (locked, vacuum_locked) = tokio::sync::oneshot::channel();
    let vacuum = {
        let (pool, partition) = (env.pool.clone(), partition.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(&format!("lock table {partition} in share update exclusive mode"))
                .execute(&mut *tx)
                .await
                .unwrap();
            locked.send(()).unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.commit().await.unwrap();
        })
    };
    vacuum_locked.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let report = maintain(&env.pool, 30, today).await.unwrap();
    let took = started.elapsed();
    vacuum.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let commits = load.await.unwrap();
    assert_eq!(report.dropped, [partition]);
    let gap = commits.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    println!("retention pass {took:?}; longest gap between applied batches {gap:?}");
    assert!(gap < Duration::from_secs(1), "applying stalled for {gap:?} while the day was dropped");
}

/// Finished notifications are kept 30 days (their outcomes stay in the timeline); console
/// sessions go a day after they expired or were revoked; pending notifications and live sessions
/// stay whatever their age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_notifications_and_ended_sessions_are_dropped() {
    let env = TestEnv::new().await;
    let service = env.service("Checkout").await;
    let user = env.user("Ann", "ann@example.com", common::auth::Role::Responder).await;
    apply_batch(
        &env.pool,
        &[QueuedEvent { seq: 1, envelope: e2e::envelope(&service.id, "db", EventAction::Trigger, "down") }],
    )
    .await
    .unwrap();
    let (incident, _, _) = incident(&env, "db").await;
    sqlx::query(
        "insert into contact_methods (id, user_id, type, address) values ('cm_1', $1, 'email', 'ann@example.com')",
    )
    .bind(&user.id)
    .execute(&env.pool)
    .await
    .unwrap();
    for (id, firing, status, finished) in [
        ("ntf_old", 1, "sent", "now() - interval '31 days'"),
        ("ntf_recent", 2, "failed", "now() - interval '29 days'"),
        ("ntf_pending", 3, "pending", "null"),
    ] {
        sqlx::query(&format!(
            "insert into notifications (id, incident_id, firing, user_id, contact_method_id, channel, address, status, created_at, finished_at)
             values ($1, $2, $3, $4, 'cm_1', 'email', 'ann@example.com', $5, now() - interval '40 days', {finished})"
        ))
        .bind(id)
        .bind(&incident)
        .bind(firing)
        .bind(&user.id)
        .bind(status)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    for (id, expires, revoked) in [
        ("ses_expired", "now() - interval '2 days'", "null"),
        ("ses_revoked", "now() + interval '1 hour'", "now() - interval '2 days'"),
        ("ses_live", "now() + interval '1 hour'", "null"),
        ("ses_just_ended", "now() - interval '1 hour'", "null"),
    ] {
        sqlx::query(&format!(
            "insert into console_sessions (id, user_id, token_hash, expires_at, revoked_at) values ($1, $2, $3, {expires}, {revoked})"
        ))
        .bind(id)
        .bind(&user.id)
        .bind(id.as_bytes())
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let today = jiff::Timestamp::now().to_zoned(TimeZone::UTC).date();
    maintain(&env.pool, 30, today).await.unwrap();
    let notifications: Vec<String> =
        sqlx::query_scalar("select id from notifications order by id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(notifications, ["ntf_pending", "ntf_recent"]);
    let sessions: Vec<String> =
        sqlx::query_scalar("select id from console_sessions order by id").fetch_all(&env.pool).await.unwrap();
    assert_eq!(sessions, ["ses_just_ended", "ses_live"]);
}
