//! `GET|POST /api/heartbeats/ping/{token}`: a monitored job says it is alive (DESIGN §12). No API
//! key: the token in the path (created with the heartbeat by the query API, stored as its
//! SHA-256) names the heartbeat. Any body is read (up to the usual limit, whatever its content
//! type: Alertmanager's Watchdog posts JSON) and ignored. Each heartbeat takes
//! [`PINGS_PER_MINUTE`].
//!
//! A ping of a heartbeat that is `down` (missed: the worker triggered `heartbeat:<id>`) publishes
//! the resolve before the heartbeat is marked `up`, in the transaction that holds its row: if the
//! publish fails, nothing changes and the next ping tries again.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use common::auth::hash_key;
use common::event::heartbeat_event;
use common::http::{ApiPath, read_body};
use common::incident::store::timestamp;
use common::{ApiError, ErrorBody};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::publish;
use crate::publisher::Company;
use crate::state::AppState;

/// Pings each heartbeat may take per minute (a burst of as many, then one a second).
pub const PINGS_PER_MINUTE: u32 = 60;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(ping_heartbeat, ping_heartbeat_by_post))
}

/// The answer to a ping.
#[derive(Serialize, ToSchema)]
pub struct PingAnswer {
    pub heartbeat: PingedHeartbeat,
}

/// The heartbeat a ping reached.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingedHeartbeat {
    pub id: String,
    /// Always `up`.
    pub state: &'static str,
    /// When it is missed unless another ping comes first.
    #[schema(format = DateTime)]
    pub due_at: String,
}

/// Ping a heartbeat: it is up until its interval and grace have passed again; if it was down,
/// its incident is resolved.
#[utoipa::path(get, path = "/api/heartbeats/ping/{token}", tag = "heartbeats",
    params(("token" = String, Path, description = "The secret token of the heartbeat's ping URL")),
    responses((status = 200, description = "Recorded", body = PingAnswer), (status = 400, description = "A bad token", body = ErrorBody),
              (status = 404, description = "No heartbeat has this token", body = ErrorBody),
              (status = 429, description = "Over the heartbeat's 60 pings per minute", body = ErrorBody),
              (status = 503, description = "The resolve could not be stored now; retry", body = ErrorBody)))]
async fn ping_heartbeat(State(state): State<Arc<AppState>>, ApiPath(token): ApiPath<String>) -> Response {
    answer(&state, &token).await
}

/// The same as a `POST` (Alertmanager's webhook receiver, `curl -d`): any body, of any content
/// type, up to 512 KiB, is ignored.
#[utoipa::path(post, path = "/api/heartbeats/ping/{token}", tag = "heartbeats",
    params(("token" = String, Path, description = "The secret token of the heartbeat's ping URL")),
    request_body(content = Object, description = "Ignored; any content type", content_type = "application/json"),
    responses((status = 200, description = "Recorded", body = PingAnswer), (status = 400, description = "A bad token", body = ErrorBody),
              (status = 404, description = "No heartbeat has this token", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 429, description = "Over the heartbeat's 60 pings per minute", body = ErrorBody),
              (status = 503, description = "The resolve could not be stored now; retry", body = ErrorBody)))]
async fn ping_heartbeat_by_post(
    State(state): State<Arc<AppState>>,
    ApiPath(token): ApiPath<String>,
    request: Request,
) -> Response {
    if let Err(err) = read_body(request, &()).await {
        return err.into_response();
    }
    answer(&state, &token).await
}

/// Limits, records and answers a ping of the heartbeat with `token`, with the `X-RateLimit-*`
/// headers of its bucket.
async fn answer(state: &AppState, token: &str) -> Response {
    let hash = hash_key(token);
    // Keyed by the token's hash (one per heartbeat), so a ping over the limit reads nothing.
    let bucket = format!("heartbeat:{}", hex::encode(hash));
    let decision = state.gate.limiter.check_or_fail_open(&bucket, PINGS_PER_MINUTE).await;
    let mut response = match decision {
        Some(decision) if !decision.allowed => {
            metrics::counter!("rate_limited_total", "bucket" => "Heartbeat").increment(1);
            ApiError::rate_limited(decision.retry_after).into_response()
        }
        _ => match record(state, &hash).await {
            Ok(pinged) => Json(PingAnswer { heartbeat: pinged }).into_response(),
            Err(err) => err.into_response(),
        },
    };
    if let Some(decision) = decision {
        decision.write_headers(response.headers_mut());
    }
    response
}

/// Marks the heartbeat whose token hashes to `hash` up and due again, publishing the resolve of
/// its incident first if it was down. `404` for an unknown token, `503` when the resolve cannot
/// be published (nothing changed).
async fn record(state: &AppState, hash: &[u8; 32]) -> Result<PingedHeartbeat, ApiError> {
    let mut tx = state.pool.begin().await?;
    let found = sqlx::query("select id, service_id, state from heartbeats where token_hash = $1 for update")
        .bind(&hash[..])
        .fetch_optional(&mut *tx)
        .await?;
    let row = found.ok_or_else(|| ApiError::not_found("heartbeat for this ping URL"))?;
    let (id, service_id, was): (String, String, String) =
        (row.try_get("id")?, row.try_get("service_id")?, row.try_get("state")?);
    if was == "down" {
        publish(state, &heartbeat_event(&id, &service_id, None), Company::Alone).await?;
        tracing::info!(heartbeat = %id, "heartbeat pinged again; its incident is resolved");
    }
    let updated = sqlx::query(
        "update heartbeats
         set last_ping_at = now(), due_at = now() + make_interval(secs => interval_seconds + grace_seconds), state = 'up'
         where id = $1 returning due_at",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(PingedHeartbeat { id, state: "up", due_at: timestamp(&updated, "due_at")?.to_string() })
}
