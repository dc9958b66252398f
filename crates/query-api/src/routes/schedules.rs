//! Schedules and on-call (DESIGN §7): create schedules, layers and overrides; list and read
//! them; ask who is on call at an instant; render the final shifts of a window. The `create_*`,
//! `add_*` and `list_schedules` functions take and return the same typed bodies as the HTTP API,
//! so the CLI and the routes validate alike.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::http::{ApiJson, ApiPath, parse_value};
use common::ids::new_id;
use common::incident::store::{optional_timestamp, timestamp};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp as Instant};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ErrorBody, Refusals, Timestamp};
use crate::oncall::{Layer, Override, Rotation, Schedule as Evaluable, Source};
use crate::pagination::{PageRequest, Pagination};
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

// ---------------------------------------------------------------------------------------------
// Bodies

/// A new schedule, with optional layers and overrides.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"name": "Primary", "timeZone": "Europe/Berlin"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewSchedule {
    #[schema(min_length = 1, max_length = 255, pattern = "\\S")]
    pub name: String,
    /// An IANA time zone, e.g. `Europe/Berlin`: rotations hand off at local time.
    #[schema(max_length = 255)]
    pub time_zone: String,
    #[serde(default)]
    pub layers: Vec<NewLayer>,
    #[serde(default)]
    pub overrides: Vec<NewOverride>,
}

/// A rotation layer; later layers win over earlier ones.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"start": "2026-12-01T08:00:00Z", "rotation": "weekly", "handoffTime": "09:00", "users": ["usr_0192"]}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewLayer {
    /// Default `Layer`.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub name: Option<String>,
    #[schema(format = DateTime)]
    pub start: String,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub end: Option<String>,
    pub rotation: RotationKind,
    /// Shift length with rotation `hours`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 720)]
    pub rotation_hours: Option<i64>,
    /// Local hand-off time, default 09:00.
    #[serde(default)]
    #[schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub handoff_time: Option<String>,
    /// User ids in rotation order.
    #[schema(min_items = 1)]
    pub users: Vec<String>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum RotationKind {
    Daily,
    Weekly,
    Hours,
}

/// A user on call for an interval, over all layers.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"userId": "usr_0192", "start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"}))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewOverride {
    #[schema(max_length = 255)]
    pub user_id: String,
    #[schema(format = DateTime)]
    pub start: String,
    #[schema(format = DateTime)]
    pub end: String,
}

/// A schedule as listed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSummary {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A schedule with its layers (bottom first) and overrides.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    #[serde(flatten)]
    pub summary: ScheduleSummary,
    pub layers: Vec<LayerView>,
    pub overrides: Vec<OverrideView>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerView {
    pub id: String,
    pub name: String,
    pub position: i32,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub rotation: RotationKind,
    pub rotation_hours: Option<i32>,
    pub handoff_time: String,
    pub users: Vec<UserName>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserName {
    pub id: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct OverrideView {
    pub id: String,
    pub user: UserName,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// An override as created.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedOverride {
    pub id: String,
    pub user_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleBody {
    pub schedule: Schedule,
}

#[derive(Serialize, ToSchema)]
pub struct LayerBody {
    pub layer: LayerView,
}

#[derive(Serialize, ToSchema)]
pub struct OverrideBody {
    #[serde(rename = "override")]
    pub created: CreatedOverride,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleSummary>,
    pub total: i64,
    pub pagination: Pagination,
}

/// Who is on call at `at`; `onCall` is null when nobody is.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnCallBody {
    pub at: Timestamp,
    pub on_call: Option<OnCall>,
}

#[derive(Serialize, ToSchema)]
pub struct OnCall {
    pub user: OnCallUser,
    pub start: Timestamp,
    pub end: Timestamp,
    #[serde(flatten)]
    pub source: ShiftSource,
}

#[derive(Serialize, ToSchema)]
pub struct OnCallUser {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// What put the user on call: an override (`override` true, `overrideId`) or a layer
/// (`override` false, `layerId`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShiftSource {
    #[serde(rename = "override")]
    pub is_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_id: Option<String>,
}

/// The final shifts of a window.
#[derive(Serialize, ToSchema)]
pub struct ShiftsBody {
    pub from: Timestamp,
    pub to: Timestamp,
    pub shifts: Vec<ShiftView>,
}

#[derive(Serialize, ToSchema)]
pub struct ShiftView {
    pub start: Timestamp,
    pub end: Timestamp,
    pub user: ShiftUser,
    #[serde(flatten)]
    pub source: ShiftSource,
}

#[derive(Serialize, ToSchema)]
pub struct ShiftUser {
    pub id: String,
    /// Null for a user deleted since.
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validation and writes

fn instant(field: &str, value: &str) -> Result<Instant, ApiError> {
    value.trim().parse().map_err(|_| ApiError::validation(field, "must be an RFC 3339 timestamp"))
}

fn text(field: &str, value: &str) -> Result<String, ApiError> {
    if value.chars().count() > 255 {
        return Err(ApiError::validation(field, "must be at most 255 characters"));
    }
    Ok(value.trim().to_owned())
}

fn zone(name: &str) -> Result<TimeZone, ApiError> {
    TimeZone::get(name).map_err(|_| ApiError::validation("timeZone", format!("{name:?} is not an IANA time zone")))
}

/// A layer, validated.
struct ValidLayer {
    name: String,
    start: Instant,
    end: Option<Instant>,
    rotation: RotationKind,
    hours: Option<i64>,
    handoff: String,
    users: Vec<String>,
}

fn validate_layer(layer: &NewLayer, prefix: &str) -> Result<ValidLayer, ApiError> {
    let start = instant(&format!("{prefix}start"), &layer.start)?;
    let end = layer.end.as_deref().map(|e| instant(&format!("{prefix}end"), e)).transpose()?;
    if end.is_some_and(|end| end <= start) {
        return Err(ApiError::validation(&format!("{prefix}end"), "must be after start"));
    }
    let hours = match layer.rotation {
        RotationKind::Hours => {
            Some(layer.rotation_hours.filter(|h| (1..=MAX_ROTATION_HOURS).contains(h)).ok_or_else(|| {
                ApiError::validation(&format!("{prefix}rotationHours"), "must be 1 to 720 with rotation \"hours\"")
            })?)
        }
        RotationKind::Daily | RotationKind::Weekly => None,
    };
    let handoff = text(&format!("{prefix}handoffTime"), layer.handoff_time.as_deref().unwrap_or("09:00"))?;
    let time: Time =
        handoff.parse().map_err(|_| ApiError::validation(&format!("{prefix}handoffTime"), "must be HH:MM"))?;
    if layer.users.is_empty() {
        return Err(ApiError::validation(&format!("{prefix}users"), "must list at least one user id"));
    }
    let name = text(&format!("{prefix}name"), layer.name.as_deref().unwrap_or_default())?;
    Ok(ValidLayer {
        name: if name.is_empty() { "Layer".into() } else { name },
        start,
        end,
        rotation: layer.rotation,
        hours,
        handoff: time.strftime("%H:%M").to_string(),
        users: layer.users.clone(),
    })
}

fn rotation_name(rotation: RotationKind) -> &'static str {
    match rotation {
        RotationKind::Daily => "daily",
        RotationKind::Weekly => "weekly",
        RotationKind::Hours => "hours",
    }
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
    layer: &ValidLayer,
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
    .bind(rotation_name(layer.rotation))
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

/// An override, validated.
struct ValidOverride {
    user: String,
    start: Instant,
    end: Instant,
}

fn validate_override(o: &NewOverride, prefix: &str) -> Result<ValidOverride, ApiError> {
    let user = text(&format!("{prefix}userId"), &o.user_id)?;
    if user.is_empty() {
        return Err(ApiError::validation(&format!("{prefix}userId"), "is required"));
    }
    let start = instant(&format!("{prefix}start"), &o.start)?;
    let end = instant(&format!("{prefix}end"), &o.end)?;
    if end <= start {
        return Err(ApiError::validation(&format!("{prefix}end"), "must be after start"));
    }
    Ok(ValidOverride { user, start, end })
}

async fn insert_override(
    tx: &mut PgConnection,
    schedule_id: &str,
    o: &ValidOverride,
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
    Ok((StatusCode::CREATED, Json(ScheduleBody { schedule: create_schedule(&state.pool, &body).await? })))
}

/// Creates a schedule as `POST /api/schedules` does; returns it.
pub async fn create_schedule(pool: &PgPool, body: &NewSchedule) -> Result<Schedule, ApiError> {
    let name = text("name", &body.name)?;
    if name.is_empty() {
        return Err(ApiError::validation("name", "is required"));
    }
    let time_zone = text("timeZone", &body.time_zone)?;
    zone(&time_zone)?;
    let layers = body
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| validate_layer(l, &format!("layers[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let overrides = body
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| validate_override(o, &format!("overrides[{i}].")))
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
    Ok(load(pool, &id).await?.0)
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
    Ok((StatusCode::CREATED, Json(LayerBody { layer: add_layer_to(&state.pool, &id, &body).await? })))
}

/// Adds a layer (as `POST /api/schedules/{id}/layers` does) above the schedule's others.
pub async fn add_layer_to(pool: &PgPool, id: &str, body: &NewLayer) -> Result<LayerView, ApiError> {
    let layer = validate_layer(body, "")?;
    let mut tx = begin_change(pool, id).await?;
    let layer_id = insert_layer(&mut tx, id, &layer, "").await?;
    finish_change(tx, id).await?;
    let (schedule, _) = load(pool, id).await?;
    schedule
        .layers
        .into_iter()
        .find(|l| l.id == layer_id)
        .ok_or_else(|| ApiError::internal(format!("layer {layer_id} vanished after its commit")))
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
    Ok((StatusCode::CREATED, Json(OverrideBody { created: add_override_to(&state.pool, &id, &body).await? })))
}

/// Adds an override as `POST /api/schedules/{id}/overrides` does.
pub async fn add_override_to(pool: &PgPool, id: &str, body: &NewOverride) -> Result<CreatedOverride, ApiError> {
    let o = validate_override(body, "")?;
    let mut tx = begin_change(pool, id).await?;
    let override_id = insert_override(&mut tx, id, &o, "").await?;
    finish_change(tx, id).await?;
    Ok(CreatedOverride { id: override_id, user_id: o.user, start: o.start.into(), end: o.end.into() })
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

/// List schedules, newest first.
#[utoipa::path(get, path = "/api/schedules", tag = "schedules",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Page length, default 50"),
           ("offset" = Option<i64>, Query, minimum = 0, description = "Rows to skip (not with cursor)"),
           ("cursor" = Option<String>, Query, description = "pagination.nextCursor of the previous page")),
    responses((status = 200, description = "A page of schedules", body = ScheduleList), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Params,
) -> Result<Json<ScheduleList>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    Ok(Json(list_schedules(&state.pool, &PageRequest::parse(&params)?).await?))
}

/// Keyset position in the newest-first listing.
#[derive(Serialize, Deserialize)]
pub struct Cursor {
    c: String,
    id: String,
}

/// A page of schedules, newest first, as `GET /api/schedules` answers it.
pub async fn list_schedules(pool: &PgPool, page: &PageRequest<Cursor>) -> Result<ScheduleList, ApiError> {
    let mut rows = sqlx::query(
        "select id, name, time_zone, created_at, updated_at from schedules
         where ($1::text is null or (created_at, id) < ($1::timestamptz, $2))
         order by created_at desc, id desc limit $3 offset $4",
    )
    .bind(page.cursor.as_ref().map(|c| c.c.clone()))
    .bind(page.cursor.as_ref().map(|c| c.id.clone()))
    .bind(page.fetch())
    .bind(page.offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from schedules").fetch_one(pool).await?;
    let pagination = page.finish(&mut rows, |last| {
        Ok::<_, sqlx::Error>(Cursor { c: timestamp(last, "created_at")?.to_string(), id: last.try_get("id")? })
    })?;
    let schedules = rows.iter().map(summary_of).collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(ScheduleList { schedules, total, pagination })
}

fn summary_of(row: &sqlx::postgres::PgRow) -> Result<ScheduleSummary, sqlx::Error> {
    Ok(ScheduleSummary {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        time_zone: row.try_get("time_zone")?,
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
    })
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
    Ok(Json(ScheduleBody { schedule: load(&state.pool, &id).await?.0 }))
}

/// A schedule with its layers (members in rotation order) and overrides, as answered and as the
/// evaluable schedule.
async fn load(pool: &PgPool, id: &str) -> Result<(Schedule, Evaluable), ApiError> {
    let row = sqlx::query("select id, name, time_zone, created_at, updated_at from schedules where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("schedule {id}")))?;
    let summary = summary_of(&row)?;
    let zone = TimeZone::get(&summary.time_zone).map_err(ApiError::internal)?;
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
    let mut views = Vec::new();
    let mut layers = Vec::new();
    for r in &layer_rows {
        let users: Vec<UserName> = r.try_get::<sqlx::types::Json<Vec<UserName>>, _>("users")?.0;
        let rotation: String = r.try_get("rotation")?;
        let hours: Option<i32> = r.try_get("rotation_hours")?;
        let handoff: String = r.try_get("handoff_time")?;
        let start = timestamp(r, "starts_at")?;
        let end = optional_timestamp(r, "ends_at")?;
        let (kind, rotation) = match (rotation.as_str(), hours) {
            ("daily", _) => (RotationKind::Daily, Rotation::Daily),
            ("weekly", _) => (RotationKind::Weekly, Rotation::Weekly),
            (_, hours) => (RotationKind::Hours, Rotation::Hours(i64::from(hours.unwrap_or(24)))),
        };
        layers.push(Layer {
            id: r.try_get("id")?,
            start,
            end,
            rotation,
            handoff: handoff.parse().map_err(ApiError::internal)?,
            users: users.iter().map(|u| u.id.clone()).collect(),
        });
        views.push(LayerView {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            position: r.try_get("position")?,
            start: start.into(),
            end: end.map(Into::into),
            rotation: kind,
            rotation_hours: hours,
            handoff_time: handoff,
            users,
        });
    }
    let mut override_views = Vec::new();
    let mut overrides = Vec::new();
    for r in &override_rows {
        let (start, end) = (timestamp(r, "starts_at")?, timestamp(r, "ends_at")?);
        let user: String = r.try_get("user_id")?;
        override_views.push(OverrideView {
            id: r.try_get("id")?,
            user: UserName { id: user.clone(), name: r.try_get("name")? },
            start: start.into(),
            end: end.into(),
        });
        overrides.push(Override { id: r.try_get("id")?, user, start, end });
    }
    Ok((Schedule { summary, layers: views, overrides: override_views }, Evaluable { zone, layers, overrides }))
}

async fn user_names(
    pool: &PgPool,
    ids: Vec<String>,
) -> Result<std::collections::HashMap<String, (String, String)>, ApiError> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("select id, name, email from users where id = any($1)").bind(&ids).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id, name, email)| (id, (name, email))).collect())
}

fn source_of(schedule: &Evaluable, source: Source) -> ShiftSource {
    match source {
        Source::Override(i) => ShiftSource {
            is_override: true,
            override_id: schedule.overrides.get(i).map(|o| o.id.clone()),
            layer_id: None,
        },
        Source::Layer(i) => ShiftSource {
            is_override: false,
            override_id: None,
            layer_id: schedule.layers.get(i).map(|l| l.id.clone()),
        },
    }
}

/// Who is on call at an instant (default now), the shift's start and end, and whether an override put them there.
#[utoipa::path(get, path = "/api/schedules/{id}/on-call", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"), ("at" = Option<String>, Query, format = DateTime, description = "RFC 3339, default now")),
    responses((status = 200, description = "Who is on call", body = OnCallBody), (status = 400, description = "A bad parameter, named in the error", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn on_call(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<OnCallBody>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let at = params.timestamp("at")?.unwrap_or_else(Instant::now);
    let (_, schedule) = load(&state.pool, &id).await?;
    let Some(shift) = schedule.shift_at(at, ON_CALL_HORIZON) else {
        return Ok(Json(OnCallBody { at: at.into(), on_call: None }));
    };
    let names = user_names(&state.pool, vec![shift.user.clone()]).await?;
    let (name, email) = names.get(&shift.user).cloned().unwrap_or_default();
    Ok(Json(OnCallBody {
        at: at.into(),
        on_call: Some(OnCall {
            user: OnCallUser { id: shift.user.clone(), name, email },
            start: shift.start.into(),
            end: shift.end.into(),
            source: source_of(&schedule, shift.source),
        }),
    }))
}

/// Shifts can be asked for between 1900-01-01 and 9000-01-01 (Unix seconds).
const SHIFTS_EARLIEST: i64 = -2_208_988_800;
const SHIFTS_LATEST: i64 = 221_845_392_000;

fn out_of_range(name: &str) -> ApiError {
    ApiError::validation(name, "must be between 1900-01-01 and 9000-01-01")
}

/// The final rendered shifts of a window (at most 93 days; default the next 7 days).
#[utoipa::path(get, path = "/api/schedules/{id}/shifts", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"),
           ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, default now; 1900-01-01 to 9000-01-01"),
           ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, default from + 7 days; at most 93 days after from")),
    responses((status = 200, description = "The shifts", body = ShiftsBody), (status = 400, description = "A bad window, named in the error", body = ErrorBody),
              (status = 404, description = "No such schedule", body = ErrorBody), Refusals),
    security(("api_key" = ["schedules:read"])))]
async fn shifts(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<ShiftsBody>, ApiError> {
    principal.require(Scope::SchedulesRead)?;
    let from = params.timestamp("from")?.unwrap_or_else(Instant::now);
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
    let shifts = shifts
        .iter()
        .map(|s| ShiftView {
            start: s.start.into(),
            end: s.end.into(),
            user: ShiftUser { id: s.user.clone(), name: names.get(&s.user).map(|(n, _)| n.clone()) },
            source: source_of(&schedule, s.source),
        })
        .collect();
    Ok(Json(ShiftsBody { from: from.into(), to: to.into(), shifts }))
}
