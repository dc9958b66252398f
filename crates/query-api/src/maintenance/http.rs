//! The maintenance windows endpoints: parse, authorize, call the service module, answer.

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

use super::body::{MaintenanceQuery, MaintenanceWindowBody, MaintenanceWindowList, NewMaintenanceWindow};
use super::service::{self, Removal};
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail, delete))
}

/// List maintenance windows, newest first.
#[utoipa::path(get, path = "/api/maintenance-windows", tag = "maintenance", params(MaintenanceQuery, PageQuery),
    responses((status = 200, description = "A page of maintenance windows", body = MaintenanceWindowList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<MaintenanceWindowList>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    let (filter, page) = (query.parse::<MaintenanceQuery>()?, PageRequest::parse(query.parse()?)?);
    Ok(Json(service::list(&state.pool, &filter, &page).await?))
}

/// Plan a maintenance window: while it is ongoing, triggers for its services open or feed their
/// incidents as `SUPPRESSED` (no escalation, no notifications); when it ends, those still
/// suppressed are opened. A `start` in the past is taken as now.
#[utoipa::path(post, path = "/api/maintenance-windows", tag = "maintenance", request_body = NewMaintenanceWindow,
    responses((status = 201, description = "The window", body = MaintenanceWindowBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<MaintenanceWindowBody>), ApiError> {
    principal.require(Scope::ServicesWrite)?;
    let body: NewMaintenanceWindow = parse_value(body)?;
    let maintenance_window = service::create(&state.pool, &body).await?;
    Ok((StatusCode::CREATED, Json(MaintenanceWindowBody { maintenance_window })))
}

/// One maintenance window.
#[utoipa::path(get, path = "/api/maintenance-windows/{id}", tag = "maintenance",
    params(("id" = String, Path, description = "Maintenance window id")),
    responses((status = 200, description = "The window", body = MaintenanceWindowBody), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such window", body = ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MaintenanceWindowBody>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    Ok(Json(MaintenanceWindowBody { maintenance_window: service::get(&state.pool, &id).await? }))
}

/// Delete a future or past window (`204`), or end an ongoing one now (`200` with the window,
/// state `past`): what it suppressed is then opened. A window that is over but whose suppressed
/// incidents are not opened yet (a second or so after its end) is answered `200` too, and kept.
#[utoipa::path(delete, path = "/api/maintenance-windows/{id}", tag = "maintenance",
    params(("id" = String, Path, description = "Maintenance window id")),
    responses((status = 200, description = "The window, ended now (kept until what it suppressed is opened)", body = MaintenanceWindowBody),
              (status = 204, description = "Deleted"), (status = 400, description = "A bad id", body = ErrorBody),
              (status = 404, description = "No such window", body = ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::ServicesWrite)?;
    Ok(match service::remove(&state.pool, &id).await? {
        Removal::Deleted => StatusCode::NO_CONTENT.into_response(),
        Removal::Ended(maintenance_window) => Json(MaintenanceWindowBody { maintenance_window }).into_response(),
    })
}
