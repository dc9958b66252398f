//! The webhooks endpoints: parse, authorize, call the service module, answer.

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
    DeliveryBody, DeliveryList, DeliveryQuery, NewWebhook, WebhookBody, WebhookList, WebhookPatch, WebhookWithSecret,
};
use super::service;
use crate::api::{ErrorBody, Refusals};
use crate::page::{PageQuery, PageRequest};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(detail, update, delete))
        .routes(routes!(rotate_secret))
        .routes(routes!(ping))
        .routes(routes!(deliveries))
        .routes(routes!(redeliver))
}

/// List webhooks, newest first.
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, description = "A page of webhooks", body = WebhookList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    query: ApiQuery,
) -> Result<Json<WebhookList>, ApiError> {
    principal.require(Scope::WebhooksRead)?;
    let page = PageRequest::parse(query.parse()?)?;
    Ok(Json(service::list(&state.pool, &page).await?))
}

/// Create a webhook; its signing secret is in the answer, this once.
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, description = "The webhook and its secret", body = WebhookWithSecret), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    principal.require(Scope::WebhooksWrite)?;
    let body: NewWebhook = parse_value(body)?;
    Ok((StatusCode::CREATED, Json(service::create(&state.pool, &state.webhooks, &body).await?)))
}

/// One webhook.
#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "The webhook", body = WebhookBody), (status = 404, description = "No such webhook", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookBody>, ApiError> {
    principal.require(Scope::WebhooksRead)?;
    Ok(Json(WebhookBody { webhook: service::get(&state.pool, &id).await? }))
}

/// Change a webhook: `enabled` (true re-enables one the system disabled), `url`, `events`,
/// `serviceIds`, `description`.
#[utoipa::path(patch, path = "/api/webhooks/{id}", tag = "webhooks", request_body = WebhookPatch,
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "The webhook", body = WebhookBody), (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 404, description = "No such webhook", body = ErrorBody), (status = 413, description = "Body over 512 KiB", body = ErrorBody),
              (status = 415, description = "Not JSON", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:write"])))]
async fn update(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<WebhookBody>, ApiError> {
    principal.require(Scope::WebhooksWrite)?;
    let patch: WebhookPatch = parse_value(body)?;
    Ok(Json(WebhookBody { webhook: service::update(&state.pool, &state.webhooks, &id, &patch).await? }))
}

/// Delete a webhook and its delivery log; nothing more is sent to it.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such webhook", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:write"])))]
async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Scope::WebhooksWrite)?;
    service::delete(&state.pool, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a webhook a new secret (in the answer, this once); the old one keeps signing beside it
/// for 24 hours.
#[utoipa::path(post, path = "/api/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, description = "The webhook and its new secret", body = WebhookWithSecret), (status = 404, description = "No such webhook", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:write"])))]
async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    principal.require(Scope::WebhooksWrite)?;
    Ok(Json(service::rotate_secret(&state.pool, &id).await?))
}

/// Send the webhook a `ping`; its delivery (in the answer and the log) shows how it went.
#[utoipa::path(post, path = "/api/webhooks/{id}/ping", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 202, description = "The ping's delivery, queued", body = DeliveryBody), (status = 404, description = "No such webhook", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:write"])))]
async fn ping(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<DeliveryBody>), ApiError> {
    principal.require(Scope::WebhooksWrite)?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryBody { delivery: service::ping(&state.pool, &id).await? })))
}

/// A webhook's deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), DeliveryQuery, PageQuery),
    responses((status = 200, description = "A page of deliveries", body = DeliveryList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody),
              (status = 404, description = "No such webhook", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:read"])))]
async fn deliveries(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    principal.require(Scope::WebhooksRead)?;
    let (filter, page) = (query.parse::<DeliveryQuery>()?, PageRequest::parse(query.parse()?)?);
    Ok(Json(service::deliveries(&state.pool, &id, &filter, &page).await?))
}

/// Send a delivery again, under the same `webhook-id`, as soon as a worker can.
#[utoipa::path(post, path = "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), ("delivery_id" = String, Path, description = "Delivery id")),
    responses((status = 202, description = "The delivery, queued again", body = DeliveryBody), (status = 404, description = "No such webhook or delivery", body = ErrorBody), Refusals),
    security(("api_key" = ["webhooks:write"])))]
async fn redeliver(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, delivery_id)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryBody>), ApiError> {
    principal.require(Scope::WebhooksWrite)?;
    let delivery = service::redeliver(&state.pool, &id, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryBody { delivery })))
}
