//! What ingest's handlers share.

use std::sync::Arc;
use std::time::Duration;

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
    /// Connects to every dependency (lazily where it may be down) and makes sure the streams exist.
    pub async fn connect(config: &IngestConfig) -> anyhow::Result<(Arc<Self>, Readiness)> {
        let pool = common::db::pool(&config.database)?;
        let redis = redis_pool(&config.redis.url, config.redis.timeout())?;
        let client = common::nats::connect(&config.nats, "opssentinal-ingest").await?;
        let js = common::nats::jetstream(client.clone(), config.nats.publish_timeout());
        common::nats::ensure_streams(&js, &config.nats).await?;
        let limiter = RateLimiter::new(&config.redis.url, config.redis.key_prefix.clone(), config.redis.timeout())?;
        let gate = Arc::new(Gate::new(pool.clone(), limiter, config.limits.clone()));
        let publisher = Publisher::new(client.clone(), js, &config.nats);
        let state = Arc::new(Self {
            pool: pool.clone(),
            gate,
            publisher,
            services: ServiceDirectory::new(pool.clone(), SERVICE_CACHE_TTL),
            idempotency: Idempotency::new(redis.clone(), config.redis.key_prefix.clone(), config.redis.timeout()),
        });
        let readiness = Readiness {
            required: vec![Dependency::Nats(client)],
            optional: vec![Dependency::Postgres(pool), Dependency::Redis(redis)],
        };
        Ok((state, readiness))
    }
}
