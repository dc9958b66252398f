//! NATS JetStream set-up shared by ingest and workers: the event stream (work-queue retention:
//! a message stays until a worker acknowledges it, and a full stream refuses new publishes rather
//! than dropping accepted events), its dead-letter stream, and the workers' durable consumer.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};

use crate::config::NatsConfig;

/// Connects to NATS. With `retry` the client keeps trying in the background and the call returns
/// at once, so a service can start while NATS is down.
pub async fn connect(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .connect(&config.url)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.url))
}

/// A JetStream context whose requests (publish acks included) time out after `timeout`.
pub fn jetstream(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    let mut context = jetstream::new(client);
    context.set_timeout(timeout);
    context
}

/// Creates the event stream and the dead-letter stream if missing; returns the event stream.
pub async fn ensure_streams(js: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<stream::Stream> {
    let events = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.events_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_bytes: config.max_bytes,
            num_replicas: config.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating JetStream stream {}", config.stream))?;
    js.get_or_create_stream(stream::Config {
        name: config.dlq_stream(),
        subjects: vec![config.dlq_subject()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating JetStream stream {}", config.dlq_stream()))?;
    Ok(events)
}

/// The workers' shared durable pull consumer. Redelivery after `ack_wait` is unlimited: a worker
/// decides itself when a message is poison and moves it to the dead-letter stream.
pub async fn ensure_consumer(
    events: &stream::Stream,
    name: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> anyhow::Result<consumer::PullConsumer> {
    events
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating JetStream consumer {name}"))
}
