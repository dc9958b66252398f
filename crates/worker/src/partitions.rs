//! The partitions this worker owns, kept in step with its share (see `ownership`). A partition
//! is the one unit of subject, consumer and ownership: this worker applies partition `p` only
//! while it holds `p`'s lock, and then it alone fetches `p`'s durable consumer, through a fetch
//! task that feeds one of the worker's lanes (the owned partitions go to the lanes in turn).
//!
//! Hand-over is exact: nothing is applied out of order when a worker joins or leaves.
//! - **Giving a partition up** (its share moved, or the worker stops): the worker stops fetching
//!   it, drops what it fetched and has not started to apply (unacknowledged, so still stored),
//!   waits for the transaction in progress to commit and be acknowledged, flushes the
//!   acknowledgements to NATS, and only then releases the lock.
//! - **Taking a partition**: once it holds the lock, the worker re-creates the partition's
//!   consumer (`common::nats::PartitionConsumers::recreate`). The new consumer delivers every
//!   message of the partition not yet acknowledged, oldest first, at once: what the previous
//!   owner dropped, and what a killed worker had in flight, come before anything newer.
//!
//! A worker that was killed (SIGKILL) frees its locks when PostgreSQL sees its connections close;
//! what it had committed and not acknowledged comes back as duplicates (found by event id), and
//! what it had not committed is applied by the next owner in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream;
use common::config::NatsConfig;
use common::nats::PartitionConsumers;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Applier, Delivery, InFlight, ack, decode, nak, progress};
use crate::ownership::{Leases, View, share};

/// How often a worker re-reads the members and adjusts what it owns.
pub const REBALANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for a partition's transaction in progress before it is given up anyway (its
/// events then come back to the next owner; the per-key lock in `apply` keeps them in order).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes a partition pulls ahead of what it applied: a message is a frame of up to
/// `NATS_MAX_FRAME_EVENTS` events, so a count of messages alone does not bound the memory
/// (larger than NATS's largest message, which must always fit).
const PULL_BYTES: usize = 4 * 1024 * 1024;

/// A partition this worker fetches.
struct Owned {
    stop: CancellationToken,
    fetch: JoinHandle<()>,
    in_flight: Arc<InFlight>,
}

/// Everything the coordinator needs.
pub struct Coordinator {
    pub applier: Arc<Applier>,
    pub client: async_nats::Client,
    pub stream: stream::Stream,
    pub nats: NatsConfig,
    pub leases: Leases,
    pub lanes: Vec<mpsc::Sender<Delivery>>,
    /// The bytes of fetched messages this worker may hold for its lanes (`WORKER_MAX_BUFFERED_BYTES`).
    pub buffer: Arc<Semaphore>,
}

impl Coordinator {
    /// Keeps the owned partitions in step with this worker's share until `shutdown`, then gives
    /// every partition up and frees every lock.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let mut last_view = None;
        loop {
            match self.leases.view().await {
                Ok(view) => {
                    if last_view != Some(view) {
                        tracing::info!(rank = view.rank, members = view.members, "worker membership changed");
                        metrics::counter!("worker_rebalances_total").increment(1);
                        last_view = Some(view);
                    }
                    metrics::gauge!("worker_members").set(view.members as f64);
                    self.rebalance(view, &mut owned, &shutdown).await;
                }
                Err(err) => {
                    if last_view.take().is_some() || !owned.is_empty() {
                        tracing::warn!(error = %err, "lost the ownership connection; stopping every partition");
                    }
                    // The locks went with the connection: stop at once, someone else may own them now.
                    for (_, partition) in std::mem::take(&mut owned) {
                        partition.stop.cancel();
                    }
                }
            }
            metrics::gauge!("worker_partitions_owned").set(owned.len() as f64);
            let budget = self.applier.settings.max_buffered_bytes as usize;
            metrics::gauge!("worker_buffered_bytes").set(budget.saturating_sub(self.buffer.available_permits()) as f64);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(REBALANCE_INTERVAL) => {}
            }
        }
        self.stop_and_drain(std::mem::take(&mut owned).into_values().collect()).await;
        self.leases.close().await;
        metrics::gauge!("worker_partitions_owned").set(0.0);
    }

    /// Gives up the partitions this worker should no longer own (draining them first) and takes
    /// those of its share that are free.
    async fn rebalance(&mut self, view: View, owned: &mut BTreeMap<u32, Owned>, shutdown: &CancellationToken) {
        let share = share(self.nats.partitions, view);
        // A partition whose fetch ended by itself lost its consumer: given up, and taken again below.
        let surplus: Vec<u32> =
            owned.iter().filter(|(p, o)| !share.contains(p) || o.fetch.is_finished()).map(|(p, _)| *p).collect();
        if !surplus.is_empty() {
            let given: Vec<Owned> = surplus.iter().filter_map(|p| owned.remove(p)).collect();
            self.stop_and_drain(given).await;
            for &p in &surplus {
                if self.leases.give_back(p).await.is_err() {
                    return;
                }
            }
            tracing::info!(partitions = ?surplus, "gave partitions up");
        }
        let mut taken = Vec::new();
        for (i, p) in share.clone().enumerate() {
            if owned.contains_key(&p) {
                continue;
            }
            match self.leases.try_take(p).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            match self.consumers().recreate(p).await {
                Ok(consumer) => {
                    let lane = self.lanes[i % self.lanes.len()].clone();
                    owned.insert(p, self.fetch(consumer, lane, shutdown));
                    taken.push(p);
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), partition = p, "cannot open the partition's consumer; retrying");
                    if self.leases.give_back(p).await.is_err() {
                        return;
                    }
                }
            }
        }
        if !taken.is_empty() {
            tracing::info!(partitions = ?taken, "took partitions");
        }
    }

    /// Stops fetching `partitions`, waits until their transactions in progress are acknowledged
    /// (what they fetched and had not started to apply is dropped, unacknowledged), and sends the
    /// acknowledgements (buffered in the client) to NATS, so their locks can go.
    async fn stop_and_drain(&self, partitions: Vec<Owned>) {
        if partitions.is_empty() {
            return;
        }
        for partition in &partitions {
            partition.stop.cancel();
        }
        for partition in partitions {
            let _stopped = partition.fetch.await;
            drained(&partition.in_flight).await;
        }
        common::nats::flush_bounded(&self.client).await;
    }

    /// How the partitions' consumers are made.
    fn consumers(&self) -> PartitionConsumers<'_> {
        let settings = &self.applier.settings;
        PartitionConsumers {
            events: &self.stream,
            nats: &self.nats,
            base: &settings.consumer,
            ack_wait: settings.ack_wait(),
            max_ack_pending: settings.max_ack_pending,
        }
    }

    fn fetch(&self, consumer: PullConsumer, lane: mpsc::Sender<Delivery>, shutdown: &CancellationToken) -> Owned {
        let stop = shutdown.child_token();
        let in_flight = Arc::new(InFlight::default());
        let buffer = self.buffer.clone();
        let fetch = tokio::spawn(fetch(self.applier.clone(), consumer, lane, buffer, in_flight.clone(), stop.clone()));
        Owned { stop, fetch, in_flight }
    }
}

/// Waits for `wait`, acknowledging progress on `message` every half ack wait so JetStream does not
/// deliver it again meanwhile; `None` if `stop` fires first.
async fn kept_alive<T>(
    message: &async_nats::jetstream::Message,
    ack_wait: Duration,
    stop: &CancellationToken,
    wait: impl Future<Output = T>,
) -> Option<T> {
    let mut wait = std::pin::pin!(wait);
    loop {
        tokio::select! {
            done = &mut wait => return Some(done),
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(ack_wait / 2) => progress(message).await,
        }
    }
}

/// Whether NATS says `consumer` no longer exists (not merely unreachable).
async fn gone(consumer: &PullConsumer) -> bool {
    matches!(consumer.get_info().await, Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound)
}

/// Waits until every message a partition handed to its lane was disposed of (bounded).
async fn drained(in_flight: &InFlight) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Pulls one partition into its lane until `stop`, reconnecting the pull stream when it fails;
/// ends by itself if the consumer was deleted from under it (the coordinator re-creates it).
async fn fetch(
    applier: Arc<Applier>,
    consumer: PullConsumer,
    lane: mpsc::Sender<Delivery>,
    buffer: Arc<Semaphore>,
    in_flight: Arc<InFlight>,
    stop: CancellationToken,
) {
    let ack_wait = applier.settings.ack_wait();
    let budget = applier.settings.max_buffered_bytes;
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let pulled = consumer
            .stream()
            .max_messages_per_batch(applier.settings.batch_size)
            .max_bytes_per_batch(PULL_BYTES)
            .messages()
            .await;
        let failure = match pulled {
            Ok(mut messages) => loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = messages.next() => next,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => break err.to_string(),
                    None => break "message stream ended".to_owned(),
                };
                delay = Duration::from_millis(100);
                let (events, rejected) = decode(&message, applier.settings.oldest_kept());
                let deliveries = message.info().map_or(0, |i| i.delivered);
                let mut kept = true;
                for line in &rejected {
                    kept &= applier.dead_letter(&line.line, line.position, deliveries, &line.reason).await;
                }
                if !kept {
                    nak(&message, Duration::from_secs(5)).await;
                    continue;
                }
                if events.is_empty() {
                    ack(&message).await;
                    continue;
                }
                // Room in the worker's buffer (a message larger than all of it takes all of it),
                // then in the lane; not applied if the partition is given up meanwhile: it stays
                // stored for the next owner.
                let bytes = u32::try_from(message.payload.len()).unwrap_or(u32::MAX).min(budget);
                let room = kept_alive(&message, ack_wait, &stop, buffer.clone().acquire_many_owned(bytes)).await;
                let Some(Ok(room)) = room else { return };
                let delivery = Delivery::new(message, events, in_flight.clone(), stop.clone(), room);
                let Some(Ok(slot)) = kept_alive(&delivery.message, ack_wait, &stop, lane.reserve()).await else {
                    return;
                };
                slot.send(delivery);
            },
            Err(err) => err.to_string(),
        };
        if gone(&consumer).await {
            tracing::warn!(error = %failure, "the partition's consumer is gone; re-creating it");
            return;
        }
        tracing::warn!(error = %failure, retry_in_ms = delay.as_millis(), "partition pull failed; retrying");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
