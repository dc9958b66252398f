//! Publishing accepted events to JetStream. An event counts as accepted only once JetStream
//! acknowledged storing it.
//!
//! **Group commit.** Each partition has one publishing task. It publishes one JetStream message
//! at a time, and every event routed to it that arrives while a message is on its way goes
//! into the next one, a *frame* (at most `NATS_MAX_FRAME_EVENTS`; see `common::nats::FRAME_SLOTS`):
//! under load one message, one store and one acknowledgement carry many events, and a lone event
//! is published at once. Under load (the last frame had company) a framer that finds its queue
//! empty yields to the runtime twice ([`GATHER_YIELDS`]) before its frame goes, so the requests
//! being handled on the same threads join it: no timer, no wait when idle, and frames about
//! half again as large.
//! Each event's request is answered when its frame's acknowledgement arrives.
//!
//! **The producer knows nothing of the workers.** An event's subject is its partition's,
//! `<prefix>.events.<partition>`, the partition a hash of its `(service, dedup_key)` names
//! (`common::config::partition_of`), decided from the event alone: ingest reads nothing of the
//! consumers. Each partition has one durable consumer and one owning worker at a time, so a
//! key's events reach one worker in the order they were stored, whatever the workers do.
//!
//! A lone event's message carries its id as `Nats-Msg-Id`, so the stream drops a re-published
//! copy; a copy of an event that went out in a larger frame is dropped by the worker, which
//! finds the id in the event log.
//!
//! A full stream (`NATS_STREAM_MAX_BYTES`, the stream's own cap with the discard-new policy)
//! refuses the publish: its events are answered `503` saying so, and nothing stored is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage};
use common::ApiError;
use common::config::NatsConfig;
use common::event::EventEnvelope;
use common::nats::{TRACEPARENTS_HEADER, event_position};
use tokio::sync::{mpsc, oneshot};

/// Largest frame in bytes (NATS's default `max_payload` is 1 MiB; one event is at most about
/// half of that). An event that does not fit goes into the next frame.
const MAX_FRAME_BYTES: usize = 900 * 1024;

/// Under load (the last frame had company), how many times a framer lets the requests being
/// handled on its threads add to its frame before it goes: each yield costs a wake-up, a frame
/// less costs nats-server a store, a delivery and an acknowledgement.
const GATHER_YIELDS: usize = 2;

/// Events waiting for a partition's publishing task, at most.
const QUEUE_PER_PARTITION: usize = 4096;

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    nats: NatsConfig,
    /// Each partition's publishing task.
    partitions: Arc<[mpsc::Sender<Pending>]>,
}

/// Whether an event may share its JetStream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Company {
    /// In its partition's next frame, with others: the worker drops a re-published copy.
    Shared,
    /// In a message of its own with `Nats-Msg-Id` = its id, so the stream drops a re-published
    /// copy: for a retried event whose first acceptance Redis could not remember.
    Alone,
}

/// An event as a frame's line.
struct Line {
    event_id: uuid::Uuid,
    json: Vec<u8>,
    traceparent: Option<String>,
}

/// An event waiting for its frame.
struct Pending {
    line: Line,
    company: Company,
    queued: Instant,
    /// The event's position in the stream once stored.
    done: oneshot::Sender<Result<u64, ApiError>>,
}

impl Publisher {
    /// Publishes to the partitions of `nats`'s stream, waiting at most its publish timeout.
    /// Starts one publishing task per partition (they end when the last clone is dropped), unless
    /// `NATS_MAX_FRAME_EVENTS` is 1.
    pub fn new(client: async_nats::Client, js: jetstream::Context, nats: &NatsConfig) -> Self {
        // With frames of one event there is nothing to group: events are published directly.
        let framed = if nats.max_frame_events > 1 { nats.partitions } else { 0 };
        let partitions = (0..framed)
            .map(|partition| {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_PARTITION);
                let framer = Framer {
                    js: js.clone(),
                    subject: nats.partition_subject(partition).into(),
                    timeout: nats.publish_timeout(),
                    max_events: nats.max_frame_events,
                };
                tokio::spawn(framer.run(receiver));
                sender
            })
            .collect();
        Self { client, js, nats: nats.clone(), partitions }
    }

    /// Publishes `event` (in its partition's next frame) and waits for JetStream's
    /// acknowledgement. Returns the event's position in the stream. Any failure (NATS
    /// unreachable, timeout, stream full) is a `503` the sender should retry.
    pub async fn publish(&self, event: &EventEnvelope, company: Company) -> Result<u64, ApiError> {
        if self.client.connection_state() != State::Connected {
            metrics::counter!("events_publish_failures_total", "reason" => "disconnected").increment(1);
            return Err(unavailable());
        }
        let line = Line {
            event_id: event.event_id,
            json: serde_json::to_vec(event).map_err(ApiError::internal)?,
            traceparent: common::telemetry::current_traceparent(),
        };
        let partition = common::config::partition_of(&event.service_id, &event.dedup_key, self.nats.partitions);
        if self.nats.max_frame_events == 1 {
            // Every event alone, as many in flight as there are requests: no framer in between.
            let subject = self.nats.partition_subject(partition);
            let stored = store(&self.js, subject.into(), message(&[&line]), self.nats.publish_timeout(), 1).await;
            return stored.map(|seq| event_position(seq, 0));
        }
        let (done, answer) = oneshot::channel();
        let pending = Pending { line, company, queued: Instant::now(), done };
        let queue = &self.partitions[partition as usize];
        if queue.try_send(pending).is_err() {
            metrics::counter!("events_publish_failures_total", "reason" => "queue_full").increment(1);
            return Err(unavailable());
        }
        answer.await.unwrap_or_else(|_| Err(unavailable()))
    }
}

/// One partition's publishing task.
struct Framer {
    js: jetstream::Context,
    /// Shared bytes: cloned per frame without copying.
    subject: Subject,
    timeout: Duration,
    max_events: usize,
}

impl Framer {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let mut carried: Option<Pending> = None;
        // Whether the last frame had company: then requests are arriving faster than frames go.
        let mut loaded = false;
        loop {
            let first = match carried.take() {
                Some(pending) => pending,
                None => match queue.recv().await {
                    Some(pending) => pending,
                    None => return,
                },
            };
            let alone = first.company == Company::Alone;
            let mut frame = vec![first];
            let mut bytes = frame[0].line.json.len();
            let mut yields = if loaded { GATHER_YIELDS } else { 0 };
            while !alone && frame.len() < self.max_events {
                let next = match queue.try_recv() {
                    Ok(next) => next,
                    Err(_) if yields > 0 => {
                        yields -= 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(_) => break,
                };
                if next.company == Company::Alone || bytes + 1 + next.line.json.len() > MAX_FRAME_BYTES {
                    carried = Some(next);
                    break;
                }
                bytes += 1 + next.line.json.len();
                frame.push(next);
            }
            loaded = frame.len() > 1;
            self.publish(frame).await;
        }
    }

    /// Publishes one frame and answers each of its events. An event that waited longer than the
    /// publish timeout for its frame is answered `503` without being published.
    async fn publish(&self, frame: Vec<Pending>) {
        let (frame, late): (Vec<Pending>, Vec<Pending>) =
            frame.into_iter().partition(|pending| pending.queued.elapsed() < self.timeout);
        for pending in late {
            metrics::counter!("events_publish_failures_total", "reason" => "timeout").increment(1);
            let _gone = pending.done.send(Err(unavailable()));
        }
        if frame.is_empty() {
            return;
        }
        let lines: Vec<&Line> = frame.iter().map(|p| &p.line).collect();
        let answer = store(&self.js, self.subject.clone(), message(&lines), self.timeout, frame.len()).await;
        for (line, pending) in frame.into_iter().enumerate() {
            let _gone = pending.done.send(answer.clone().map(|seq| event_position(seq, line)));
        }
    }
}

/// The JetStream message of a frame: its lines, their trace contexts, and for a lone event its id
/// as `Nats-Msg-Id` (the stream itself drops a re-published copy within its duplicate window; a
/// copy in a larger frame is dropped by the worker, by the event log's key).
fn message(lines: &[&Line]) -> PublishMessage {
    let mut payload = Vec::with_capacity(lines.iter().map(|l| l.json.len() + 1).sum());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            payload.push(b'\n');
        }
        payload.extend_from_slice(&line.json);
    }
    let mut headers = async_nats::HeaderMap::new();
    if lines.iter().any(|l| l.traceparent.is_some()) {
        let list: Vec<&str> = lines.iter().map(|l| l.traceparent.as_deref().unwrap_or("-")).collect();
        headers.insert(TRACEPARENTS_HEADER, list.join(" ").as_str());
    }
    let message = PublishMessage::build().headers(headers).payload(payload.into());
    match lines {
        [only] => message.message_id(only.event_id.to_string()),
        _ => message,
    }
}

/// Publishes a message of `events` events and waits (at most `timeout`) for JetStream to store
/// it; its stream sequence, or the `503` its events are answered with.
async fn store(
    js: &jetstream::Context,
    subject: Subject,
    message: PublishMessage,
    timeout: Duration,
    events: usize,
) -> Result<u64, ApiError> {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, async { js.send_publish(subject, message).await?.await }).await;
    metrics::histogram!("events_publish_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("ingest_frame_events").record(events as f64);
    let failed = |reason: &'static str| {
        metrics::counter!("events_publish_failures_total", "reason" => reason).increment(events as u64);
    };
    match result {
        Ok(Ok(ack)) => Ok(ack.sequence),
        Ok(Err(err)) if stream_full(&err) => {
            failed("stream_full");
            Err(ApiError::unavailable("the event stream is full (NATS_STREAM_MAX_BYTES); retry later", 5))
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, events, "JetStream publish failed");
            failed("error");
            Err(unavailable())
        }
        Err(_) => {
            tracing::warn!(events, "JetStream publish acknowledgement timed out");
            failed("timeout");
            Err(unavailable())
        }
    }
}

/// Whether JetStream refused a publish because the stream reached its `max_bytes`.
fn stream_full(err: &jetstream::context::PublishError) -> bool {
    /// JetStream's "maximum bytes exceeded" (a stream at its cap with the discard-new policy).
    const STREAM_STORE_FULL: jetstream::ErrorCode = jetstream::ErrorCode(10077);
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == STREAM_STORE_FULL)
}

fn unavailable() -> ApiError {
    ApiError::unavailable("the event pipeline cannot accept events right now; retry later", 5)
}
