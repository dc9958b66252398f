//! The event stream's settings follow the configuration: changed replicas or duplicate window are
//! applied to the existing stream, the stream never carries a size cap (NATS 2.9 would enforce it
//! by deleting accepted events: ingest enforces it), and a stream made with another partition
//! count or subject layout is refused by name.

use std::time::Duration;

use e2e::TestEnv;
use e2e::servers::ServiceProcess;

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
