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
//! **Frames follow the workers' blocks.** Workers fetch through block consumers (aligned blocks of
//! partitions, see `common::nats::Block`). Ingest reads the stream's consumers whenever
//! JetStream announces that one of its consumers was created or deleted (the
//! `$JS.EVENT.ADVISORY.CONSUMER.CREATED/DELETED` advisories, so routes follow a hand-over within a
//! round trip) and every second in any case (advisories are not stored). An event whose
//! partition lies in a block is framed with the rest of that block's events and published on the
//! subject of the block's first partition, which that block's consumer delivers, or on the
//! partition its consumer's description names (`common::nats::Framing`: a worker among others
//! has its whole share framed on its first block): with one worker, 32 partitions are fetched
//! through 2 blocks, so 2 subjects carry the load and frames are many times larger under the
//! same concurrency; three workers use three subjects. This is only where events are sent, never who
//! owns them: a frame is delivered by whoever owns its subject's partition, and while the workers'
//! blocks change (a worker joins or leaves) an event may briefly be published to its old block's
//! subject and applied by another worker than the rest of its key's events, which the worker's
//! per-key order repair (re-fold by stream sequence) makes right. In steady state each key's
//! events reach one worker. Without any block consumer (no worker runs), events are framed by
//! the blocks a lone worker fetches (`Block::lone_worker`): a backlog is stored in large frames,
//! and the first worker to start fetches it through exactly those blocks.
//!
//! A lone event's message carries its id as `Nats-Msg-Id`, so the stream drops a re-published
//! copy; a copy of an event that went out in a larger frame is dropped by the worker, which
//! finds the id in the event log.
//!
//! The stream's size cap (`NATS_STREAM_MAX_BYTES`) is enforced here: a task reads the stream's
//! size every quarter second, and past the cap events are refused with `503` until workers have
//! caught up. (NATS 2.9 would enforce a cap by deleting the oldest accepted events; see
//! `common::nats::ensure_streams`.) Several ingest processes may overshoot the cap by what they
//! accept in a quarter second.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage};
use common::ApiError;
use common::config::NatsConfig;
use common::event::EventEnvelope;
use common::nats::{Block, Framing, TRACEPARENTS_HEADER, event_position};
use tokio::sync::{mpsc, oneshot};

/// How often the stream's size is read for the cap.
pub const FILL_INTERVAL: Duration = Duration::from_millis(250);

/// Largest frame in bytes (NATS's default `max_payload` is 1 MiB; one event is at most about
/// half of that). An event that does not fit goes into the next frame.
const MAX_FRAME_BYTES: usize = 900 * 1024;

/// Under load (the last frame had company), how many times a framer lets the requests being
/// handled on its threads add to its frame before it goes: each yield costs a wake-up, a frame
/// less costs nats-server a store, a delivery and an acknowledgement.
const GATHER_YIELDS: usize = 2;

/// Events waiting for a partition's publishing task, at most.
const QUEUE_PER_PARTITION: usize = 4096;

/// How often the workers' blocks are read for routing frames when no advisory says they changed.
pub const ROUTE_INTERVAL: Duration = Duration::from_secs(1);

/// The JetStream advisories announcing that one of `stream`'s consumers was created or deleted.
fn consumer_advisories(stream: &str) -> [String; 2] {
    ["CREATED", "DELETED"].map(|what| format!("$JS.EVENT.ADVISORY.CONSUMER.{what}.{stream}.*"))
}

#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    nats: NatsConfig,
    /// The stream's size in bytes as last read.
    fill: Arc<AtomicU64>,
    partitions: Arc<[mpsc::Sender<Pending>]>,
    /// For each partition, the partition whose publishing task frames its events: the first of
    /// the block that covers it or the one its framing names (see the module's *Frames follow the
    /// workers' blocks*).
    routes: Arc<[AtomicU32]>,
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
    /// Starts one publishing task per partition and one that follows the workers' blocks (they
    /// end when the last clone is dropped), unless `NATS_MAX_FRAME_EVENTS` is 1.
    pub fn new(client: async_nats::Client, js: jetstream::Context, nats: &NatsConfig) -> Self {
        Self::with_route_interval(client, js, nats, ROUTE_INTERVAL)
    }

    /// [`Publisher::new`], reading the workers' blocks every `route_interval` when no advisory
    /// says they changed.
    pub fn with_route_interval(
        client: async_nats::Client,
        js: jetstream::Context,
        nats: &NatsConfig,
        route_interval: Duration,
    ) -> Self {
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
        let routes: Arc<[AtomicU32]> = (0..framed).map(AtomicU32::new).collect();
        if framed > 0 {
            let routing =
                Routing { client: client.clone(), js: js.clone(), stream: nats.stream.clone(), route_interval };
            tokio::spawn(routing.follow(Arc::downgrade(&routes)));
        }
        Self { client, js, nats: nats.clone(), fill: Arc::default(), partitions, routes }
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

    /// Publishes `event` (in its partition's next frame) and waits for JetStream's
    /// acknowledgement. Returns the event's position in the stream. Any failure (NATS
    /// unreachable, timeout, stream full) is a `503` the sender should retry.
    pub async fn publish(&self, event: &EventEnvelope, company: Company) -> Result<u64, ApiError> {
        if self.client.connection_state() != State::Connected {
            metrics::counter!("events_publish_failures_total", "reason" => "disconnected").increment(1);
            return Err(unavailable());
        }
        if u64::try_from(self.nats.max_bytes).is_ok_and(|cap| self.fill.load(Ordering::Relaxed) >= cap) {
            metrics::counter!("events_publish_failures_total", "reason" => "stream_full").increment(1);
            return Err(ApiError::unavailable("the event stream is full (NATS_STREAM_MAX_BYTES); retry later", 5));
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
            return stored.map(|seq| event_position(seq, 0)).map_err(|()| unavailable());
        }
        let (done, answer) = oneshot::channel();
        let pending = Pending { line, company, queued: Instant::now(), done };
        let framer = self.routes[partition as usize].load(Ordering::Relaxed);
        let queue = &self.partitions[framer as usize];
        if queue.try_send(pending).is_err() {
            metrics::counter!("events_publish_failures_total", "reason" => "queue_full").increment(1);
            return Err(unavailable());
        }
        answer.await.unwrap_or_else(|_| Err(unavailable()))
    }
}

/// Where `routes` are read from.
struct Routing {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    /// How often the blocks are read when no advisory says they changed.
    route_interval: Duration,
}

impl Routing {
    /// Keeps `routes` in step with the block consumers on the stream until the publisher is gone:
    /// reads them at once, after each consumer advisory and at least every `route_interval`; keeps
    /// the last routes while NATS cannot say.
    async fn follow(self, routes: Weak<[AtomicU32]>) {
        use futures_util::{FutureExt, StreamExt};
        let mut advisories = futures_util::stream::SelectAll::new();
        for subject in consumer_advisories(&self.stream) {
            match self.client.subscribe(subject).await {
                Ok(subscriber) => advisories.push(subscriber),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot follow consumer advisories; routes are read periodically")
                }
            }
        }
        loop {
            let Some(routes) = routes.upgrade() else { return };
            if let Ok(consumers) = self.consumers().await {
                let partitions = u32::try_from(routes.len()).unwrap_or(u32::MAX);
                for (route, target) in routes.iter().zip(Framing::routes(partitions, &consumers)) {
                    route.store(target, Ordering::Relaxed);
                }
                metrics::gauge!("ingest_route_blocks").set(consumers.len() as f64);
                metrics::counter!("ingest_route_reads_total").increment(1);
            }
            drop(routes);
            tokio::select! {
                Some(_) = advisories.next() => {
                    // Whatever else a hand-over announced meanwhile is covered by the same read.
                    while let Some(Some(_)) = advisories.next().now_or_never() {}
                }
                () = tokio::time::sleep(self.route_interval) => {}
            }
        }
    }

    /// The blocks the stream's consumers fetch and where their consumers ask for their events to
    /// be framed (within [`ROUTE_INTERVAL`]).
    async fn consumers(&self) -> Result<Vec<(Block, Option<Framing>)>, ()> {
        use futures_util::TryStreamExt;
        let read = async {
            let infos = self.js.get_stream_no_info(&self.stream).await.map_err(drop)?.consumers();
            infos
                .try_filter_map(|info| async move { Ok(Block::named_by(&info.name).map(|b| (b, Framing::of(&info)))) })
                .try_collect()
                .await
                .map_err(drop)
        };
        tokio::time::timeout(ROUTE_INTERVAL, read).await.unwrap_or(Err(()))
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
            let _gone = pending.done.send(answer.map(|seq| event_position(seq, line)).map_err(|()| unavailable()));
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
/// it; its stream sequence.
async fn store(
    js: &jetstream::Context,
    subject: Subject,
    message: PublishMessage,
    timeout: Duration,
    events: usize,
) -> Result<u64, ()> {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, async { js.send_publish(subject, message).await?.await }).await;
    metrics::histogram!("events_publish_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("ingest_frame_events").record(events as f64);
    match result {
        Ok(Ok(ack)) => Ok(ack.sequence),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, events, "JetStream publish failed");
            metrics::counter!("events_publish_failures_total", "reason" => "error").increment(events as u64);
            Err(())
        }
        Err(_) => {
            tracing::warn!(events, "JetStream publish acknowledgement timed out");
            metrics::counter!("events_publish_failures_total", "reason" => "timeout").increment(events as u64);
            Err(())
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::unavailable("the event pipeline cannot accept events right now; retry later", 5)
}
