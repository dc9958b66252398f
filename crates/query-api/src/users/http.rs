//! The users endpoints: list users; a user's contact methods (read with `users:read`, changed
//! with `users:write`, or by the key's own user).

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

use super::body::{ContactMethodBody, ContactMethodList, NewContactMethod, UserList};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(contact_methods, add_contact_method))
        .routes(routes!(delete_contact_method))
}

/// `scope`, unless the key belongs to user `id` itself.
fn require_or_own(principal: &Principal, scope: Scope, id: &str) -> Result<(), ApiError> {
    if principal.user_id == id { Ok(()) } else { principal.require(scope) }
}

/// List users (id, name, email, role), newest first.
#[utoipa::path(get, path = "/api/users", tag = "users", params(PageQuery),
    responses((status = 200, description = "A page of users", body = UserList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["users:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<UserList>, ApiError> {
    principal.require(Scope::UsersRead)?;
    let page = PageRequest::parse(query.parse()?)?;
    Ok(Json(service::page(&state.pool, &page).await?))
}

/// A user's contact methods.
#[utoipa::path(get, path = "/api/users/{id}/contact-methods", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The contact methods", body = ContactMethodList), (status = 404, description = "No such user", body = ErrorBody), Refusals),
    security(("api_key" = ["users:read"])))]
async fn contact_methods(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ContactMethodList>, ApiError> {
    require_or_own(&principal, Scope::UsersRead, &id)?;
    Ok(Json(service::contact_methods(&state.pool, &id).await?))
}

/// Add a contact method: `email` (an e-mail address), `webhook` (an https URL posted JSON) or
/// `slack` (a Slack incoming-webhook URL).
#[utoipa::path(post, path = "/api/users/{id}/contact-methods", tag = "users", request_body = NewContactMethod,
    params(("id" = String, Path, description = "User id")),
    responses((status = 201, description = "The contact method", body = ContactMethodBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such user", body = ErrorBody), (status = 409, description = "The user has it already", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["users:write"])))]
async fn add_contact_method(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<ContactMethodBody>), ApiError> {
    require_or_own(&principal, Scope::UsersWrite, &id)?;
    let body: NewContactMethod = parse_value(body)?;
    let contact_method = service::add_contact_method(&state.pool, &state.webhooks, &id, &body).await?;
    Ok((StatusCode::CREATED, Json(ContactMethodBody { contact_method })))
}

/// Remove a contact method; notifications not yet sent to it are dropped.
#[utoipa::path(delete, path = "/api/users/{id}/contact-methods/{cid}", tag = "users",
    params(("id" = String, Path, description = "User id"), ("cid" = String, Path, description = "Contact method id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such contact method", body = ErrorBody), Refusals),
    security(("api_key" = ["users:write"])))]
async fn delete_contact_method(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, cid)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_or_own(&principal, Scope::UsersWrite, &id)?;
    service::delete_contact_method(&state.pool, &id, &cid).await?;
    Ok(StatusCode::NO_CONTENT)
}
