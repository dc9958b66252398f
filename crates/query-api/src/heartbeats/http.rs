//! The heartbeats endpoints: parse, authorize, call the service module, answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::http::{ApiJson, ApiPath, ApiQuery, parse_value};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{HeartbeatBody, HeartbeatList, HeartbeatQuery, NewHeartbeat, NewHeartbeatBody};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail, delete))
}

/// List heartbeats, newest first.
#[utoipa::path(get, path = "/api/heartbeats", tag = "heartbeats", params(HeartbeatQuery, PageQuery),
    responses((status = 200, description = "A page of heartbeats", body = HeartbeatList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<HeartbeatList>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    let (filter, page) = (query.parse::<HeartbeatQuery>()?, PageRequest::parse(query.parse()?)?);
    Ok(Json(service::list(&state.pool, &filter, &page).await?))
}

/// Create a heartbeat (a dead man's switch): no ping for `intervalSeconds` + `graceSeconds`
/// triggers an incident with dedup key `heartbeat:<id>` on its service; the next ping resolves
/// it. Its `pingUrl` holds a secret token and is in this answer only.
#[utoipa::path(post, path = "/api/heartbeats", tag = "heartbeats", request_body = NewHeartbeat,
    responses((status = 201, description = "The heartbeat and its ping URL", body = NewHeartbeatBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<NewHeartbeatBody>), ApiError> {
    principal.require(Scope::ServicesWrite)?;
    let body: NewHeartbeat = parse_value(body)?;
    let heartbeat = service::create(&state.pool, &state.ingest_public_url, &body).await?;
    Ok((StatusCode::CREATED, Json(NewHeartbeatBody { heartbeat })))
}

/// One heartbeat (without its ping URL).
#[utoipa::path(get, path = "/api/heartbeats/{id}", tag = "heartbeats",
    params(("id" = String, Path, description = "Heartbeat id")),
    responses((status = 200, description = "The heartbeat", body = HeartbeatBody), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such heartbeat", body = ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<HeartbeatBody>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    Ok(Json(HeartbeatBody { heartbeat: service::get(&state.pool, &id).await? }))
}

/// Delete a heartbeat: its ping URL answers `404` from now on; an incident it raised stays.
#[utoipa::path(delete, path = "/api/heartbeats/{id}", tag = "heartbeats",
    params(("id" = String, Path, description = "Heartbeat id")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such heartbeat", body = ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::ServicesWrite)?;
    service::delete(&state.pool, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
