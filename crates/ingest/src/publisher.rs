//! Publishing accepted events to JetStream: `Nats-Msg-Id` is the event id, and an event counts as
//! accepted only once JetStream acknowledged storing it.

use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage};
use common::ApiError;
use common::config::NatsConfig;
use common::event::EventEnvelope;

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    nats: NatsConfig,
    timeout: Duration,
}

impl Publisher {
    /// Publishes to the partitions of `nats`'s stream, waiting at most its publish timeout.
    pub fn new(client: async_nats::Client, js: jetstream::Context, nats: &NatsConfig) -> Self {
        Self { client, js, timeout: nats.publish_timeout(), nats: nats.clone() }
    }

    /// Publishes and waits for JetStream's acknowledgement. Returns the stream sequence.
    /// Any failure (NATS unreachable, timeout, stream full) is a `503` the sender should retry.
    pub async fn publish(&self, event: &EventEnvelope) -> Result<u64, ApiError> {
        if self.client.connection_state() != State::Connected {
            metrics::counter!("events_publish_failures_total", "reason" => "disconnected").increment(1);
            return Err(unavailable());
        }
        let payload = serde_json::to_vec(event).map_err(ApiError::internal)?;
        let started = Instant::now();
        let publish = PublishMessage::build().payload(payload.into()).message_id(event.event_id.to_string());
        let result = tokio::time::timeout(self.timeout, async {
            let subject = self.nats.event_subject(&event.service_id, &event.dedup_key);
            self.js.send_publish(subject, publish).await?.await
        })
        .await;
        metrics::histogram!("events_publish_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, event.id = %event.event_id, "JetStream publish failed");
                metrics::counter!("events_publish_failures_total", "reason" => "error").increment(1);
                Err(unavailable())
            }
            Err(_) => {
                tracing::warn!(event.id = %event.event_id, "JetStream publish acknowledgement timed out");
                metrics::counter!("events_publish_failures_total", "reason" => "timeout").increment(1);
                Err(unavailable())
            }
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::unavailable("the event pipeline cannot accept events right now; retry later", 5)
}
