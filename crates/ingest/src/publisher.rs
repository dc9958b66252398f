//! Publishing accepted events to JetStream: `Nats-Msg-Id` is the event id, and an event counts as
//! accepted only once JetStream acknowledged storing it.
//!
//! The stream's size cap (`NATS_STREAM_MAX_BYTES`) is enforced here: a task reads the stream's
//! size every quarter second, and past the cap events are refused with `503` until workers have
//! caught up. (NATS 2.9 would enforce a cap by deleting the oldest accepted events; see
//! `common::nats::ensure_streams`.) Several ingest processes may overshoot the cap by what they
//! accept in a quarter second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage};
use common::ApiError;
use common::config::NatsConfig;
use common::event::EventEnvelope;

/// How often the stream's size is read for the cap.
pub const FILL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    nats: NatsConfig,
    timeout: Duration,
    /// The stream's size in bytes as last read.
    fill: Arc<AtomicU64>,
}

impl Publisher {
    /// Publishes to the partitions of `nats`'s stream, waiting at most its publish timeout.
    pub fn new(client: async_nats::Client, js: jetstream::Context, nats: &NatsConfig) -> Self {
        Self { client, js, timeout: nats.publish_timeout(), nats: nats.clone(), fill: Arc::default() }
    }

    /// Reads the stream's size every [`FILL_INTERVAL`] until `shutdown` (only with a cap).
    pub async fn watch_fill(self, shutdown: tokio_util::sync::CancellationToken) {
        if self.nats.max_bytes < 0 {
            return;
        }
        loop {
            if let Ok(info) = self.js.get_stream(&self.nats.stream).await.map(|stream| stream.cached_info().clone()) {
                self.fill.store(info.state.bytes, Ordering::Relaxed);
                metrics::gauge!("ingest_stream_bytes").set(info.state.bytes as f64);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(FILL_INTERVAL) => {}
            }
        }
    }

    /// Publishes and waits for JetStream's acknowledgement. Returns the stream sequence.
    /// Any failure (NATS unreachable, timeout, stream full) is a `503` the sender should retry.
    pub async fn publish(&self, event: &EventEnvelope) -> Result<u64, ApiError> {
        if self.client.connection_state() != State::Connected {
            metrics::counter!("events_publish_failures_total", "reason" => "disconnected").increment(1);
            return Err(unavailable());
        }
        if u64::try_from(self.nats.max_bytes).is_ok_and(|cap| self.fill.load(Ordering::Relaxed) >= cap) {
            metrics::counter!("events_publish_failures_total", "reason" => "stream_full").increment(1);
            return Err(ApiError::unavailable("the event stream is full (NATS_STREAM_MAX_BYTES); retry later", 5));
        }
        let payload = serde_json::to_vec(event).map_err(ApiError::internal)?;
        let started = Instant::now();
        let mut headers = async_nats::HeaderMap::new();
        common::telemetry::inject_context(&mut headers);
        let publish =
            PublishMessage::build().headers(headers).payload(payload.into()).message_id(event.event_id.to_string());
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
