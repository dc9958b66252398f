//! `POST /api/integrations/alertmanager`: Prometheus Alertmanager's webhook (payload version 4).
//! The service is named by its routing key (`?routing_key=` or `/api/integrations/alertmanager/{key}`),
//! or by `?service_id=` with an API key holding `events:write`. Each alert becomes one event keyed
//! by its fingerprint: firing → trigger, resolved → resolve.

use std::sync::Arc;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::auth::{Principal, Scope};
use common::event::{EventAction, ServiceRef};
use common::http::{ApiJson, ApiPath, ApiQuery, Bucket};
use common::{ApiError, ErrorBody};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{check_routing_key_limit, normalized_envelope, publish};
use crate::idempotency::First;
use crate::services::ServiceTarget;
use crate::sources::alertmanager::{self, Incoming, Notification, REPAIRS_METRIC};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(webhook)).routes(routes!(webhook_with_key))
}

/// The answer to an accepted notification: one event per alert.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AlertsAccepted {
    /// Always `success`.
    pub status: &'static str,
    pub message: &'static str,
    pub events: Vec<AcceptedAlert>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AcceptedAlert {
    pub dedup_key: String,
    pub event_id: uuid::Uuid,
    pub event_action: EventAction,
}

#[derive(Debug, Deserialize)]
struct Target {
    routing_key: Option<String>,
    service_id: Option<String>,
}

/// Receive an Alertmanager webhook notification (version 4) for the service named by `routing_key`, or by `service_id` with an API key.
/// A notification is admitted whole or not at all, and each alert's event id is derived from its content, so a re-sent notification is not counted twice.
#[utoipa::path(post, path = "/api/integrations/alertmanager", tag = "events",
    params(("routing_key" = Option<String>, Query, description = "The service's routing key"),
           ("service_id" = Option<String>, Query, description = "With an API key holding events:write, instead of routing_key")),
    request_body = Notification,
    responses((status = 202, description = "One event per alert was stored", body = AlertsAccepted), (status = 400, description = "A bad payload or routing key", body = ErrorBody),
              (status = 401, description = "No routing key and no valid API key", body = ErrorBody), (status = 403, description = "The key lacks events:write", body = ErrorBody),
              (status = 404, description = "Unknown service_id", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), (status = 429, description = "Rate limited", body = ErrorBody),
              (status = 503, description = "The pipeline cannot accept now", body = ErrorBody)))]
async fn webhook(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: ApiQuery,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    // The query names the service (and may carry its routing key): read it first.
    let target: Target = match query.parse() {
        Ok(target) => target,
        Err(err) => return err.into_response(),
    };
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    match resolve(&state, &target, &headers, peer).await {
        Ok((service, principal)) => receive(&state, &service, principal.as_ref(), body).await,
        Err(err) => err.into_response(),
    }
}

/// The same, with the routing key in the path.
#[utoipa::path(post, path = "/api/integrations/alertmanager/{routing_key}", tag = "events",
    params(("routing_key" = String, Path, description = "The service's routing key")),
    request_body = Notification,
    responses((status = 202, description = "One event per alert was stored", body = AlertsAccepted), (status = 400, description = "A bad payload or routing key", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 429, description = "Rate limited", body = ErrorBody), (status = 503, description = "The pipeline cannot accept now", body = ErrorBody)))]
async fn webhook_with_key(
    State(state): State<Arc<AppState>>,
    ApiPath(routing_key): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    match state.services.resolve(&ServiceRef::RoutingKey(routing_key)).await {
        Ok(service) => receive(&state, &service, None, body).await,
        Err(err) => err.into_response(),
    }
}

/// The service, and the caller when an API key names it: the API-key form goes through the same
/// gate as every authenticated route (failed-authentication limit included).
async fn resolve(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<(ServiceTarget, Option<Principal>), ApiError> {
    if let Some(key) = target.routing_key.as_deref().filter(|k| !k.is_empty()) {
        return Ok((state.services.resolve(&ServiceRef::RoutingKey(key.to_owned())).await?, None));
    }
    let service_id = target.service_id.clone().ok_or_else(|| {
        ApiError::validation("routing_key", "routing_key, or service_id with an API key, is required")
    })?;
    let principal = state.gate.authenticate(headers, state.gate.client_address(peer, headers)).await?;
    principal.require(Scope::EventsWrite)?;
    Ok((state.services.resolve(&ServiceRef::ServiceId(service_id)).await?, Some(principal)))
}

/// Normalizes every alert (repairs recorded and counted), admits the notification as a whole
/// against the routing key's or the API key's limit, and publishes one event per alert under an
/// id derived from the alert's content.
async fn receive(state: &AppState, service: &ServiceTarget, principal: Option<&Principal>, body: Value) -> Response {
    let notification = match alertmanager::read(body) {
        Ok(notification) => notification,
        Err(err) => return err.into_response(),
    };
    let events = (notification.alerts.iter().enumerate())
        .map(|(index, alert)| {
            alertmanager::normalize(Incoming { alert, index, notification: &notification, service_id: &service.id })
        })
        .collect::<Result<Vec<_>, _>>();
    let events = match events {
        Ok(events) => events,
        Err(refusal) => return ApiError::from(refusal).into_response(),
    };
    let mut envelopes: Vec<_> = events
        .into_iter()
        .map(|event| {
            event.repairs.count(REPAIRS_METRIC);
            normalized_envelope(service, event, principal.map(|p| p.key_id.clone()))
        })
        .collect();
    let cost = envelopes.len().max(1);
    let decision = match principal {
        Some(principal) => state.gate.limit(principal, Bucket::Events, cost).await,
        None => check_routing_key_limit(state, service, cost).await,
    };
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        metrics::counter!("rate_limited_total", "bucket" => "Alertmanager").increment(1);
        let mut response = ApiError::rate_limited(decision.retry_after).into_response();
        decision.write_headers(response.headers_mut());
        return response;
    }
    let (firsts, company) = state
        .idempotency
        .remember(
            envelopes
                .iter()
                .map(|e| (e.event_id, First { received_at: e.received_at, fingerprint: "alert".into() }))
                .collect(),
        )
        .await;
    for (envelope, first) in envelopes.iter_mut().zip(firsts) {
        envelope.received_at = first.received_at;
    }
    // All at once, each into its partition's next frame (queued in this order).
    let published = join_all(envelopes.iter().map(|envelope| publish(state, envelope, company))).await;
    if let Some(err) = published.into_iter().find_map(Result::err) {
        let mut response = err.into_response();
        if let Some(decision) = decision {
            decision.write_headers(response.headers_mut());
        }
        return response;
    }
    let accepted = envelopes
        .into_iter()
        .map(|envelope| AcceptedAlert {
            dedup_key: envelope.dedup_key,
            event_id: envelope.event_id,
            event_action: envelope.action,
        })
        .collect();
    let body = AlertsAccepted { status: "success", message: "Events processed", events: accepted };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Some(decision) = decision {
        decision.write_headers(response.headers_mut());
    }
    response
}
