//! DESIGN §1 guarantee 3: whatever the number of workers, their timing, duplicate publishes and
//! redeliveries, each key ends as if its events were applied one by one in stream order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use common::event::{EventAction, EventEnvelope};
use e2e::{TestEnv, wait_until};
use futures_util::StreamExt;
use ingest::publisher::Publisher;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

/// An incident as the sequential model computes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    id: String,
    dedup_key: String,
    status: String,
    alert_count: i32,
    created_us: i64,
    updated_us: i64,
    acknowledged_us: Option<i64>,
    resolved_us: Option<i64>,
}

/// DESIGN §4, written as plainly as possible, independent of the worker's code.
fn model(key_events: &BTreeMap<String, Vec<EventEnvelope>>) -> Vec<Expected> {
    let mut all = Vec::new();
    for (dedup_key, events) in key_events {
        let mut open: Option<Expected> = None;
        for event in events {
            let at = event.received_at.as_microsecond();
            match (event.action, open.as_mut()) {
                (EventAction::Trigger, Some(incident)) => {
                    incident.alert_count += 1;
                    incident.updated_us = at;
                }
                (EventAction::Trigger, None) => {
                    open = Some(Expected {
                        id: format!("inc_{}", event.event_id.simple()),
                        dedup_key: dedup_key.clone(),
                        status: "OPEN".into(),
                        alert_count: 1,
                        created_us: at,
                        updated_us: at,
                        acknowledged_us: None,
                        resolved_us: None,
                    });
                }
                (EventAction::Acknowledge, Some(incident)) => {
                    incident.status = "ACKNOWLEDGED".into();
                    incident.acknowledged_us = incident.acknowledged_us.or(Some(at));
                    incident.updated_us = at;
                }
                (EventAction::Resolve, Some(incident)) => {
                    incident.status = "RESOLVED".into();
                    incident.resolved_us = Some(at);
                    incident.updated_us = at;
                    all.extend(open.take());
                }
                (_, None) => {}
            }
        }
        all.extend(open);
    }
    all.sort();
    all
}

fn random_event(rng: &mut StdRng, service_id: &str, dedup_key: &str) -> EventEnvelope {
    let action = match rng.random_range(0..10) {
        0..5 => EventAction::Trigger,
        5..7 => EventAction::Acknowledge,
        _ => EventAction::Resolve,
    };
    e2e::envelope(service_id, dedup_key, action, &format!("{dedup_key} is unhappy"))
}

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

    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    let publisher = Publisher::new(client, js.clone(), env.nats.events_subject(), Duration::from_secs(5));

    // A saboteur pulls from the same consumer and either drops what it took (a crashed worker:
    // redelivered after the ack wait, behind later events) or naks it (redelivered at once).
    let stream = js.get_stream(&env.nats.stream).await.unwrap();
    let consumer = common::nats::ensure_consumer(&stream, &env.consumer, settings.ack_wait(), 20_000).await.unwrap();
    let producers_done = tokio_util::sync::CancellationToken::new();
    let done = producers_done.clone();
    let saboteur = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut sabotaged = 0;
        while sabotaged < 150 && !done.is_cancelled() {
            let Ok(mut batch) = consumer.fetch().max_messages(4).expires(Duration::from_millis(100)).messages().await
            else {
                continue;
            };
            while let Some(Ok(message)) = batch.next().await {
                sabotaged += 1;
                if rng.random_bool(0.5) {
                    let _nak = message.ack_with(AckKind::Nak(None)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
        }
        sabotaged
    });

    const KEYS: usize = 6;
    const EVENTS_PER_KEY: usize = 60;
    let expected_events = Arc::new(Mutex::new(BTreeMap::new()));
    let mut producers = Vec::new();
    for k in 0..KEYS {
        let (publisher, js, env_nats) = (publisher.clone(), js.clone(), env.nats.clone());
        let (service_id, expected_events) = (service.id.clone(), expected_events.clone());
        producers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(k as u64));
            let dedup_key = format!("key-{k}");
            let mut events = Vec::new();
            for _ in 0..EVENTS_PER_KEY {
                let event = random_event(&mut rng, &service_id, &dedup_key);
                // Each key's events are published one after another, so their stream order is this order.
                publisher.publish(&event).await.expect("accepted");
                if rng.random_bool(0.1) {
                    // A copy under another message id (as after the duplicate window).
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
                    let payload = serde_json::to_vec(&event).unwrap();
                    js.publish_with_headers(env_nats.events_subject(), headers, payload.into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
                if rng.random_bool(0.1) {
                    // A retried publish with the same message id: the stream drops it.
                    publisher.publish(&event).await.expect("accepted");
                }
                events.push(event);
                if rng.random_bool(0.2) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
                }
            }
            expected_events.lock().await.insert(dedup_key, events);
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    producers_done.cancel();
    let sabotaged = saboteur.await.unwrap();
    assert!(sabotaged > 0, "the saboteur took no message; nothing was redelivered");
    let expected = model(&*expected_events.lock().await);

    let total = (KEYS * EVENTS_PER_KEY) as i64;
    env.wait_for_applied(total, Duration::from_secs(90)).await;
    let consumer_js = jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    wait_until(Duration::from_secs(60), "every message to be acknowledged", || {
        let js = consumer_js.clone();
        let (consumer, stream) = (env.consumer.clone(), env.nats.stream.clone());
        async move {
            let Ok(mut c) =
                js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(&consumer, &stream).await
            else {
                return false;
            };
            c.info().await.is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        }
    })
    .await;

    let mut actual: Vec<Expected> =
        sqlx::query_as::<_, (String, String, String, i32, i64, i64, Option<i64>, Option<i64>)>(
            "select id, dedup_key, status, alert_count,
                (extract(epoch from created_at) * 1000000)::int8, (extract(epoch from updated_at) * 1000000)::int8,
                (extract(epoch from acknowledged_at) * 1000000)::int8, (extract(epoch from resolved_at) * 1000000)::int8
         from incidents",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, dedup_key, status, alert_count, created_us, updated_us, acknowledged_us, resolved_us)| Expected {
            id,
            dedup_key,
            status,
            alert_count,
            created_us,
            updated_us,
            acknowledged_us,
            resolved_us,
        })
        .collect();
    actual.sort();
    assert_eq!(actual, expected, "seed {seed}");
    assert_eq!(env.applied_events().await, total, "each event stored once, seed {seed}");
    let refolds = metrics.render().lines().find_map(|l| l.strip_prefix("worker_refolds_total ").map(str::to_owned));
    println!("re-folded keys: {refolds:?}");
    assert!(refolds.is_some_and(|n| n != "0"), "no event arrived out of order; the test proved nothing (seed {seed})");
    env.cleanup().await;
}
