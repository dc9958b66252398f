//! The event stream's settings follow the configuration: a changed size cap is applied to the
//! existing stream, and a stream made with another partition count is refused by name.

use e2e::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_size_cap_updates_the_stream_and_another_partition_count_is_refused() {
    let env = TestEnv::new().await;
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    common::nats::ensure_streams(&js, &env.nats).await.unwrap();

    let mut capped = env.nats.clone();
    capped.max_bytes = 64 * 1024 * 1024;
    let mut stream = common::nats::ensure_streams(&js, &capped).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_bytes, 64 * 1024 * 1024);
    assert_eq!(stream.info().await.unwrap().config.subjects, vec![env.nats.events_subjects()]);

    let mut other = capped.clone();
    other.partitions = env.nats.partitions * 2;
    let refused = common::nats::ensure_streams(&js, &other).await.unwrap_err().to_string();
    assert!(refused.contains("NATS_PARTITIONS"), "{refused}");
    assert!(refused.contains(&format!("partitions={}", env.nats.partitions)), "{refused}");
    env.cleanup().await;
}
