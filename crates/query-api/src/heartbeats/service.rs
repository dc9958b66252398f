//! Heartbeats in PostgreSQL (DESIGN §12): typed input in, heartbeats out. The HTTP handlers and
//! the CLI both call these. Ingest's ping endpoint (`ingest::routes::heartbeats`) records pings
//! and resolves a missed heartbeat's incident; the worker (`worker::roles::heartbeats`) triggers
//! it when a heartbeat is missed.

use common::ApiError;
use common::auth::hash_key;

use crate::credentials::random_token;
use common::fields::Id;
use common::ids::new_id;
use common::incident::store::{optional_timestamp, timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::body::{Heartbeat, HeartbeatList, HeartbeatQuery, HeartbeatWithPingUrl, NewHeartbeat};
use crate::constraint::OnConstraint;
use crate::page::{NewestFirst, PageRequest, newest_first_where};

const SELECT: &str = "select t.id, t.service_id, t.name, t.interval_seconds, t.grace_seconds, t.state,
        t.last_ping_at, t.due_at, t.created_at
     from heartbeats t";

/// Random bytes in a ping URL's token (hex in the URL).
const TOKEN_BYTES: usize = 24;

fn heartbeat_of(row: &PgRow) -> Result<Heartbeat, ApiError> {
    let state: String = row.try_get("state")?;
    Ok(Heartbeat {
        id: row.try_get("id")?,
        service_id: row.try_get("service_id")?,
        name: row.try_get("name")?,
        interval_seconds: row.try_get("interval_seconds")?,
        grace_seconds: row.try_get("grace_seconds")?,
        state: state.parse().map_err(ApiError::internal)?,
        last_ping_at: optional_timestamp(row, "last_ping_at")?.map(Into::into),
        due_at: timestamp(row, "due_at")?.into(),
        created_at: timestamp(row, "created_at")?.into(),
    })
}

/// The URL a heartbeat with `token` is pinged at, on ingest at `ingest_public_url`.
fn ping_url(ingest_public_url: &str, token: &str) -> String {
    format!("{}/api/heartbeats/ping/{token}", ingest_public_url.trim_end_matches('/'))
}

/// Creates a heartbeat, due after its interval and grace; its ping URL (on ingest at
/// `ingest_public_url`) holds a fresh token, shown this once: only its SHA-256 is stored. `400`
/// naming `serviceId` when it names no service.
pub async fn create(
    pool: &PgPool,
    ingest_public_url: &str,
    new: &NewHeartbeat,
) -> Result<HeartbeatWithPingUrl, ApiError> {
    let (id, token) = (new_id("hb"), random_token(TOKEN_BYTES));
    let grace = new.grace_seconds.unwrap_or_default();
    sqlx::query(
        "insert into heartbeats (id, service_id, name, interval_seconds, grace_seconds, token_hash, due_at)
         values ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $4 + $5))",
    )
    .bind(&id)
    .bind(new.service_id.as_str())
    .bind(new.name.as_str())
    .bind(new.interval_seconds.get())
    .bind(grace.get())
    .bind(&hash_key(&token)[..])
    .execute(pool)
    .await
    .on_constraint(|name| {
        (name == "heartbeats_service_id_fkey").then(|| ApiError::validation("serviceId", "names no service"))
    })?;
    Ok(HeartbeatWithPingUrl { heartbeat: get(pool, &id).await?, ping_url: ping_url(ingest_public_url, &token) })
}

/// One heartbeat; `404` when missing.
pub async fn get(pool: &PgPool, id: &str) -> Result<Heartbeat, ApiError> {
    let row = sqlx::query(&format!("{SELECT} where t.id = $1")).bind(id).fetch_optional(pool).await?;
    heartbeat_of(&row.ok_or_else(|| ApiError::not_found(format!("heartbeat {id}")))?)
}

/// A page of the heartbeats matching `query`, newest first, with how many match.
pub async fn list(
    pool: &PgPool,
    query: &HeartbeatQuery,
    page: &PageRequest<NewestFirst>,
) -> Result<HeartbeatList, ApiError> {
    let service = query.service_id.as_ref().map(Id::as_str);
    let filter = "$1::text is null or t.service_id = $1";
    let (rows, total, pagination) =
        newest_first_where(pool, page, "heartbeats", SELECT, "", filter, &[service]).await?;
    let heartbeats = rows.iter().map(heartbeat_of).collect::<Result<Vec<_>, _>>()?;
    Ok(HeartbeatList { heartbeats, total, pagination })
}

/// Deletes a heartbeat: its pings are refused from now on; an incident it raised stays as it is.
/// `404` when missing.
pub async fn delete(pool: &PgPool, id: &str) -> Result<(), ApiError> {
    let deleted = sqlx::query("delete from heartbeats where id = $1").bind(id).execute(pool).await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("heartbeat {id}")));
    }
    Ok(())
}
