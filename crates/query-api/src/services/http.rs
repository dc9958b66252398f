//! The services endpoints: parse, authorize, call the service module, answer.

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

use super::body::{NewService, ServiceBody, ServiceList, ServicePatch};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail, update))
}

/// List services with their derived status and open incidents by urgency.
#[utoipa::path(get, path = "/api/services", tag = "services", params(PageQuery),
    responses((status = 200, description = "A page of services", body = ServiceList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<ServiceList>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    let page = PageRequest::parse(query.parse()?)?;
    Ok(Json(service::list(&state.pool, &page, principal.has(Scope::ServicesWrite)).await?))
}

/// One service; its routing key is shown to keys with services:write.
#[utoipa::path(get, path = "/api/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses((status = 200, description = "The service", body = ServiceBody), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such service", body = ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ServiceBody>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    Ok(Json(ServiceBody { service: service::get(&state.pool, &id, principal.has(Scope::ServicesWrite)).await? }))
}

/// Create a service with a new routing key.
#[utoipa::path(post, path = "/api/services", tag = "services", request_body = NewService,
    responses((status = 201, description = "The service with its routingKey", body = ServiceBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<ServiceBody>), ApiError> {
    principal.require(Scope::ServicesWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: NewService = parse_value(body)?;
    let created = service::create(&state.pool, &body).await?;
    Ok((StatusCode::CREATED, Json(ServiceBody { service: service::get(&state.pool, &created.id, true).await? })))
}

/// Change a service: `name`, `description`, `escalationPolicyId` (null for none).
#[utoipa::path(patch, path = "/api/services/{id}", tag = "services", request_body = ServicePatch,
    params(("id" = String, Path, description = "Service id")),
    responses((status = 200, description = "The service", body = ServiceBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such service", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn update(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ServiceBody>, ApiError> {
    principal.require(Scope::ServicesWrite)?;
    let patch: ServicePatch = parse_value(body)?;
    service::update(&state.pool, &id, &patch).await?;
    Ok(Json(ServiceBody { service: service::get(&state.pool, &id, true).await? }))
}
