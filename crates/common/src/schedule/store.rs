//! Reading a schedule from PostgreSQL into an [`oncall::Schedule`] to ask who is on call.

use jiff::tz::TimeZone;
use sqlx::{PgConnection, Row};

use super::oncall::{Layer, Override, Rotation, Schedule};
use crate::incident::store::{optional_timestamp, timestamp};

/// The schedule `id` with its layers (members in rotation order) and overrides; `None` if there
/// is no such schedule.
pub async fn load(conn: &mut PgConnection, id: &str) -> Result<Option<Schedule>, sqlx::Error> {
    let Some(zone) = sqlx::query_scalar::<_, String>("select time_zone from schedules where id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let zone = TimeZone::get(&zone).map_err(|err| sqlx::Error::Decode(err.into()))?;
    let layer_rows = sqlx::query(
        "select l.id, l.starts_at, l.ends_at, l.rotation, l.rotation_hours, l.handoff_time,
                coalesce(array_agg(m.user_id order by m.position) filter (where m.user_id is not null), '{}') as users
         from schedule_layers l left join schedule_layer_members m on m.layer_id = l.id
         where l.schedule_id = $1 group by l.id order by l.position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut layers = Vec::with_capacity(layer_rows.len());
    for r in &layer_rows {
        let handoff: String = r.try_get("handoff_time")?;
        layers.push(Layer {
            id: r.try_get("id")?,
            start: timestamp(r, "starts_at")?,
            end: optional_timestamp(r, "ends_at")?,
            rotation: Rotation::stored(r.try_get("rotation")?, r.try_get("rotation_hours")?),
            handoff: handoff.parse().map_err(|err: jiff::Error| sqlx::Error::Decode(err.into()))?,
            users: r.try_get("users")?,
        });
    }
    let overrides = sqlx::query(
        "select id, user_id, starts_at, ends_at from schedule_overrides where schedule_id = $1 order by created_at, id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(Override {
            id: r.try_get("id")?,
            user: r.try_get("user_id")?,
            start: timestamp(r, "starts_at")?,
            end: timestamp(r, "ends_at")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(Some(Schedule { zone, layers, overrides }))
}
