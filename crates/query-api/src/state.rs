//! What query-api's handlers share.

use std::sync::Arc;

use common::http::Gate;
use sqlx::PgPool;

use crate::stream::feed::Feed;
use crate::stream::service::Registry;

pub struct AppState {
    pub pool: PgPool,
    pub gate: Arc<Gate>,
    /// This process's view of the change stream.
    pub feed: Arc<Feed>,
    /// Stream tokens and open streams, in Redis.
    pub streams: Registry,
    /// Where webhooks may be sent.
    pub webhooks: common::config::WebhookConfig,
    /// Ingest's public base URL, which heartbeats' ping URLs start with.
    pub ingest_public_url: String,
}

/// What the handlers read of the configuration.
pub struct Settings {
    /// Where webhooks may be sent.
    pub webhooks: common::config::WebhookConfig,
    /// Ingest's public base URL (`INGEST_PUBLIC_URL`), which heartbeats' ping URLs start with.
    pub ingest_public_url: String,
}

impl AppState {
    /// The state of a query API whose change feed follows `nats`'s change stream over `client`
    /// until `shutdown`.
    pub fn start(
        pool: PgPool,
        gate: Arc<Gate>,
        client: async_nats::Client,
        nats: &common::config::NatsConfig,
        streams: Registry,
        settings: Settings,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        let js = common::nats::jetstream(client, nats.publish_timeout());
        let feed = Feed::start(js, nats.changes_stream(), shutdown);
        let Settings { webhooks, ingest_public_url } = settings;
        Arc::new(Self { pool, gate, feed, streams, webhooks, ingest_public_url })
    }
}
