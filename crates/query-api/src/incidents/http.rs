//! The incidents endpoints: parse, authorize, call the service module, answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::http::{ApiJson, ApiPath, ApiQuery, parse_value};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{CreateIncident, IncidentBody, IncidentChange, IncidentDetailBody, IncidentList, IncidentQuery};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail, update)).routes(routes!(escalate))
}

/// List incidents, newest first by default.
#[utoipa::path(get, path = "/api/incidents", tag = "incidents",
    params(IncidentQuery, PageQuery),
    responses((status = 200, description = "A page of incidents with the exact total", body = IncidentList,
               headers(("X-Stream-Sequence" = u64, description = "The change stream position this page includes: stream from it (Last-Event-ID) and nothing is missed"))),
              (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::IncidentsRead)?;
    // The scope first: a key without it learns nothing about the query.
    let (filters, page) = (query.parse::<IncidentQuery>()?, PageRequest::parse(query.parse()?)?);
    // Taken before the snapshot: every change the feed has seen was committed before it, so it is
    // in the page; one seen later may be too, and its version tells.
    let position = state.feed.seen();
    let mut response = Json(service::list(&state.pool, &filters, &page).await?).into_response();
    if let Some(position) = position {
        response.headers_mut().insert("x-stream-sequence", position.into());
    }
    Ok(response)
}

/// One incident with its timeline and alerts (newest first, at most 100 each).
#[utoipa::path(get, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, description = "The incident", body = IncidentDetailBody), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such incident", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<IncidentDetailBody>, ApiError> {
    principal.require(Scope::IncidentsRead)?;
    Ok(Json(IncidentDetailBody { incident: service::detail(&state.pool, &id).await? }))
}

/// Open an incident by hand.
#[utoipa::path(post, path = "/api/incidents", tag = "incidents", request_body = CreateIncident,
    responses((status = 201, description = "The new incident", body = IncidentBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<IncidentBody>), ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: CreateIncident = parse_value(body)?;
    let id = service::open(&state.pool, &body, &principal.user_id).await?;
    Ok((StatusCode::CREATED, Json(IncidentBody { incident: service::get(&state.pool, &id).await? })))
}

/// Change status (incl. SNOOZED with snoozedUntil), urgency, priority, assignee, or add a note.
#[utoipa::path(patch, path = "/api/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")), request_body = IncidentChange,
    responses((status = 200, description = "The updated incident", body = IncidentBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such incident", body = ErrorBody), (status = 409, description = "Impossible transition", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn update(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<IncidentBody>, ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: IncidentChange = parse_value(body)?;
    service::update(&state.pool, &id, &body, &principal.user_id).await?;
    Ok(Json(IncidentBody { incident: service::get(&state.pool, &id).await? }))
}

/// Fire the incident's next escalation step now, instead of when it is due.
#[utoipa::path(post, path = "/api/incidents/{id}/escalate", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, description = "The incident, its next step due now", body = IncidentBody),
              (status = 404, description = "No such incident", body = ErrorBody), (status = 409, description = "Not escalating (no policy, not OPEN, or completed)", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:write"])))]
async fn escalate(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<IncidentBody>, ApiError> {
    principal.require(Scope::IncidentsWrite)?;
    service::escalate(&state.pool, &id).await?;
    Ok(Json(IncidentBody { incident: service::get(&state.pool, &id).await? }))
}
