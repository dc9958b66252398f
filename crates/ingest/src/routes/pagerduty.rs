//! `POST /v2/enqueue`: PagerDuty's Events API v2, unchanged, so any sender that speaks it
//! (Alertmanager's `pagerduty_configs`, Grafana, Datadog, Zabbix, pdpyras) switches by changing
//! one URL. The routing key alone authenticates, as at PagerDuty.
//!
//! Never lose a page to strictness: only structurally invalid events (not JSON, no or unknown
//! routing key, unknown `event_action`, acknowledge/resolve without `dedup_key`) are refused.
//! Everything else is repaired — an over-long summary truncated, an unknown severity made
//! `error`, a missing source filled in — and each repair is kept in the event's custom details
//! (`opssentinal_repairs`) and counted (`pagerduty_repairs_total{kind}`); see
//! `crate::sources::pagerduty`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::event::EventAction;
use common::event::ServiceRef;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{check_routing_key_limit, normalized_envelope, publish};
use crate::publisher::Company;
use crate::sources::Refusal;
use crate::sources::pagerduty::{REPAIRS_METRIC, normalize};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(enqueue))
}

/// An event as PagerDuty's Events API v2 takes it. Only `routing_key`, `event_action` and (to
/// acknowledge or resolve) `dedup_key` are checked; the rest is repaired where it breaks the rules.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"routing_key": "R0UT1NGK3Y", "event_action": "trigger",
    "payload": {"summary": "Disk 95% full on web-01", "source": "web-01", "severity": "critical"}}))]
pub struct PagerDutyEvent {
    pub routing_key: String,
    #[schema(value_type = EventAction)]
    pub event_action: String,
    pub dedup_key: Option<String>,
    pub payload: Option<PagerDutyPayload>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub images: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub links: Option<Value>,
    pub client: Option<String>,
    pub client_url: Option<String>,
}

#[derive(utoipa::ToSchema)]
pub struct PagerDutyPayload {
    pub summary: String,
    pub source: String,
    /// critical, error, warning or info (others become error).
    pub severity: String,
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    pub component: Option<String>,
    pub group: Option<String>,
    pub class: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub custom_details: Option<Value>,
}

/// An answer in PagerDuty's format.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PdBody {
    /// `success`, `invalid event`, `throttle event`, `unavailable` or `error`.
    pub status: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

impl PdBody {
    fn new(status: &str, message: impl Into<String>) -> Self {
        Self { status: status.into(), message: message.into(), dedup_key: None, errors: None }
    }
}

/// An answer in PagerDuty's format, with its status and headers.
struct PdResponse {
    status: StatusCode,
    body: PdBody,
    retry_after: Option<u64>,
    rate_limit: Option<common::ratelimit::Decision>,
}

impl PdResponse {
    fn invalid(refusal: Refusal) -> Self {
        metrics::counter!("events_rejected_total", "reason" => "PAGERDUTY_INVALID").increment(1);
        let errors = Some(refusal.messages());
        let body = PdBody { errors, ..PdBody::new("invalid event", "Event object is invalid") };
        Self { status: StatusCode::BAD_REQUEST, body, retry_after: None, rate_limit: None }
    }

    fn from_api_error(err: ApiError) -> Self {
        metrics::counter!("events_rejected_total", "reason" => err.code.as_str()).increment(1);
        let status = err.code.status();
        let body = match status {
            StatusCode::SERVICE_UNAVAILABLE => PdBody::new("unavailable", err.message),
            StatusCode::PAYLOAD_TOO_LARGE => {
                PdBody { errors: Some(vec![err.message]), ..PdBody::new("invalid event", "Request entity too large") }
            }
            _ => PdBody::new("error", err.message),
        };
        Self { status, body, retry_after: err.retry_after, rate_limit: None }
    }
}

impl IntoResponse for PdResponse {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(decision) = self.rate_limit {
            decision.write_headers(response.headers_mut());
        }
        response
    }
}

/// Send an event in PagerDuty Events API v2 format; the routing key authenticates.
#[utoipa::path(post, path = "/v2/enqueue", tag = "events", request_body = PagerDutyEvent,
    responses((status = 202, description = "Stored; applied asynchronously", body = PdBody),
              (status = 400, description = "Structurally invalid: status `invalid event` with `errors`", body = PdBody),
              (status = 413, description = "Body over 512 KiB", body = PdBody), (status = 429, description = "Too many events for this routing key", body = PdBody),
              (status = 503, description = "The pipeline cannot accept now; retry after Retry-After", body = PdBody)))]
async fn enqueue(
    State(state): State<Arc<AppState>>,
    _headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> PdResponse {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return PdResponse::from_api_error(ApiError::new(
                common::ErrorCode::PayloadTooLarge,
                "the body is over 512 KiB",
            ));
        }
        Err(_) => return PdResponse::invalid(Refusal::body("the request body could not be read")),
    };
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return PdResponse::invalid(Refusal::body("the body is not valid JSON"));
    };
    let mut event = match normalize(value) {
        Ok(event) => event,
        Err(refusal) => return PdResponse::invalid(refusal),
    };
    event.repairs.count(REPAIRS_METRIC);
    let Some(routing_key) = event.routing_key.take() else {
        return PdResponse::invalid(Refusal::field("routing_key", "is missing or blank"));
    };
    let service = match state.services.resolve(&ServiceRef::RoutingKey(routing_key)).await {
        Ok(service) => service,
        Err(err) if err.code == common::ErrorCode::InvalidRoutingKey => {
            return PdResponse::invalid(Refusal::field("routing_key", "does not match any integration"));
        }
        Err(err) => return PdResponse::from_api_error(err),
    };
    let decision = check_routing_key_limit(&state, &service, 1).await;
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        metrics::counter!("rate_limited_total", "bucket" => "RoutingKey").increment(1);
        let body =
            PdBody::new("throttle event", "Requests for this service are arriving too quickly. Please retry later.");
        return PdResponse {
            status: StatusCode::TOO_MANY_REQUESTS,
            body,
            retry_after: Some(decision.retry_after),
            rate_limit: Some(decision),
        };
    }
    let envelope = normalized_envelope(&service, event, None);
    match publish(&state, &envelope, Company::Shared).await {
        Ok(()) => PdResponse {
            status: StatusCode::ACCEPTED,
            body: PdBody { dedup_key: Some(envelope.dedup_key.clone()), ..PdBody::new("success", "Event processed") },
            retry_after: None,
            rate_limit: decision,
        },
        Err(err) => PdResponse { rate_limit: decision, ..PdResponse::from_api_error(err) },
    }
}
