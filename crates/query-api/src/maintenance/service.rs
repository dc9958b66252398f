//! Maintenance windows in PostgreSQL (DESIGN §12): typed input in, windows out. The HTTP
//! handlers and the CLI both call these. The worker decides what a window suppresses (a trigger
//! accepted inside a window of its service opens or feeds its incident `SUPPRESSED`) and ends
//! windows (`worker::roles::upkeep::end_maintenance_windows`: once `ends_at` passed, what the
//! window kept `SUPPRESSED` is opened and `ended_at` set).
//!
//! A window never starts before it is created: a `start` in the past is taken as now, so no
//! event accepted before the window existed falls inside it, and a re-fold of such an event
//! decides as its first fold did.

use common::ApiError;
use common::fields::Id;
use common::ids::new_id;
use common::incident::store::timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::body::{MaintenanceQuery, MaintenanceState, MaintenanceWindow, MaintenanceWindowList, NewMaintenanceWindow};
use crate::constraint::OnConstraint;
use crate::page::{NewestFirst, PageRequest, newest_first_where};

/// A window's state now, from its row `t`.
const STATE: &str =
    "case when t.ends_at <= now() then 'past' when t.starts_at > now() then 'future' else 'ongoing' end";

fn select() -> String {
    format!(
        "select t.id, t.starts_at, t.ends_at, t.description, t.created_at, {STATE} as state,
            array(select s.service_id from maintenance_window_services s where s.window_id = t.id order by s.service_id)
                as service_ids
         from maintenance_windows t"
    )
}

fn window_of(row: &PgRow) -> Result<MaintenanceWindow, ApiError> {
    let state: String = row.try_get("state")?;
    Ok(MaintenanceWindow {
        id: row.try_get("id")?,
        service_ids: row.try_get("service_ids")?,
        start: timestamp(row, "starts_at")?.into(),
        end: timestamp(row, "ends_at")?.into(),
        description: row.try_get("description")?,
        state: state.parse().map_err(ApiError::internal)?,
        created_at: timestamp(row, "created_at")?.into(),
    })
}

/// Creates a window over `new.service_ids`. `400` naming `end` unless it is after `start` and in
/// the future, naming `serviceIds[i]` for the first id that names no service.
pub async fn create(pool: &PgPool, new: &NewMaintenanceWindow) -> Result<MaintenanceWindow, ApiError> {
    if new.end <= new.start {
        return Err(ApiError::validation("end", "must be after start"));
    }
    let id = new_id("mw");
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into maintenance_windows (id, starts_at, ends_at, description)
         values ($1, greatest($2::timestamptz, now()), $3::timestamptz, $4)",
    )
    .bind(&id)
    .bind(new.start.0.to_string())
    .bind(new.end.0.to_string())
    .bind(new.description.as_ref().map(|d| d.as_str()).unwrap_or_default())
    .execute(&mut *tx)
    .await
    // After `start` (checked above), so only a past end can break it: the window starts now.
    .on_constraint(|name| {
        (name == "maintenance_windows_interval_check").then(|| ApiError::validation("end", "must be in the future"))
    })?;
    let ids: Vec<&str> = new.service_ids.iter().map(Id::as_str).collect();
    let covered = sqlx::query(
        "insert into maintenance_window_services (window_id, service_id)
         select distinct $1, wanted.id from unnest($2::text[]) as wanted (id)",
    )
    .bind(&id)
    .bind(&ids)
    .execute(&mut *tx)
    .await
    .on_constraint(|name| {
        (name == "maintenance_window_services_service_id_fkey")
            .then(|| ApiError::validation("serviceIds", "names no service"))
    });
    if let Err(refused) = covered {
        drop(tx);
        // The foreign key refused the list: name the entry that is missing, if it still is.
        crate::services::service::check_ids(pool, &new.service_ids).await?;
        return Err(refused);
    }
    tx.commit().await?;
    get(pool, &id).await
}

/// One window; `404` when missing.
pub async fn get(pool: &PgPool, id: &str) -> Result<MaintenanceWindow, ApiError> {
    let row = sqlx::query(&format!("{} where t.id = $1", select())).bind(id).fetch_optional(pool).await?;
    window_of(&row.ok_or_else(|| ApiError::not_found(format!("maintenance window {id}")))?)
}

/// A page of the windows matching `query`, newest first, with how many match.
pub async fn list(
    pool: &PgPool,
    query: &MaintenanceQuery,
    page: &PageRequest<NewestFirst>,
) -> Result<MaintenanceWindowList, ApiError> {
    let filter = format!(
        "($1::text is null or {STATE} = $1)
         and ($2::text is null or exists (select 1 from maintenance_window_services s
                                          where s.window_id = t.id and s.service_id = $2))"
    );
    let (state, service) = (query.state.map(MaintenanceState::as_str), query.service_id.as_ref().map(Id::as_str));
    let (rows, total, pagination) =
        newest_first_where(pool, page, "maintenance_windows", &select(), "", &filter, &[state, service]).await?;
    let maintenance_windows = rows.iter().map(window_of).collect::<Result<Vec<_>, _>>()?;
    Ok(MaintenanceWindowList { maintenance_windows, total, pagination })
}

/// What `DELETE` did to a window.
pub enum Removal {
    /// It is gone.
    Deleted,
    /// It was kept, now over: the worker opens what it suppressed.
    Ended(MaintenanceWindow),
}

/// Deletes or ends a window; `404` when missing.
///
/// - A **future** window is deleted: it suppressed nothing yet.
/// - An **ongoing** window is ended now (`ends_at = now()`) and kept, state `past`: the worker
///   then opens, within a second or so, the incidents it kept `SUPPRESSED`, as when a window ends
///   on time. Deleting it instead would leave them suppressed, with no window left to end.
/// - A **past** window is deleted once the worker has ended it (opened what it suppressed); until
///   then (a second or so after its end) it is kept and answered like an ongoing one, and a later
///   `DELETE` removes it.
pub async fn remove(pool: &PgPool, id: &str) -> Result<Removal, ApiError> {
    let mut tx = pool.begin().await?;
    let found: Option<(String, bool)> = sqlx::query_as(&format!(
        "select {STATE}, t.ended_at is not null from maintenance_windows t where t.id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (state, ended) = found.ok_or_else(|| ApiError::not_found(format!("maintenance window {id}")))?;
    match state.parse().map_err(ApiError::internal)? {
        MaintenanceState::Future => {}
        MaintenanceState::Past if ended => {}
        MaintenanceState::Past => {
            tx.commit().await?;
            return Ok(Removal::Ended(get(pool, id).await?));
        }
        MaintenanceState::Ongoing => {
            // A window started this very instant ends a microsecond later (it must end after its start).
            sqlx::query(
                "update maintenance_windows set ends_at = greatest(now(), starts_at + interval '1 microsecond')
                 where id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Removal::Ended(get(pool, id).await?));
        }
    }
    sqlx::query("delete from maintenance_windows where id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Removal::Deleted)
}
