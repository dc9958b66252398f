//! NATS JetStream set-up shared by ingest and workers: the event stream (work-queue retention:
//! a message stays until a worker acknowledges it, and a full stream refuses new publishes rather
//! than dropping accepted events; one subject per partition), its dead-letter stream, and the
//! durable consumers, one per partition, that deliver them to workers.

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

// The largest frame the configuration allows fits its positions.
const _: () = assert!(crate::config::MAX_FRAME_EVENTS as u64 <= FRAME_SLOTS);

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
     (NATS_PARTITIONS must match the stream's; to change it, drain the stream and delete it)"
)]
pub(crate) struct PartitionMismatch {
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

/// Creates the event stream, the dead-letter stream and the change stream if missing, or brings an existing one's
/// subjects, size cap, replicas and duplicate window in line with `config`; returns the event
/// stream. A stream made with another partition count is refused, naming both counts.
///
/// The size cap (`NATS_STREAM_MAX_BYTES`) is the stream's own with the discard-new policy: a full
/// stream refuses new publishes and keeps every stored event (as measured on nats-server 2.15 and
/// tested in `tests/e2e/streams.rs`), so ingest answers `503` and drops nothing.
pub async fn ensure_streams(js: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<stream::Stream> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        description: Some(partitions_description(config.partitions)),
        subjects: vec![config.events_subjects()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_bytes: config.max_bytes,
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
    reconcile(
        js,
        stream::Config {
            name: config.changes_stream(),
            subjects: vec![config.changes_subjects()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: CHANGES_KEPT_FOR,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window(),
            ..Default::default()
        },
    )
    .await?;
    Ok(events)
}

/// How long the change stream keeps a change (DESIGN §9: 24 h).
pub(crate) const CHANGES_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

fn partitions_description(partitions: u32) -> String {
    format!("OpsSentinal events; partitions={partitions}")
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

/// The durable pull consumers of the event stream, one per partition (`<base>-p<partition>`,
/// filtered on the partition's subject). Redelivery after `ack_wait` is unlimited: a worker
/// decides itself when a message is poison and moves it to the dead-letter stream.
#[derive(Debug, Clone, Copy)]
pub struct PartitionConsumers<'a> {
    /// The event stream.
    pub events: &'a stream::Stream,
    pub nats: &'a NatsConfig,
    /// Base name: partition `p`'s consumer is `<base>-p<p>`.
    pub base: &'a str,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

impl PartitionConsumers<'_> {
    /// The name of a partition's consumer.
    pub fn name(&self, partition: u32) -> String {
        consumer_name(self.base, partition)
    }

    /// The partition's consumer, created if missing.
    pub async fn ensure(&self, partition: u32) -> anyhow::Result<PullConsumer> {
        let name = self.name(partition);
        let created = self.events.get_or_create_consumer(&name, self.config(partition)).await;
        created.with_context(|| format!("creating JetStream consumer {name}"))
    }

    /// Deletes the partition's consumer and creates it again: what a previous owner left behind
    /// (messages delivered and never acknowledged, pull requests still waiting on the server for a
    /// client that stopped reading) goes with the old consumer, and the new one delivers every
    /// message of the partition not yet acknowledged, oldest first, at once: on a work-queue
    /// stream a new consumer starts at the oldest message still stored. This is what makes a
    /// hand-over exact: the next owner receives the partition's messages in stream order.
    pub async fn recreate(&self, partition: u32) -> anyhow::Result<PullConsumer> {
        let name = self.name(partition);
        match self.events.delete_consumer(&name).await {
            Ok(_) => {}
            Err(err)
                if matches!(err.kind(), stream::ConsumerErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
            Err(err) => return Err(err).with_context(|| format!("deleting JetStream consumer {name}")),
        }
        let created = self.events.create_consumer(self.config(partition)).await;
        created.with_context(|| format!("creating JetStream consumer {name}"))
    }

    fn config(&self, partition: u32) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.name(partition)),
            filter_subject: self.nats.partition_subject(partition),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

/// The durable consumer of `partition` among the consumers named `base`: `<base>-p<partition>`.
pub fn consumer_name(base: &str, partition: u32) -> String {
    format!("{base}-p{partition}")
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
}
