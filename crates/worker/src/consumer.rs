//! The JetStream side of a worker: apply what the owned partitions deliver, and give every
//! message exactly one disposition — ack (applied or already applied), nak with a growing delay
//! (could not apply now), or term after moving it to the dead-letter stream (can never be applied).
//!
//! Messages flow from one fetch task per owned partition (see `partitions`) into *lanes*: a lane
//! applies one transaction at a time, and whatever arrives while a transaction is in flight goes
//! into the next one (group commit), up to `WORKER_BATCH_SIZE` events. A partition always feeds the
//! same lane, so a process never races itself on a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message};
use backon::Retryable;
use common::event::EventEnvelope;
use futures_util::future::join_all;
use sqlx::PgPool;
use tokio::sync::mpsc;
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

/// A decoded message on its way to a lane, counted in its partition's in-flight messages until
/// it is disposed of.
pub struct Delivery {
    pub message: Message,
    pub event: QueuedEvent,
    counted: Counted,
    /// The event's span, continuing the trace ingest started (when tracing is on), ended when
    /// the message is disposed of.
    span: Option<tracing::Span>,
}

impl Delivery {
    pub fn new(message: Message, event: QueuedEvent, in_flight: Arc<InFlight>) -> Self {
        in_flight.0.fetch_add(1, Ordering::AcqRel);
        let span = common::telemetry::continue_trace(
            message.headers.as_ref(),
            || tracing::info_span!("apply_event", event.id = %event.envelope.event_id, stream.seq = event.seq),
        );
        Self { message, event, counted: Counted(in_flight), span }
    }
}

/// A message until its disposition, with what ends with it: its place in the in-flight count and
/// its span.
type Held = (Message, Counted, Option<tracing::Span>);

/// A lane: its sender, and the task that applies what it brings, each transaction taking
/// everything queued (up to the batch size), until every sender is gone.
pub fn lane(applier: Arc<Applier>, shutdown: CancellationToken) -> (mpsc::Sender<Delivery>, impl Future<Output = ()>) {
    let batch_size = applier.settings.batch_size;
    let linger = applier.settings.batch_linger();
    let (sender, mut receiver) = mpsc::channel::<Delivery>(batch_size * 2);
    let task = async move {
        let mut batch = Vec::with_capacity(batch_size);
        while receiver.recv_many(&mut batch, batch_size).await > 0 {
            // A small batch waits a moment for company: a transaction costs PostgreSQL about
            // the same for ten events as for a hundred.
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < batch_size / 4 {
                let room = batch_size - batch.len();
                match tokio::time::timeout_at(deadline, receiver.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            applier.apply_and_dispose(std::mem::take(&mut batch), &shutdown).await;
        }
    };
    (sender, task)
}

impl Applier {
    /// Applies one batch and disposes of every message in it; the messages leave their
    /// partitions' in-flight counts once disposed of.
    #[tracing::instrument(name = "apply_batch", skip_all, fields(batch = batch.len(),
        stream.first_seq = batch.first().map(|d| d.event.seq), stream.last_seq = batch.last().map(|d| d.event.seq)))]
    async fn apply_and_dispose(&self, batch: Vec<Delivery>, shutdown: &CancellationToken) {
        let (held, events): (Vec<Held>, Vec<QueuedEvent>) =
            batch.into_iter().map(|d| ((d.message, d.counted, d.span), d.event)).unzip();
        let messages: Vec<&Message> = held.iter().map(|(message, _, _)| message).collect();
        let started = Instant::now();
        match self.apply(&events).await {
            Ok(report) => {
                record(&report, started, &self.stream);
                ack_all(&messages).await;
            }
            Err(err) if common::db::is_unavailable(&err) => {
                tracing::warn!(error = %err, batch = events.len(), "database unavailable; events will be redelivered");
                metrics::counter!("worker_database_unavailable_total").increment(1);
                nak_all(&messages, Duration::from_secs(2)).await;
                self.wait_for_database(shutdown).await;
            }
            Err(err) if events.len() > 1 => {
                tracing::warn!(error = %err, batch = events.len(), "batch failed; applying its events one by one");
                for (message, event) in messages.iter().zip(&events) {
                    self.apply_one(message, event, shutdown).await;
                }
            }
            Err(err) => self.give_up_or_retry(messages[0], &events[0], &err.to_string()).await,
        }
    }

    #[tracing::instrument(skip_all, fields(event.id = %event.envelope.event_id, stream.seq = event.seq))]
    async fn apply_one(&self, message: &Message, event: &QueuedEvent, shutdown: &CancellationToken) {
        let started = Instant::now();
        match self.apply(std::slice::from_ref(event)).await {
            Ok(report) => {
                record(&report, started, &self.stream);
                ack_all(&[message]).await;
            }
            Err(err) if common::db::is_unavailable(&err) => {
                nak_all(&[message], Duration::from_secs(2)).await;
                self.wait_for_database(shutdown).await;
            }
            Err(err) => self.give_up_or_retry(message, event, &err.to_string()).await,
        }
    }

    async fn apply(&self, events: &[QueuedEvent]) -> Result<BatchReport, sqlx::Error> {
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_times(CONFLICT_RETRIES)
            .with_jitter();
        (|| apply_batch(&self.pool, events))
            .retry(backoff)
            .when(common::db::is_conflict)
            .notify(|_, _| metrics::counter!("worker_conflict_retries_total").increment(1))
            .await
    }

    /// A message that failed to apply: its failed attempt is counted (in PostgreSQL, so every
    /// worker sees the same count), and it is retried later with a growing delay until it has
    /// failed `max_deliveries` times; then it is poison and goes to the dead-letter stream.
    /// Redeliveries that were no attempt (a database outage, an ack wait that expired) do not
    /// count. If the count cannot be written, the message is simply retried.
    #[tracing::instrument(name = "apply_outcome", skip_all, fields(event.id = %event.envelope.event_id, stream.seq = event.seq))]
    pub async fn give_up_or_retry(&self, message: &Message, event: &QueuedEvent, reason: &str) {
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
                nak_all(&[message], Duration::from_secs(2)).await;
                return;
            }
        };
        if attempts >= self.settings.max_deliveries {
            self.dead_letter(message, reason).await;
        } else {
            let delay = Duration::from_millis(500 * 2u64.pow(u32::try_from(attempts).unwrap_or(7).min(7)));
            tracing::warn!(reason, attempts, retry_in_ms = delay.as_millis(), "event failed to apply; will retry");
            metrics::counter!("worker_retries_total").increment(1);
            nak_all(&[message], delay).await;
        }
    }

    /// Copies the message to the dead-letter stream with the reason, then terminates it. If the
    /// copy cannot be stored, the message is left for redelivery instead.
    pub async fn dead_letter(&self, message: &Message, reason: &str) {
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(0);
        let seq = position(message).unwrap_or(0);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("dlq-{seq}").as_str());
        headers.insert("OpsSentinal-Reason", header_safe(reason).as_str());
        headers.insert("OpsSentinal-Stream-Seq", seq.to_string().as_str());
        headers.insert("OpsSentinal-Deliveries", deliveries.to_string().as_str());
        headers.insert("OpsSentinal-Failed-At", jiff::Timestamp::now().to_string().as_str());
        let stored = async {
            self.js.publish_with_headers(self.dlq_subject.clone(), headers, message.payload.clone()).await?.await
        }
        .await;
        match stored {
            Ok(_) => {
                tracing::error!(stream.seq = seq, reason, "event moved to the dead-letter stream");
                metrics::counter!("events_dead_lettered_total").increment(1);
                if let Err(err) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %err, "could not terminate dead-lettered message");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, stream.seq = seq, "could not dead-letter; will retry");
                nak_all(&[message], Duration::from_secs(5)).await;
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

/// Reads an event from a message; the reason it cannot be applied otherwise.
pub fn decode(message: &Message) -> Result<QueuedEvent, String> {
    let seq = position(message)?;
    let envelope: EventEnvelope =
        serde_json::from_slice(&message.payload).map_err(|e| format!("undecodable event: {e}"))?;
    envelope.check_applicable()?;
    Ok(QueuedEvent { seq: i64::try_from(seq).map_err(|_| "stream sequence out of range".to_owned())?, envelope })
}

/// Where a message's event belongs in its key's order: the stream sequence it was first
/// accepted at (a replayed dead letter carries it in a header), else its own.
fn position(message: &Message) -> Result<u64, String> {
    let replayed = message.headers.as_ref().and_then(|h| h.get(common::nats::ORIGINAL_SEQ_HEADER));
    match replayed {
        Some(value) => value.as_str().parse().map_err(|_| format!("bad {} header", common::nats::ORIGINAL_SEQ_HEADER)),
        None => Ok(message.info().map_err(|e| format!("message without JetStream metadata: {e}"))?.stream_sequence),
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

async fn ack_all(messages: &[&Message]) {
    for result in join_all(messages.iter().map(|m| m.ack())).await {
        if let Err(err) = result {
            // The event is committed; a redelivery will be recognised as a duplicate.
            tracing::warn!(error = %err, "ack failed");
        }
    }
}

async fn nak_all(messages: &[&Message], delay: Duration) {
    for result in join_all(messages.iter().map(|m| m.ack_with(AckKind::Nak(Some(delay))))).await {
        if let Err(err) = result {
            tracing::warn!(error = %err, "nak failed; the message will be redelivered after the ack wait");
        }
    }
}
