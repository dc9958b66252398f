//! OpsSentinal query API: every `/api/...` endpoint but the events one.

pub mod config;

use std::net::SocketAddr;

use common::http::{Dependency, Readiness, health_router, redis_pool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::QueryApiConfig;

/// Serves the query API on `listener` until `shutdown`.
pub async fn run(
    config: QueryApiConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let pool = common::db::pool(&config.database)?;
    common::db::migrate_when_reachable(&pool, &shutdown).await?;
    let redis = redis_pool(&config.redis.url, config.redis.timeout())?;
    let readiness = Readiness {
        required: vec![Dependency::Postgres(pool)],
        optional: vec![Dependency::Redis(redis)],
    };
    let app = health_router(readiness)
        .fallback(common::http::not_found)
        .method_not_allowed_fallback(common::http::method_not_allowed);
    tracing::info!(listen = %listener.local_addr()?, "query-api listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    Ok(())
}
