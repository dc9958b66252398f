//! OpsSentinal query API: every `/api/...` endpoint but the events one. Each resource is a
//! folder with the same parts: `body` (typed queries, request and response bodies), `service`
//! (typed input in, the resource out; the CLI calls these too) and `http` (the handlers and their
//! OpenAPI registrations). Users and API keys have no endpoints yet: the CLI administers them.

pub mod api;
pub mod api_keys;
pub mod config;
pub mod console;
pub mod constraint;
pub mod credentials;
pub mod escalation_policies;
pub mod heartbeats;
pub mod incidents;
pub mod maintenance;
pub mod page;
pub mod schedules;
pub mod services;
pub mod state;
pub mod stream;
pub mod users;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use common::http::{Bucket, Dependency, Gate, GateLayer, Readiness, authenticate, health_router, redis_pool};
use common::ratelimit::RateLimiter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

pub use config::QueryApiConfig;
pub use state::AppState;

/// The whole API's OpenAPI document (events and query endpoints), as committed in
/// `docs/openapi.json`. The tests regenerate it from the registrations that build the routers
/// ([`openapi`] merged with `ingest::openapi`) and fail when the file differs, so a route cannot
/// exist without its entry and the file in the repository is the one served.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// The authenticated API routes, without health endpoints or fallbacks (the one-process mode
/// merges them with ingest's).
pub fn api_router(state: Arc<AppState>) -> Router {
    let gate = GateLayer { gate: state.gate.clone(), bucket: Bucket::Api, sessions: true };
    let (routes, _) = routes().split_for_parts();
    let (open, _) = open_routes().split_for_parts();
    let routes = routes.layer(axum::middleware::from_fn_with_state(gate, authenticate)).merge(open);
    routes
        .merge(console::assets_router())
        .with_state(state)
        .route(
            "/api/openapi.json",
            axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(common::event::MAX_BODY_BYTES))
}

/// The routes that authenticate themselves (a stream token, a sign-in).
fn open_routes() -> OpenApiRouter<Arc<AppState>> {
    stream::http::open_router().merge(console::session_router())
}

fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .merge(console::router())
        .merge(incidents::router())
        .merge(services::router())
        .merge(schedules::router())
        .merge(stream::router())
        .merge(webhooks::router())
        .merge(escalation_policies::router())
        .merge(users::router())
        .merge(maintenance::router())
        .merge(heartbeats::router())
}

/// The query API's part of the OpenAPI 3.1 document, with the document's title, description and
/// security schemes; ingest's part (`ingest::openapi`) is merged into it to make the whole.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
    let (_, mut api): (Router<Arc<AppState>>, _) = routes().merge(open_routes()).split_for_parts();
    api.info.title = "OpsSentinal API".into();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    // Not utoipa's own author and licence, which it fills in by default.
    api.info.contact = None;
    api.info.license = Some(utoipa::openapi::License::new(env!("CARGO_PKG_LICENSE")));
    api.info.description = Some(
        "Events in, incidents out. Authenticate with `Authorization: Bearer KEY`, `Authorization: Api-Key KEY` or \
         `X-API-Key: KEY`. Errors are `{\"error\": {\"code\", \"message\", \"details\"?}}`."
            .into(),
    );
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("osk_…").build()),
    );
    components
        .add_security_scheme("api_key_header", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    api
}

/// Serves the query API on `listener` until `shutdown`.
pub async fn run(config: QueryApiConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let pool = common::db::pool(&config.database)?;
    let redis = redis_pool(&config.redis.url, config.redis.timeout())?;
    let limiter = RateLimiter::new(&config.redis.url, config.redis.key_prefix.clone(), config.redis.timeout())?;
    let gate = Arc::new(Gate::new(pool.clone(), limiter, config.limits.clone()));
    let nats = common::nats::connect(&config.nats, "opssentinal-query-api").await?;
    let streams = stream::service::Registry { redis: redis.clone(), prefix: config.redis.key_prefix.clone() };
    let settings =
        state::Settings { webhooks: config.webhooks.clone(), ingest_public_url: config.ingest_public_url.clone() };
    let state = AppState::start(pool.clone(), gate, nats, &config.nats, streams, settings, shutdown.clone());
    let schema_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set_up = {
        let (pool, shutdown, ready) = (pool.clone(), shutdown.clone(), schema_ready.clone());
        async move {
            common::db::migrate_when_reachable(&pool, &shutdown).await?;
            ready.store(!shutdown.is_cancelled(), std::sync::atomic::Ordering::Release);
            std::future::pending::<anyhow::Result<()>>().await
        }
    };
    let readiness = Readiness {
        required: vec![Dependency::Postgres(pool), Dependency::SetUp("schema", schema_ready)],
        optional: vec![Dependency::Redis(redis)],
    };
    common::telemetry::export_counters(&[
        "rate_limited_total",
        "rate_limit_fail_open_total",
        "auth_failures_total",
        "stream_clients_cut_off_total",
    ]);
    let app = api_router(state)
        .merge(health_router(readiness))
        .fallback(common::http::not_found)
        .method_not_allowed_fallback(common::http::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state("query-api", common::http::record_request));
    tracing::info!(listen = %listener.local_addr()?, "query-api listening");
    let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.cancelled_owned());
    tokio::select! {
        served = serve => Ok(served?),
        failed = set_up => failed,
    }
}
