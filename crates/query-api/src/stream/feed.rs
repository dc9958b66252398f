//! One consumer of the change stream per process, fanned out to every client of the process:
//! the live changes go through broadcast channels, one for every change and one per service a
//! client follows (so a dashboard of one service is not woken by every other service's changes);
//! a client resuming from an older position reads the stream from there first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Changes a client following every change may fall behind the live feed before it is cut off
/// with `reset`.
const LIVE_BUFFER: usize = 16_384;

/// The same for a client following one service (a channel per service followed).
const SERVICE_BUFFER: usize = 4096;

/// What [`Feed::seen`] holds before the feed has read the stream.
const UNSEEN: u64 = u64::MAX;

/// One change as the stream carries it.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its position in the change stream: the SSE `id`.
    pub seq: u64,
    /// Its type (`acknowledged`, …): the SSE `event`.
    pub kind: String,
    pub service_id: String,
    /// The incident's status after it (a service's, for a service's change).
    pub status: String,
    /// Whether it is a service's change (`service.status_changed`) rather than an incident's.
    pub of_service: bool,
    /// The change as published: the SSE `data`.
    pub data: Arc<str>,
}

impl Change {
    fn read(seq: u64, payload: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        let of_service = value["incidentId"].is_null();
        let about = if of_service { "service" } else { "incident" };
        Some(Self {
            seq,
            kind: value["type"].as_str()?.to_owned(),
            service_id: value["serviceId"].as_str()?.to_owned(),
            status: value[about]["status"].as_str().unwrap_or_default().to_owned(),
            of_service,
            data: String::from_utf8_lossy(payload).into(),
        })
    }
}

/// Whether `err` says the stream does not exist.
fn absent(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The process's view of the change stream.
pub struct Feed {
    js: jetstream::Context,
    stream: String,
    live: broadcast::Sender<Arc<Change>>,
    /// The channels of the services clients follow, made on demand, dropped with their last client.
    by_service: std::sync::Mutex<HashMap<String, broadcast::Sender<Arc<Change>>>>,
    /// The last position the feed has seen ([`UNSEEN`] until it has read the stream once).
    seen: AtomicU64,
}

impl Feed {
    /// Starts following the change stream `stream` from its end, until `shutdown`.
    pub fn start(js: jetstream::Context, stream: String, shutdown: CancellationToken) -> Arc<Self> {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let by_service = std::sync::Mutex::default();
        let feed = Arc::new(Self { js, stream, live, by_service, seen: AtomicU64::new(UNSEEN) });
        tokio::spawn(feed.clone().follow(shutdown));
        feed
    }

    /// A receiver of every change published from now on, or of `service`'s only.
    pub fn subscribe(&self, service: Option<&str>) -> broadcast::Receiver<Arc<Change>> {
        match service {
            None => self.live.subscribe(),
            Some(service) => {
                let mut channels = self.by_service.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                channels.entry(service.to_owned()).or_insert_with(|| broadcast::channel(SERVICE_BUFFER).0).subscribe()
            }
        }
    }

    /// Sends `change` to the clients of every change and to those of its service.
    fn publish(&self, change: Change) {
        let change = Arc::new(change);
        // No receiver is fine: nobody is watching.
        let _ = self.live.send(change.clone());
        let mut channels = self.by_service.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(&change.service_id) {
            if channel.receiver_count() == 0 {
                channels.remove(&change.service_id);
            } else {
                let _ = channel.send(change);
            }
        }
    }

    /// The last position this process has seen, without asking the server: every change up to
    /// it was committed before now. `None` until the feed has read the stream once.
    pub fn seen(&self) -> Option<u64> {
        Some(self.seen.load(Ordering::Acquire)).filter(|&seq| seq != UNSEEN)
    }

    /// The stream's first and last positions now.
    pub async fn bounds(&self) -> anyhow::Result<(u64, u64)> {
        let mut stream = self.js.get_stream(&self.stream).await?;
        let state = &stream.info().await?.state;
        Ok((state.first_sequence, state.last_sequence))
    }

    /// The changes from position `from` through `to`, oldest first.
    pub async fn replay(&self, from: u64, to: u64) -> anyhow::Result<impl futures_util::Stream<Item = Change> + use<>> {
        let stream = self.js.get_stream(&self.stream).await?;
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                ..Default::default()
            })
            .await?;
        let messages = reader.messages().await?;
        Ok(messages
            .filter_map(|message| async move {
                let message = message.ok()?;
                let seq = message.info().ok()?.stream_sequence;
                Change::read(seq, &message.payload)
            })
            .take_while(move |change| std::future::ready(change.seq <= to)))
    }

    /// Follows the stream's new changes into the broadcast, starting again after the last one
    /// seen when the consumer fails.
    async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next = None;
        while !shutdown.is_cancelled() {
            if let Err(err) = self.follow_from(&mut next, &shutdown).await {
                tracing::warn!(error = %format!("{err:#}"), "change stream unavailable; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn follow_from(&self, next: &mut Option<u64>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut stream = match self.js.get_stream(&self.stream).await {
            Ok(stream) => stream,
            // Not made yet (no worker has run): every change it will hold is new to this
            // process, so follow it from its start once it exists.
            Err(err) if next.is_none() && absent(&err) => {
                *next = Some(1);
                self.seen.store(0, Ordering::Release);
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        let start_sequence = match *next {
            Some(start_sequence) => start_sequence,
            None => {
                let last = stream.info().await?.state.last_sequence;
                self.seen.store(last, Ordering::Release);
                last + 1
            }
        };
        let deliver_policy = consumer::DeliverPolicy::ByStartSequence { start_sequence };
        let reader =
            stream.create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() }).await?;
        let mut messages = reader.messages().await?;
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = messages.next() => message,
            };
            let Some(message) = message else { return Ok(()) };
            let message = message?;
            let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            *next = Some(seq + 1);
            self.seen.store(seq, Ordering::Release);
            if let Some(change) = Change::read(seq, &message.payload) {
                self.publish(change);
            }
        }
    }
}
