//! The JetStream side of a worker: fetch a batch, apply it, and give every message exactly one
//! disposition — ack (applied or already applied), nak with a growing delay (could not apply
//! now), or term after moving it to the dead-letter stream (can never be applied).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use backon::Retryable;
use common::event::EventEnvelope;
use futures_util::{StreamExt, future::join_all};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::apply::{BatchReport, QueuedEvent, apply_batch};
use crate::config::WorkerSettings;

/// What a consumer loop needs.
pub struct Consumer {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub dlq_subject: String,
    pub settings: WorkerSettings,
}

/// How many times a batch that hit a deadlock or serialization conflict is retried at once.
const CONFLICT_RETRIES: usize = 5;

/// How long a batch may wait to fill up once its first message arrived.
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// Sub-batches queued per partition before the fetch loop waits (backpressure).
const PARTITION_QUEUE: usize = 4;

/// A decoded message, ready to apply.
type Delivery = (Message, QueuedEvent);

impl Consumer {
    /// Pulls batches until `shutdown`, then lets every queued batch finish and be acknowledged.
    ///
    /// One fetch loop splits each batch by a hash of `(service, dedup_key)` onto
    /// `settings.concurrency` partitions, each applying its own queue in order on its own
    /// connection: batches run in parallel, and a key's events are never applied out of order by
    /// two tasks of the same process (which would cost a re-fold).
    pub async fn run(self: Arc<Self>, consumer: PullConsumer, shutdown: CancellationToken) {
        let mut partitions = Vec::with_capacity(self.settings.concurrency);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.settings.concurrency {
            let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<Delivery>>(PARTITION_QUEUE);
            partitions.push(sender);
            let (worker, shutdown) = (self.clone(), shutdown.clone());
            tasks.spawn(async move {
                while let Some(batch) = receiver.recv().await {
                    worker.apply_and_dispose(batch, &shutdown).await;
                }
            });
        }
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.consume(&consumer, &partitions, &shutdown).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis(), "consumer stream failed, reconnecting");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        drop(partitions);
        while tasks.join_next().await.is_some() {}
    }

    async fn consume(
        &self,
        consumer: &PullConsumer,
        partitions: &[tokio::sync::mpsc::Sender<Vec<Delivery>>],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let pull = self.settings.batch_size * self.settings.concurrency;
        let mut messages = consumer.stream().max_messages_per_batch(pull).messages().await?;
        let capacity = self.settings.batch_size * partitions.len();
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let Some(first) = first else { anyhow::bail!("message stream ended") };
            let mut batch = vec![first?];
            // Under load the batch fills at once; when idle, an event waits at most BATCH_LINGER.
            let deadline = tokio::time::Instant::now() + BATCH_LINGER;
            while batch.len() < capacity {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(message))) => batch.push(message),
                    Ok(Some(Err(err))) => {
                        tracing::warn!(error = %err, "error in message stream");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let mut split: Vec<Vec<Delivery>> = partitions.iter().map(|_| Vec::new()).collect();
            for message in batch {
                match decode(&message) {
                    Ok(event) => split[partition_of(&event, partitions.len())].push((message, event)),
                    Err(reason) => self.dead_letter(&message, &reason).await,
                }
            }
            for (partition, deliveries) in partitions.iter().zip(split) {
                if !deliveries.is_empty() && partition.send(deliveries).await.is_err() {
                    anyhow::bail!("partition task stopped");
                }
            }
        }
    }

    /// Applies one partition's batch and disposes of every message in it.
    async fn apply_and_dispose(&self, batch: Vec<Delivery>, shutdown: &CancellationToken) {
        let (messages, events): (Vec<Message>, Vec<QueuedEvent>) = batch.into_iter().unzip();
        let started = Instant::now();
        match self.apply(&events).await {
            Ok(report) => {
                record(&report, started);
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
            Err(err) => self.give_up_or_retry(&messages[0], &err.to_string()).await,
        }
    }

    async fn apply_one(&self, message: &Message, event: &QueuedEvent, shutdown: &CancellationToken) {
        let started = Instant::now();
        match self.apply(std::slice::from_ref(event)).await {
            Ok(report) => {
                record(&report, started);
                ack_all(std::slice::from_ref(message)).await;
            }
            Err(err) if common::db::is_unavailable(&err) => {
                nak_all(std::slice::from_ref(message), Duration::from_secs(2)).await;
                self.wait_for_database(shutdown).await;
            }
            Err(err) => self.give_up_or_retry(message, &err.to_string()).await,
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

    /// A message that failed to apply: retried later with a growing delay, until it has been
    /// delivered `max_deliveries` times; then it is poison and goes to the dead-letter stream.
    async fn give_up_or_retry(&self, message: &Message, reason: &str) {
        let deliveries = message.info().map(|info| info.delivered).unwrap_or(1).max(1).unsigned_abs();
        if deliveries >= self.settings.max_deliveries {
            self.dead_letter(message, reason).await;
        } else {
            let delay = Duration::from_millis(500 * 2u64.pow(u32::try_from(deliveries).unwrap_or(7).min(7)));
            tracing::warn!(reason, deliveries, retry_in_ms = delay.as_millis(), "event failed to apply; will retry");
            metrics::counter!("worker_retries_total").increment(1);
            nak_all(std::slice::from_ref(message), delay).await;
        }
    }

    /// Copies the message to the dead-letter stream with the reason, then terminates it. If the
    /// copy cannot be stored, the message is left for redelivery instead.
    async fn dead_letter(&self, message: &Message, reason: &str) {
        let (seq, deliveries) = message.info().map(|i| (i.stream_sequence, i.delivered)).unwrap_or((0, 0));
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
                nak_all(std::slice::from_ref(message), Duration::from_secs(5)).await;
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

fn decode(message: &Message) -> Result<QueuedEvent, String> {
    let seq = message.info().map_err(|e| format!("message without JetStream metadata: {e}"))?.stream_sequence;
    let envelope: EventEnvelope =
        serde_json::from_slice(&message.payload).map_err(|e| format!("undecodable event: {e}"))?;
    envelope.check_applicable()?;
    Ok(QueuedEvent { seq: i64::try_from(seq).map_err(|_| "stream sequence out of range".to_owned())?, envelope })
}

/// The partition a key's events go to: stable for the process's lifetime.
fn partition_of(event: &QueuedEvent, partitions: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (&event.envelope.service_id, &event.envelope.dedup_key).hash(&mut hasher);
    usize::try_from(hasher.finish() % partitions as u64).unwrap_or(0)
}

fn header_safe(reason: &str) -> String {
    reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' }).take(512).collect()
}

fn record(report: &BatchReport, started: Instant) {
    metrics::histogram!("worker_apply_batch_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("worker_batch_size").record(report.outcomes.len() as f64);
    for outcome in &report.outcomes {
        metrics::counter!("events_applied_total", "outcome" => outcome.as_str()).increment(1);
    }
    metrics::counter!("events_duplicate_total").increment(report.duplicates as u64);
    metrics::counter!("worker_refolds_total").increment(report.refolded_keys as u64);
}

async fn ack_all(messages: &[Message]) {
    for result in join_all(messages.iter().map(|m| m.ack())).await {
        if let Err(err) = result {
            // The event is committed; a redelivery will be recognised as a duplicate.
            tracing::warn!(error = %err, "ack failed");
        }
    }
}

async fn nak_all(messages: &[Message], delay: Duration) {
    for result in join_all(messages.iter().map(|m| m.ack_with(AckKind::Nak(Some(delay))))).await {
        if let Err(err) = result {
            tracing::warn!(error = %err, "nak failed; the message will be redelivered after the ack wait");
        }
    }
}
