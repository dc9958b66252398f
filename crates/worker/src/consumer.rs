//! The JetStream side of a worker: apply what the owned partitions deliver, and give every
//! message exactly one disposition. A message is a frame of events (see `common::nats::FRAME_SLOTS`);
//! each event ends applied (or already applied), moved to the dead-letter stream (it can never be
//! applied), or to be retried. A frame whose events all ended is acknowledged; one with an event
//! to retry is nak'ed with a growing delay, and its applied events come back as duplicates.
//!
//! Messages flow from one fetch task per owned partition (see `partitions`) into *lanes*: a lane
//! applies one transaction at a time, and whatever arrives while a transaction is in flight goes
//! into the next one (group commit), up to `WORKER_BATCH_SIZE` events. A partition always feeds the
//! same lane, so a process never races itself on a key. A message of a partition given up before
//! its lane started applying it is dropped unacknowledged: the partition's next owner receives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message};
use backon::Retryable;
use bytes::Bytes;
use common::event::EventEnvelope;
use common::nats::TRACEPARENTS_HEADER;
use futures_util::future::join_all;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::apply::{BatchReport, QueuedEvent, apply_batch};
use crate::config::WorkerSettings;

/// What applying and disposing of messages needs.
pub struct Applier {
    pub pool: PgPool,
    /// The event stream's name, the `stream` label of the re-fold counter.
    pub stream: String,
    pub js: jetstream::Context,
    pub dlq_subject: String,
    pub settings: WorkerSettings,
}

/// When a batch the database could not apply for now (see `is_transient`) is
/// delivered again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(1);

/// How many times a batch that hit a deadlock or serialization conflict is retried at once.
const CONFLICT_RETRIES: usize = 5;

/// Counts a partition's messages handed to a lane and not yet disposed of, so that a partition
/// is given up only once everything it delivered was acknowledged.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// A message's place in its partition's in-flight count, left when dropped (after its
/// disposition).
struct Counted(Arc<InFlight>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A decoded frame on its way to a lane, counted in its partition's in-flight messages until
/// it is disposed of. Its events, their lines (what the dead-letter stream keeps) and their spans
/// are index-aligned.
pub struct Delivery {
    pub message: Message,
    pub events: Vec<QueuedEvent>,
    lines: Vec<Line>,
    /// Each event's span, continuing the trace ingest started (when tracing is on), ended when
    /// the frame, disposed of, is dropped.
    _spans: Vec<Option<tracing::Span>>,
    /// Leaves the in-flight count when the frame, disposed of, is dropped.
    _counted: Counted,
    /// Cancelled when its partition is given up: not applied then, if not started yet.
    stop: CancellationToken,
    /// Its bytes of the worker's buffer (`WORKER_MAX_BUFFERED_BYTES`), given back when dropped.
    _budget: OwnedSemaphorePermit,
    /// When it was fetched: one that waits in its lane for half the ack wait is kept alive.
    fetched: tokio::time::Instant,
}

impl Delivery {
    pub fn new(
        message: Message,
        events: Vec<(QueuedEvent, Line)>,
        in_flight: Arc<InFlight>,
        stop: CancellationToken,
        budget: OwnedSemaphorePermit,
    ) -> Self {
        in_flight.0.fetch_add(1, Ordering::AcqRel);
        let traceparents = message.headers.as_ref().and_then(|h| h.get(TRACEPARENTS_HEADER)).map(|v| v.as_str());
        let mut traceparents = traceparents.map(|list| list.split(' '));
        let (events, lines): (Vec<QueuedEvent>, Vec<Line>) = events.into_iter().unzip();
        let spans = events
            .iter()
            .map(|event| {
                let traceparent = traceparents.as_mut().and_then(Iterator::next);
                common::telemetry::continue_trace(
                    traceparent,
                    || tracing::info_span!("apply_event", event.id = %event.envelope.event_id, stream.seq = event.seq),
                )
            })
            .collect();
        let fetched = tokio::time::Instant::now();
        Self { message, events, lines, _spans: spans, _counted: Counted(in_flight), stop, _budget: budget, fetched }
    }
}

/// A frame's line: its bytes (what the dead-letter stream keeps) and the id its dead letter is
/// stored under (`Nats-Msg-Id`): the message's own stream sequence and the line's place in it. A
/// frame delivered again dead-letters a line once; a replayed letter is a new message, so if its
/// cause is not fixed yet it is dead-lettered again rather than dropped as a duplicate.
#[derive(Debug, Clone)]
pub struct Line {
    pub bytes: Bytes,
    pub dead_letter_id: String,
}

impl Line {
    fn of(message: &Message, bytes: Bytes, line: usize) -> Self {
        let stored_at = message.info().map_or(0, |info| info.stream_sequence);
        Self { bytes, dead_letter_id: format!("dlq-{stored_at}-{line}") }
    }
}

/// What becomes of one event of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Applied, already applied, or dead-lettered.
    Done,
    /// To be applied again after the delay.
    Retry(Duration),
}

/// A lane: its sender, and the task that applies what it brings, each transaction taking
/// everything queued (up to the batch size), until every sender is gone.
///
/// A batch that is not full starts its transaction no sooner than `WORKER_BATCH_LINGER_MS` after
/// the lane's previous transaction started, gathering company meanwhile (PostgreSQL pays per
/// transaction and per key touched as much as per event), unless nothing arrived for
/// `WORKER_BATCH_QUIET_MS`: then what it holds is all there is for now. An event arriving at a
/// lane that has been idle for the linger is applied at once. A frame whose partition was given
/// up before its transaction starts is dropped here, unacknowledged, for the partition's next
/// owner.
pub fn lane(applier: Arc<Applier>, shutdown: CancellationToken) -> (mpsc::Sender<Delivery>, impl Future<Output = ()>) {
    let batch_size = applier.settings.batch_size;
    let (linger, quiet) = (applier.settings.batch_linger(), applier.settings.batch_quiet());
    let (sender, mut receiver) = mpsc::channel::<Delivery>(batch_size * 2);
    let task = async move {
        let mut waiting: Option<Delivery> = None;
        let mut last_started: Option<tokio::time::Instant> = None;
        loop {
            let first = match waiting.take() {
                Some(delivery) => delivery,
                None => match receiver.recv().await {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            let mut events = first.events.len();
            let mut batch = vec![first];
            let start_at = last_started.map(|started| started + linger);
            while events < batch_size {
                let now = tokio::time::Instant::now();
                let next = match start_at {
                    Some(at) if at > now => {
                        tokio::time::timeout_at(at.min(now + quiet), receiver.recv()).await.ok().flatten()
                    }
                    _ => receiver.try_recv().ok(),
                };
                let Some(delivery) = next else { break };
                if events + delivery.events.len() > batch_size {
                    waiting = Some(delivery);
                    break;
                }
                events += delivery.events.len();
                batch.push(delivery);
            }
            batch.retain(|delivery| !delivery.stop.is_cancelled());
            if batch.is_empty() {
                continue;
            }
            let waited_long = batch.iter().filter(|d| d.fetched.elapsed() > applier.settings.ack_wait() / 2);
            join_all(waited_long.map(|d| progress(&d.message))).await;
            last_started = Some(tokio::time::Instant::now());
            applier.apply_and_dispose(batch, &shutdown).await;
        }
    };
    (sender, task)
}

impl Applier {
    /// Applies one batch (in transactions of at most the batch size) and disposes of every
    /// message in it; the messages leave their partitions' in-flight counts once disposed of.
    #[tracing::instrument(name = "apply_batch", skip_all, fields(frames = batch.len()))]
    async fn apply_and_dispose(&self, mut batch: Vec<Delivery>, shutdown: &CancellationToken) {
        // The batch's events in one run (moved out of their frames), each with its line and its
        // frame's delivery count, and each frame's event count; `done[i]` is what became of
        // event `i`.
        let (mut events, mut lines, mut deliveries, mut frames) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for delivery in &mut batch {
            let delivered = delivery.message.info().map_or(0, |i| i.delivered);
            frames.push(delivery.events.len());
            deliveries.extend(std::iter::repeat_n(delivered, delivery.events.len()));
            events.append(&mut delivery.events);
            lines.append(&mut delivery.lines);
        }
        let mut done = vec![Disposition::Retry(Duration::from_secs(2)); events.len()];
        let size = self.settings.batch_size.max(1);
        for (offset, chunk) in (0..).step_by(size).zip(events.chunks(size)) {
            let started = Instant::now();
            match self.apply(chunk).await {
                Ok(report) => {
                    record(&report, started, &self.stream);
                    done[offset..offset + chunk.len()].fill(Disposition::Done);
                }
                Err(err) if common::db::is_unavailable(&err) => {
                    tracing::warn!(error = %err, batch = events.len(), "database unavailable; events will be redelivered");
                    metrics::counter!("worker_database_unavailable_total").increment(1);
                    let messages: Vec<&Message> = batch.iter().map(|d| &d.message).collect();
                    nak_all(&messages, Duration::from_secs(2)).await;
                    self.wait_for_database(shutdown).await;
                    return;
                }
                Err(err) if is_transient(&err) => {
                    tracing::warn!(error = %err, batch = chunk.len(), "the database cannot apply the batch for now; retrying it, no attempt counted");
                    metrics::counter!("worker_transient_failures_total").increment(1);
                    done[offset..offset + chunk.len()].fill(Disposition::Retry(TRANSIENT_RETRY));
                }
                Err(err) => {
                    if chunk.len() > 1 {
                        tracing::warn!(error = %err, batch = chunk.len(), "batch failed; applying its events one by one");
                    }
                    for (i, event) in (offset..).zip(chunk) {
                        done[i] = if chunk.len() > 1 {
                            self.apply_one(event, &lines[i], deliveries[i], shutdown).await
                        } else {
                            self.give_up_or_retry(event, &lines[i], deliveries[i], &err.to_string()).await
                        };
                    }
                }
            }
        }
        dispose(&batch, &frames, &done).await;
    }

    #[tracing::instrument(skip_all, fields(event.id = %event.envelope.event_id, stream.seq = event.seq))]
    async fn apply_one(
        &self,
        event: &QueuedEvent,
        line: &Line,
        deliveries: i64,
        shutdown: &CancellationToken,
    ) -> Disposition {
        let started = Instant::now();
        match self.apply(std::slice::from_ref(event)).await {
            Ok(report) => {
                record(&report, started, &self.stream);
                Disposition::Done
            }
            Err(err) if common::db::is_unavailable(&err) => {
                self.wait_for_database(shutdown).await;
                Disposition::Retry(Duration::from_secs(2))
            }
            Err(err) if is_transient(&err) => {
                metrics::counter!("worker_transient_failures_total").increment(1);
                Disposition::Retry(TRANSIENT_RETRY)
            }
            Err(err) => self.give_up_or_retry(event, line, deliveries, &err.to_string()).await,
        }
    }

    async fn apply(&self, events: &[QueuedEvent]) -> Result<BatchReport, sqlx::Error> {
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_times(CONFLICT_RETRIES)
            .with_jitter();
        (|| apply_batch(&self.pool, events))
            .retry(backoff)
            .when(is_conflict)
            .notify(|_, _| metrics::counter!("worker_conflict_retries_total").increment(1))
            .await
    }

    /// An event that failed to apply: its failed attempt is counted (in PostgreSQL, so every
    /// worker sees the same count), and it is retried later with a growing delay until it has
    /// failed `max_deliveries` times; then it is poison and goes to the dead-letter stream.
    /// Redeliveries that were no attempt (a database outage, an ack wait that expired) do not
    /// count. If the count cannot be written, the event is simply retried.
    #[tracing::instrument(name = "apply_outcome", skip_all, fields(event.id = %event.envelope.event_id, stream.seq = event.seq))]
    pub async fn give_up_or_retry(
        &self,
        event: &QueuedEvent,
        line: &Line,
        deliveries: i64,
        reason: &str,
    ) -> Disposition {
        let counted: Result<i32, sqlx::Error> = sqlx::query_scalar(
            "insert into apply_failures (event_id, attempts, last_error) values ($1, 1, $2)
             on conflict (event_id) do update
               set attempts = apply_failures.attempts + 1, last_error = excluded.last_error, updated_at = now()
             returning attempts",
        )
        .bind(event.envelope.event_id)
        .bind(reason)
        .fetch_one(&self.pool)
        .await;
        let attempts = match counted {
            Ok(attempts) => u64::from(attempts.unsigned_abs()),
            Err(err) => {
                tracing::warn!(error = %err, reason, "could not count a failed attempt; will retry");
                return Disposition::Retry(Duration::from_secs(2));
            }
        };
        if attempts >= self.settings.max_deliveries {
            let position = u64::try_from(event.seq).unwrap_or(0);
            if self.dead_letter(line, position, deliveries, reason).await {
                Disposition::Done
            } else {
                Disposition::Retry(Duration::from_secs(5))
            }
        } else {
            let delay = Duration::from_millis(500 * 2u64.pow(u32::try_from(attempts).unwrap_or(7).min(7)));
            tracing::warn!(reason, attempts, retry_in_ms = delay.as_millis(), "event failed to apply; will retry");
            metrics::counter!("worker_retries_total").increment(1);
            Disposition::Retry(delay)
        }
    }

    /// Copies an event (a frame's line) to the dead-letter stream with the reason; whether it was
    /// stored. The copy keeps the event's position, where a replay applies it.
    pub async fn dead_letter(&self, line: &Line, position: u64, deliveries: i64, reason: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", line.dead_letter_id.as_str());
        headers.insert("OpsSentinal-Reason", header_safe(reason).as_str());
        headers.insert("OpsSentinal-Stream-Seq", position.to_string().as_str());
        headers.insert("OpsSentinal-Deliveries", deliveries.to_string().as_str());
        headers.insert("OpsSentinal-Failed-At", jiff::Timestamp::now().to_string().as_str());
        let stored =
            async { self.js.publish_with_headers(self.dlq_subject.clone(), headers, line.bytes.clone()).await?.await }
                .await;
        match stored {
            Ok(_) => {
                tracing::error!(stream.seq = position, reason, "event moved to the dead-letter stream");
                metrics::counter!("events_dead_lettered_total").increment(1);
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, stream.seq = position, "could not dead-letter; will retry");
                false
            }
        }
    }

    async fn wait_for_database(&self, shutdown: &CancellationToken) {
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let probe = (|| sqlx::query("select 1").execute(&self.pool)).retry(backoff);
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = probe => if result.is_ok() { tracing::info!("database reachable again") },
        }
    }
}

/// A frame's line that can never be applied.
pub struct Rejected {
    pub line: Line,
    pub position: u64,
    pub reason: String,
}

/// Reads a frame's events, with their lines; the lines that cannot be applied, with the reason.
/// An event accepted before `oldest` (the start of the oldest day the event log keeps) cannot be
/// applied either: the history its position needs, and the dedup horizon, are gone.
pub fn decode(message: &Message, oldest: jiff::Timestamp) -> (Vec<(QueuedEvent, Line)>, Vec<Rejected>) {
    let base = match position(message) {
        Ok(base) => base,
        Err(reason) => {
            let line = Line::of(message, message.payload.clone(), 0);
            return (Vec::new(), vec![Rejected { line, position: 0, reason }]);
        }
    };
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    for (i, range) in common::nats::frame_lines(&message.payload).into_iter().enumerate() {
        let line = message.payload.slice(range);
        let position = base.saturating_add(i as u64);
        let event = serde_json::from_slice::<EventEnvelope>(&line)
            .map_err(|e| format!("undecodable event: {e}"))
            .and_then(|envelope| envelope.check_applicable().map(|()| envelope))
            .and_then(|envelope| {
                if envelope.received_at < oldest {
                    return Err(format!(
                        "accepted at {}, before the oldest day the event log keeps (EVENT_RETENTION_DAYS): \
                         its key's history and the dedup horizon are gone, so it is not applied",
                        envelope.received_at
                    ));
                }
                Ok(envelope)
            })
            .and_then(|envelope| {
                let seq = i64::try_from(position).map_err(|_| "stream sequence out of range".to_owned())?;
                Ok(QueuedEvent { seq, envelope })
            });
        match event {
            Ok(event) => events.push((event, Line::of(message, line, i))),
            Err(reason) => rejected.push(Rejected { line: Line::of(message, line, i), position, reason }),
        }
    }
    (events, rejected)
}

/// Where a frame's first event belongs in its key's order: the position it was first accepted
/// at (a replayed dead letter carries it in a header), else its own.
fn position(message: &Message) -> Result<u64, String> {
    let replayed = message.headers.as_ref().and_then(|h| h.get(common::nats::ORIGINAL_SEQ_HEADER));
    match replayed {
        Some(value) => value.as_str().parse().map_err(|_| format!("bad {} header", common::nats::ORIGINAL_SEQ_HEADER)),
        None => {
            let info = message.info().map_err(|e| format!("message without JetStream metadata: {e}"))?;
            Ok(common::nats::event_position(info.stream_sequence, 0))
        }
    }
}

fn header_safe(reason: &str) -> String {
    reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' }).take(512).collect()
}

fn record(report: &BatchReport, started: Instant, stream: &str) {
    metrics::histogram!("worker_apply_batch_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("worker_batch_size").record(report.outcomes.len() as f64);
    for outcome in &report.outcomes {
        metrics::counter!("events_applied_total", "outcome" => outcome.as_str()).increment(1);
    }
    metrics::counter!("events_duplicate_total").increment(report.duplicates as u64);
    metrics::counter!("worker_refolds_total", "stream" => stream.to_owned()).increment(report.refolded_keys as u64);
}

/// Acknowledges each frame whose events all ended, and naks the others with their longest
/// retry delay. `frames` holds each frame's event count, `done` each event's disposition, in
/// batch order.
async fn dispose(batch: &[Delivery], frames: &[usize], done: &[Disposition]) {
    let mut rest = done;
    let outcomes = batch.iter().zip(frames).map(|(delivery, &count)| {
        let (own, next) = rest.split_at(count);
        rest = next;
        let retry = own
            .iter()
            .filter_map(|d| match d {
                Disposition::Done => None,
                Disposition::Retry(delay) => Some(*delay),
            })
            .max();
        async move {
            match retry {
                None => ack(&delivery.message).await,
                Some(delay) => nak(&delivery.message, delay).await,
            }
        }
    });
    join_all(outcomes).await;
}

pub async fn ack(message: &Message) {
    if let Err(err) = message.ack().await {
        // The events are committed; a redelivery will be recognised as duplicates.
        tracing::warn!(error = %err, "ack failed");
    }
}

/// Tells JetStream a message is being worked on, so its ack wait starts again.
pub async fn progress(message: &Message) {
    if let Err(err) = message.ack_with(AckKind::Progress).await {
        tracing::warn!(error = %err, "progress ack failed; the message may be redelivered after the ack wait");
    }
}

pub async fn nak(message: &Message, delay: Duration) {
    if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(error = %err, "nak failed; the message will be redelivered after the ack wait");
    }
}

async fn nak_all(messages: &[&Message], delay: Duration) {
    join_all(messages.iter().map(|m| nak(m, delay))).await;
}

/// Whether an error says the database could not apply the statement for now, not that the data
/// is wrong: a conflict (deadlock, serialization), a statement or lock timeout (57014, 55P03), or
/// insufficient resources or a system error (classes 53 and 58: disk full, out of memory, too
/// many connections, I/O error). Retrying later may succeed, so it is never counted as a failed
/// attempt toward the dead-letter bound.
pub fn is_transient(err: &sqlx::Error) -> bool {
    is_conflict(err)
        || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
            c == "57014" || c == "55P03" || c.starts_with("53") || c.starts_with("58")
        }))
}

/// Whether an error is a transaction conflict worth retrying at once (deadlock, serialization).
pub fn is_conflict(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "40P01" || c == "40001"))
}
