//! DESIGN §1 guarantee 3: whatever the number of workers, their timing, duplicate publishes and
//! redeliveries, each key ends as if its events were applied one by one in stream order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use e2e::TestEnv;
use e2e::model::{incidents_as_modelled, model, random_event};
use futures_util::StreamExt;
use futures_util::future::join_all;
use ingest::publisher::{Company, Publisher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_duplicates_and_redeliveries_match_the_sequential_model() {
    let metrics = common::telemetry::metrics_handle();
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");

    let mut settings = env.worker_settings();
    settings.batch_size = 16;
    settings.ack_wait_secs = 1;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(env.spawn_worker(&settings, env.shutdown.clone()).await);
    }

    // Messages stolen before the workers took their partitions would simply be delivered again
    // in order when each worker re-creates its partitions' consumers: start once they have.
    env.wait_for_even_ownership(3, "three workers to share the partitions").await;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    let publisher = Publisher::new(client, js.clone(), &env.nats);

    // A saboteur pulls from the workers' own consumers (one per partition) and either
    // drops what it took (a crashed worker: redelivered after the ack wait, behind later events)
    // or naks it (redelivered at once).
    let stream = js.get_stream(&env.nats.stream).await.unwrap();
    let all: Vec<u32> = (0..env.nats.partitions).collect();
    e2e::wait_until(Duration::from_secs(10), "the workers' consumers to cover every partition", || async {
        env.partition_consumers().await == all
    })
    .await;
    let mut consumers = Vec::new();
    for partition in all {
        let name = common::nats::consumer_name(&env.consumer, partition);
        consumers.push(stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name).await.unwrap());
    }
    // One thief per partition, each keeping a pull request waiting beside the owner's, so that now
    // and then a message goes to it instead.
    let stolen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producers_done = tokio_util::sync::CancellationToken::new();
    let mut thieves = Vec::new();
    for (thief, consumer) in consumers.into_iter().enumerate() {
        let (done, stolen) = (producers_done.clone(), stolen.clone());
        thieves.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed ^ thief as u64);
            while !done.is_cancelled() {
                let Ok(mut batch) = consumer.fetch().max_messages(2).expires(Duration::from_secs(1)).messages().await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while let Some(Ok(message)) = batch.next().await {
                    stolen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if rng.random_bool(0.5) {
                        let _nak = message.ack_with(AckKind::Nak(None)).await;
                    }
                }
            }
        }));
    }

    const KEYS: usize = 6;
    const EVENTS_PER_KEY: usize = 60;
    let expected_events = Arc::new(Mutex::new(BTreeMap::new()));
    let mut producers = Vec::new();
    for k in 0..KEYS {
        let (publisher, js, env_nats) = (publisher.clone(), js.clone(), env.nats.clone());
        let (service_id, expected_events, stolen) = (service.id.clone(), expected_events.clone(), stolen.clone());
        producers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(k as u64));
            let dedup_key = format!("key-{k}");
            let mut events = Vec::new();
            // At least EVENTS_PER_KEY, and on until the thieves took some (at most 30 s), so
            // that stolen events have later ones of their key applied before they come back.
            let started = std::time::Instant::now();
            for i in 0.. {
                let thefts = stolen.load(std::sync::atomic::Ordering::Relaxed);
                if i >= EVENTS_PER_KEY && (thefts >= 20 || started.elapsed() > Duration::from_secs(30)) {
                    break;
                }
                let event = random_event(&mut rng, &service_id, &dedup_key);
                // Each key's events are published one after another, so their stream order is this order.
                publisher.publish(&event, Company::Shared).await.expect("accepted");
                if rng.random_bool(0.1) {
                    // A copy under another message id (as after the duplicate window).
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
                    let payload = serde_json::to_vec(&event).unwrap();
                    let subject = env_nats.event_subject(&event.service_id, &event.dedup_key);
                    js.publish_with_headers(subject, headers, payload.into()).await.unwrap().await.unwrap();
                }
                if rng.random_bool(0.1) {
                    // A retried publish with the same message id: the stream drops it.
                    publisher.publish(&event, Company::Shared).await.expect("accepted");
                }
                events.push(event);
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
            }
            expected_events.lock().await.insert(dedup_key, events);
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    producers_done.cancel();
    for thief in thieves {
        thief.await.unwrap();
    }
    let sabotaged = stolen.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sabotaged > 0, "the thieves took no message; nothing was redelivered");
    let expected = model(&*expected_events.lock().await);

    let total = expected_events.lock().await.values().map(Vec::len).sum::<usize>() as i64;
    env.wait_for_applied(total, Duration::from_secs(90)).await;
    env.wait_until_drained(Duration::from_secs(60)).await;

    let actual = incidents_as_modelled(&env.pool).await;
    assert_eq!(actual, expected, "seed {seed}");
    assert_eq!(env.applied_events().await, total, "each event stored once, seed {seed}");
    // This test's own stream: other tests running in this process move the counter too.
    let label = format!("worker_refolds_total{{stream=\"{}\"}} ", env.nats.stream);
    let refolds = metrics.render().lines().find_map(|l| l.strip_prefix(&label).map(str::to_owned));
    println!("re-folded keys: {refolds:?}");
    assert!(refolds.is_some_and(|n| n != "0"), "no event arrived out of order; the test proved nothing (seed {seed})");
}

/// DESIGN §1 guarantee 3 without losing people's work: a late alert that makes the worker
/// re-fold a key merges the incident a responder was working into the one that now holds its
/// alerts, and the acknowledgement, assignee, priority and notes follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_alert_merges_incidents_and_keeps_what_responders_did() {
    use common::event::EventAction;
    use reqwest::Method;
    use worker::apply::{QueuedEvent, apply_batch};

    let env = TestEnv::new().await;
    let query = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let responder: String = sqlx::query_scalar("select id from users limit 1").fetch_one(&env.pool).await.unwrap();
    let event = |summary: &str| e2e::envelope(&service.id, "disk", EventAction::Trigger, summary);
    let (t5, t7) = (event("T5: accepted first, applied late"), event("T7"));

    // T7 (stream sequence 7) opens I7, and a responder works it.
    apply_batch(&env.pool, &[QueuedEvent { seq: 7, envelope: t7.clone() }]).await.unwrap();
    let i7 = common::ids::incident_id_for_event(t7.event_id);
    let url = format!("{query}/api/incidents/{i7}");
    for body in [
        serde_json::json!({"status": "ACKNOWLEDGED"}),
        serde_json::json!({"assigneeId": responder, "priority": "P1"}),
        serde_json::json!({"note": "rebooting the disk array"}),
    ] {
        let (status, answer) = env.send_json(Method::PATCH, &url, &key, &body).await;
        assert_eq!(status, 200, "{answer}");
    }

    // T5 (sequence 5) arrives late: replayed in order, T5 opens I5 and T7 is absorbed by it.
    let report = apply_batch(&env.pool, &[QueuedEvent { seq: 5, envelope: t5.clone() }]).await.unwrap();
    assert_eq!(report.refolded_keys, 1);
    let i5 = common::ids::incident_id_for_event(t5.event_id);
    let (status, detail) = env.get_json(&format!("{query}/api/incidents/{i5}"), &key).await;
    assert_eq!(status, 200, "{detail}");
    let incident = &detail["incident"];
    assert_eq!(incident["alertCount"], 2);
    assert_eq!(incident["status"], "ACKNOWLEDGED", "the acknowledgement of I7 was lost");
    assert_eq!(
        (incident["priority"].as_str(), incident["assignee"]["id"].as_str()),
        (Some("P1"), Some(responder.as_str()))
    );
    let timeline = incident["timeline"].to_string();
    assert!(timeline.contains("rebooting the disk array"), "the note was lost: {timeline}");
    assert!(timeline.contains(&format!("incident {i7} was merged")), "{timeline}");
    assert_eq!(env.get_json(&url, &key).await.0, 404);
}

/// DESIGN §1.3's repair at a bounded cost: a late alert, then a late resolve, on a key whose open
/// incident absorbed 100,000 alerts are each re-folded from just before them. The incidents equal
/// the sequential model, and each re-fold rewrites only the rows whose outcome it changes (the
/// late trigger: none but its own; the late resolve: its own and the ten alerts after it, which
/// now open and feed a new incident), none of the 100,000 absorbed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_on_a_long_running_incident_rewrite_only_what_follows_them() {
    use common::event::EventAction;
    use worker::apply::{QueuedEvent, apply_batch};
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    const ABSORBED: usize = 100_000;
    const AFTER: usize = 10;
    let position = |i: usize| i64::try_from((i + 1) * 1024).unwrap();
    let mut stream: Vec<(i64, common::event::EventEnvelope)> = (0..ABSORBED + AFTER)
        .map(|i| (position(i), e2e::envelope(&service.id, "busy", EventAction::Trigger, "disk full")))
        .collect();
    for chunk in stream.chunks(5_000) {
        let events: Vec<QueuedEvent> =
            chunk.iter().map(|(seq, envelope)| QueuedEvent { seq: *seq, envelope: envelope.clone() }).collect();
        apply_batch(&env.pool, &events).await.unwrap();
    }

    // Late, in stream order just before the last ten alerts: a trigger, then a resolve after it.
    let late = [
        (position(ABSORBED - 1) + 100, e2e::envelope(&service.id, "busy", EventAction::Trigger, "disk full")),
        (position(ABSORBED - 1) + 200, e2e::envelope(&service.id, "busy", EventAction::Resolve, "")),
    ];
    let rewritten = |event_id: uuid::Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from events where xmin = (select xmin from events where event_id = $1)",
            )
            .bind(event_id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for (expected_rows, (seq, envelope)) in [1, 1 + AFTER as i64].into_iter().zip(&late) {
        let started = std::time::Instant::now();
        let report = apply_batch(&env.pool, &[QueuedEvent { seq: *seq, envelope: envelope.clone() }]).await.unwrap();
        println!("re-fold of a late {:?} after {ABSORBED} absorbed alerts: {:?}", envelope.action, started.elapsed());
        assert_eq!(report.refolded_keys, 1, "the late event was re-folded");
        assert_eq!(
            rewritten(envelope.event_id).await,
            expected_rows,
            "rows the re-fold of {:?} wrote",
            envelope.action
        );
        stream.push((*seq, envelope.clone()));
    }

    stream.sort_by_key(|(seq, _)| *seq);
    let recorded = BTreeMap::from([("busy".to_owned(), stream.into_iter().map(|(_, e)| e).collect::<Vec<_>>())]);
    assert_eq!(incidents_as_modelled(&env.pool).await, model(&recorded));
}

/// People's changes survive order repair, and never fail on it: in each of 500 rounds a late
/// trigger is applied at an earlier position (its re-fold merges the incident into a new one)
/// while 20 PATCHes add notes and set the assignee on the incident. No PATCH gets a 500, and
/// every note answered 200 is in the timeline of the incident that now holds the alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_racing_a_re_fold_are_kept_and_never_fail() {
    use common::event::EventAction;
    use reqwest::Method;
    use worker::apply::{QueuedEvent, apply_batch};

    let env = TestEnv::new().await;
    let query = env.spawn_query_api().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(10_000_000)).await;
    let service = env.service("API").await;
    let responder: String = sqlx::query_scalar("select id from users limit 1").fetch_one(&env.pool).await.unwrap();
    const ROUNDS: i64 = 500;
    const PATCHES: usize = 20;
    let mut kept = 0;
    for round in 0..ROUNDS {
        let dedup_key = format!("disk-{round}");
        let event = |summary: &str| e2e::envelope(&service.id, &dedup_key, EventAction::Trigger, summary);
        let (early, late) = (event("accepted first, applied late"), event("applied first"));
        apply_batch(&env.pool, &[QueuedEvent { seq: round * 10 + 7, envelope: late.clone() }]).await.unwrap();
        let url = format!("{query}/api/incidents/{}", common::ids::incident_id_for_event(late.event_id));
        let patches = (0..PATCHES).map(|i| {
            let body = if i % 2 == 0 {
                serde_json::json!({"note": format!("note {round}-{i}")})
            } else {
                serde_json::json!({"assigneeId": responder})
            };
            let (env, url, key) = (&env, url.clone(), key.clone());
            async move { (i, env.send_json(Method::PATCH, &url, &key, &body).await) }
        });
        let late_event = [QueuedEvent { seq: round * 10 + 5, envelope: early.clone() }];
        let repair = apply_batch(&env.pool, &late_event);
        let (answers, repaired) = tokio::join!(join_all(patches), repair);
        assert_eq!(repaired.unwrap().refolded_keys, 1);
        let holder = common::ids::incident_id_for_event(early.event_id);
        for (i, (status, answer)) in answers {
            assert!(status == 200 || status == 404, "round {round}: PATCH answered {status}: {answer}");
            if status == 200 && i % 2 == 0 {
                let found: i64 = sqlx::query_scalar(
                    "select count(*) from incident_timeline where incident_id = $1 and kind = 'note' and message = $2",
                )
                .bind(&holder)
                .bind(format!("note {round}-{i}"))
                .fetch_one(&env.pool)
                .await
                .unwrap();
                assert_eq!(found, 1, "round {round}: note {i} answered 200 is not on {holder}");
                kept += 1;
            }
        }
    }
    println!("{kept} notes answered 200 and kept over {ROUNDS} rounds");
}
