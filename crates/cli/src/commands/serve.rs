//! `opssentinal serve`: ingest, one worker and the query API in one process on one port, against
//! the configured PostgreSQL, Redis and NATS. Applies migrations, and on the first start of an
//! empty database creates an admin user and API key and prints them once.

use std::net::SocketAddr;

use clap::Args;
use common::config::{
    DatabaseConfig, LogConfig, NatsConfig, RateLimitConfig, RedisConfig, ShutdownConfig, parse_listen,
};
use common::http::{Dependency, Readiness, health_router, redis_pool};
use ingest::IngestConfig;
use worker::WorkerSettings;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  opssentinal serve            # then: curl http://127.0.0.1:8080/readyz")]
pub struct ServeArgs {
    /// Address of the single HTTP entry point.
    #[arg(long = "listen", env = "OPSSENTINAL_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Email of the admin user created on first start.
    #[arg(long = "admin-email", env = "OPSSENTINAL_ADMIN_EMAIL", default_value = "admin@opssentinal.local")]
    admin_email: String,
    #[command(flatten)]
    database: DatabaseConfig,
    #[command(flatten)]
    redis: RedisConfig,
    #[command(flatten)]
    nats: NatsConfig,
    #[command(flatten)]
    limits: RateLimitConfig,
    #[command(flatten)]
    log: LogConfig,
    #[command(flatten)]
    shutdown: ShutdownConfig,
    #[command(flatten)]
    worker: WorkerSettings,
    /// This entry point's address as monitored jobs reach it: heartbeats' ping URLs are
    /// `{INGEST_PUBLIC_URL}/api/heartbeats/ping/{token}`.
    #[arg(long = "ingest-public-url", env = "INGEST_PUBLIC_URL", default_value = "http://localhost:8080")]
    ingest_public_url: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init_tracing(&args.log, "opssentinal")?;
    parse_listen("OPSSENTINAL_LISTEN", &args.listen)?;
    let ingest_config = IngestConfig {
        listen: args.listen.clone(),
        database: args.database.clone(),
        redis: args.redis.clone(),
        nats: args.nats.clone(),
        limits: args.limits.clone(),
        log: args.log.clone(),
        shutdown: args.shutdown.clone(),
    };
    ingest_config.validate()?;
    args.worker.validate()?;
    query_api::config::check_public_url("INGEST_PUBLIC_URL", &args.ingest_public_url)?;
    let shutdown = common::shutdown::on_signal();
    let deadline = args.shutdown.timeout();
    let serve = {
        let shutdown = shutdown.clone();
        async move {
            let listener = tokio::net::TcpListener::bind(&args.listen).await?;

            let pool = common::db::pool(&args.database)?;
            common::db::migrate_when_reachable(&pool, &shutdown).await?;
            if let Some(first) = query_api::users::service::bootstrap_admin(&pool, &args.admin_email).await? {
                println!("First start: created the admin user and an admin API key. They are shown only now.");
                println!("  admin email:    {}", first.email);
                println!("  admin password: {}", first.password);
                println!("  admin API key:  {}", first.api_key.key);
                let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
                println!("  web console:    http://localhost:{port}/ (sign in with the admin email and password)");
            }

            let (ingest_state, _, streams) = ingest::AppState::connect(&ingest_config, shutdown.clone()).await?;
            streams.await?;
            let worker_client = common::nats::connect(&args.nats, "opssentinal-worker").await?;
            let mut workers =
                worker::start(&args.worker, &args.nats, pool.clone(), worker_client.clone(), shutdown.clone()).await?;

            let redis = redis_pool(&args.redis.url, args.redis.timeout())?;
            let readiness = Readiness {
                required: vec![Dependency::Nats(worker_client.clone()), Dependency::Postgres(pool.clone())],
                optional: vec![Dependency::Redis(redis.clone())],
            };
            let streams = query_api::stream::service::Registry { redis, prefix: args.redis.key_prefix.clone() };
            let query_state = query_api::AppState::start(
                pool.clone(),
                ingest_state.gate.clone(),
                worker_client.clone(),
                &args.nats,
                streams,
                query_api::state::Settings {
                    webhooks: args.worker.webhooks.clone(),
                    ingest_public_url: args.ingest_public_url.clone(),
                },
                shutdown.clone(),
            );
            let app = ingest::with_fallbacks(
                ingest::api_router(ingest_state)
                    .merge(query_api::api_router(query_state))
                    .merge(health_router(readiness)),
            );
            tracing::info!(listen = %listener.local_addr()?, "opssentinal serving ingest, worker and query API");
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .await?;
            while workers.join_next().await.is_some() {}
            common::nats::flush_bounded(&worker_client).await;
            Ok(())
        }
    };
    common::shutdown::within_deadline(serve, &shutdown, deadline).await
}
