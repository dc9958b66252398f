//! Schedules in PostgreSQL: typed input in, schedules, on-call answers and shifts out. The HTTP
//! handlers and the CLI both call these, so they validate alike. Who is on call is computed by
//! `common::schedule::oncall` from the stored layers and overrides.

use common::ApiError;
use common::ids::new_id;
use common::incident::store::{optional_timestamp, timestamp};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp as Instant};
use sqlx::{PgConnection, PgPool, Row};

use super::body::{
    CreatedOverride, HandoffTime, LayerName, LayerView, NewLayer, NewOverride, NewSchedule, OnCall, OnCallBody,
    OnCallUser, OverrideView, RotationHours, RotationKind, Schedule, ScheduleList, ScheduleSummary, ShiftSource,
    ShiftUser, ShiftView, ShiftsBody, UserName,
};
use crate::constraint::OnConstraint;
use crate::page::{NewestFirst, PageRequest, newest_first};
use common::schedule::oncall::{Layer, Override, Rotation, Schedule as Evaluable, Source};

/// Longest window `shifts` renders at once.
const MAX_WINDOW: SignedDuration = SignedDuration::from_hours(24 * 93);
/// How far around an instant `on-call` looks for the start and end of the shift in progress.
const ON_CALL_HORIZON: SignedDuration = SignedDuration::from_hours(24 * 45);
/// Shifts can be asked for between 1900-01-01 and 9000-01-01 (Unix seconds).
const SHIFTS_EARLIEST: i64 = -2_208_988_800;
const SHIFTS_LATEST: i64 = 221_845_392_000;

// ---------------------------------------------------------------------------------------------
// Rules between fields, and writes

/// `layers[0].` for the first of a new schedule's layers, `` for a layer sent alone.
fn field(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// A layer, checked.
struct ValidLayer<'a> {
    layer: &'a NewLayer,
    name: String,
    hours: Option<RotationHours>,
}

fn validate_layer<'a>(layer: &'a NewLayer, prefix: &str) -> Result<ValidLayer<'a>, ApiError> {
    if layer.end.is_some_and(|end| end <= layer.start) {
        return Err(ApiError::validation(&field(prefix, "end"), "must be after start"));
    }
    let hours = match layer.rotation {
        RotationKind::Hours => Some(layer.rotation_hours.ok_or_else(|| {
            ApiError::validation(
                &field(prefix, "rotationHours"),
                format!("must be {} to {} with rotation \"hours\"", RotationHours::MIN, RotationHours::MAX),
            )
        })?),
        RotationKind::Daily | RotationKind::Weekly => None,
    };
    let name = layer.name.as_ref().map(LayerName::as_str).unwrap_or_default();
    Ok(ValidLayer { layer, name: if name.is_empty() { "Layer".into() } else { name.to_owned() }, hours })
}

fn validate_override(o: &NewOverride, prefix: &str) -> Result<(), ApiError> {
    if o.end <= o.start {
        return Err(ApiError::validation(&field(prefix, "end"), "must be after start"));
    }
    Ok(())
}

/// A missing user is a `400` naming the field that named them.
fn no_user(constraint: &str, field: &str, user: &str) -> Option<ApiError> {
    matches!(constraint, "schedule_layer_members_user_id_fkey" | "schedule_overrides_user_id_fkey")
        .then(|| ApiError::validation(field, format!("no user {user}")))
}

async fn insert_layer(
    tx: &mut PgConnection,
    schedule_id: &str,
    valid: &ValidLayer<'_>,
    prefix: &str,
) -> Result<String, ApiError> {
    let layer = valid.layer;
    let id = new_id("lay");
    sqlx::query(
        "insert into schedule_layers (id, schedule_id, position, name, starts_at, ends_at, rotation, rotation_hours, handoff_time)
         select $1, $2, coalesce(max(position) + 1, 0), $3, $4::timestamptz, $5::timestamptz, $6, $7, $8
         from schedule_layers where schedule_id = $2",
    )
    .bind(&id)
    .bind(schedule_id)
    .bind(&valid.name)
    .bind(layer.start.0.to_string())
    .bind(layer.end.map(|e| e.0.to_string()))
    .bind(layer.rotation.as_str())
    .bind(valid.hours.map(|h| h.get() as i32))
    .bind(layer.handoff_time.unwrap_or_default().0.strftime(HandoffTime::FORMAT).to_string())
    .execute(&mut *tx)
    .await?;
    for (position, user) in layer.users.iter().enumerate() {
        sqlx::query("insert into schedule_layer_members (layer_id, position, user_id) values ($1, $2, $3)")
            .bind(&id)
            .bind(position as i32)
            .bind(user.as_str())
            .execute(&mut *tx)
            .await
            .on_constraint(|c| no_user(c, &format!("{prefix}users[{position}]"), user.as_str()))?;
    }
    Ok(id)
}

async fn insert_override(
    tx: &mut PgConnection,
    schedule_id: &str,
    o: &NewOverride,
    prefix: &str,
) -> Result<String, ApiError> {
    let id = new_id("ovr");
    sqlx::query("insert into schedule_overrides (id, schedule_id, user_id, starts_at, ends_at) values ($1, $2, $3, $4::timestamptz, $5::timestamptz)")
        .bind(&id)
        .bind(schedule_id)
        .bind(o.user_id.as_str())
        .bind(o.start.0.to_string())
        .bind(o.end.0.to_string())
        .execute(&mut *tx)
        .await
        .on_constraint(|c| no_user(c, &field(prefix, "userId"), o.user_id.as_str()))?;
    Ok(id)
}

/// Creates a schedule with its layers and overrides; returns it.
pub async fn create(pool: &PgPool, new: &NewSchedule) -> Result<Schedule, ApiError> {
    let layers = new
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| validate_layer(l, &format!("layers[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, o) in new.overrides.iter().enumerate() {
        validate_override(o, &format!("overrides[{i}]."))?;
    }
    let id = new_id("sch");
    let mut tx = pool.begin().await?;
    sqlx::query("insert into schedules (id, name, time_zone) values ($1, $2, $3)")
        .bind(&id)
        .bind(new.name.as_str())
        .bind(new.time_zone.as_str())
        .execute(&mut *tx)
        .await?;
    for (i, layer) in layers.iter().enumerate() {
        insert_layer(&mut tx, &id, layer, &format!("layers[{i}].")).await?;
    }
    for (i, o) in new.overrides.iter().enumerate() {
        insert_override(&mut tx, &id, o, &format!("overrides[{i}].")).await?;
    }
    tx.commit().await?;
    Ok(load(pool, &id).await?.0)
}

/// Adds a layer above the schedule's others; `404` for an unknown schedule.
pub async fn add_layer(pool: &PgPool, id: &str, layer: &NewLayer) -> Result<LayerView, ApiError> {
    let valid = validate_layer(layer, "")?;
    let mut tx = begin_change(pool, id).await?;
    let layer_id = insert_layer(&mut tx, id, &valid, "").await?;
    finish_change(tx, id).await?;
    let (schedule, _) = load(pool, id).await?;
    schedule
        .layers
        .into_iter()
        .find(|l| l.id == layer_id)
        .ok_or_else(|| ApiError::internal(format!("layer {layer_id} vanished after its commit")))
}

/// Puts a user on call for an interval, over all layers; `404` for an unknown schedule.
pub async fn add_override(pool: &PgPool, id: &str, o: &NewOverride) -> Result<CreatedOverride, ApiError> {
    validate_override(o, "")?;
    let mut tx = begin_change(pool, id).await?;
    let override_id = insert_override(&mut tx, id, o, "").await?;
    finish_change(tx, id).await?;
    Ok(CreatedOverride {
        id: override_id,
        user_id: o.user_id.as_str().to_owned(),
        start: o.start.0.into(),
        end: o.end.0.into(),
    })
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

// ---------------------------------------------------------------------------------------------
// Reads

/// A page of schedules, newest first.
pub async fn list(pool: &PgPool, page: &PageRequest<NewestFirst>) -> Result<ScheduleList, ApiError> {
    let select = "select t.id, t.name, t.time_zone, t.created_at, t.updated_at from schedules t";
    let (rows, total, pagination) = newest_first(pool, page, "schedules", select, "").await?;
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

/// A schedule with its layers and overrides; `404` when missing.
pub async fn get(pool: &PgPool, id: &str) -> Result<Schedule, ApiError> {
    Ok(load(pool, id).await?.0)
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
        let rotation = Rotation::stored(&rotation, hours);
        let kind = match rotation {
            Rotation::Daily => RotationKind::Daily,
            Rotation::Weekly => RotationKind::Weekly,
            Rotation::Hours(_) => RotationKind::Hours,
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

/// Who is on call at `at` (default now), with the shift's start and end and what put them there.
pub async fn on_call(pool: &PgPool, id: &str, at: Option<Instant>) -> Result<OnCallBody, ApiError> {
    let at = at.unwrap_or_else(Instant::now);
    let (_, schedule) = load(pool, id).await?;
    let Some(shift) = schedule.shift_at(at, ON_CALL_HORIZON) else {
        return Ok(OnCallBody { at: at.into(), on_call: None });
    };
    let names = user_names(pool, vec![shift.user.clone()]).await?;
    let (name, email) = names.get(&shift.user).cloned().unwrap_or_default();
    Ok(OnCallBody {
        at: at.into(),
        on_call: Some(OnCall {
            user: OnCallUser { id: shift.user.clone(), name, email },
            start: shift.start.into(),
            end: shift.end.into(),
            source: source_of(&schedule, shift.source),
        }),
    })
}

fn out_of_range(name: &str) -> ApiError {
    ApiError::validation(name, "must be between 1900-01-01 and 9000-01-01")
}

/// The final shifts of `from ..= to` (default now and 7 days on; at most 93 days).
pub async fn shifts(
    pool: &PgPool,
    id: &str,
    from: Option<Instant>,
    to: Option<Instant>,
) -> Result<ShiftsBody, ApiError> {
    let from = from.unwrap_or_else(Instant::now);
    let to = match to {
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
    let (_, schedule) = load(pool, id).await?;
    let shifts = schedule.shifts(from, to);
    let names = user_names(pool, shifts.iter().map(|s| s.user.clone()).collect()).await?;
    let shifts = shifts
        .iter()
        .map(|s| ShiftView {
            start: s.start.into(),
            end: s.end.into(),
            user: ShiftUser { id: s.user.clone(), name: names.get(&s.user).map(|(n, _)| n.clone()) },
            source: source_of(&schedule, s.source),
        })
        .collect();
    Ok(ShiftsBody { from: from.into(), to: to.into(), shifts })
}
