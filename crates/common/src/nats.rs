//! NATS JetStream set-up shared by ingest and workers: the event stream (work-queue retention:
//! a message stays until a worker acknowledges it, and a full stream refuses new publishes rather
//! than dropping accepted events; one subject per partition), its dead-letter stream, and the
//! durable consumers that deliver aligned blocks of partitions to workers.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, consumer, stream};

use crate::config::NatsConfig;

/// Connects to NATS (any of `NATS_URL`'s seeds, with its credentials and TLS settings). The
/// client keeps trying in the background and the call returns at once, so a service can start
/// while NATS is down.
pub async fn connect(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    options(config)
        .await?
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .connect(config.servers()?)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.url))
}

/// Connection options from the configuration: a `.creds` file, a CA to verify servers with
/// (TLS then required), a client certificate.
pub async fn options(config: &NatsConfig) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut options = async_nats::ConnectOptions::new();
    // `nats://user:password@host` or `nats://token@host` (the client does not read them from
    // the addresses itself); the first seed that carries them speaks for all.
    let servers = config.servers()?;
    if let Some(server) = servers.iter().find(|s| s.username().is_some()) {
        let user = server.username().unwrap_or_default().to_owned();
        options = match server.password() {
            Some(password) => options.user_and_password(user, password.to_owned()),
            None => options.token(user),
        };
    }
    if let Some(creds) = &config.creds {
        options = options.credentials_file(creds).await.with_context(|| format!("NATS_CREDS {}", creds.display()))?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Sends what the client buffered (acknowledgements above all), waiting at most two seconds: a
/// service stopping while NATS is unreachable must not hang here. What is not sent is redelivered.
pub async fn flush_bounded(client: &async_nats::Client) {
    if tokio::time::timeout(Duration::from_secs(2), client.flush()).await.is_err() {
        tracing::warn!("could not flush acknowledgements to NATS; those messages will be redelivered");
    }
}

/// Ingest publishes a partition's events that arrive together as one JetStream message, a
/// *frame*: their envelopes' JSON, one per line (compact JSON has no raw newline). An event's
/// place in its key's order is its *position*, `stream sequence × FRAME_SLOTS + line`, so a
/// frame holds at most `FRAME_SLOTS` events. A one-event frame is exactly one envelope.
pub const FRAME_SLOTS: u64 = 1024;

/// The position of line `line` of the frame stored at `stream_seq`.
pub fn event_position(stream_seq: u64, line: usize) -> u64 {
    stream_seq.saturating_mul(FRAME_SLOTS).saturating_add(line as u64)
}

/// The byte ranges of a frame's lines (its events).
pub fn frame_lines(payload: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, byte) in payload.iter().enumerate() {
        if *byte == b'\n' {
            lines.push(start..i);
            start = i + 1;
        }
    }
    lines.push(start..payload.len());
    lines
}

/// Header of a frame whose events carry trace context: each line's `traceparent`, in order,
/// separated by spaces (`-` for a line without one).
pub const TRACEPARENTS_HEADER: &str = "OpsSentinal-Traceparents";

/// Header of a replayed dead letter: the position the event was first accepted at, where
/// workers apply it (so a trigger replayed after its key's resolve does not reopen the incident).
pub const ORIGINAL_SEQ_HEADER: &str = "OpsSentinal-Original-Seq";

/// A stream made with another partition count than this service's: a configuration error no
/// retry can fix.
#[derive(Debug, thiserror::Error)]
#[error(
    "JetStream stream {stream} was made with {found:?}, but this service is configured with {wanted:?} \
     (NATS_PARTITIONS must match the stream's; a stream made before partitions had binary subjects \
     must be drained and deleted)"
)]
pub struct PartitionMismatch {
    pub stream: String,
    pub found: String,
    pub wanted: String,
}

/// [`ensure_streams`], waiting (with backoff) while NATS is unreachable; `None` if `shutdown`
/// fires first. A [`PartitionMismatch`] is returned at once.
pub async fn ensure_streams_when_reachable(
    js: &jetstream::Context,
    config: &NatsConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<stream::Stream>> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let attempt = (|| ensure_streams(js, config))
        .retry(backoff)
        .when(|err| err.downcast_ref::<PartitionMismatch>().is_none())
        .notify(|err, delay| tracing::warn!(error = %format!("{err:#}"), retry_in_ms = delay.as_millis(), "cannot set up JetStream streams yet"));
    tokio::select! {
        result = attempt => result.map(Some),
        () = shutdown.cancelled() => Ok(None),
    }
}

/// A JetStream context whose requests (publish acks included) time out after `timeout`.
pub fn jetstream(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    let mut context = jetstream::new(client);
    context.set_timeout(timeout);
    context
}

/// Creates the event stream and the dead-letter stream if missing, or brings an existing one's
/// subjects, replicas and duplicate window in line with `config`; returns the event stream. A
/// stream made with another partition count is refused, naming both counts.
///
/// The stream itself has no size cap, and an old cap is removed: NATS 2.9 (Debian's 2.9.10, as
/// measured) deletes the *oldest* messages of a work-queue stream that has consumers when its
/// `max_bytes` is reached, even with the discard-new policy, which would silently drop accepted
/// events. `NATS_STREAM_MAX_BYTES` is enforced by ingest instead (see `ingest::publisher`); the
/// server's own storage limits refuse a publish, never drop one.
pub async fn ensure_streams(js: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<stream::Stream> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        description: Some(partitions_description(config.partitions)),
        subjects: vec![config.events_subjects()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_bytes: -1,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window(),
        ..Default::default()
    };
    let events = reconcile(js, wanted).await?;
    reconcile(
        js,
        stream::Config {
            name: config.dlq_stream(),
            subjects: vec![config.dlq_subject()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(events)
}

fn partitions_description(partitions: u32) -> String {
    format!("OpsSentinal events; partitions={partitions}; binary subjects")
}

/// Creates the stream, or updates the settings an operator may change on an existing one.
async fn reconcile(js: &jetstream::Context, wanted: stream::Config) -> anyhow::Result<stream::Stream> {
    let name = wanted.name.clone();
    let mut existing = match js.get_stream(&name).await {
        Ok(existing) => existing,
        Err(err)
            if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return js.create_stream(wanted).await.with_context(|| format!("creating JetStream stream {name}"));
        }
        Err(err) => return Err(err).with_context(|| format!("reading JetStream stream {name}")),
    };
    let current = existing.info().await.with_context(|| format!("reading JetStream stream {name}"))?.config.clone();
    if wanted.description.is_some() && current.description != wanted.description {
        return Err(PartitionMismatch {
            stream: name,
            found: current.description.unwrap_or_default(),
            wanted: wanted.description.unwrap_or_default(),
        }
        .into());
    }
    if current.subjects == wanted.subjects
        && current.max_bytes == wanted.max_bytes
        && current.num_replicas == wanted.num_replicas
        && current.duplicate_window == wanted.duplicate_window
    {
        return Ok(existing);
    }
    let updated = stream::Config {
        subjects: wanted.subjects,
        max_bytes: wanted.max_bytes,
        num_replicas: wanted.num_replicas,
        duplicate_window: wanted.duplicate_window,
        ..current.clone()
    };
    tracing::info!(
        stream = %name,
        max_bytes = updated.max_bytes,
        replicas = updated.num_replicas,
        "updating JetStream stream settings"
    );
    js.update_stream(updated).await.with_context(|| {
        format!(
            "updating JetStream stream {name} (replicas {} -> {}, max bytes {} -> {}, duplicate window {:?} -> {:?})",
            current.num_replicas,
            wanted.num_replicas,
            current.max_bytes,
            wanted.max_bytes,
            current.duplicate_window,
            wanted.duplicate_window
        )
    })?;
    js.get_stream(&name).await.with_context(|| format!("reading JetStream stream {name}"))
}

/// How many block consumers the workers share between them (at least one each): ingest frames a
/// block's events together, so fewer blocks mean larger frames and less nats-server work per
/// event; two keep both lanes of a single worker busy on a backlog (see the README's *Block
/// consumers*).
pub const BLOCK_CONSUMERS: usize = 2;

/// An aligned block of partitions: `len` (a power of two) partitions from `start` (a multiple of
/// `len`). Its partitions' subjects share their leading binary digits, so one wildcard filter
/// covers exactly the block, and one durable consumer delivers it: nats-server 2.9 pays per
/// consumer for every stored message, so a worker fetches its share through a few block
/// consumers rather than one consumer per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub start: u32,
    pub len: u32,
}

impl Block {
    /// Every partition of the stream.
    pub fn all(config: &NatsConfig) -> Self {
        Self { start: 0, len: config.partitions.max(1) }
    }

    /// The blocks a worker alone fetches the stream through. Ingest frames events by them while no
    /// block consumer exists (no worker runs), so a backlog is stored in large frames and the first
    /// worker to start fetches it through exactly these blocks.
    pub fn lone_worker(partitions: u32) -> Vec<Self> {
        Self::cover(0..partitions.max(1), BLOCK_CONSUMERS)
    }

    /// The partitions `range` holds, as few aligned blocks as cover it exactly, split further
    /// (largest first) until there are at least `pieces` or each is one partition.
    pub fn cover(range: std::ops::Range<u32>, pieces: usize) -> Vec<Self> {
        let mut blocks = Vec::new();
        let mut start = range.start;
        while start < range.end {
            let mut len = if start == 0 { range.end.next_power_of_two() } else { 1 << start.trailing_zeros() };
            while start + len > range.end {
                len /= 2;
            }
            blocks.push(Self { start, len });
            start += len;
        }
        while blocks.len() < pieces {
            let Some((i, largest)) = blocks.iter().copied().enumerate().max_by_key(|(_, b)| b.len) else { break };
            if largest.len == 1 {
                break;
            }
            let half = largest.len / 2;
            blocks[i] = Self { start: largest.start, len: half };
            blocks.insert(i + 1, Self { start: largest.start + half, len: half });
        }
        blocks
    }

    pub fn partitions(self) -> std::ops::Range<u32> {
        self.start..self.start + self.len
    }

    pub fn overlaps(self, other: Self) -> bool {
        self.start < other.start + other.len && other.start < self.start + self.len
    }

    /// The durable consumer's name: `<base>-p<first>-<last>`.
    pub fn consumer_name(self, base: &str) -> String {
        format!("{base}-p{}-{}", self.start, self.start + self.len - 1)
    }

    /// The block a consumer name of `base`'s names, if it names one.
    pub fn from_consumer_name(base: &str, name: &str) -> Option<Self> {
        name.strip_prefix(base)?.strip_prefix("-p").and_then(Self::from_suffix)
    }

    /// The block a block consumer's name names, whatever its base.
    pub fn named_by(name: &str) -> Option<Self> {
        Self::from_suffix(name.rsplit_once("-p")?.1)
    }

    /// `<first>-<last>`, an aligned block.
    fn from_suffix(suffix: &str) -> Option<Self> {
        let (first, last) = suffix.split_once('-')?;
        let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
        let len = last.checked_sub(first)? + 1;
        (len.is_power_of_two() && first % len == 0).then_some(Self { start: first, len })
    }

    /// The subject filter that matches exactly this block's partitions.
    pub fn filter(self, config: &NatsConfig) -> String {
        if self.len >= config.partitions {
            return config.events_subjects();
        }
        let mut subject = config.partition_subject(self.start);
        if self.len == 1 {
            return subject;
        }
        // Drop the digits the block's partitions differ in (each is `.0` or `.1` at the end).
        subject.truncate(subject.len() - 2 * self.len.trailing_zeros() as usize);
        subject + ".>"
    }
}

/// Where ingest frames the events of a block, as its consumer's description says
/// (`frames on p<target> for <worker>`): on the subject of partition `target`, the first of the
/// first block the same worker fetches, so a worker whose share takes several aligned blocks
/// still receives its events in as few, large frames as a worker with one block. Ingest follows
/// it only while the block covering `target` names the same worker; otherwise a block's events
/// are framed on its own first partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    pub target: u32,
    pub worker: String,
}

impl Framing {
    /// The consumer description that says it.
    pub fn describe(&self) -> String {
        format!("frames on p{} for {}", self.target, self.worker)
    }

    /// The framing a consumer's description says, if it says one.
    pub fn read(description: &str) -> Option<Self> {
        let (target, worker) = description.strip_prefix("frames on p")?.split_once(" for ")?;
        Some(Self { target: target.parse().ok()?, worker: worker.to_owned() })
    }

    /// The framing a consumer asks for, if its description says one.
    pub fn of(consumer: &consumer::Info) -> Option<Self> {
        consumer.config.description.as_deref().and_then(Self::read)
    }

    /// For each of `partitions` partitions, the partition on whose subject ingest frames its
    /// events, given the stream's block consumers and their framings: a lone worker's blocks
    /// when there is no consumer at all (no worker runs), a partition's own subject when no
    /// consumer covers it.
    pub fn routes(partitions: u32, consumers: &[(Block, Option<Self>)]) -> Vec<u32> {
        if consumers.is_empty() {
            let lone: Vec<_> = Block::lone_worker(partitions).into_iter().map(|b| (b, None)).collect();
            return Self::routes(partitions, &lone);
        }
        let covering = |partition: u32| consumers.iter().find(|(b, _)| b.partitions().contains(&partition));
        let route = |partition: u32| match covering(partition) {
            None => partition,
            Some((block, None)) => block.start,
            Some((block, Some(framing))) => match covering(framing.target) {
                Some((target, Some(there))) if target.start == framing.target && there.worker == framing.worker => {
                    framing.target
                }
                _ => block.start,
            },
        };
        (0..partitions).map(route).collect()
    }
}

/// What every block's durable pull consumer is made with. Redelivery after `ack_wait` is
/// unlimited: a worker decides itself when a message is poison and moves it to the dead-letter
/// stream.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSpec<'a> {
    /// The event stream.
    pub events: &'a stream::Stream,
    pub nats: &'a NatsConfig,
    /// Base name: a block's consumer is `<base>-p<first>-<last>`.
    pub base: &'a str,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

impl ConsumerSpec<'_> {
    /// The block's consumer, created if missing.
    pub async fn ensure(&self, block: Block) -> anyhow::Result<PullConsumer> {
        let name = block.consumer_name(self.base);
        let created = self.events.get_or_create_consumer(&name, self.config(block)).await;
        created.with_context(|| format!("creating JetStream consumer {name}"))
    }

    /// Deletes every consumer of `base` that covers a partition of the block (its own included)
    /// and creates the block's, describing where its events should be framed. What a previous
    /// owner left behind (messages delivered and never acknowledged, pull requests still waiting
    /// on the server for a client that stopped reading) goes with the old consumers and is
    /// delivered again at once rather than after the ack wait:
    /// on a work-queue stream a new consumer starts at the oldest message not yet acknowledged.
    /// (A work-queue stream also refuses a consumer whose filter overlaps another's.)
    pub async fn recreate(&self, block: Block, framing: &Framing) -> anyhow::Result<PullConsumer> {
        use futures_util::TryStreamExt;
        let names: Vec<String> =
            self.events.consumer_names().try_collect().await.context("listing JetStream consumers")?;
        let blocks = names.iter().filter_map(|name| Block::from_consumer_name(self.base, name));
        for covering in blocks.filter(|b| b.overlaps(block)) {
            self.delete(covering).await?;
        }
        let config = consumer::pull::Config { description: Some(framing.describe()), ..self.config(block) };
        let created = self.events.create_consumer(config).await;
        created.with_context(|| format!("creating JetStream consumer {}", block.consumer_name(self.base)))
    }

    /// Deletes a block's consumer (gone already is fine).
    pub async fn delete(&self, block: Block) -> anyhow::Result<()> {
        let name = block.consumer_name(self.base);
        match self.events.delete_consumer(&name).await {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(err.kind(), stream::ConsumerErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(err) => Err(err).with_context(|| format!("deleting JetStream consumer {name}")),
        }
    }

    fn config(&self, block: Block) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(block.consumer_name(self.base)),
            filter_subject: block.filter(self.nats),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splits_into_its_lines_and_positions_follow_them() {
        let payload = b"{\"a\":1}\n{\"b\":2}\nnot json";
        let lines: Vec<&[u8]> = frame_lines(payload).into_iter().map(|r| &payload[r]).collect();
        assert_eq!(lines, [&b"{\"a\":1}"[..], b"{\"b\":2}", b"not json"]);
        assert_eq!(frame_lines(b"{}"), vec![std::ops::Range { start: 0, end: 2 }]);
        assert_eq!((event_position(7, 0), event_position(7, 3)), (7 * FRAME_SLOTS, 7 * FRAME_SLOTS + 3));
        assert!(event_position(7, FRAME_SLOTS as usize - 1) < event_position(8, 0));
    }

    #[test]
    fn a_range_is_covered_by_few_aligned_blocks_split_into_enough_pieces() {
        let block = |start, len| Block { start, len };
        assert_eq!(Block::cover(0..32, 1), [block(0, 32)]);
        assert_eq!(Block::cover(0..32, 2), [block(0, 16), block(16, 16)]);
        assert_eq!(Block::cover(0..10, 1), [block(0, 8), block(8, 2)]);
        assert_eq!(Block::cover(10..21, 2), [block(10, 2), block(12, 4), block(16, 4), block(20, 1)]);
        assert_eq!(Block::cover(21..32, 4), [block(21, 1), block(22, 2), block(24, 4), block(28, 4)]);
        assert_eq!(Block::cover(3..4, 2), [block(3, 1)]);
        assert_eq!(Block::cover(5..5, 2), []);
        for members in 1..=9u32 {
            for rank in 0..members {
                let range = rank * 32 / members..(rank + 1) * 32 / members;
                let blocks = Block::cover(range.clone(), 2);
                let covered: Vec<u32> = blocks.iter().flat_map(|b| b.partitions()).collect();
                assert_eq!(covered, range.collect::<Vec<_>>());
                assert!(blocks.iter().all(|b| b.len.is_power_of_two() && b.start % b.len == 0), "{blocks:?}");
            }
        }
    }

    #[test]
    fn a_block_has_one_filter_and_a_consumer_name_that_reads_back() {
        let config = crate::config::tests::nats_config(32);
        let block = |start, len| Block { start, len };
        assert_eq!(block(0, 32).filter(&config), "opssentinal.events.>");
        assert_eq!(block(16, 16).filter(&config), "opssentinal.events.1.>");
        assert_eq!(block(12, 4).filter(&config), "opssentinal.events.0.1.1.>");
        assert_eq!(block(5, 1).filter(&config), "opssentinal.events.0.0.1.0.1");
        for b in [block(0, 32), block(12, 4), block(5, 1)] {
            assert_eq!(Block::from_consumer_name("workers", &b.consumer_name("workers")), Some(b));
        }
        assert_eq!(block(12, 4).consumer_name("workers"), "workers-p12-15");
        for other in ["workers-p12", "workers-p3-5", "workers-p4-6", "other-p0-31", "workers-pa-b"] {
            assert_eq!(Block::from_consumer_name("workers", other), None, "{other}");
        }
        assert_eq!(Block::named_by("other-p0-31"), Some(block(0, 32)));
        assert_eq!(Block::named_by("my-pool-p12-15"), Some(block(12, 4)));
        assert_eq!(Block::named_by("workers-p3-5"), None);
        assert_eq!(Block::named_by("dlq"), None);
        assert!(block(8, 8).overlaps(block(12, 1)) && block(12, 1).overlaps(block(8, 8)));
        assert!(!block(8, 4).overlaps(block(12, 4)));
    }
    #[test]
    fn frames_go_to_the_first_block_of_the_same_worker() {
        let block = |start, len| Block { start, len };
        let framing = |target, worker: &str| Some(Framing { target, worker: worker.to_owned() });
        let said = framing(8, "w1").unwrap();
        assert_eq!(Framing::read(&said.describe()), Some(said));
        assert_eq!(Framing::read("something else"), None);

        // No consumer: a lone worker's two halves.
        assert_eq!(Framing::routes(8, &[]), [0, 0, 0, 0, 4, 4, 4, 4]);
        // Blocks without a framing, and a partition no block covers.
        assert_eq!(Framing::routes(8, &[(block(0, 4), None), (block(4, 2), None)]), [0, 0, 0, 0, 4, 4, 6, 7]);
        // w1 fetches 0-3 and 4-5, w2 6-7: w1's events on 0, w2's on 6.
        let three = [(block(0, 4), framing(0, "w1")), (block(4, 2), framing(0, "w1")), (block(6, 2), framing(6, "w2"))];
        assert_eq!(Framing::routes(8, &three), [0, 0, 0, 0, 0, 0, 6, 6]);
        // A target another worker's block covers, or no block starts at: each block on its own.
        let stale = [(block(0, 4), framing(0, "w2")), (block(4, 2), framing(0, "w1")), (block(6, 2), framing(5, "w2"))];
        assert_eq!(Framing::routes(8, &stale), [0, 0, 0, 0, 4, 4, 6, 6]);
    }
}
