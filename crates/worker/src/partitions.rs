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

use async_nats::jetstream::Message;
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

/// What JetStream's status says when it ends a pull at its byte limit (409).
const PULL_BYTES_REACHED: &str = "Message Size Exceeds MaxBytes";

/// How long a pull of a partition that holds nothing waits for its first message (it returns
/// with that message at once).
const IDLE_PULL: Duration = Duration::from_secs(5);

/// The most time [`pull_spacing`] puts between two pulls of a busy partition.
const MAX_PULL_SPACING: Duration = Duration::from_millis(50);

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

    fn fetch(&self, consumer: PullConsumer, sender: mpsc::Sender<Delivery>, shutdown: &CancellationToken) -> Owned {
        let (stop, in_flight) = (shutdown.child_token(), Arc::new(InFlight::default()));
        let feed = Feed {
            applier: self.applier.clone(),
            sender,
            buffer: self.buffer.clone(),
            in_flight: in_flight.clone(),
            stop: stop.clone(),
        };
        Owned { stop, fetch: tokio::spawn(fetch(feed, consumer)), in_flight }
    }
}

/// Waits for `wait`, acknowledging progress on `message` every half ack wait so JetStream does not
/// deliver it again meanwhile; `None` if `stop` fires first.
async fn kept_alive<T>(
    message: &Message,
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

/// Pulls one partition into its lane until `stop`, in pulls: each asks JetStream for what the
/// partition holds now (up to `WORKER_BATCH_SIZE` messages and `PULL_BYTES`, never more than its
/// room under `WORKER_MAX_ACK_PENDING`), or, if it holds nothing, for the first message to arrive
/// within `IDLE_PULL`. A pull that brought less than it asked for is followed by the next one no
/// sooner than [`pull_spacing`] after it started, so that what arrives meanwhile comes in one
/// delivery: a message pushed the moment it is stored costs the worker (and the server) a wake-up
/// each, and workers sharing a box pay that per process. A quiet partition's next event is still
/// delivered at once. Retries a failed pull with backoff; ends by itself if the consumer was
/// deleted from under it (the coordinator re-creates it).
async fn fetch(into: Feed, consumer: PullConsumer) {
    let settings = &into.applier.settings;
    let (spacing, max_pending) =
        (pull_spacing(settings), usize::try_from(settings.max_ack_pending).unwrap_or(usize::MAX));
    let mut delay = Duration::from_millis(100);
    while !into.stop.is_cancelled() {
        let started = tokio::time::Instant::now();
        let asked = settings.batch_size.min(max_pending.saturating_sub(into.in_flight.count())).max(1);
        let pulled = consumer.fetch().max_messages(asked).max_bytes(PULL_BYTES).expires(IDLE_PULL).messages().await;
        let (mut brought, mut full) = (0, false);
        let failure = match pulled {
            Ok(mut messages) => loop {
                let next = tokio::select! {
                    () = into.stop.cancelled() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        brought += 1;
                        if !into.hand_over(message).await {
                            return;
                        }
                    }
                    // JetStream ends a pull whose next message would pass its byte limit with a
                    // status the client reports as an error: the pull is full, not failed.
                    Some(Err(err)) if err.to_string().contains(PULL_BYTES_REACHED) => {
                        full = true;
                        break None;
                    }
                    Some(Err(err)) => break Some(err.to_string()),
                    None => break None,
                }
            },
            Err(err) => Some(err.to_string()),
        };
        let Some(failure) = failure else {
            delay = Duration::from_millis(100);
            if brought > 0 && brought < asked && !full {
                tokio::select! {
                    () = into.stop.cancelled() => return,
                    () = tokio::time::sleep_until(started + spacing) => {}
                }
            }
            continue;
        };
        metrics::counter!("worker_pull_failures_total").increment(1);
        if gone(&consumer).await {
            tracing::warn!(error = %failure, "the partition's consumer is gone; re-creating it");
            return;
        }
        tracing::warn!(error = %failure, retry_in_ms = delay.as_millis(), "partition pull failed; retrying");
        tokio::select! {
            () = into.stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Where a partition's fetched messages go: its lane, through the worker's buffer.
struct Feed {
    applier: Arc<Applier>,
    sender: mpsc::Sender<Delivery>,
    buffer: Arc<Semaphore>,
    in_flight: Arc<InFlight>,
    /// Fires when the partition is given up.
    stop: CancellationToken,
}

impl Feed {
    /// Dead-letters a fetched frame's lines that can never be applied and hands the rest to the
    /// lane, once the worker's buffer and the lane have room (a message larger than all of the
    /// buffer takes all of it); false if `stop` fired meanwhile: the message is then not applied
    /// and stays stored for the partition's next owner.
    async fn hand_over(&self, message: Message) -> bool {
        let settings = &self.applier.settings;
        let (events, rejected) = decode(&message, settings.oldest_kept());
        let deliveries = message.info().map_or(0, |i| i.delivered);
        let mut kept = true;
        for line in &rejected {
            kept &= self.applier.dead_letter(&line.line, line.position, deliveries, &line.reason).await;
        }
        if !kept {
            nak(&message, Duration::from_secs(5)).await;
            return true;
        }
        if events.is_empty() {
            ack(&message).await;
            return true;
        }
        let (ack_wait, stop) = (settings.ack_wait(), &self.stop);
        let bytes = u32::try_from(message.payload.len()).unwrap_or(u32::MAX).min(settings.max_buffered_bytes);
        let room = kept_alive(&message, ack_wait, stop, self.buffer.clone().acquire_many_owned(bytes)).await;
        let Some(Ok(room)) = room else { return false };
        let delivery = Delivery::new(message, events, self.in_flight.clone(), stop.clone(), room);
        let Some(Ok(slot)) = kept_alive(&delivery.message, ack_wait, stop, self.sender.reserve()).await else {
            return false;
        };
        slot.send(delivery);
        true
    }
}

/// The least time from one pull of a partition to the next while it is busy: a tenth of
/// `WORKER_BATCH_LINGER_MS` (the spacing of the lane's transactions, so the lane gathers several
/// pulls per transaction), at most [`MAX_PULL_SPACING`]; none with no linger.
pub fn pull_spacing(settings: &crate::WorkerSettings) -> Duration {
    (settings.batch_linger() / 10).min(MAX_PULL_SPACING)
}
