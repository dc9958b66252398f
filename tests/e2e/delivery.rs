//! DESIGN §1 guarantees 1, 2 and 5: nothing accepted is lost, every event applies exactly once,
//! poison goes to the dead-letter stream without blocking what follows.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use common::event::{EventAction, EventEnvelope};
use e2e::{TestEnv, trigger, wait_until};
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use worker::apply::{QueuedEvent, apply_batch};
use worker::consumer::Disposition;

fn envelope(service_id: &str, dedup_key: &str, action: EventAction) -> EventEnvelope {
    e2e::envelope(service_id, dedup_key, action, "Disk full")
}

async fn jetstream_context(env: &TestEnv) -> jetstream::Context {
    jetstream::new(async_nats::connect(&env.nats.url).await.unwrap())
}

/// The durable consumer of `event`'s partition, made as a worker makes it (the streams too).
async fn partition_consumer(
    js: &jetstream::Context,
    env: &TestEnv,
    settings: &worker::WorkerSettings,
    event: &EventEnvelope,
) -> jetstream::consumer::PullConsumer {
    let stream = common::nats::ensure_streams(js, &env.nats).await.unwrap();
    let consumers = common::nats::PartitionConsumers {
        events: &stream,
        nats: &env.nats,
        base: &env.consumer,
        ack_wait: settings.ack_wait(),
        max_ack_pending: 1000,
    };
    let partition = common::config::partition_of(&event.service_id, &event.dedup_key, env.nats.partitions);
    consumers.ensure(partition).await.unwrap()
}

/// Publishes the envelope as a distinct message (its own Nats-Msg-Id), as a publish retried
/// after the stream's duplicate window would be.
async fn publish_copy(js: &jetstream::Context, env: &TestEnv, event: &EventEnvelope) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
    let payload = serde_json::to_vec(event).unwrap();
    let subject = env.nats.event_subject(&event.service_id, &event.dedup_key);
    js.publish_with_headers(subject, headers, payload.into()).await.unwrap().await.unwrap().sequence
}

/// A fresh environment for tests that publish to the stream themselves: a service, worker
/// settings that give up after two failed attempts, and the streams made.
async fn stream_setup()
-> (TestEnv, query_api::services::body::ServiceWithKey, worker::WorkerSettings, jetstream::Context) {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let mut settings = env.worker_settings();
    settings.max_deliveries = 2;
    let js = jetstream_context(&env).await;
    common::nats::ensure_streams(&js, &env.nats).await.unwrap();
    (env, service, settings, js)
}

async fn alert_counts(env: &TestEnv) -> HashMap<String, i32> {
    sqlx::query_as::<_, (String, i32)>("select dedup_key, alert_count from incidents")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_applied_twenty_times_at_once_takes_effect_once() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let event = QueuedEvent { seq: 1, envelope: envelope(&service.id, "disk", EventAction::Trigger) };

    let results = join_all((0..20).map(|_| {
        let (pool, batch) = (env.pool.clone(), vec![event.clone()]);
        tokio::spawn(async move { apply_batch(&pool, &batch).await })
    }))
    .await;
    let reports: Vec<_> = results.into_iter().map(|r| r.unwrap().expect("every attempt succeeds")).collect();
    assert_eq!(reports.iter().map(|r| r.outcomes.len()).sum::<usize>(), 1);
    assert_eq!(reports.iter().map(|r| r.duplicates).sum::<usize>(), 19);
    assert_eq!(env.applied_events().await, 1);
    assert_eq!(alert_counts(&env).await, HashMap::from([("disk".to_owned(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_copies_in_the_stream_with_three_workers_apply_once() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await);
    }
    let js = jetstream_context(&env).await;
    let event = envelope(&service.id, "disk", EventAction::Trigger);
    join_all((0..20).map(|_| publish_copy(&js, &env, &event))).await;
    // The same Nats-Msg-Id again is dropped by the stream itself.
    let payload = serde_json::to_vec(&event).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "same-id");
    let subject = env.nats.event_subject(&event.service_id, &event.dedup_key);
    let first = js.publish_with_headers(subject.clone(), headers.clone(), payload.clone().into()).await.unwrap();
    let first = first.await.unwrap();
    let again = js.publish_with_headers(subject, headers, payload.into()).await.unwrap().await.unwrap();
    assert!(!first.duplicate && again.duplicate);

    env.wait_until_drained(Duration::from_secs(30)).await;
    assert_eq!(env.applied_events().await, 1);
    assert_eq!(alert_counts(&env).await, HashMap::from([("disk".to_owned(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_and_before_ack_applies_once_on_redelivery() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let mut settings = env.worker_settings();
    settings.ack_wait_secs = 1;
    let js = jetstream_context(&env).await;
    let event = envelope(&service.id, "disk", EventAction::Trigger);
    let consumer = partition_consumer(&js, &env, &settings, &event).await;
    publish_copy(&js, &env, &event).await;

    // A worker takes the message (waiting up to 10 s for JetStream to offer it) and commits it,
    // then dies before acknowledging.
    let mut messages = consumer.batch().max_messages(1).expires(Duration::from_secs(10)).messages().await.unwrap();
    let message = messages.next().await.unwrap().unwrap();
    let seq = i64::try_from(common::nats::event_position(message.info().unwrap().stream_sequence, 0)).unwrap();
    let envelope: EventEnvelope = serde_json::from_slice(&message.payload).unwrap();
    apply_batch(&env.pool, &[QueuedEvent { seq, envelope }]).await.unwrap();
    drop(message);

    // After the ack wait, JetStream redelivers it to a live worker, which sees it is done.
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    env.wait_until_drained(Duration::from_secs(30)).await;
    assert_eq!(env.applied_events().await, 1);
    assert_eq!(alert_counts(&env).await, HashMap::from([("disk".to_owned(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
    let rk = env.service("API").await.routing_key;

    const EVENTS: usize = 3000;
    const KEYS: usize = 40;
    let mut accepted = Vec::with_capacity(EVENTS);
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
        let responses = join_all(chunk.iter().map(|i| {
            let body = trigger(&rk, &format!("key-{}", i % KEYS), "load");
            let (base, key) = (base.clone(), key.clone());
            let env = &env;
            async move { env.post_event(&base, &key, &body).await }
        }))
        .await;
        for response in responses {
            assert_eq!(response.status(), 202);
            let body: serde_json::Value = response.json().await.unwrap();
            accepted.push(body["event_id"].as_str().unwrap().to_owned());
        }
    }

    let mut process = Command::new(e2e::service_binary("opssentinal-worker"))
        .envs(env.service_env())
        .env("WORKER_LISTEN", "127.0.0.1:0")
        .env("WORKER_BATCH_SIZE", "50")
        .env("WORKER_ACK_WAIT_SECS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the worker process to apply some events", || async {
        env.applied_events().await >= 200
    })
    .await;
    process.kill().unwrap(); // SIGKILL
    process.wait().unwrap();
    let applied_at_kill = env.applied_events().await;
    assert!(applied_at_kill < EVENTS as i64, "the worker finished before it was killed; nothing was tested");

    let mut settings = env.worker_settings();
    settings.ack_wait_secs = 2;
    let _worker = env.spawn_worker(&settings, CancellationToken::new()).await;
    env.wait_for_applied(EVENTS as i64, Duration::from_secs(120)).await;
    env.wait_until_drained(Duration::from_secs(60)).await;

    let mut stored: Vec<String> =
        sqlx::query_scalar("select event_id::text from events").fetch_all(&env.pool).await.unwrap();
    stored.sort();
    accepted.sort();
    assert_eq!(stored, accepted, "every accepted event is applied exactly once");
    let counts = alert_counts(&env).await;
    assert_eq!(counts.len(), KEYS);
    assert!(counts.values().all(|n| *n as usize == EVENTS / KEYS), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_stream_and_does_not_block_what_follows() {
    let (env, service, settings, js) = stream_setup().await;

    // Not an event at all; an event for a service that does not exist (can never be applied);
    // then a good event.
    js.publish(env.nats.partition_subject(0), "not json".into()).await.unwrap().await.unwrap();
    publish_copy(&js, &env, &envelope("svc_gone", "orphan", EventAction::Trigger)).await;
    publish_copy(&js, &env, &envelope(&service.id, "fine", EventAction::Trigger)).await;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;

    env.wait_for_applied(1, Duration::from_secs(30)).await;
    env.wait_until_drained(Duration::from_secs(60)).await;
    assert_eq!(alert_counts(&env).await, HashMap::from([("fine".to_owned(), 1)]));

    let dlq = js.get_stream(env.nats.dlq_stream()).await.unwrap();
    let mut reasons = Vec::new();
    for seq in 1..=2 {
        let message = dlq.get_raw_message(seq).await.unwrap();
        let reason = message.headers.get("OpsSentinal-Reason").unwrap().to_string();
        reasons.push(reason);
    }
    assert!(reasons[0].contains("undecodable"), "{reasons:?}");
    assert!(reasons[1].contains("foreign key") || reasons[1].contains("incidents"), "{reasons:?}");
}

/// A frame (several events in one message) whose lines include one that is not an event and one
/// that can never be applied: those two go to the dead-letter stream alone, each at its own
/// position, the others are applied in their order, and the frame is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frames_poison_lines_are_dead_lettered_alone_and_its_other_events_applied() {
    let (env, service, settings, js) = stream_setup().await;

    let line = |event: &EventEnvelope| serde_json::to_string(event).unwrap();
    let trigger = envelope(&service.id, "disk", EventAction::Trigger);
    let resolve = envelope(&service.id, "disk", EventAction::Resolve);
    let frame = [
        line(&trigger),
        "not json".to_owned(),
        line(&envelope("svc_gone", "orphan", EventAction::Trigger)),
        line(&resolve),
        line(&envelope(&service.id, "cpu", EventAction::Trigger)),
    ]
    .join("\n");
    let subject = env.nats.event_subject(&service.id, "disk");
    let seq = js.publish(subject, frame.into()).await.unwrap().await.unwrap().sequence;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;

    env.wait_for_applied(3, Duration::from_secs(30)).await;
    env.wait_until_drained(Duration::from_secs(60)).await;
    let statuses: HashMap<String, String> = sqlx::query_as("select dedup_key, status from incidents")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        statuses,
        HashMap::from([("disk".to_owned(), "RESOLVED".to_owned()), ("cpu".to_owned(), "OPEN".to_owned())])
    );
    let positions: Vec<i64> =
        sqlx::query_scalar("select seq from events order by seq").fetch_all(&env.pool).await.unwrap();
    let base = i64::try_from(common::nats::event_position(seq, 0)).unwrap();
    assert_eq!(positions, vec![base, base + 3, base + 4]);

    let dlq = js.get_stream(env.nats.dlq_stream()).await.unwrap();
    let mut letters = Vec::new();
    for dlq_seq in 1..=2 {
        let message = dlq.get_raw_message(dlq_seq).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().to_string();
        letters.push((header("OpsSentinal-Stream-Seq"), String::from_utf8_lossy(&message.payload).into_owned()));
    }
    letters.sort();
    assert_eq!(letters[0], ((base + 1).to_string(), "not json".to_owned()));
    assert_eq!(letters[1].0, (base + 2).to_string());
    assert!(letters[1].1.contains("svc_gone"), "{letters:?}");
}

/// `WORKER_BATCH_SIZE` caps a transaction even when one frame holds more events: a frame of 7
/// events with a batch size of 3 (applied in transactions of 3, 3 and 1, the key's acknowledge
/// and its next trigger in different ones) is applied whole, in order, and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_the_batch_size_is_applied_in_batches_and_acknowledged() {
    let (env, service, mut settings, js) = stream_setup().await;
    settings.batch_size = 3;
    settings.max_ack_pending = 3;

    let actions = [EventAction::Trigger, EventAction::Trigger, EventAction::Acknowledge, EventAction::Trigger];
    let mut lines: Vec<String> =
        actions.iter().map(|a| serde_json::to_string(&envelope(&service.id, "disk", *a)).unwrap()).collect();
    lines.extend(
        (0..3).map(|i| serde_json::to_string(&envelope(&service.id, &format!("k{i}"), EventAction::Trigger)).unwrap()),
    );
    js.publish(env.nats.event_subject(&service.id, "disk"), lines.join("\n").into()).await.unwrap().await.unwrap();
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;

    env.wait_for_applied(7, Duration::from_secs(30)).await;
    env.wait_until_drained(Duration::from_secs(30)).await;
    let disk: (String, i32) = sqlx::query_as("select status, alert_count from incidents where dedup_key = 'disk'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(disk, ("ACKNOWLEDGED".to_owned(), 3), "the key's events applied in their order");
    assert_eq!(alert_counts(&env).await.len(), 4);
}

/// An event reaching an idle lane is applied at once, in a transaction of its own; events arriving
/// within `WORKER_BATCH_LINGER_MS` after it, each within `WORKER_BATCH_QUIET_MS` of the one before,
/// wait and share the next transaction. (Events of one transaction share the rows' `xmin`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_soon_after_a_transaction_share_the_next_one() {
    let (env, service, mut settings, js) = stream_setup().await;
    settings.batch_linger_ms = 1000;
    settings.batch_quiet_ms = 300;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    publish_copy(&js, &env, &envelope(&service.id, "first", EventAction::Trigger)).await;
    env.wait_for_applied(1, Duration::from_secs(30)).await;
    // Paced apart, all within the linger.
    for i in 0..4 {
        publish_copy(&js, &env, &envelope(&service.id, &format!("later-{i}"), EventAction::Trigger)).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    env.wait_for_applied(5, Duration::from_secs(30)).await;
    let transactions: Vec<(String, i64)> =
        sqlx::query_as("select min(dedup_key), count(*) from events group by xmin::text order by min(received_at)")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(transactions, [("first".to_owned(), 1), ("later-0".to_owned(), 4)]);
}

/// When a burst ends, its last event does not wait out the linger: a waiting batch starts once
/// nothing arrived at its lane for `WORKER_BATCH_QUIET_MS`. (`applied_at` is its transaction's
/// start; a batch that waited out the linger would start at least 1,000 ms after the first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_batch_starts_once_its_lane_is_quiet() {
    let (env, service, mut settings, js) = stream_setup().await;
    settings.batch_linger_ms = 1000;
    settings.batch_quiet_ms = 50;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    for (i, key) in ["first", "last"].into_iter().enumerate() {
        publish_copy(&js, &env, &envelope(&service.id, key, EventAction::Trigger)).await;
        env.wait_for_applied(i as i64 + 1, Duration::from_secs(30)).await;
    }
    let (transactions, apart_ms): (i64, f64) = sqlx::query_as(
        "select count(distinct xmin::text), extract(epoch from max(applied_at) - min(applied_at))::float8 * 1000 from events",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(transactions, 2, "the last event came after the first was applied");
    assert!(apart_ms < 750.0, "the last event's transaction started {apart_ms:.0} ms after the first's");
}

/// Concurrent events for one partition share JetStream messages (frames); with
/// `NATS_MAX_FRAME_EVENTS=1` each is a message of its own, and both apply every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_share_messages_unless_frames_are_off() {
    for (max_frame_events, shared) in [(1024, true), (1, false)] {
        let mut env = TestEnv::new().await;
        env.nats.max_frame_events = max_frame_events;
        let ingest = env.spawn_ingest().await;
        let key = env.admin_key().await;
        let rk = env.service("API").await.routing_key;
        let bodies: Vec<_> = (0..40).map(|i| trigger(&rk, "disk", &format!("alert {i}"))).collect();
        let sent = join_all(bodies.iter().map(|body| env.post_event(&ingest, &key, body))).await;
        assert!(sent.iter().all(|r| r.status() == 202));
        let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
        env.wait_for_applied(40, Duration::from_secs(30)).await;
        env.wait_until_drained(Duration::from_secs(30)).await;
        let js = jetstream_context(&env).await;
        let messages = js.get_stream(&env.nats.stream).await.unwrap().info().await.unwrap().state.last_sequence;
        assert_eq!(messages < 40, shared, "frames {max_frame_events}: 40 events in {messages} messages");
        assert_eq!(alert_counts(&env).await, HashMap::from([("disk".to_owned(), 40)]));
    }
}

/// DESIGN §1 guarantee 5: the poison bound counts failed apply attempts, not deliveries. A
/// message delivered many times without being tried (an outage, expired ack waits) that then
/// fails once is retried, and dead-lettered only after `max_deliveries` failed attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_attempts_count_toward_the_dead_letter_bound() {
    let env = TestEnv::new().await;
    let mut settings = env.worker_settings();
    settings.max_deliveries = 3;
    settings.ack_wait_secs = 1;
    let js = jetstream_context(&env).await;
    let event = envelope("svc_gone", "orphan", EventAction::Trigger);
    let consumer = partition_consumer(&js, &env, &settings, &event).await;
    publish_copy(&js, &env, &event).await;

    // Delivered three times and never tried: each delivery left to expire.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let message = loop {
        assert!(std::time::Instant::now() < deadline, "no third delivery within 20 s");
        let mut batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await.unwrap();
        if let Some(Ok(message)) = batch.next().await
            && message.info().unwrap().delivered >= 3
        {
            break message;
        }
    };
    let position = common::nats::event_position(message.info().unwrap().stream_sequence, 0);
    let queued = QueuedEvent { seq: i64::try_from(position).unwrap(), envelope: event };
    let delivered = message.info().unwrap().delivered;

    let applier = worker::consumer::Applier {
        pool: env.pool.clone(),
        stream: env.nats.stream.clone(),
        js: js.clone(),
        dlq_subject: env.nats.dlq_subject(),
        settings: settings.clone(),
    };
    let dead_letters =
        || async { js.get_stream(env.nats.dlq_stream()).await.unwrap().info().await.unwrap().state.messages };
    let attempts = || async {
        sqlx::query_scalar::<_, i32>("select attempts from apply_failures").fetch_optional(&env.pool).await.unwrap()
    };
    let line = worker::consumer::Line { bytes: message.payload.clone(), dead_letter_id: "dlq-test".into() };
    let fail = |reason| applier.give_up_or_retry(&queued, &line, delivered, reason);
    assert!(matches!(fail("first failure").await, Disposition::Retry(_)));
    assert_eq!(
        (attempts().await, dead_letters().await),
        (Some(1), 0),
        "one failure after three deliveries dead-lettered it"
    );
    assert!(matches!(fail("second failure").await, Disposition::Retry(_)));
    assert_eq!((attempts().await, dead_letters().await), (Some(2), 0));
    assert_eq!(fail("third failure").await, Disposition::Done);
    assert_eq!((attempts().await, dead_letters().await), (Some(3), 1), "three failed attempts make it poison");
}

/// DESIGN §1.5, infrastructure failures are not poison: for thirty seconds while events arrive,
/// every statement times out after 1 ms (`statement_timeout` on the database) and the key table is
/// locked by another session, so each apply times out while the worker could still count failed
/// attempts; nothing is dead-lettered, and once both are lifted everything is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeouts_under_load_are_retried_and_never_dead_lettered() {
    use sqlx::Connection;
    let (env, service, settings, js) = stream_setup().await;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let admin = sqlx::PgPool::connect(e2e::PG_ADMIN_URL).await.unwrap();
    let mut locker = sqlx::PgConnection::connect(&env.database.url).await.unwrap();
    let locker_pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut locker).await.unwrap();
    // Sessions take the database's settings when they connect: end the others' each time.
    let set_timeout = |value: &'static str| {
        let (admin, db) = (admin.clone(), env.db_name.clone());
        async move {
            sqlx::query(&format!("alter database {db} set statement_timeout = '{value}'"))
                .execute(&admin)
                .await
                .unwrap();
            sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> $2")
                .bind(&db)
                .bind(locker_pid)
                .execute(&admin)
                .await
                .unwrap();
        }
    };
    sqlx::query("begin").execute(&mut locker).await.unwrap();
    sqlx::query("lock table alert_keys in exclusive mode").execute(&mut locker).await.unwrap();
    set_timeout("1ms").await;
    let fault_ends = tokio::time::Instant::now() + Duration::from_secs(30);
    // Events arrive all along the fault (at about 90 a second).
    const EVENTS: usize = 2_700;
    for i in 0..EVENTS {
        let event = envelope(&service.id, &format!("key-{}", i % 50), EventAction::Trigger);
        let subject = env.nats.event_subject(&event.service_id, &event.dedup_key);
        js.publish(subject, serde_json::to_vec(&event).unwrap().into()).await.unwrap().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep_until(fault_ends).await;
    sqlx::query("commit").execute(&mut locker).await.unwrap();
    set_timeout("0").await;

    env.wait_for_applied(EVENTS as i64, Duration::from_secs(60)).await;
    env.wait_until_drained(Duration::from_secs(30)).await;
    let dead = js.get_stream(env.nats.dlq_stream()).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(dead, 0, "events dead-lettered for statement timeouts");
    assert_eq!(env.applied_events().await, EVENTS as i64);
}

/// DESIGN §1 with large events: a worker under a 1 GiB memory limit drains `LARGE_EVENTS_MB`
/// (300 by default) of 30 KiB alerts, stored in frames of 28 (840 KiB messages) before it starts,
/// holding at most `WORKER_MAX_BUFFERED_BYTES` (8 MiB here) for its lanes plus 4 MiB pulled per
/// partition: it is never killed or refused memory, its peak resident memory stays under 256 MiB
/// (185 MiB measured; 816 MiB with the bound lifted), and nothing is delivered twice (no
/// redelivery storm while messages wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_draining_large_events_stays_within_its_buffer_bound() {
    let (env, service, _, js) = stream_setup().await;
    const PER_FRAME: usize = 28;
    let megabytes: usize = std::env::var("LARGE_EVENTS_MB").ok().and_then(|m| m.parse().ok()).unwrap_or(300);
    let frames = megabytes * 1024 / (30 * PER_FRAME);
    let blob = "x".repeat(30 * 1024);
    let publishes = (0..frames).map(|f| {
        let key = format!("big-{f}");
        let lines: Vec<String> = (0..PER_FRAME)
            .map(|_| {
                let mut event = serde_json::to_value(envelope(&service.id, &key, EventAction::Trigger)).unwrap();
                event["payload"]["custom_details"] = serde_json::json!({ "blob": blob });
                event.to_string()
            })
            .collect();
        let (js, subject) = (js.clone(), env.nats.event_subject(&service.id, &key));
        async move { js.publish(subject, lines.join("\n").into()).await.unwrap().await.unwrap() }
    });
    futures_util::stream::iter(publishes).buffer_unordered(16).collect::<Vec<_>>().await;

    let mut vars = env.service_env();
    vars.push(("WORKER_MAX_BUFFERED_BYTES", (8 * 1024 * 1024).to_string()));
    vars.push(("WORKER_BATCH_SIZE", "100".into()));
    let mut worker = e2e::servers::ServiceProcess::start("opssentinal-worker", &vars);
    let pid = worker.pid();
    let limit = e2e::bench::MemoryCap::apply(pid, 1024 * 1024 * 1024);
    let mut peak_kib = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while env.backlog().await != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "the worker did not drain {megabytes} MB within 600 s");
        assert!(
            worker.exited_within(Duration::from_millis(1)).await.is_none(),
            "the worker died (over its memory limit?)"
        );
        peak_kib = peak_kib.max(e2e::bench::peak_rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    peak_kib = peak_kib.max(e2e::bench::peak_rss_kib(pid).unwrap_or(0));
    assert_eq!(env.applied_events().await, (frames * PER_FRAME) as i64);
    println!("{megabytes} MB drained; peak RSS {} MiB", peak_kib / 1024);
    assert_eq!(limit.failures(), 0, "the worker was refused memory at its 1 GiB limit");
    assert!(peak_kib < 256 * 1024, "peak RSS {} MiB", peak_kib / 1024);
    assert_eq!(worker.metric(&env.http, "events_duplicate_total").await, 0.0, "messages were delivered again");
    drop(worker);
    drop(limit);
}
