//! The schedules endpoints: parse, authorize, call the service module, answer.

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

use super::body::{
    LayerBody, NewLayer, NewOverride, NewSchedule, OnCallBody, OnCallQuery, OverrideBody, ScheduleBody, ScheduleList,
    ShiftsBody, ShiftsQuery,
};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail))
        .routes(routes!(add_layer))
        .routes(routes!(add_override))
        .routes(routes!(on_call))
        .routes(routes!(shifts))
}

/// Create a schedule (name, IANA timeZone) with optional layers and overrides.
#[utoipa::path(post, path = "/api/schedules", tag = "schedules", request_body = NewSchedule,
    responses((status = 201, description = "The schedule", body = ScheduleBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<ScheduleBody>), ApiError> {
    principal.require(Scope::SchedulesWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: NewSchedule = parse_value(body)?;
    Ok((StatusCode::CREATED, Json(ScheduleBody { schedule: service::create(&state.pool, &body).await? })))
}

/// Add a layer on top of the existing ones.
#[utoipa::path(post, path = "/api/schedules/{id}/layers", tag = "schedules", params(("id" = String, Path, description = "Schedule id")),
    request_body = NewLayer,
    responses((status = 201, description = "The layer", body = LayerBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:write"])))]
async fn add_layer(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<LayerBody>), ApiError> {
    principal.require(Scope::SchedulesWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: NewLayer = parse_value(body)?;
    Ok((StatusCode::CREATED, Json(LayerBody { layer: service::add_layer(&state.pool, &id, &body).await? })))
}

/// Put a user on call for an interval, over all layers.
#[utoipa::path(post, path = "/api/schedules/{id}/overrides", tag = "schedules", params(("id" = String, Path, description = "Schedule id")),
    request_body = NewOverride,
    responses((status = 201, description = "The override", body = OverrideBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:write"])))]
async fn add_override(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<OverrideBody>), ApiError> {
    principal.require(Scope::SchedulesWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: NewOverride = parse_value(body)?;
    Ok((StatusCode::CREATED, Json(OverrideBody { created: service::add_override(&state.pool, &id, &body).await? })))
}

/// List schedules, newest first.
#[utoipa::path(get, path = "/api/schedules", tag = "schedules",
    params(PageQuery),
    responses((status = 200, description = "A page of schedules", body = ScheduleList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<ScheduleList>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    Ok(Json(service::list(&state.pool, &PageRequest::parse(query.parse()?)?).await?))
}

/// A schedule with its layers and overrides.
#[utoipa::path(get, path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, description = "The schedule", body = ScheduleBody), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ScheduleBody>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    Ok(Json(ScheduleBody { schedule: service::get(&state.pool, &id).await? }))
}

/// Who is on call at an instant (default now), the shift's start and end, and whether an override put them there.
#[utoipa::path(get, path = "/api/schedules/{id}/on-call", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"), OnCallQuery),
    responses((status = 200, description = "Who is on call", body = OnCallBody), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn on_call(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<OnCallBody>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let query: OnCallQuery = query.parse()?;
    Ok(Json(service::on_call(&state.pool, &id, query.at.map(|at| at.0)).await?))
}

/// The final rendered shifts of a window (at most 93 days; default the next 7 days).
#[utoipa::path(get, path = "/api/schedules/{id}/shifts", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"), ShiftsQuery),
    responses((status = 200, description = "The shifts", body = ShiftsBody), (status = 400, description = "A bad window, named in the error", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn shifts(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<ShiftsBody>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let query: ShiftsQuery = query.parse()?;
    Ok(Json(service::shifts(&state.pool, &id, query.from.map(|t| t.0), query.to.map(|t| t.0)).await?))
}
