//! The event stream's settings follow the configuration: changed replicas or duplicate window are
//! applied to the existing stream, the stream never carries a size cap (NATS 2.9 would enforce it
//! by deleting accepted events: ingest enforces it), and a stream made with another partition
//! count or subject layout is refused by name. Ingest sends frames where the workers' block
//! consumers fetch.

use std::time::Duration;

use common::nats::{Block, ConsumerSpec, Framing};
use e2e::TestEnv;
use e2e::servers::ServiceProcess;
use ingest::publisher::{Company, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_settings_update_the_stream_and_another_partition_count_is_refused() {
    let env = TestEnv::new().await;
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    common::nats::ensure_streams(&js, &env.nats).await.unwrap();

    // A stream an older version capped on the server loses the cap.
    let mut old = js.get_stream(&env.nats.stream).await.unwrap().info().await.unwrap().config.clone();
    old.max_bytes = 1024 * 1024;
    js.update_stream(old).await.unwrap();
    let mut changed = env.nats.clone();
    changed.max_bytes = 64 * 1024 * 1024;
    changed.duplicate_window_secs = 300;
    let mut stream = common::nats::ensure_streams(&js, &changed).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!((config.max_bytes, config.duplicate_window), (-1, Duration::from_secs(300)));
    assert_eq!(config.subjects, vec![env.nats.events_subjects()]);

    let mut other = changed.clone();
    other.partitions = env.nats.partitions * 2;
    let refused = common::nats::ensure_streams(&js, &other).await.unwrap_err().to_string();
    assert!(refused.contains("NATS_PARTITIONS"), "{refused}");
    assert!(refused.contains(&format!("partitions={}", env.nats.partitions)), "{refused}");

    // A stream made before partitions had binary subjects (`<prefix>.events.<number>`) is
    // refused too: its messages would match no block's filter.
    let mut before = js.get_stream(&env.nats.stream).await.unwrap().info().await.unwrap().config.clone();
    before.description = Some(format!("OpsSentinal events; partitions={}", env.nats.partitions));
    js.update_stream(before).await.unwrap();
    let refused = common::nats::ensure_streams(&js, &changed).await.unwrap_err().to_string();
    assert!(refused.contains("binary subjects"), "{refused}");
}

/// DESIGN §1 guarantee 1 with a full stream: past `NATS_STREAM_MAX_BYTES` ingest answers 503,
/// and every event answered 202 is still in the stream (none was dropped to make room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_new_events_and_keeps_every_accepted_one() {
    let env = TestEnv::new().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
    let rk = env.service("Full").await.routing_key;
    // A consumer exists (as with workers): NATS 2.9 would drop the oldest messages of such a
    // stream if the cap were its own.
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let stream = common::nats::ensure_streams(&js, &env.nats).await.unwrap();
    let spec = common::nats::ConsumerSpec {
        events: &stream,
        nats: &env.nats,
        base: &env.consumer,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    };
    spec.ensure(common::nats::Block::all(&env.nats)).await.unwrap();
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

/// Where a batch of events went: for each, its partition and the partition of the subject its
/// frame was published on.
async fn published_subjects(
    env: &TestEnv,
    publisher: &Publisher,
    stream: &async_nats::jetstream::stream::Stream,
    service_id: &str,
) -> Vec<(u32, u32)> {
    let events: Vec<_> = (0..64)
        .map(|k| e2e::envelope(service_id, &format!("key-{k}"), common::event::EventAction::Trigger, "routed"))
        .collect();
    let positions = futures_util::future::join_all(events.iter().map(|e| publisher.publish(e, Company::Shared))).await;
    let mut placed = Vec::new();
    for (event, position) in events.iter().zip(positions) {
        let seq = position.expect("accepted") / common::nats::FRAME_SLOTS;
        let message = stream.get_raw_message(seq).await.expect("the stored frame");
        let partition = common::config::partition_of(&event.service_id, &event.dedup_key, env.nats.partitions);
        placed.push((partition, env.nats.subject_partition(&message.subject).expect("a partition subject")));
    }
    placed
}

/// Whether every event of a batch was framed on the subject of `route(its partition)`, and some
/// not on their own partition's.
async fn framed_as(
    env: &TestEnv,
    publisher: &Publisher,
    stream: &async_nats::jetstream::stream::Stream,
    service_id: &str,
    route: Box<dyn Fn(u32) -> u32>,
) -> bool {
    let placed = published_subjects(env, publisher, stream, service_id).await;
    placed.iter().all(|&(partition, subject)| subject == route(partition))
        && placed.iter().any(|&(partition, subject)| partition != subject)
}

/// Ingest frames the events of a block with a consumer together, on the subject of the block's
/// first partition (which that consumer delivers), following JetStream's consumer advisories;
/// a worker's blocks whose consumers' framings name its first block are framed on that block,
/// unless another worker's block covers the target; without any block consumer (no worker runs)
/// it frames them by the blocks a lone worker fetches, before the first consumer exists and
/// again once the last is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_follow_the_block_consumers() {
    let env = TestEnv::new().await;
    let service = env.service("Routed").await;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    let stream = common::nats::ensure_streams(&js, &env.nats).await.unwrap();
    let spec = ConsumerSpec {
        events: &stream,
        nats: &env.nats,
        base: &env.consumer,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    };
    // Read periodically only once an hour: within the test, routes change only on advisories.
    let publisher = Publisher::with_route_interval(client, js, &env.nats, Duration::from_secs(3600));
    let framed_as = |route| framed_as(&env, &publisher, &stream, &service.id, route);
    let framed_by = |len: u32| framed_as(Box::new(move |p| p - p % len));
    let lone = Block::lone_worker(env.nats.partitions);
    assert!(lone.len() > 1 && lone.iter().all(|b| b.len == lone[0].len), "{lone:?}");
    e2e::wait_until(Duration::from_secs(10), "frames on a lone worker's blocks", || framed_by(lone[0].len)).await;

    let quarter = env.nats.partitions / 4;
    let blocks: Vec<Block> = (0..4).map(|i| Block { start: i * quarter, len: quarter }).collect();
    for &block in &blocks {
        spec.ensure(block).await.unwrap();
    }
    e2e::wait_until(Duration::from_secs(10), "frames on the consumers' blocks", || framed_by(quarter)).await;

    // Worker a fetches the first three quarters, b the last: a's events on its first block.
    let framing = |target: u32, worker: &str| Framing { target: target * quarter, worker: worker.to_owned() };
    for (&block, framing) in blocks.iter().zip([framing(0, "a"), framing(0, "a"), framing(0, "a"), framing(3, "b")]) {
        spec.recreate(block, &framing).await.unwrap();
    }
    e2e::wait_until(Duration::from_secs(10), "a worker's blocks framed together", || {
        framed_as(Box::new(move |p| if p < 3 * quarter { 0 } else { 3 * quarter }))
    })
    .await;
    // A framing whose target another worker's block covers is not followed.
    spec.recreate(blocks[1], &framing(0, "c")).await.unwrap();
    e2e::wait_until(Duration::from_secs(10), "a framing for another worker ignored", || {
        framed_as(Box::new(move |p| match p / quarter {
            1 => quarter,
            3 => 3 * quarter,
            _ => 0,
        }))
    })
    .await;

    for &block in &blocks {
        spec.delete(block).await.unwrap();
    }
    e2e::wait_until(Duration::from_secs(10), "frames on a lone worker's blocks again", || framed_by(lone[0].len)).await;
}
