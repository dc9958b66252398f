//! The escalation policy endpoints: parse, authorize, call the service module, answer.

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

use super::body::{NewPolicy, PolicyBody, PolicyList};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail, replace, delete))
}

/// List escalation policies, newest first.
#[utoipa::path(get, path = "/api/escalation-policies", tag = "escalation-policies", params(PageQuery),
    responses((status = 200, description = "A page of policies", body = PolicyList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["escalations:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<PolicyList>, ApiError> {
    principal.require(Scope::EscalationsRead)?;
    let page = PageRequest::parse(query.parse()?)?;
    Ok(Json(service::list(&state.pool, &page).await?))
}

/// Create an escalation policy: steps of users and schedules, each notified in turn until someone
/// acknowledges, repeated `repeat` times.
#[utoipa::path(post, path = "/api/escalation-policies", tag = "escalation-policies", request_body = NewPolicy,
    responses((status = 201, description = "The policy", body = PolicyBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["escalations:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<PolicyBody>), ApiError> {
    principal.require(Scope::EscalationsWrite)?;
    let body: NewPolicy = parse_value(body)?;
    Ok((StatusCode::CREATED, Json(PolicyBody { escalation_policy: service::create(&state.pool, &body).await? })))
}

/// One escalation policy, at its current version.
#[utoipa::path(get, path = "/api/escalation-policies/{id}", tag = "escalation-policies",
    params(("id" = String, Path, description = "Escalation policy id")),
    responses((status = 200, description = "The policy", body = PolicyBody), (status = 404, description = "No such policy", body = ErrorBody), Refusals),
    security(("api_key" = ["escalations:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PolicyBody>, ApiError> {
    principal.require(Scope::EscalationsRead)?;
    Ok(Json(PolicyBody { escalation_policy: service::get(&state.pool, &id).await? }))
}

/// Replace an escalation policy: its `version` rises; running escalations keep the version they
/// started with.
#[utoipa::path(put, path = "/api/escalation-policies/{id}", tag = "escalation-policies", request_body = NewPolicy,
    params(("id" = String, Path, description = "Escalation policy id")),
    responses((status = 200, description = "The policy", body = PolicyBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such policy", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["escalations:write"])))]
async fn replace(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<PolicyBody>, ApiError> {
    principal.require(Scope::EscalationsWrite)?;
    let body: NewPolicy = parse_value(body)?;
    Ok(Json(PolicyBody { escalation_policy: service::replace(&state.pool, &id, &body).await? }))
}

/// Delete an escalation policy; `409` while a service uses it.
#[utoipa::path(delete, path = "/api/escalation-policies/{id}", tag = "escalation-policies",
    params(("id" = String, Path, description = "Escalation policy id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such policy", body = ErrorBody),
              (status = 409, description = "A service uses it", body = ErrorBody), Refusals),
    security(("api_key" = ["escalations:write"])))]
async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::EscalationsWrite)?;
    service::delete(&state.pool, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
