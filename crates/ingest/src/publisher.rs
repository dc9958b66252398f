//! Publishing accepted events to JetStream. An event counts as accepted only once JetStream
//! acknowledged storing it.
//!
//! **The producer knows nothing of the workers.** An event's subject is its partition's,
//! `<prefix>.events.<partition>`, the partition a hash of its `(service, dedup_key)` names
//! (`common::config::partition_of`), decided from the event alone: ingest reads nothing of the
//! consumers. Each partition has one durable consumer and one owning worker at a time, so a
//! key's events reach one worker in the order they were stored, whatever the workers do.
//!
//! **Group commit in rounds.** One publishing task takes every event queued since its last
//! *round* and publishes them as one round: each partition's events as one JetStream message, a
//! *frame* (at most `NATS_MAX_FRAME_EVENTS`; see `common::nats::FRAME_SLOTS`), all of the round's
//! frames written at once, and its acknowledgements awaited together. While one round is on its
//! way the next gathers, [`ROUNDS_IN_FLIGHT`] at most. Under load one message, one store and one
//! acknowledgement carry many events, and nats-server reads a round's messages, stores them and
//! answers them in one pass instead of waking for each; a lone event is published at once. Under
//! load (the last round had company) the task, finding its queue empty, yields to the runtime
//! twice ([`GATHER_YIELDS`]) before the round goes, so the requests being handled on the same
//! threads join it: no timer, and no wait when idle. Rounds are written in order on one
//! connection, so a partition's frames are stored in the order their events were accepted.
//! Each event's request is answered when its frame's acknowledgement arrives.
//!
//! A retried event whose first acceptance Redis could not remember goes in a message of its own
//! that carries its id as `Nats-Msg-Id`, so the stream drops a re-published copy; a copy of an
//! event that went out in a frame is dropped by the worker, which finds the id in the event log.
//!
//! A full stream (`NATS_STREAM_MAX_BYTES`, the stream's own cap with the discard-new policy)
//! refuses the publish: its events are answered `503` saying so, and nothing stored is dropped.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use common::ApiError;
use common::config::NatsConfig;
use common::event::EventEnvelope;
use common::nats::{TRACEPARENTS_HEADER, event_position};
use futures_util::future::join_all;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most frames in a round (one per partition, more where a partition's frame is full): bounds a
/// round however fast events arrive.
const MAX_ROUND_FRAMES: usize = 1024;

/// Largest frame in bytes (NATS's default `max_payload` is 1 MiB; one event is at most about
/// half of that). An event that does not fit goes into the partition's next frame.
const MAX_FRAME_BYTES: usize = 900 * 1024;

/// Under load (the last round had company), how many times the publishing task lets the requests
/// being handled on its threads join a round before it goes: each yield costs a wake-up, a frame
/// less costs nats-server a store, a delivery and an acknowledgement.
const GATHER_YIELDS: usize = 2;

/// Rounds written and not yet acknowledged, at most: one gathers while another is on its way, so
/// the task never waits out a round trip with events queued (docs/benchmarks.md has the
/// measurements).
const ROUNDS_IN_FLIGHT: usize = 2;

/// Events waiting for the publishing task, at most, per partition.
const QUEUE_PER_PARTITION: usize = 4096;

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    nats: NatsConfig,
    /// The publishing task's queue; none when `NATS_MAX_FRAME_EVENTS` is 1.
    queue: Option<mpsc::Sender<Pending>>,
}

/// Whether an event may share its JetStream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Company {
    /// In its partition's frame of the next round: the worker drops a re-published copy.
    Shared,
    /// In a message of its own with `Nats-Msg-Id` = its id, so the stream drops a re-published
    /// copy: for a retried event whose first acceptance Redis could not remember.
    Alone,
}

/// An event as a frame's line.
struct Line {
    json: Vec<u8>,
    traceparent: Option<String>,
}

/// An event waiting for its round.
struct Pending {
    partition: u32,
    line: Line,
    queued: Instant,
    /// The event's position in the stream once stored.
    done: oneshot::Sender<Result<u64, ApiError>>,
}

impl Publisher {
    /// Publishes to the partitions of `nats`'s stream, waiting at most its publish timeout.
    /// Starts the publishing task (it ends when the last clone is dropped), unless
    /// `NATS_MAX_FRAME_EVENTS` is 1.
    pub fn new(client: async_nats::Client, js: jetstream::Context, nats: &NatsConfig) -> Self {
        let queue = (nats.max_frame_events > 1).then(|| {
            let (sender, receiver) = mpsc::channel(QUEUE_PER_PARTITION * nats.partitions as usize);
            let rounds = Rounds {
                js: js.clone(),
                subjects: (0..nats.partitions).map(|p| nats.partition_subject(p).into()).collect(),
                timeout: nats.publish_timeout(),
                max_events: nats.max_frame_events,
            };
            tokio::spawn(rounds.run(receiver));
            sender
        });
        Self { client, js, nats: nats.clone(), queue }
    }

    /// Publishes `event` (in its partition's frame of the next round, or alone) and waits for
    /// JetStream's acknowledgement. Returns the event's position in the stream. Any failure (NATS
    /// unreachable, timeout, stream full) is a `503` the sender should retry.
    pub async fn publish(&self, event: &EventEnvelope, company: Company) -> Result<u64, ApiError> {
        if self.client.connection_state() != State::Connected {
            metrics::counter!("events_publish_failures_total", "reason" => "disconnected").increment(1);
            return Err(unavailable());
        }
        let line = Line {
            json: serde_json::to_vec(event).map_err(ApiError::internal)?,
            traceparent: common::telemetry::current_traceparent(),
        };
        let partition = common::config::partition_of(&event.service_id, &event.dedup_key, self.nats.partitions);
        let queue = match &self.queue {
            Some(queue) if company == Company::Shared => queue,
            _ => {
                // A message of its own, as many in flight as there are requests.
                let message = message(&[&line]).message_id(event.event_id.to_string());
                let subject = self.nats.partition_subject(partition).into();
                let sent = write(&self.js, subject, message, 1).await?;
                let stored = acknowledged(sent, self.nats.publish_timeout(), 1).await;
                return stored.map(|seq| event_position(seq, 0));
            }
        };
        let (done, answer) = oneshot::channel();
        let pending = Pending { partition, line, queued: Instant::now(), done };
        if queue.try_send(pending).is_err() {
            metrics::counter!("events_publish_failures_total", "reason" => "queue_full").increment(1);
            return Err(unavailable());
        }
        answer.await.unwrap_or_else(|_| Err(unavailable()))
    }
}

/// The publishing task.
struct Rounds {
    js: jetstream::Context,
    /// Each partition's subject (shared bytes: cloned per frame without copying).
    subjects: Vec<Subject>,
    timeout: Duration,
    max_events: usize,
}

/// One partition's events in a round: one JetStream message.
struct Frame {
    partition: u32,
    events: Vec<Pending>,
    bytes: usize,
}

impl Rounds {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(ROUNDS_IN_FLIGHT));
        let mut carried: Option<Pending> = None;
        // Whether the last round had company: then requests are arriving faster than rounds go.
        let mut loaded = false;
        loop {
            let Ok(slot) = in_flight.clone().acquire_owned().await else { return };
            let first = match carried.take() {
                Some(pending) => pending,
                None => match queue.recv().await {
                    Some(pending) => pending,
                    None => return,
                },
            };
            let (frames, rest) = self.gather(first, &mut queue, loaded).await;
            carried = rest;
            loaded = frames.iter().map(|frame| frame.events.len()).sum::<usize>() > 1;
            let sent = self.send(frames).await;
            let timeout = self.timeout;
            tokio::spawn(async move {
                answer(sent, timeout).await;
                drop(slot);
            });
        }
    }

    /// `first` and every event queued after it, as one frame per partition (more where a frame is
    /// full), and the event that did not fit, if any.
    async fn gather(
        &self,
        first: Pending,
        queue: &mut mpsc::Receiver<Pending>,
        loaded: bool,
    ) -> (Vec<Frame>, Option<Pending>) {
        // Each partition's frame that still takes events.
        let mut open: Vec<Option<usize>> = vec![None; self.subjects.len()];
        let mut frames: Vec<Frame> = Vec::new();
        let mut next = Some(first);
        let mut yields = if loaded { GATHER_YIELDS } else { 0 };
        loop {
            let pending = match next.take() {
                Some(pending) => pending,
                None => match queue.try_recv() {
                    Ok(pending) => pending,
                    Err(_) if yields > 0 => {
                        yields -= 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(_) => return (frames, None),
                },
            };
            let open_frame = open[pending.partition as usize].filter(|&i| {
                let frame = &frames[i];
                frame.events.len() < self.max_events && frame.bytes + 1 + pending.line.json.len() <= MAX_FRAME_BYTES
            });
            let i = match open_frame {
                Some(i) => i,
                None if frames.len() == MAX_ROUND_FRAMES => return (frames, Some(pending)),
                None => {
                    open[pending.partition as usize] = Some(frames.len());
                    frames.push(Frame { partition: pending.partition, events: Vec::new(), bytes: 0 });
                    frames.len() - 1
                }
            };
            let frame = &mut frames[i];
            frame.bytes += pending.line.json.len() + usize::from(!frame.events.is_empty());
            frame.events.push(pending);
        }
    }

    /// Writes a round's frames, in order; each with its events and what became of its publish.
    /// An event that waited longer than the publish timeout is answered `503` without being
    /// published.
    async fn send(&self, frames: Vec<Frame>) -> Vec<(Vec<Pending>, Result<PublishAckFuture, ApiError>)> {
        let mut sent = Vec::with_capacity(frames.len());
        for frame in frames {
            let (events, late): (Vec<Pending>, Vec<Pending>) =
                frame.events.into_iter().partition(|pending| pending.queued.elapsed() < self.timeout);
            for pending in late {
                metrics::counter!("events_publish_failures_total", "reason" => "timeout").increment(1);
                let _gone = pending.done.send(Err(unavailable()));
            }
            if events.is_empty() {
                continue;
            }
            let lines: Vec<&Line> = events.iter().map(|p| &p.line).collect();
            let subject = self.subjects[frame.partition as usize].clone();
            let publish = write(&self.js, subject, message(&lines), events.len()).await;
            sent.push((events, publish));
        }
        sent
    }
}

/// Waits (at most `timeout`) for each frame of a round to be acknowledged and answers its events.
async fn answer(sent: Vec<(Vec<Pending>, Result<PublishAckFuture, ApiError>)>, timeout: Duration) {
    let acks = sent.into_iter().map(|(events, publish)| async move {
        let answer = match publish {
            Ok(ack) => acknowledged(ack, timeout, events.len()).await,
            Err(err) => Err(err),
        };
        for (line, pending) in events.into_iter().enumerate() {
            let _gone = pending.done.send(answer.clone().map(|seq| event_position(seq, line)));
        }
    });
    join_all(acks).await;
}

/// The JetStream message of a frame: its lines, and their trace contexts in a header.
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
    PublishMessage::build().headers(headers).payload(payload.into())
}

/// Writes a message of `events` events; the future of its acknowledgement, or the `503` its
/// events are answered with.
async fn write(
    js: &jetstream::Context,
    subject: Subject,
    message: PublishMessage,
    events: usize,
) -> Result<PublishAckFuture, ApiError> {
    metrics::histogram!("ingest_frame_events").record(events as f64);
    js.send_publish(subject, message).await.map_err(|err| {
        tracing::warn!(error = %err, events, "JetStream publish failed");
        metrics::counter!("events_publish_failures_total", "reason" => "error").increment(events as u64);
        unavailable()
    })
}

/// Waits (at most `timeout`) for JetStream to acknowledge storing a message of `events` events;
/// its stream sequence, or the `503` its events are answered with if it does not.
async fn acknowledged(ack: PublishAckFuture, timeout: Duration, events: usize) -> Result<u64, ApiError> {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, ack.into_future()).await;
    metrics::histogram!("events_publish_seconds").record(started.elapsed().as_secs_f64());
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
