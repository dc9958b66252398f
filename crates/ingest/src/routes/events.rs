//! `POST /api/events`: the Events API (DESIGN §4).

use std::sync::Arc;

use crate::sources::events_api::EventRequest;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::auth::{Principal, Scope};
use common::http::{parse_json, read_body, require_json_content_type};
use common::{ApiError, ErrorBody, ErrorCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{envelope, publish};
use crate::idempotency::{First, derived_id};
use crate::publisher::Company;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(post_event))
}

/// Send an event (trigger, acknowledge, resolve). `202` means JetStream stored it. A retry with
/// the same `Idempotency-Key` (per API key, within the event log's retention) has no second
/// effect and gets the same `event_id`.
#[utoipa::path(post, path = "/api/events", tag = "events",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Makes retries safe: the same key (per API key, within the event log's retention, 30 days by default) has no second effect")),
    request_body = EventRequest,
    responses((status = 202, description = "Stored; applied asynchronously", body = EventAccepted),
              (status = 400, description = "VALIDATION_ERROR naming the field, or INVALID_ROUTING_KEY", body = ErrorBody),
              (status = 404, description = "Unknown service_id", body = ErrorBody), (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 503, description = "The pipeline cannot accept now; retry after Retry-After", body = ErrorBody),
              (status = 401, description = "Missing, unknown or revoked API key", body = ErrorBody), (status = 403, description = "The key lacks the scope", body = ErrorBody),
              (status = 429, description = "Rate limited", body = ErrorBody)),
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

/// The answer to an accepted event.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventAccepted {
    /// Always `success`.
    pub status: &'static str,
    pub message: &'static str,
    pub dedup_key: String,
    /// The same as `dedup_key` (PagerDuty's older name).
    pub incident_key: String,
    pub event_id: uuid::Uuid,
}

async fn accept(
    state: &AppState,
    principal: &Principal,
    request: Request,
) -> Result<(StatusCode, Json<EventAccepted>), ApiError> {
    principal.require(Scope::EventsWrite)?;
    require_json_content_type(request.headers())?;
    let idempotency_key = idempotency_key(request.headers())?;
    let body = read_body(request, &()).await?;
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let event = parse_json::<EventRequest>(&body)?.validate()?;
    let service = state.services.resolve(&event.service).await?;
    let mut envelope =
        envelope(&service, event.action, event.dedup_key.clone(), event.payload, Some(principal.key_id.clone()));
    let mut company = Company::Shared;
    if let Some(key) = idempotency_key {
        // A retry: the same id (JetStream drops a copy within its window) and the first
        // acceptance's receive time (the worker drops a later copy as a duplicate).
        envelope.event_id = derived_id(&["events", &principal.key_id, &key]);
        if event.dedup_key.is_none() {
            envelope.dedup_key = envelope.event_id.simple().to_string();
        }
        let fingerprint = hex::encode(&Sha256::digest(&body)[..12]);
        let ours = First { received_at: envelope.received_at, fingerprint };
        let (mut firsts, remembered) = state.idempotency.remember(vec![(envelope.event_id, ours.clone())]).await;
        company = remembered;
        let first = firsts.remove(0);
        if first.fingerprint != ours.fingerprint {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this Idempotency-Key was already used with a different request body",
            )
            .with_details(json!({"field": "Idempotency-Key"})));
        }
        envelope.received_at = first.received_at;
    }
    publish(state, &envelope, company).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(EventAccepted {
            status: "success",
            message: "Event processed",
            dedup_key: envelope.dedup_key.clone(),
            incident_key: envelope.dedup_key,
            event_id: envelope.event_id,
        }),
    ))
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key`: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || {
        ApiError::validation("Idempotency-Key", format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"))
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad());
    }
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::MAX_IDEMPOTENCY_KEY;

    /// utoipa takes only a literal for a header's `max_length`: this keeps it the check's bound.
    #[test]
    fn the_documented_idempotency_key_bound_is_the_checked_one() {
        let api = serde_json::to_value(crate::openapi()).unwrap();
        let params = api["paths"]["/api/events"]["post"]["parameters"].as_array().unwrap();
        let key = params.iter().find(|p| p["name"] == "Idempotency-Key").unwrap();
        assert_eq!(key["schema"]["maxLength"], MAX_IDEMPOTENCY_KEY, "{key}");
    }
}
