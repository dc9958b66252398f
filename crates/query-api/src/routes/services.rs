//! Services (DESIGN §6): list and detail with the derived status and open-incident counts;
//! create, returning the routing key.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::ApiError;
use common::admin::{self, AdminError};
use common::auth::{Principal, Scope};
use common::http::{ApiJson, ApiPath, parse_value};
use common::incident::store::timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Refusals, Timestamp};
use crate::pagination::{PageRequest, Pagination};
use crate::params::Params;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail))
}

/// A service: where incidents are opened, with its status derived from its open incidents.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: ServiceStatus,
    pub open_incidents: OpenIncidents,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Shown only to keys with `services:write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Events per minute for this routing key (null: the default). Shown only to keys with `services:write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    pub rate_limit: Option<Option<i32>>,
}

/// `CRITICAL` with a HIGH-urgency open incident, `DEGRADED` with any other, else `OPERATIONAL`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServiceStatus {
    Critical,
    Degraded,
    Operational,
}

/// Incidents not yet resolved, by urgency.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub struct OpenIncidents {
    pub high: i64,
    pub medium: i64,
    pub low: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceBody {
    pub service: Service,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<Service>,
    pub total: i64,
    pub pagination: Pagination,
}

/// A new service.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"name": "Checkout", "description": "Payments and carts", "rateLimit": 600}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewService {
    #[schema(min_length = 1, max_length = 255, pattern = "\\S")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// Events per minute for the routing key; default the server's.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub rate_limit: Option<u32>,
}

const SELECT: &str = "select s.id, s.name, s.description, s.routing_key, s.rate_limit, s.created_at, s.updated_at,
        count(i.id) filter (where i.urgency = 'HIGH') as high,
        count(i.id) filter (where i.urgency = 'MEDIUM') as medium,
        count(i.id) filter (where i.urgency = 'LOW') as low
     from services s left join incidents i on i.service_id = s.id and i.status <> 'RESOLVED'";

fn service_of(row: &PgRow, show_routing_key: bool) -> Result<Service, sqlx::Error> {
    let open = OpenIncidents { high: row.try_get("high")?, medium: row.try_get("medium")?, low: row.try_get("low")? };
    let status = if open.high > 0 {
        ServiceStatus::Critical
    } else if open.medium + open.low > 0 {
        ServiceStatus::Degraded
    } else {
        ServiceStatus::Operational
    };
    Ok(Service {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        status,
        open_incidents: open,
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
        routing_key: if show_routing_key { Some(row.try_get("routing_key")?) } else { None },
        rate_limit: if show_routing_key { Some(row.try_get("rate_limit")?) } else { None },
    })
}

async fn fetch(pool: &PgPool, id: &str, show_routing_key: bool) -> Result<Service, ApiError> {
    let sql = format!("{SELECT} where s.id = $1 group by s.id");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("service {id}")))?;
    Ok(service_of(&row, show_routing_key)?)
}

/// Keyset position in the newest-first listing.
#[derive(Serialize, Deserialize)]
struct Cursor {
    c: String,
    id: String,
}

/// List services with their derived status and open incidents by urgency.
#[utoipa::path(get, path = "/api/services", tag = "services",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page length, default 50"),
           ("offset" = Option<i64>, Query, minimum = 0, description = "Rows to skip (not with cursor)"),
           ("cursor" = Option<String>, Query, description = "pagination.nextCursor of the previous page")),
    responses((status = 200, description = "A page of services", body = ServiceList), (status = 400, description = "A bad parameter, named in the error", body = super::ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Params,
) -> Result<Json<ServiceList>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    let page = PageRequest::<Cursor>::parse(&params)?;
    let sql = format!(
        "{SELECT} where ($1::text is null or (s.created_at, s.id) < ($1::timestamptz, $2))
         group by s.id order by s.created_at desc, s.id desc limit $3 offset $4"
    );
    let mut rows = sqlx::query(&sql)
        .bind(page.cursor.as_ref().map(|c| c.c.clone()))
        .bind(page.cursor.as_ref().map(|c| c.id.clone()))
        .bind(page.fetch())
        .bind(page.offset)
        .fetch_all(&state.pool)
        .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from services").fetch_one(&state.pool).await?;
    let pagination = page.finish(&mut rows, |last| {
        Ok::<_, sqlx::Error>(Cursor { c: timestamp(last, "created_at")?.to_string(), id: last.try_get("id")? })
    })?;
    let show = principal.has(Scope::ServicesWrite);
    let services = rows.iter().map(|row| service_of(row, show)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(ServiceList { services, total, pagination }))
}

/// One service; its routing key is shown to keys with services:write.
#[utoipa::path(get, path = "/api/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses((status = 200, description = "The service", body = ServiceBody), (status = 400, description = "A bad id", body = super::ErrorBody),
              (status = 404, description = "No such service", body = super::ErrorBody), Refusals),
    security(("api_key" = ["services:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ServiceBody>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    Ok(Json(ServiceBody { service: fetch(&state.pool, &id, principal.has(Scope::ServicesWrite)).await? }))
}

/// Create a service with a new routing key.
#[utoipa::path(post, path = "/api/services", tag = "services", request_body = NewService,
    responses((status = 201, description = "The service with its routingKey", body = ServiceBody), (status = 400, description = "A bad field, named in the error", body = super::ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = super::ErrorBody), (status = 415, description = "Not JSON", body = super::ErrorBody), Refusals),
    security(("api_key" = ["services:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<ServiceBody>), ApiError> {
    principal.require(Scope::ServicesWrite)?;
    // The scope first: a key without it learns nothing about the body.
    let body: NewService = parse_value(body)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::validation("name", "is required"));
    }
    if body.rate_limit == Some(0) {
        return Err(ApiError::validation("rateLimit", "must be a positive integer"));
    }
    let description = body.description.unwrap_or_default();
    let created = admin::create_service(&state.pool, &body.name, &description, body.rate_limit).await.map_err(
        |err| match err {
            AdminError::Invalid(message) => {
                ApiError::validation(if message.starts_with("description") { "description" } else { "name" }, message)
            }
            AdminError::Database(e) => e.into(),
            other => ApiError::internal(other),
        },
    )?;
    Ok((StatusCode::CREATED, Json(ServiceBody { service: fetch(&state.pool, &created.id, true).await? })))
}
