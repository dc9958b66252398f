//! Schedules and on-call (DESIGN §7): create schedules, layers and overrides; list and read
//! them; ask who is on call at an instant; render the final shifts of a window.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::http::{ApiJson, ApiPath};
use common::ids::new_id;
use common::store::{optional_timestamp, timestamp};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool, Row};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Refusals;
use crate::oncall::{Layer, Override, Rotation, Schedule, Source};
use crate::params::Params;
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

/// Longest window `shifts` renders at once.
const MAX_WINDOW: SignedDuration = SignedDuration::from_hours(24 * 93);
/// How far around an instant `on-call` looks for the start and end of the shift in progress.
const ON_CALL_HORIZON: SignedDuration = SignedDuration::from_hours(24 * 45);
/// Longest rotation in hours (30 days).
const MAX_ROTATION_HOURS: i64 = 720;

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn string(body: &Map<String, Value>, name: &str, prefix: &str) -> Result<Option<String>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 255 => Ok(Some(s.trim().to_owned())),
        Some(Value::String(_)) => {
            Err(ApiError::validation(&format!("{prefix}{name}"), "must be at most 255 characters"))
        }
        Some(_) => Err(ApiError::validation(&format!("{prefix}{name}"), "must be a string")),
    }
}

fn instant(body: &Map<String, Value>, name: &str, prefix: &str) -> Result<Option<Timestamp>, ApiError> {
    string(body, name, prefix)?
        .map(|s| {
            s.parse().map_err(|_| ApiError::validation(&format!("{prefix}{name}"), "must be an RFC 3339 timestamp"))
        })
        .transpose()
}

fn zone(name: &str) -> Result<TimeZone, ApiError> {
    TimeZone::get(name).map_err(|_| ApiError::validation("timeZone", format!("{name:?} is not an IANA time zone")))
}

/// A layer as sent by a client, validated.
struct NewLayer {
    name: String,
    start: Timestamp,
    end: Option<Timestamp>,
    rotation: &'static str,
    hours: Option<i64>,
    handoff: String,
    users: Vec<String>,
}

fn parse_layer(value: &Value, prefix: &str) -> Result<NewLayer, ApiError> {
    let body =
        value.as_object().ok_or_else(|| ApiError::validation(prefix.trim_end_matches('.'), "must be an object"))?;
    let start = instant(body, "start", prefix)?
        .ok_or_else(|| ApiError::validation(&format!("{prefix}start"), "is required"))?;
    let end = instant(body, "end", prefix)?;
    if end.is_some_and(|end| end <= start) {
        return Err(ApiError::validation(&format!("{prefix}end"), "must be after start"));
    }
    let (rotation, hours) = match string(body, "rotation", prefix)?.as_deref() {
        Some("daily") => ("daily", None),
        Some("weekly") => ("weekly", None),
        Some("hours") => {
            let hours = field(body, "rotationHours")
                .and_then(Value::as_i64)
                .filter(|h| (1..=MAX_ROTATION_HOURS).contains(h))
                .ok_or_else(|| {
                    ApiError::validation(&format!("{prefix}rotationHours"), "must be 1 to 720 with rotation \"hours\"")
                })?;
            ("hours", Some(hours))
        }
        _ => {
            return Err(ApiError::validation(&format!("{prefix}rotation"), "must be daily, weekly or hours"));
        }
    };
    let handoff = string(body, "handoffTime", prefix)?.unwrap_or_else(|| "09:00".into());
    let time: Time =
        handoff.parse().map_err(|_| ApiError::validation(&format!("{prefix}handoffTime"), "must be HH:MM"))?;
    let users: Vec<String> = match field(body, "users") {
        Some(Value::Array(users)) if !users.is_empty() => users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                u.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::validation(&format!("{prefix}users[{i}]"), "must be a user id"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::validation(&format!("{prefix}users"), "must list at least one user id"));
        }
    };
    Ok(NewLayer {
        name: string(body, "name", prefix)?.unwrap_or_else(|| "Layer".into()),
        start,
        end,
        rotation,
        hours,
        handoff: time.strftime("%H:%M").to_string(),
        users,
    })
}

async fn check_users(tx: &mut PgConnection, users: &[String], prefix: &str) -> Result<(), ApiError> {
    let known: Vec<String> =
        sqlx::query_scalar("select id from users where id = any($1)").bind(users).fetch_all(&mut *tx).await?;
    match users.iter().position(|u| !known.contains(u)) {
        Some(i) => Err(ApiError::validation(&format!("{prefix}[{i}]"), format!("no user {}", users[i]))),
        None => Ok(()),
    }
}

async fn insert_layer(
    tx: &mut PgConnection,
    schedule_id: &str,
    layer: &NewLayer,
    prefix: &str,
) -> Result<String, ApiError> {
    check_users(tx, &layer.users, &format!("{prefix}users")).await?;
    let id = new_id("lay");
    sqlx::query(
        "insert into schedule_layers (id, schedule_id, position, name, starts_at, ends_at, rotation, rotation_hours, handoff_time)
         select $1, $2, coalesce(max(position) + 1, 0), $3, $4::timestamptz, $5::timestamptz, $6, $7, $8
         from schedule_layers where schedule_id = $2",
    )
    .bind(&id)
    .bind(schedule_id)
    .bind(&layer.name)
    .bind(layer.start.to_string())
    .bind(layer.end.map(|e| e.to_string()))
    .bind(layer.rotation)
    .bind(layer.hours.map(|h| h as i32))
    .bind(&layer.handoff)
    .execute(&mut *tx)
    .await?;
    for (position, user) in layer.users.iter().enumerate() {
        sqlx::query("insert into schedule_layer_members (layer_id, position, user_id) values ($1, $2, $3)")
            .bind(&id)
            .bind(position as i32)
            .bind(user)
            .execute(&mut *tx)
            .await?;
    }
    Ok(id)
}

struct NewOverride {
    user: String,
    start: Timestamp,
    end: Timestamp,
}

fn parse_override(value: &Value, prefix: &str) -> Result<NewOverride, ApiError> {
    let body =
        value.as_object().ok_or_else(|| ApiError::validation(prefix.trim_end_matches('.'), "must be an object"))?;
    let user = string(body, "userId", prefix)?
        .ok_or_else(|| ApiError::validation(&format!("{prefix}userId"), "is required"))?;
    let start = instant(body, "start", prefix)?
        .ok_or_else(|| ApiError::validation(&format!("{prefix}start"), "is required"))?;
    let end =
        instant(body, "end", prefix)?.ok_or_else(|| ApiError::validation(&format!("{prefix}end"), "is required"))?;
    if end <= start {
        return Err(ApiError::validation(&format!("{prefix}end"), "must be after start"));
    }
    Ok(NewOverride { user, start, end })
}

async fn insert_override(
    tx: &mut PgConnection,
    schedule_id: &str,
    o: &NewOverride,
    prefix: &str,
) -> Result<String, ApiError> {
    check_users(tx, std::slice::from_ref(&o.user), &format!("{prefix}userId"))
        .await
        .map_err(|_| ApiError::validation(&format!("{prefix}userId"), format!("no user {}", o.user)))?;
    let id = new_id("ovr");
    sqlx::query("insert into schedule_overrides (id, schedule_id, user_id, starts_at, ends_at) values ($1, $2, $3, $4::timestamptz, $5::timestamptz)")
        .bind(&id)
        .bind(schedule_id)
        .bind(&o.user)
        .bind(o.start.to_string())
        .bind(o.end.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// Create a schedule (name, IANA timeZone) with optional layers and overrides.
#[utoipa::path(post, path = "/api/schedules", tag = "schedules",
    request_body(content = Object, description = "name, timeZone, layers?, overrides?"),
    responses((status = 201, description = "The schedule"), (status = 400, description = "A bad field, named in the error"), Refusals),
    security(("api_key" = ["schedules:write"])))]
async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::SchedulesWrite)?;
    Ok((StatusCode::CREATED, Json(json!({ "schedule": create_schedule(&state.pool, &body).await? }))))
}

/// Creates a schedule from its JSON description (as `POST /api/schedules` takes it); returns it.
pub async fn create_schedule(pool: &PgPool, body: &Map<String, Value>) -> Result<Value, ApiError> {
    let name = string(body, "name", "")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::validation("name", "is required"))?;
    let time_zone = string(body, "timeZone", "")?.ok_or_else(|| ApiError::validation("timeZone", "is required"))?;
    zone(&time_zone)?;
    let list = |name: &str| match field(body, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(ApiError::validation(name, "must be an array")),
    };
    let layers = list("layers")?
        .iter()
        .enumerate()
        .map(|(i, l)| parse_layer(l, &format!("layers[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let overrides = list("overrides")?
        .iter()
        .enumerate()
        .map(|(i, o)| parse_override(o, &format!("overrides[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let id = new_id("sch");
    let mut tx = pool.begin().await?;
    sqlx::query("insert into schedules (id, name, time_zone) values ($1, $2, $3)")
        .bind(&id)
        .bind(&name)
        .bind(&time_zone)
        .execute(&mut *tx)
        .await?;
    for (i, layer) in layers.iter().enumerate() {
        insert_layer(&mut tx, &id, layer, &format!("layers[{i}].")).await?;
    }
    for (i, o) in overrides.iter().enumerate() {
        insert_override(&mut tx, &id, o, &format!("overrides[{i}].")).await?;
    }
    tx.commit().await?;
    schedule_json(pool, &id).await
}

/// Add a layer on top of the existing ones (start, end?, rotation daily|weekly|hours, rotationHours?, handoffTime HH:MM, users).
#[utoipa::path(post, path = "/api/schedules/{id}/layers", tag = "schedules", params(("id" = String, Path, description = "Schedule id")),
    request_body(content = Object, description = "The layer"),
    responses((status = 201, description = "The layer"), (status = 400, description = "A bad field"), (status = 404, description = "No such schedule"), Refusals),
    security(("api_key" = ["schedules:write"])))]
async fn add_layer(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::SchedulesWrite)?;
    Ok((StatusCode::CREATED, Json(json!({ "layer": add_layer_to(&state.pool, &id, &body).await? }))))
}

/// Adds a layer (as `POST /api/schedules/{id}/layers` takes it) above the schedule's others.
pub async fn add_layer_to(pool: &PgPool, id: &str, body: &Value) -> Result<Value, ApiError> {
    let layer = parse_layer(body, "")?;
    let mut tx = begin_change(pool, id).await?;
    let layer_id = insert_layer(&mut tx, id, &layer, "").await?;
    finish_change(tx, id).await?;
    let schedule = schedule_json(pool, id).await?;
    Ok(schedule["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["id"] == layer_id.as_str()))
        .cloned()
        .unwrap_or_default())
}

/// Put a user on call for an interval, over all layers.
#[utoipa::path(post, path = "/api/schedules/{id}/overrides", tag = "schedules", params(("id" = String, Path, description = "Schedule id")),
    request_body(content = Object, description = "userId, start, end"),
    responses((status = 201, description = "The override"), (status = 400, description = "A bad field"), (status = 404, description = "No such schedule"), Refusals),
    security(("api_key" = ["schedules:write"])))]
async fn add_override(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Scope::SchedulesWrite)?;
    Ok((StatusCode::CREATED, Json(json!({ "override": add_override_to(&state.pool, &id, &body).await? }))))
}

/// Adds an override (as `POST /api/schedules/{id}/overrides` takes it).
pub async fn add_override_to(pool: &PgPool, id: &str, body: &Value) -> Result<Value, ApiError> {
    let o = parse_override(body, "")?;
    let mut tx = begin_change(pool, id).await?;
    let override_id = insert_override(&mut tx, id, &o, "").await?;
    finish_change(tx, id).await?;
    Ok(json!({"id": override_id, "userId": o.user, "start": o.start.to_string(), "end": o.end.to_string()}))
}

/// Begins a change to a schedule: locks its row (serialising layer positions); `404` when missing.
async fn begin_change(pool: &PgPool, id: &str) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
    let mut tx = pool.begin().await?;
    let found: Option<String> = sqlx::query_scalar("select id from schedules where id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    found.ok_or_else(|| ApiError::not_found(format!("schedule {id}")))?;
    Ok(tx)
}

/// Marks the schedule changed and commits.
async fn finish_change(mut tx: sqlx::Transaction<'static, sqlx::Postgres>, id: &str) -> Result<(), ApiError> {
    sqlx::query("update schedules set updated_at = now() where id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// List schedules.
#[utoipa::path(get, path = "/api/schedules", tag = "schedules",
    params(("limit" = Option<i64>, Query, description = "1 to 200, default 50"), ("offset" = Option<i64>, Query, description = "Rows to skip")),
    responses((status = 200, description = "A page of schedules"), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let limit = params.integer("limit", 50, 1, 200)?;
    let offset = params.integer("offset", 0, 0, i64::MAX)?;
    Ok(Json(list_schedules(&state.pool, limit, offset).await?))
}

/// A page of schedules, newest first, as `GET /api/schedules` answers it.
pub async fn list_schedules(pool: &PgPool, limit: i64, offset: i64) -> Result<Value, ApiError> {
    let rows = sqlx::query(
        "select id, name, time_zone, created_at, updated_at from schedules order by created_at desc, id desc limit $1 offset $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from schedules").fetch_one(pool).await?;
    let schedules = rows
        .iter()
        .map(|r| {
            Ok(json!({"id": r.try_get::<String, _>("id")?, "name": r.try_get::<String, _>("name")?,
                      "timeZone": r.try_get::<String, _>("time_zone")?,
                      "createdAt": timestamp(r, "created_at")?.to_string(), "updatedAt": timestamp(r, "updated_at")?.to_string()}))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(json!({
        "schedules": schedules,
        "total": total,
        "pagination": {"limit": limit, "offset": offset, "hasMore": offset + (schedules.len() as i64) < total},
    }))
}

/// A schedule with its layers and overrides.
#[utoipa::path(get, path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, description = "The schedule"), (status = 404, description = "No such schedule"), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn detail(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    Ok(Json(json!({ "schedule": schedule_json(&state.pool, &id).await? })))
}

/// A schedule with its layers (members in rotation order) and overrides, as JSON and as the
/// evaluable [`Schedule`].
async fn load(pool: &PgPool, id: &str) -> Result<(Value, Schedule), ApiError> {
    let row = sqlx::query("select id, name, time_zone, created_at, updated_at from schedules where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("schedule {id}")))?;
    let time_zone: String = row.try_get("time_zone")?;
    let zone = TimeZone::get(&time_zone).map_err(ApiError::internal)?;
    let layer_rows = sqlx::query(
        "select l.id, l.name, l.position, l.starts_at, l.ends_at, l.rotation, l.rotation_hours, l.handoff_time,
                coalesce(json_agg(json_build_object('id', u.id, 'name', u.name) order by m.position)
                         filter (where u.id is not null), '[]') as users
         from schedule_layers l
         left join schedule_layer_members m on m.layer_id = l.id left join users u on u.id = m.user_id
         where l.schedule_id = $1 group by l.id order by l.position",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let override_rows = sqlx::query(
        "select o.id, o.user_id, u.name, o.starts_at, o.ends_at from schedule_overrides o join users u on u.id = o.user_id
         where o.schedule_id = $1 order by o.created_at, o.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut layers_json = Vec::new();
    let mut layers = Vec::new();
    for r in &layer_rows {
        let users: Value = r.try_get::<sqlx::types::Json<Value>, _>("users")?.0;
        let rotation: String = r.try_get("rotation")?;
        let hours: Option<i32> = r.try_get("rotation_hours")?;
        let handoff: String = r.try_get("handoff_time")?;
        let start = timestamp(r, "starts_at")?;
        let end = optional_timestamp(r, "ends_at")?;
        layers.push(Layer {
            id: r.try_get("id")?,
            start,
            end,
            rotation: match (rotation.as_str(), hours) {
                ("daily", _) => Rotation::Daily,
                ("weekly", _) => Rotation::Weekly,
                (_, hours) => Rotation::Hours(i64::from(hours.unwrap_or(24))),
            },
            handoff: handoff.parse().map_err(ApiError::internal)?,
            users: users.as_array().into_iter().flatten().filter_map(|u| u["id"].as_str().map(str::to_owned)).collect(),
        });
        layers_json.push(json!({
            "id": r.try_get::<String, _>("id")?, "name": r.try_get::<String, _>("name")?,
            "position": r.try_get::<i32, _>("position")?, "start": start.to_string(), "end": end.map(|e| e.to_string()),
            "rotation": rotation, "rotationHours": hours, "handoffTime": handoff, "users": users,
        }));
    }
    let mut overrides_json = Vec::new();
    let mut overrides = Vec::new();
    for r in &override_rows {
        let (start, end) = (timestamp(r, "starts_at")?, timestamp(r, "ends_at")?);
        let user: String = r.try_get("user_id")?;
        overrides_json.push(
            json!({"id": r.try_get::<String, _>("id")?, "user": {"id": user, "name": r.try_get::<String, _>("name")?},
                                   "start": start.to_string(), "end": end.to_string()}),
        );
        overrides.push(Override { id: r.try_get("id")?, user, start, end });
    }
    let json = json!({
        "id": row.try_get::<String, _>("id")?, "name": row.try_get::<String, _>("name")?, "timeZone": time_zone,
        "createdAt": timestamp(&row, "created_at")?.to_string(), "updatedAt": timestamp(&row, "updated_at")?.to_string(),
        "layers": layers_json, "overrides": overrides_json,
    });
    Ok((json, Schedule { zone, layers, overrides }))
}

async fn schedule_json(pool: &PgPool, id: &str) -> Result<Value, ApiError> {
    Ok(load(pool, id).await?.0)
}

async fn user_names(
    pool: &PgPool,
    ids: Vec<String>,
) -> Result<std::collections::HashMap<String, (String, String)>, ApiError> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("select id, name, email from users where id = any($1)").bind(&ids).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id, name, email)| (id, (name, email))).collect())
}

fn source_json(schedule: &Schedule, source: Source) -> (bool, Value) {
    match source {
        Source::Override(i) => (true, json!(schedule.overrides.get(i).map(|o| o.id.clone()))),
        Source::Layer(i) => (false, json!(schedule.layers.get(i).map(|l| l.id.clone()))),
    }
}

/// Who is on call at an instant (default now), the shift's start and end, and whether an override put them there.
#[utoipa::path(get, path = "/api/schedules/{id}/on-call", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"), ("at" = Option<String>, Query, description = "RFC 3339, default now")),
    responses((status = 200, description = "Who is on call"), (status = 404, description = "No such schedule"), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn on_call(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let at = params.timestamp("at")?.unwrap_or_else(Timestamp::now);
    let (_, schedule) = load(&state.pool, &id).await?;
    let Some(shift) = schedule.shift_at(at, ON_CALL_HORIZON) else {
        return Ok(Json(json!({"onCall": null, "at": at.to_string()})));
    };
    let names = user_names(&state.pool, vec![shift.user.clone()]).await?;
    let (is_override, source_id) = source_json(&schedule, shift.source);
    let (name, email) = names.get(&shift.user).cloned().unwrap_or_default();
    Ok(Json(json!({
        "at": at.to_string(),
        "onCall": {
            "user": {"id": shift.user, "name": name, "email": email},
            "start": shift.start.to_string(), "end": shift.end.to_string(),
            "override": is_override,
            if is_override { "overrideId" } else { "layerId" }: source_id,
        }
    })))
}

/// Shifts can be asked for between 1900-01-01 and 9000-01-01 (Unix seconds).
const SHIFTS_EARLIEST: i64 = -2_208_988_800;
const SHIFTS_LATEST: i64 = 221_845_392_000;

fn out_of_range(name: &str) -> ApiError {
    ApiError::validation(name, "must be between 1900-01-01 and 9000-01-01")
}

/// The final rendered shifts of a window (at most 93 days; default the next 7 days).
#[utoipa::path(get, path = "/api/schedules/{id}/shifts", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"), ("from" = Option<String>, Query, description = "RFC 3339"), ("to" = Option<String>, Query, description = "RFC 3339")),
    responses((status = 200, description = "The shifts"), (status = 400, description = "A bad window"), (status = 404, description = "No such schedule"), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn shifts(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let from = params.timestamp("from")?.unwrap_or_else(Timestamp::now);
    let to = match params.timestamp("to")? {
        Some(to) => to,
        None => from.checked_add(SignedDuration::from_hours(24 * 7)).map_err(|_| out_of_range("from"))?,
    };
    // Rotations are walked in the schedule's zone: keep well inside what civil time can express.
    for (name, t) in [("from", from), ("to", to)] {
        if !(SHIFTS_EARLIEST..=SHIFTS_LATEST).contains(&t.as_second()) {
            return Err(out_of_range(name));
        }
    }
    if to <= from {
        return Err(ApiError::validation("to", "must be after from"));
    }
    if to.duration_since(from) > MAX_WINDOW {
        return Err(ApiError::validation("to", "the window may span at most 93 days"));
    }
    let (_, schedule) = load(&state.pool, &id).await?;
    let shifts = schedule.shifts(from, to);
    let names = user_names(&state.pool, shifts.iter().map(|s| s.user.clone()).collect()).await?;
    let shifts: Vec<Value> = shifts
        .iter()
        .map(|s| {
            let (is_override, source_id) = source_json(&schedule, s.source);
            let name = names.get(&s.user).map(|(n, _)| n.clone());
            json!({"start": s.start.to_string(), "end": s.end.to_string(), "user": {"id": s.user, "name": name},
                   "override": is_override, if is_override { "overrideId" } else { "layerId" }: source_id})
        })
        .collect();
    Ok(Json(json!({"from": from.to_string(), "to": to.to_string(), "shifts": shifts})))
}
