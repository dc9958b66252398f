//! The partitions this worker owns, kept in step with its share (see `ownership`): a fetch task
//! per owned partition pulls from that partition's durable consumer into the partition's lane.
//!
//! Hand-over: a worker giving a partition up stops fetching it, waits until every message it
//! fetched was applied and acknowledged, flushes the acknowledgements to NATS, and only then
//! releases the lock. The next owner, on taking the lock, re-creates the consumer, so that what is
//! still out with a previous owner (a worker that was killed, messages buffered in its client and
//! never read, its pull requests still waiting on the server) is delivered again at once instead
//! of after the ack wait. Exactly-once effect and per-key order during the hand-over rest on
//! `apply` (event ids, the per-key lock and re-fold).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, stream};
use common::config::NatsConfig;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Applier, Delivery, InFlight, ack, decode, nak};
use crate::ownership::{Leases, View, share};

/// How often a worker re-reads the members and adjusts what it owns.
pub const REBALANCE_INTERVAL: Duration = Duration::from_secs(1);

/// How often idle partitions are checked for messages a NATS crash left behind.
const ORPHAN_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Longest wait for a partition's fetched messages to be disposed of before it is given up anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition this worker owns.
struct Owned {
    consumer: PullConsumer,
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
}

impl Coordinator {
    /// Keeps the owned partitions in step with this worker's share until `shutdown`, then stops
    /// fetching, drains, and frees every lock.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let mut last_view = None;
        let mut orphans_checked = tokio::time::Instant::now();
        loop {
            match self.leases.view().await {
                Ok(view) => {
                    self.applier.members.store(view.members, std::sync::atomic::Ordering::Relaxed);
                    if last_view != Some(view) {
                        tracing::info!(rank = view.rank, members = view.members, "worker membership changed");
                        metrics::counter!("worker_rebalances_total").increment(1);
                        last_view = Some(view);
                    }
                    self.rebalance(view, &mut owned, &shutdown).await;
                    if orphans_checked.elapsed() >= ORPHAN_CHECK_INTERVAL {
                        self.repair_orphans(&mut owned, &shutdown).await;
                        orphans_checked = tokio::time::Instant::now();
                    }
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
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(REBALANCE_INTERVAL) => {}
            }
        }
        self.stop_and_drain(owned.into_values().collect()).await;
        self.leases.close().await;
        metrics::gauge!("worker_partitions_owned").set(0.0);
    }

    async fn rebalance(&mut self, view: View, owned: &mut BTreeMap<u32, Owned>, shutdown: &CancellationToken) {
        let wanted = share(self.nats.partitions, view);
        let surplus: Vec<u32> = owned.keys().copied().filter(|p| !wanted.contains(p)).collect();
        if !surplus.is_empty() {
            self.stop_and_drain(surplus.iter().filter_map(|p| owned.remove(p)).collect()).await;
            for p in &surplus {
                if self.leases.give_back(*p).await.is_err() {
                    return;
                }
            }
            tracing::info!(partitions = ?surplus, "gave partitions up");
        }
        let mut taken = Vec::new();
        let missing: Vec<u32> = wanted.into_iter().filter(|p| !owned.contains_key(p)).collect();
        for p in missing {
            match self.leases.try_take(p).await {
                Ok(true) => match self.open(p).await {
                    Ok(consumer) => {
                        owned.insert(p, self.fetch(p, consumer, shutdown));
                        taken.push(p);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, partition = p, "cannot open the partition's consumer; retrying");
                        let _released = self.leases.give_back(p).await;
                    }
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
        if !taken.is_empty() {
            tracing::info!(partitions = ?taken, "took partitions");
        }
    }

    /// Stops fetching `partitions`, waits until what they fetched was disposed of, and sends the
    /// acknowledgements (buffered in the client) to NATS, so their locks can go.
    async fn stop_and_drain(&self, partitions: Vec<Owned>) {
        for partition in &partitions {
            partition.stop.cancel();
        }
        for partition in partitions {
            let _stopped = partition.fetch.await;
            drained(&partition.in_flight).await;
        }
        common::nats::flush_bounded(&self.client).await;
    }

    /// After a crash, NATS 2.9 may restore a work-queue stream and its consumer from different
    /// moments: the stream still holds messages the consumer counts as acknowledged. They would
    /// never be delivered again and the backlog would never drain. An owned partition whose
    /// consumer has nothing pending while the stream holds messages on its subject gets its
    /// consumer re-created, which delivers them again (already applied: acknowledged at once as
    /// duplicates).
    async fn repair_orphans(&mut self, owned: &mut BTreeMap<u32, Owned>, shutdown: &CancellationToken) {
        let mut idle = Vec::new();
        for (p, partition) in owned.iter_mut() {
            if partition.in_flight.count() == 0
                && let Ok(info) = partition.consumer.info().await
                && info.num_pending == 0
                && info.num_ack_pending == 0
            {
                idle.push(*p);
            }
        }
        if idle.is_empty() {
            return;
        }
        let stream = self.stream.clone();
        let Ok(subjects) = stream.info_with_subjects(self.nats.events_subjects()).await else { return };
        let held: std::collections::HashMap<String, usize> =
            subjects.filter_map(|entry| async move { entry.ok() }).collect().await;
        for p in idle {
            if held.get(&self.nats.partition_subject(p)).copied().unwrap_or(0) == 0 {
                continue;
            }
            tracing::warn!(
                partition = p,
                "the stream holds messages this partition's consumer counts as acknowledged; re-creating the consumer"
            );
            metrics::counter!("worker_orphaned_message_repairs_total").increment(1);
            if let Some(partition) = owned.remove(&p) {
                self.stop_and_drain(vec![partition]).await;
            }
            match self.open(p).await {
                Ok(consumer) => {
                    owned.insert(p, self.fetch(p, consumer, shutdown));
                }
                Err(err) => {
                    tracing::warn!(error = %err, partition = p, "cannot re-create the partition's consumer; giving it up for now");
                    let _released = self.leases.give_back(p).await;
                }
            }
        }
    }

    /// The partition's consumer, re-created: whatever a previous owner left behind (messages
    /// delivered and never acknowledged, pull requests still waiting on the server for a client
    /// that stopped reading) goes with the old one, and the new one starts at the oldest
    /// unacknowledged message.
    async fn open(&self, partition: u32) -> anyhow::Result<PullConsumer> {
        let settings = &self.applier.settings;
        let spec = common::nats::ConsumerSpec {
            events: &self.stream,
            nats: &self.nats,
            base: &settings.consumer,
            ack_wait: settings.ack_wait(),
            max_ack_pending: settings.max_ack_pending,
        };
        metrics::counter!("worker_consumer_resets_total").increment(1);
        spec.recreate(partition).await
    }

    fn fetch(&self, partition: u32, consumer: PullConsumer, shutdown: &CancellationToken) -> Owned {
        let stop = shutdown.child_token();
        let in_flight = Arc::new(InFlight::default());
        let lane = self.lanes[partition as usize % self.lanes.len()].clone();
        let fetch = tokio::spawn(fetch(self.applier.clone(), consumer.clone(), lane, in_flight.clone(), stop.clone()));
        Owned { consumer, stop, fetch, in_flight }
    }
}

/// Waits until every message a partition fetched was disposed of (bounded).
async fn drained(in_flight: &InFlight) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pulls one partition into its lane until `stop`, reconnecting the pull stream when it fails.
async fn fetch(
    applier: Arc<Applier>,
    consumer: PullConsumer,
    lane: mpsc::Sender<Delivery>,
    in_flight: Arc<InFlight>,
    stop: CancellationToken,
) {
    let pull = applier.settings.batch_size;
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let failure = match consumer.stream().max_messages_per_batch(pull).messages().await {
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
                let (events, rejected) = decode(&message);
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
                let delivery = Delivery::new(message, events, in_flight.clone());
                tokio::select! {
                    () = stop.cancelled() => {
                        // Not applied: hand it straight back for the next owner.
                        let _nak = delivery.message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await;
                        return;
                    }
                    permit = lane.reserve() => match permit {
                        Ok(permit) => permit.send(delivery),
                        Err(_) => return,
                    },
                }
            },
            Err(err) => err.to_string(),
        };
        tracing::warn!(error = %failure, retry_in_ms = delay.as_millis(), "partition pull failed; retrying");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
