//! The partitions this worker owns, kept in step with its share (see `ownership`). A worker
//! holds each partition of its share by its lock and fetches them through a few *block*
//! consumers (aligned blocks of partitions, see `common::nats::Block`), about [`BLOCK_CONSUMERS`]
//! between all workers and at least one per worker: a fetch task per block pulls from the
//! block's durable consumer into the block's lane (blocks go to lanes in turn; a worker with
//! fewer blocks than lanes leaves the others idle, and its lanes' spacing counts only those in
//! use). Each consumer's description tells ingest where to frame the block's events
//! (`common::nats::Framing`): a worker among others has all of its share framed on its first
//! block, a lone worker each block on its own.
//!
//! Hand-over: a worker giving a block up stops fetching it, waits until every message it fetched
//! was applied and acknowledged, flushes the acknowledgements to NATS, deletes the block's
//! consumer, and only then releases the locks it no longer should hold. The next owner, once it
//! holds every lock of a block, deletes whatever consumers still cover its partitions and creates
//! the block's, so that what is still out with a previous owner (a worker that was killed,
//! messages buffered in its client and never read, its pull requests still waiting on the server)
//! is delivered again at once instead of after the ack wait. Exactly-once effect and per-key order
//! during the hand-over rest on `apply` (event ids, the per-key lock and re-fold).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{consumer::PullConsumer, stream};
use common::config::NatsConfig;
use common::nats::{BLOCK_CONSUMERS, Block, Framing};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Applier, Delivery, InFlight, ack, decode, nak};
use crate::ownership::{Leases, View, share};

/// How often a worker re-reads the members and adjusts what it owns.
pub const REBALANCE_INTERVAL: Duration = Duration::from_secs(1);

/// How often idle blocks are checked for messages a NATS crash left behind.
const ORPHAN_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Longest wait for a block's fetched messages to be disposed of before it is given up anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for NATS to delete given-up blocks' consumers.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes a block pulls ahead of what it applied: a message is a frame of up to
/// `NATS_MAX_FRAME_EVENTS` events, so a count of messages alone does not bound the memory
/// (larger than NATS's largest message, which must always fit).
const PULL_BYTES: usize = 16 * 1024 * 1024;

/// A block this worker fetches.
struct Owned {
    consumer: PullConsumer,
    stop: CancellationToken,
    fetch: JoinHandle<()>,
    in_flight: Arc<InFlight>,
    /// The lane it feeds (kept when its consumer is re-created, so its keys stay on one lane).
    lane: mpsc::Sender<Delivery>,
    /// Where its consumer asks ingest to frame its events.
    framing: Framing,
}

/// Everything the coordinator needs.
pub struct Coordinator {
    pub applier: Arc<Applier>,
    pub client: async_nats::Client,
    pub stream: stream::Stream,
    pub nats: NatsConfig,
    pub leases: Leases,
    pub lanes: Vec<mpsc::Sender<Delivery>>,
    /// This process, in its consumers' framings (see [`framing`]).
    pub id: String,
}

impl Coordinator {
    /// Keeps the owned partitions in step with this worker's share until `shutdown`, then stops
    /// fetching, drains, and frees every lock.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut owned: BTreeMap<Block, Owned> = BTreeMap::new();
        // The partition locks this process holds (a block is fetched once all of its are).
        let mut held: BTreeSet<u32> = BTreeSet::new();
        let mut last_view = None;
        let mut members = 1;
        let mut orphans_checked = tokio::time::Instant::now();
        loop {
            match self.leases.view().await {
                Ok(view) => {
                    members = view.members;
                    if last_view != Some(view) {
                        tracing::info!(rank = view.rank, members = view.members, "worker membership changed");
                        metrics::counter!("worker_rebalances_total").increment(1);
                        // Not settled until a rebalance for this view has completed: the locks it
                        // takes are visible before the consumers of their blocks exist.
                        metrics::gauge!("worker_settled").set(0.0);
                        last_view = Some(view);
                    }
                    metrics::gauge!("worker_members").set(view.members as f64);
                    let settled = self.rebalance(view, &mut owned, &mut held, &shutdown).await;
                    metrics::gauge!("worker_settled").set(f64::from(u8::from(settled)));
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
                    for (_, block) in std::mem::take(&mut owned) {
                        block.stop.cancel();
                    }
                    held.clear();
                    metrics::gauge!("worker_settled").set(0.0);
                }
            }
            let fetched: u32 = owned.keys().map(|b| b.len).sum();
            // Only blocks whose events are framed on their own subject are delivered frames.
            let framed_on = owned.iter().filter(|(b, o)| o.framing.target == b.start).count();
            let lanes_in_use = framed_on.clamp(1, self.lanes.len());
            self.applier.lanes.store(members * lanes_in_use, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("worker_partitions_owned").set(f64::from(fetched));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(REBALANCE_INTERVAL) => {}
            }
        }
        // Whoever takes these partitions next would delete their consumers anyway; deleting them
        // now spares nats-server the cost of consumers nobody reads until then.
        self.give_up(owned.into_iter().collect()).await;
        self.leases.close().await;
        metrics::gauge!("worker_partitions_owned").set(0.0);
    }

    /// Gives up what this worker should no longer own and takes what it should and can. Whether
    /// it now owns exactly its share, through exactly the blocks it should.
    async fn rebalance(
        &mut self,
        view: View,
        owned: &mut BTreeMap<Block, Owned>,
        held: &mut BTreeSet<u32>,
        shutdown: &CancellationToken,
    ) -> bool {
        let range = share(self.nats.partitions, view);
        let pieces = BLOCK_CONSUMERS.div_ceil(view.members.max(1));
        let wanted = Block::cover(range.clone(), pieces);
        let (id, first) = (self.id.clone(), wanted.first().copied());
        let framing = |block: Block| framing(&id, block, first.unwrap_or(block), view.members);
        // A block whose fetch ended by itself lost its consumer: given up here, re-created below.
        let surplus: Vec<Block> = owned
            .iter()
            .filter(|(b, o)| !wanted.contains(b) || o.framing != framing(**b) || o.fetch.is_finished())
            .map(|(b, _)| *b)
            .collect();
        self.give_up(surplus.into_iter().filter_map(|b| owned.remove_entry(&b)).collect()).await;
        let released: Vec<u32> = held.iter().copied().filter(|p| !range.contains(p)).collect();
        for p in &released {
            if self.leases.give_back(*p).await.is_err() {
                return false;
            }
            held.remove(p);
        }
        if !released.is_empty() {
            tracing::info!(partitions = ?released, "gave partitions up");
        }
        let mut taken = Vec::new();
        for (i, &block) in wanted.iter().enumerate() {
            if owned.contains_key(&block) {
                continue;
            }
            let missing: Vec<u32> = block.partitions().filter(|p| !held.contains(p)).collect();
            for p in missing {
                match self.leases.try_take(p).await {
                    Ok(true) => {
                        held.insert(p);
                    }
                    Ok(false) => {}
                    Err(_) => return false,
                }
            }
            if !block.partitions().all(|p| held.contains(&p)) {
                continue;
            }
            let framing = framing(block);
            match self.spec().recreate(block, &framing).await {
                Ok(consumer) => {
                    metrics::counter!("worker_consumer_resets_total").increment(1);
                    let lane = self.lanes[i % self.lanes.len()].clone();
                    owned.insert(block, self.fetch(block, consumer, lane, framing, shutdown));
                    taken.push(block.partitions());
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), partitions = ?block.partitions(), "cannot open the block's consumer; retrying");
                }
            }
        }
        if !taken.is_empty() {
            tracing::info!(partitions = ?taken, "took partitions");
        }
        owned.len() == wanted.len() && wanted.iter().all(|b| owned.contains_key(b)) && held.iter().copied().eq(range)
    }

    /// Gives `blocks` up: stops fetching them, drains them and deletes their consumers (their
    /// locks are the caller's to release).
    async fn give_up(&self, blocks: Vec<(Block, Owned)>) {
        if blocks.is_empty() {
            return;
        }
        let (blocks, fetched): (Vec<Block>, Vec<Owned>) = blocks.into_iter().unzip();
        self.stop_and_drain(fetched).await;
        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!("NATS is unreachable: the next owners of the given-up blocks will delete their consumers");
            return;
        }
        let spec = self.spec();
        let deletes = futures_util::future::join_all(blocks.into_iter().map(|block| spec.delete(block)));
        match tokio::time::timeout(DELETE_TIMEOUT, deletes).await {
            Ok(results) => {
                for err in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %format!("{err:#}"), "cannot delete a given-up block's consumer; its next owner will");
                }
            }
            Err(_) => tracing::warn!("NATS did not delete the given-up consumers in time; their next owners will"),
        }
    }

    /// Stops fetching `blocks`, waits until what they fetched was disposed of, and sends the
    /// acknowledgements (buffered in the client) to NATS, so their locks can go.
    async fn stop_and_drain(&self, blocks: Vec<Owned>) {
        for block in &blocks {
            block.stop.cancel();
        }
        for block in blocks {
            let _stopped = block.fetch.await;
            drained(&block.in_flight).await;
        }
        common::nats::flush_bounded(&self.client).await;
    }

    /// After a crash, NATS 2.9 may restore a work-queue stream and its consumer from different
    /// moments: the stream still holds messages the consumer counts as acknowledged. They would
    /// never be delivered again and the backlog would never drain. An owned block whose
    /// consumer has nothing pending while the stream holds messages on its partitions' subjects
    /// gets its consumer re-created, which delivers them again (already applied: acknowledged at
    /// once as duplicates).
    async fn repair_orphans(&mut self, owned: &mut BTreeMap<Block, Owned>, shutdown: &CancellationToken) {
        let mut idle = Vec::new();
        for (block, fetched) in owned.iter_mut() {
            if fetched.in_flight.count() == 0
                && let Ok(info) = fetched.consumer.info().await
                && info.num_pending == 0
                && info.num_ack_pending == 0
            {
                idle.push(*block);
            }
        }
        if idle.is_empty() {
            return;
        }
        let stream = self.stream.clone();
        let Ok(subjects) = stream.info_with_subjects(self.nats.events_subjects()).await else { return };
        let nats = &self.nats;
        let holding: Vec<u32> = subjects
            .filter_map(|entry| async move {
                entry.ok().filter(|(_, count)| *count > 0).and_then(|(subject, _)| nats.subject_partition(&subject))
            })
            .collect()
            .await;
        for block in idle {
            if !holding.iter().any(|p| block.partitions().contains(p)) {
                continue;
            }
            tracing::warn!(
                partitions = ?block.partitions(),
                "the stream holds messages this block's consumer counts as acknowledged; re-creating the consumer"
            );
            metrics::counter!("worker_orphaned_message_repairs_total").increment(1);
            let Some(fetched) = owned.remove(&block) else { continue };
            let (lane, framing) = (fetched.lane.clone(), fetched.framing.clone());
            self.stop_and_drain(vec![fetched]).await;
            match self.spec().recreate(block, &framing).await {
                Ok(consumer) => {
                    owned.insert(block, self.fetch(block, consumer, lane, framing, shutdown));
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), partitions = ?block.partitions(), "cannot re-create the block's consumer; retrying at the next rebalance");
                }
            }
        }
    }

    /// How the blocks' consumers are made.
    fn spec(&self) -> common::nats::ConsumerSpec<'_> {
        let settings = &self.applier.settings;
        common::nats::ConsumerSpec {
            events: &self.stream,
            nats: &self.nats,
            base: &settings.consumer,
            ack_wait: settings.ack_wait(),
            max_ack_pending: settings.max_ack_pending,
        }
    }

    fn fetch(
        &self,
        block: Block,
        consumer: PullConsumer,
        lane: mpsc::Sender<Delivery>,
        framing: Framing,
        shutdown: &CancellationToken,
    ) -> Owned {
        let stop = shutdown.child_token();
        let in_flight = Arc::new(InFlight::default());
        // As much pulled ahead for the block as one consumer per partition would have.
        let pull = (self.applier.settings.batch_size * block.len as usize)
            .min(usize::try_from(self.applier.settings.max_ack_pending).unwrap_or(usize::MAX));
        let fetch = tokio::spawn(fetch(
            self.applier.clone(),
            consumer.clone(),
            pull,
            lane.clone(),
            in_flight.clone(),
            stop.clone(),
        ));
        Owned { consumer, stop, fetch, in_flight, lane, framing }
    }
}

/// Whether NATS says `consumer` no longer exists (not merely unreachable).
async fn gone(consumer: &PullConsumer) -> bool {
    matches!(consumer.get_info().await, Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound)
}

/// Where `block`'s events should be framed, `first` being the first block of the share of worker
/// `id`. A worker among others frames all of its blocks' events on its first block: its share of
/// the load is one lane's work, and its events then travel in frames as large as those of a
/// worker with one block (three workers of 32 partitions need two aligned blocks each). A lone
/// worker frames each block apart, so both its lanes are busy.
fn framing(id: &str, block: Block, first: Block, members: usize) -> Framing {
    let target = if members > 1 { first.start } else { block.start };
    Framing { target, worker: id.to_owned() }
}

/// Waits until every message a block fetched was disposed of (bounded).
async fn drained(in_flight: &InFlight) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while in_flight.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pulls one block into its lane (up to `pull` messages ahead) until `stop`, reconnecting the
/// pull stream when it fails.
async fn fetch(
    applier: Arc<Applier>,
    consumer: PullConsumer,
    pull: usize,
    lane: mpsc::Sender<Delivery>,
    in_flight: Arc<InFlight>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let pulled = consumer.stream().max_messages_per_batch(pull).max_bytes_per_batch(PULL_BYTES).messages().await;
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
        if gone(&consumer).await {
            // Deleted from under this worker (by hand, or by a delete a previous owner sent
            // before a time-out): the coordinator re-creates the block's consumer.
            tracing::warn!(error = %failure, "the block's consumer is gone; re-creating it");
            return;
        }
        tracing::warn!(error = %failure, retry_in_ms = delay.as_millis(), "block pull failed; retrying");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
