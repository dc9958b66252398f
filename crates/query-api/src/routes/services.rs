//! Services (DESIGN §6): list and detail with the derived status and open-incident counts;
//! create, returning the routing key.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::ApiError;
use common::admin::{self, AdminError};
use common::auth::{Principal, Scope};
use common::http::{ApiJson, ApiPath};
use common::store::timestamp;
use serde_json::{Map, Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Refusals;
use crate::params::Params;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(detail))
}

const SELECT: &str = "select s.id, s.name, s.description, s.routing_key, s.rate_limit, s.created_at, s.updated_at,
        count(i.id) filter (where i.urgency = 'HIGH') as high,
        count(i.id) filter (where i.urgency = 'MEDIUM') as medium,
        count(i.id) filter (where i.urgency = 'LOW') as low
     from services s left join incidents i on i.service_id = s.id and i.status <> 'RESOLVED'";

fn service_json(row: &PgRow, show_routing_key: bool) -> Result<Value, sqlx::Error> {
    let (high, medium, low): (i64, i64, i64) = (row.try_get("high")?, row.try_get("medium")?, row.try_get("low")?);
    let status = if high > 0 {
        "CRITICAL"
    } else if medium + low > 0 {
        "DEGRADED"
    } else {
        "OPERATIONAL"
    };
    let mut service = json!({
        "id": row.try_get::<String, _>("id")?,
        "name": row.try_get::<String, _>("name")?,
        "description": row.try_get::<String, _>("description")?,
        "status": status,
        "openIncidents": {"HIGH": high, "MEDIUM": medium, "LOW": low},
        "createdAt": timestamp(row, "created_at")?.to_string(),
        "updatedAt": timestamp(row, "updated_at")?.to_string(),
    });
    if show_routing_key {
        service["routingKey"] = json!(row.try_get::<String, _>("routing_key")?);
        service["rateLimit"] = json!(row.try_get::<Option<i32>, _>("rate_limit")?);
    }
    Ok(service)
}

async fn fetch(pool: &PgPool, id: &str, show_routing_key: bool) -> Result<Value, ApiError> {
    let sql = format!("{SELECT} where s.id = $1 group by s.id");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("service {id}")))?;
    Ok(service_json(&row, show_routing_key)?)
}

/// Keyset position in the newest-first listing.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    c: String,
    id: String,
}

/// List services with their derived status and open incidents by urgency.
#[utoipa::path(get, path = "/api/services", tag = "services",
    params(("limit" = Option<i64>, Query, description = "1 to 200, default 50"), ("offset" = Option<i64>, Query, description = "Rows to skip"),
           ("cursor" = Option<String>, Query, description = "pagination.nextCursor of the previous page")),
    responses((status = 200, description = "A page of services"), (status = 400, description = "A bad parameter"), Refusals),
    security(("api_key" = ["services:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    let limit = params.integer("limit", 50, 1, 200)?;
    let offset = params.integer("offset", 0, 0, i64::MAX)?;
    let cursor: Option<Cursor> = params
        .get(&["cursor"])
        .map(|(_, v)| {
            hex::decode(v)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this listing"))
        })
        .transpose()?;
    if cursor.is_some() && offset > 0 {
        return Err(ApiError::validation("offset", "cannot be combined with cursor"));
    }
    let sql = format!(
        "{SELECT} where ($1::text is null or (s.created_at, s.id) < ($1::timestamptz, $2))
         group by s.id order by s.created_at desc, s.id desc limit $3 offset $4"
    );
    let rows = sqlx::query(&sql)
        .bind(cursor.as_ref().map(|c| c.c.clone()))
        .bind(cursor.as_ref().map(|c| c.id.clone()))
        .bind(limit + 1)
        .bind(offset)
        .fetch_all(&state.pool)
        .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from services").fetch_one(&state.pool).await?;
    let has_more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next_cursor = match page.last() {
        Some(last) if has_more => {
            let c = Cursor { c: timestamp(last, "created_at")?.to_string(), id: last.try_get("id")? };
            Some(hex::encode(serde_json::to_vec(&c).unwrap_or_default()))
        }
        _ => None,
    };
    let show = principal.has(Scope::ServicesWrite);
    let services = page.iter().map(|row| service_json(row, show)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({
        "services": services,
        "total": total,
        "pagination": {"limit": limit, "offset": offset, "hasMore": has_more, "nextCursor": next_cursor},
    })))
}

/// One service; its routing key is shown to keys with services:write.
#[utoipa::path(get, path = "/api/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id")),
    responses((status = 200, description = "The service"), (status = 404, description = "No such service"), Refusals),
    security(("api_key" = ["services:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::ServicesRead)?;
    Ok(Json(json!({ "service": fetch(&state.pool, &id, principal.has(Scope::ServicesWrite)).await? })))
}

/// Create a service with a new routing key.
#[utoipa::path(post, path = "/api/services", tag = "services",
    request_body(content = Object, description = "name, description?, rateLimit?"),
    responses((status = 201, description = "The service with its routingKey"), (status = 400, description = "A bad field"), Refusals),
    security(("api_key" = ["services:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::ServicesWrite)?;
    if let Some(field) = body.keys().find(|k| !["name", "description", "rateLimit"].contains(&k.as_str())) {
        return Err(ApiError::validation(field, "is not a known field"));
    }
    let name = match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::validation("name", "is required"));
        }
        Some(_) => return Err(ApiError::validation("name", "must be a string")),
    };
    let description = match body.get("description") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(ApiError::validation("description", "must be a string")),
    };
    let rate_limit = match body.get("rateLimit") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::validation("rateLimit", "must be a positive integer"))?,
        ),
    };
    let created =
        admin::create_service(&state.pool, &name, &description, rate_limit).await.map_err(|err| match err {
            AdminError::Invalid(message) => {
                ApiError::validation(if message.starts_with("description") { "description" } else { "name" }, message)
            }
            AdminError::Database(e) => e.into(),
            other => ApiError::internal(other),
        })?;
    Ok((StatusCode::CREATED, Json(json!({ "service": fetch(&state.pool, &created.id, true).await? }))))
}
