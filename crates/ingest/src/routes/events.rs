//! `POST /api/events`: the Events API (DESIGN §4).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::event::EventRequest;
use common::http::{parse_json, read_body, require_json_content_type};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(post_event))
}

/// Send an event (trigger, acknowledge, resolve). `202` means JetStream stored it.
#[utoipa::path(post, path = "/api/events", tag = "events",
    request_body(content = Object, description = "routing_key or service_id, event_action, dedup_key?, payload {summary, source, severity, ...}"),
    responses((status = 202, description = "Stored; applied asynchronously"), (status = 400, description = "VALIDATION_ERROR naming the field, or INVALID_ROUTING_KEY"),
              (status = 404, description = "Unknown service_id"), (status = 413, description = "Body over 512 KiB"), (status = 415, description = "Not JSON"),
              (status = 503, description = "The pipeline cannot accept now; retry after Retry-After"), (status = 401, description = "Missing, unknown or revoked API key"), (status = 403, description = "The key lacks the scope"), (status = 429, description = "Rate limited")),
    security(("api_key" = ["events:write"])))]
#[tracing::instrument(skip_all, fields(api_key.id = %principal.key_id))]
async fn post_event(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    request: Request,
) -> Response {
    match accept(&state, &principal, request).await {
        Ok(response) => response.into_response(),
        Err(err) => {
            metrics::counter!("events_rejected_total", "reason" => err.code.as_str()).increment(1);
            err.into_response()
        }
    }
}

async fn accept(
    state: &AppState,
    principal: &Principal,
    request: Request,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    principal.require(Scope::EventsWrite)?;
    require_json_content_type(request.headers())?;
    let body = read_body(request, &()).await?;
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let event: EventRequest = parse_json(&body)?;
    let service = event.validate()?;
    let service = state.services.resolve(&service).await?;
    let envelope = crate::accept::accept(
        state,
        &service,
        event.event_action,
        event.dedup_key,
        event.payload,
        Some(principal.key_id.clone()),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "success",
            "message": "Event processed",
            "dedup_key": envelope.dedup_key,
            "incident_key": envelope.dedup_key,
            "event_id": envelope.event_id,
        })),
    ))
}
