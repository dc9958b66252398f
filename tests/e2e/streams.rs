//! The event stream's settings follow the configuration: a changed size cap, replicas or
//! duplicate window are applied to the existing stream, a full stream refuses new events and
//! keeps every stored one, and a stream made with another partition count or subject layout is
//! refused by name. An event's subject is its partition's, whatever
//! consumers exist.

use std::time::Duration;

use common::nats::PartitionConsumers;
use e2e::TestEnv;
use e2e::servers::ServiceProcess;
use ingest::publisher::{Company, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_settings_update_the_stream_and_another_partition_count_is_refused() {
    let env = TestEnv::new().await;
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    common::nats::ensure_streams(&js, &env.nats).await.unwrap();

    let mut changed = env.nats.clone();
    changed.max_bytes = 64 * 1024 * 1024;
    changed.duplicate_window_secs = 300;
    let mut stream = common::nats::ensure_streams(&js, &changed).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!((config.max_bytes, config.duplicate_window), (64 * 1024 * 1024, Duration::from_secs(300)));
    assert_eq!(config.subjects, vec![env.nats.events_subjects()]);

    let mut other = changed.clone();
    other.partitions = env.nats.partitions * 2;
    let refused = common::nats::ensure_streams(&js, &other).await.unwrap_err().to_string();
    assert!(refused.contains("NATS_PARTITIONS"), "{refused}");
    assert!(refused.contains(&format!("partitions={}", env.nats.partitions)), "{refused}");

    // A stream made while partitions had binary subjects (`<prefix>.events.0.1.1`) is refused
    // too: its messages would match no partition's consumer.
    let mut before = js.get_stream(&env.nats.stream).await.unwrap().info().await.unwrap().config.clone();
    before.description = Some(format!("OpsSentinal events; partitions={}; binary subjects", env.nats.partitions));
    js.update_stream(before).await.unwrap();
    let refused = common::nats::ensure_streams(&js, &changed).await.unwrap_err().to_string();
    assert!(refused.contains("binary subjects") && refused.contains("NATS_PARTITIONS"), "{refused}");
}

/// DESIGN §1 guarantee 1 with a full stream: past `NATS_STREAM_MAX_BYTES` ingest answers 503,
/// and every event answered 202 is still in the stream (none was dropped to make room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_new_events_and_keeps_every_accepted_one() {
    let env = TestEnv::new().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
    let rk = env.service("Full").await.routing_key;
    // Every partition's consumer exists, as with workers, and none acknowledges anything.
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let stream = common::nats::ensure_streams(&js, &env.nats).await.unwrap();
    let consumers = PartitionConsumers {
        events: &stream,
        nats: &env.nats,
        base: &env.consumer,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    };
    for partition in 0..env.nats.partitions {
        consumers.ensure(partition).await.unwrap();
    }
    let mut vars = env.service_env();
    vars.push(("NATS_STREAM_MAX_BYTES", (64 * 1024).to_string()));
    let ingest = ServiceProcess::start("opssentinal-ingest", &vars);
    ingest.wait_ready(&env.http, Duration::from_secs(20)).await;
    let mut accepted = 0u64;
    let mut refused = None;
    for i in 0..2_000 {
        let response =
            env.post_event(&ingest.url(), &key, &e2e::trigger(&rk, &format!("k{i}"), &"x".repeat(200))).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => {
                refused = Some(response.json::<serde_json::Value>().await.unwrap());
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = refused.expect("the stream never filled");
    assert!(refused["error"]["message"].as_str().unwrap().contains("full"), "{refused}");
    let mut stream = js.get_stream(&env.nats.stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!((state.messages, state.first_sequence), (accepted, 1), "accepted events were dropped");
}

/// For each of a batch of events, its partition and the partition of the subject its frame was
/// stored on.
async fn published_subjects(
    env: &TestEnv,
    publisher: &Publisher,
    stream: &async_nats::jetstream::stream::Stream,
    service_id: &str,
) -> Vec<(u32, Option<u32>)> {
    let events: Vec<_> = (0..64)
        .map(|k| e2e::envelope(service_id, &format!("key-{k}"), common::event::EventAction::Trigger, "placed"))
        .collect();
    let positions = futures_util::future::join_all(events.iter().map(|e| publisher.publish(e, Company::Shared))).await;
    let mut placed = Vec::new();
    for (event, position) in events.iter().zip(positions) {
        let seq = position.expect("accepted") / common::nats::FRAME_SLOTS;
        let message = stream.get_raw_message(seq).await.expect("the stored frame");
        let partition = common::config::partition_of(&event.service_id, &event.dedup_key, env.nats.partitions);
        placed.push((partition, env.nats.subject_partition(&message.subject)));
    }
    placed
}

/// DESIGN §1.3, the producer knows nothing of the consumers: every event is stored on its own
/// partition's subject, `<prefix>.events.<partition>`, with no consumer, with some, and with
/// every partition's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_on_its_partitions_subject_whatever_consumers_exist() {
    let env = TestEnv::new().await;
    let service = env.service("Placed").await;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    let stream = common::nats::ensure_streams(&js, &env.nats).await.unwrap();
    let consumers = PartitionConsumers {
        events: &stream,
        nats: &env.nats,
        base: &env.consumer,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    };
    let publisher = Publisher::new(client, js, &env.nats);
    let on_own_subjects = || async {
        let placed = published_subjects(&env, &publisher, &stream, &service.id).await;
        let mut seen: Vec<u32> = placed.iter().map(|(p, _)| *p).collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() > 1, "64 keys fell on one partition: {placed:?}");
        for (partition, subject) in placed {
            assert_eq!(subject, Some(partition), "an event stored on another partition's subject");
        }
    };
    on_own_subjects().await;
    consumers.ensure(0).await.unwrap();
    on_own_subjects().await;
    for partition in 0..env.nats.partitions {
        consumers.ensure(partition).await.unwrap();
    }
    on_own_subjects().await;
}
