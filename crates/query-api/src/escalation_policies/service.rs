//! Escalation policies in PostgreSQL: typed input in, policies out. The HTTP handlers and the
//! CLI both call these. Each create or replace writes a row of `escalation_policy_versions`; an
//! incident's escalation reads the version it started with.

use common::ApiError;
use common::ids::new_id;
use common::incident::store::timestamp;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};

use super::body::{NewPolicy, Policy, PolicyList, Steps, TargetType};
use crate::constraint::OnConstraint;
use crate::page::{NewestFirst, PageRequest, newest_first};

const SELECT: &str = "select t.id, t.name, t.version, t.created_at, t.updated_at, v.repeat, v.steps,
        coalesce((select array_agg(s.id order by s.id) from services s where s.escalation_policy_id = t.id), '{}') as service_ids
     from escalation_policies t join escalation_policy_versions v on v.policy_id = t.id and v.version = t.version";

fn policy_of(row: &PgRow) -> Result<Policy, sqlx::Error> {
    Ok(Policy {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        repeat: row.try_get("repeat")?,
        steps: row.try_get::<Json<Steps>, _>("steps")?.0,
        service_ids: row.try_get("service_ids")?,
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
    })
}

/// Refuses targets that name no user or schedule (naming `steps[i].targets[j].id`): they live in
/// the policy's JSON, where no foreign key can hold them.
async fn check(conn: &mut PgConnection, policy: &NewPolicy) -> Result<(), ApiError> {
    let (mut kinds, mut ids, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (i, step) in policy.steps.iter().enumerate() {
        for (j, target) in step.targets.iter().enumerate() {
            kinds.push(match target.kind {
                TargetType::User => "user",
                TargetType::Schedule => "schedule",
            });
            ids.push(target.id.as_str());
            names.push(format!("steps[{i}].targets[{j}].id"));
        }
    }
    let missing: Option<i64> = sqlx::query_scalar(
        "select min(n) from unnest($1::text[], $2::text[]) with ordinality as t (kind, id, n)
         where not case t.kind when 'user' then exists (select 1 from users u where u.id = t.id)
                               else exists (select 1 from schedules s where s.id = t.id) end",
    )
    .bind(&kinds)
    .bind(&ids)
    .fetch_one(&mut *conn)
    .await?;
    match missing.and_then(|n| usize::try_from(n - 1).ok()) {
        Some(i) => Err(ApiError::validation(&names[i], format!("names no {}", kinds[i]))),
        None => Ok(()),
    }
}

async fn write_version(conn: &mut PgConnection, id: &str, version: i32, policy: &NewPolicy) -> Result<(), ApiError> {
    sqlx::query("insert into escalation_policy_versions (policy_id, version, repeat, steps) values ($1, $2, $3, $4)")
        .bind(id)
        .bind(version)
        .bind(policy.repeat.get())
        .bind(Json(&policy.steps))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn create(pool: &PgPool, policy: &NewPolicy) -> Result<Policy, ApiError> {
    let mut tx = pool.begin().await?;
    check(&mut tx, policy).await?;
    let id = new_id("esc");
    sqlx::query("insert into escalation_policies (id, name) values ($1, $2)")
        .bind(&id)
        .bind(policy.name.as_str())
        .execute(&mut *tx)
        .await?;
    write_version(&mut tx, &id, 1, policy).await?;
    tx.commit().await?;
    get(pool, &id).await
}

/// Replaces the policy with a new version of it; running escalations keep theirs. `404` when missing.
pub async fn replace(pool: &PgPool, id: &str, policy: &NewPolicy) -> Result<Policy, ApiError> {
    let mut tx = pool.begin().await?;
    check(&mut tx, policy).await?;
    let version: Option<i32> = sqlx::query_scalar(
        "update escalation_policies set name = $2, version = version + 1, updated_at = now() where id = $1 returning version",
    )
    .bind(id)
    .bind(policy.name.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let version = version.ok_or_else(|| ApiError::not_found(format!("escalation policy {id}")))?;
    write_version(&mut tx, id, version, policy).await?;
    tx.commit().await?;
    get(pool, id).await
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Policy, ApiError> {
    let row = sqlx::query(&format!("{SELECT} where t.id = $1")).bind(id).fetch_optional(pool).await?;
    policy_of(&row.ok_or_else(|| ApiError::not_found(format!("escalation policy {id}")))?).map_err(Into::into)
}

pub async fn list(pool: &PgPool, page: &PageRequest<NewestFirst>) -> Result<PolicyList, ApiError> {
    let (rows, total, pagination) = newest_first(pool, page, "escalation_policies", SELECT, "").await?;
    let escalation_policies = rows.iter().map(policy_of).collect::<Result<Vec<_>, _>>()?;
    Ok(PolicyList { escalation_policies, total, pagination })
}

/// Deletes a policy no service uses (`409` while one does); running escalations of it end.
pub async fn delete(pool: &PgPool, id: &str) -> Result<(), ApiError> {
    let deleted = sqlx::query("delete from escalation_policies where id = $1")
        .bind(id)
        .execute(pool)
        .await
        .on_constraint(|name| {
            (name == "services_escalation_policy_id_fkey")
                .then(|| ApiError::conflict(format!("escalation policy {id} is used by a service; unlink it first")))
        })?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("escalation policy {id}")));
    }
    Ok(())
}
