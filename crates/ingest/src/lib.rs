//! OpsSentinal ingest: authenticates and rate-limits alert sources, validates their events and
//! answers `202` once JetStream has stored them.

pub mod accept;
pub mod config;
pub mod idempotency;
pub mod publisher;
pub mod routes;
pub mod services;
pub mod sources;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use common::event::MAX_BODY_BYTES;
use common::http::{Bucket, GateLayer, authenticate, health_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::IngestConfig;
pub use state::AppState;

/// ingest's API routes (authenticated), without health endpoints or fallbacks, so the
/// one-process mode can merge them with query-api's.
pub fn api_router(state: Arc<AppState>) -> Router {
    let gate = GateLayer { gate: state.gate.clone(), bucket: Bucket::Events, sessions: false };
    let (events, _) = routes::events::router().split_for_parts();
    let (pagerduty, _) = routes::pagerduty::router().split_for_parts();
    let (alertmanager, _) = routes::alertmanager::router().split_for_parts();
    let (heartbeats, _) = routes::heartbeats::router().split_for_parts();
    events
        .layer(axum::middleware::from_fn_with_state(gate, authenticate))
        .merge(pagerduty)
        .merge(alertmanager)
        .merge(heartbeats)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The OpenAPI description of ingest's routes, generated from the same registrations that route them.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api): (Router<Arc<AppState>>, _) = routes::events::router().split_for_parts();
    let (_, pagerduty): (Router<Arc<AppState>>, _) = routes::pagerduty::router().split_for_parts();
    api.merge(pagerduty);
    let (_, alertmanager): (Router<Arc<AppState>>, _) = routes::alertmanager::router().split_for_parts();
    api.merge(alertmanager);
    let (_, heartbeats): (Router<Arc<AppState>>, _) = routes::heartbeats::router().split_for_parts();
    api.merge(heartbeats);
    api
}

/// Adds our JSON 404/405 answers to a router.
pub fn with_fallbacks(router: Router) -> Router {
    router.fallback(common::http::not_found).method_not_allowed_fallback(common::http::method_not_allowed)
}

/// Serves ingest on `listener` until `shutdown` is cancelled, then drains in-flight requests.
/// Starts whatever is down; exits early only for a configuration error found once NATS answers.
pub async fn run(config: IngestConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let (state, readiness, set_up) = AppState::connect(&config, shutdown.clone()).await?;
    common::telemetry::export_counters(&[
        "events_accepted_total",
        "events_rejected_total",
        "events_publish_failures_total",
        "rate_limited_total",
        "rate_limit_fail_open_total",
        "auth_failures_total",
        "idempotency_unavailable_total",
    ]);
    let app = with_fallbacks(api_router(state).merge(health_router(readiness)))
        .layer(axum::middleware::from_fn_with_state("ingest", common::http::record_request));
    tracing::info!(listen = %listener.local_addr()?, "ingest listening");
    let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // Set up (or shut down before it could be), serving goes on to its graceful end.
    let failed = async {
        set_up.await?;
        std::future::pending::<anyhow::Result<()>>().await
    };
    tokio::select! {
        served = serve => Ok(served?),
        failed = failed => failed,
    }
}
