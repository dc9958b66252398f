//! What ingest's handlers share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use common::http::{Dependency, Gate, Readiness, redis_pool};
use common::ratelimit::RateLimiter;

use crate::config::IngestConfig;
use crate::idempotency::Idempotency;
use crate::publisher::Publisher;
use crate::services::ServiceDirectory;

pub struct AppState {
    pub pool: sqlx::PgPool,
    pub gate: Arc<Gate>,
    pub publisher: Publisher,
    pub services: ServiceDirectory,
    pub idempotency: Idempotency,
}

/// How long a routing key or service id lookup is cached.
const SERVICE_CACHE_TTL: Duration = Duration::from_secs(30);

impl AppState {
    /// Connects to every dependency, lazily: nothing needs to be up yet. The returned set-up
    /// future creates the schema and the streams as soon as PostgreSQL and NATS can be reached
    /// (`/readyz` says "streams" down until then, and publishing answers 503); it fails only for
    /// a configuration no retry can fix.
    pub async fn connect(
        config: &IngestConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Arc<Self>, Readiness, impl Future<Output = anyhow::Result<()>> + use<>)> {
        let pool = common::db::pool(&config.database)?;
        let redis = redis_pool(&config.redis.url, config.redis.timeout())?;
        let client = common::nats::connect(&config.nats, "opssentinal-ingest").await?;
        let js = common::nats::jetstream(client.clone(), config.nats.publish_timeout());
        let streams_ready = Arc::new(AtomicBool::new(false));
        let limiter = RateLimiter::new(&config.redis.url, config.redis.key_prefix.clone(), config.redis.timeout())?;
        let gate = Arc::new(Gate::new(pool.clone(), limiter, config.limits.clone()));
        let publisher = Publisher::new(client.clone(), js.clone(), &config.nats);
        let set_up = {
            let (pool, nats, ready) = (pool.clone(), config.nats.clone(), streams_ready.clone());
            async move {
                let streams = async {
                    if common::nats::ensure_streams_when_reachable(&js, &nats, &shutdown).await?.is_some() {
                        ready.store(true, Ordering::Release);
                    }
                    anyhow::Ok(())
                };
                let (streams, schema) = tokio::join!(streams, common::db::migrate_when_reachable(&pool, &shutdown));
                streams.and(schema)
            }
        };
        let state = Arc::new(Self {
            pool: pool.clone(),
            gate,
            publisher,
            services: ServiceDirectory::new(pool.clone(), SERVICE_CACHE_TTL),
            idempotency: Idempotency::new(redis.clone(), config.redis.key_prefix.clone(), config.redis.timeout()),
        });
        let readiness = Readiness {
            required: vec![Dependency::Nats(client), Dependency::SetUp("streams", streams_ready)],
            optional: vec![Dependency::Postgres(pool), Dependency::Redis(redis)],
        };
        Ok((state, readiness, set_up))
    }
}
