//! Services in PostgreSQL: typed input in, services out. The HTTP handlers and the CLI both call
//! these.

use crate::credentials::random_token;
use common::ApiError;
use common::fields::{Id, Name};
use common::ids::new_id;
use common::incident::store::timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::body::{NewService, OpenIncidents, Service, ServiceList, ServicePatch, ServiceStatus, ServiceWithKey};
use crate::constraint::OnConstraint;
use crate::page::{NewestFirst, PageRequest, newest_first};

const SELECT: &str = "select t.id, t.name, t.description, t.routing_key, t.rate_limit, t.created_at, t.updated_at,
        t.escalation_policy_id,
        exists (select 1 from maintenance_window_services m join maintenance_windows w on w.id = m.window_id
                where m.service_id = t.id and w.starts_at <= now() and w.ends_at > now()) as in_maintenance,
        count(i.id) filter (where i.urgency = 'HIGH') as high,
        count(i.id) filter (where i.urgency = 'MEDIUM') as medium,
        count(i.id) filter (where i.urgency = 'LOW') as low
     from services t left join incidents i on i.service_id = t.id and i.status <> 'RESOLVED'";

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
        escalation_policy_id: row.try_get("escalation_policy_id")?,
        in_maintenance: row.try_get("in_maintenance")?,
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
        routing_key: if show_routing_key { Some(row.try_get("routing_key")?) } else { None },
        rate_limit: if show_routing_key { Some(row.try_get("rate_limit")?) } else { None },
    })
}

/// One service; its routing key only when `show_routing_key`. `404` when missing.
pub async fn get(pool: &PgPool, id: &str, show_routing_key: bool) -> Result<Service, ApiError> {
    let sql = format!("{SELECT} where t.id = $1 group by t.id");
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("service {id}")))?;
    Ok(service_of(&row, show_routing_key)?)
}

/// A page of services, newest first.
pub async fn list(
    pool: &PgPool,
    page: &PageRequest<NewestFirst>,
    show_routing_keys: bool,
) -> Result<ServiceList, ApiError> {
    let (rows, total, pagination) = newest_first(pool, page, "services", SELECT, "group by t.id").await?;
    let services = rows.iter().map(|row| service_of(row, show_routing_keys)).collect::<Result<Vec<_>, _>>()?;
    Ok(ServiceList { services, total, pagination })
}

/// Creates a service with a fresh routing (integration) key: 32 hex characters, like PagerDuty's.
pub async fn create(pool: &PgPool, new: &NewService) -> Result<ServiceWithKey, ApiError> {
    let service = ServiceWithKey {
        id: new_id("svc"),
        name: new.name.as_str().to_owned(),
        description: new.description.as_ref().map(|d| d.as_str().to_owned()).unwrap_or_default(),
        routing_key: random_token(16),
        rate_limit: new.rate_limit.map(|r| r.get()),
    };
    sqlx::query(
        "insert into services (id, name, description, routing_key, rate_limit, escalation_policy_id)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&service.id)
    .bind(&service.name)
    .bind(&service.description)
    .bind(&service.routing_key)
    .bind(service.rate_limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
    .bind(new.escalation_policy_id.as_ref().map(Id::as_str))
    .execute(pool)
    .await
    .on_constraint(unknown_policy)?;
    Ok(service)
}

/// Refuses a list of service ids (a body's `serviceIds`) with one that names no service, naming
/// the first such entry (`serviceIds[i]`).
pub async fn check_ids(pool: &PgPool, ids: &[Id]) -> Result<(), ApiError> {
    let ids: Vec<&str> = ids.iter().map(Id::as_str).collect();
    let missing: Option<i64> = sqlx::query_scalar(
        "select min(n) - 1 from unnest($1::text[]) with ordinality as wanted (id, n)
         where not exists (select 1 from services s where s.id = wanted.id)",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    match missing {
        Some(i) => Err(ApiError::validation(&format!("serviceIds[{i}]"), "names no service")),
        None => Ok(()),
    }
}

fn unknown_policy(name: &str) -> Option<ApiError> {
    (name == "services_escalation_policy_id_fkey")
        .then(|| ApiError::validation("escalationPolicyId", "names no escalation policy"))
}

/// Applies `patch`; `404` when missing.
pub async fn update(pool: &PgPool, id: &str, patch: &ServicePatch) -> Result<(), ApiError> {
    let policy = patch.escalation_policy_id.as_ref();
    let updated = sqlx::query(
        "update services set name = coalesce($2, name), description = coalesce($3, description),
            escalation_policy_id = case when $4 then $5 else escalation_policy_id end, updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(patch.name.as_ref().map(Name::as_str))
    .bind(patch.description.as_ref().map(|d| d.as_str()))
    .bind(policy.is_some())
    .bind(policy.and_then(Option::as_ref).map(Id::as_str))
    .execute(pool)
    .await
    .on_constraint(unknown_policy)?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("service {id}")));
    }
    Ok(())
}

fn with_key((id, name, description, routing_key, rate_limit): KeyRow) -> ServiceWithKey {
    ServiceWithKey { id, name, description, routing_key, rate_limit: rate_limit.map(i32::unsigned_abs) }
}

type KeyRow = (String, String, String, String, Option<i32>);

/// Every service with its routing key, newest first.
pub async fn list_with_keys(pool: &PgPool) -> Result<Vec<ServiceWithKey>, ApiError> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "select id, name, description, routing_key, rate_limit from services order by created_at desc, id desc",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(with_key).collect())
}

/// Gives a service a new routing key; the old one stops working. `404` when missing.
pub async fn rotate_routing_key(pool: &PgPool, id: &str) -> Result<ServiceWithKey, ApiError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "update services set routing_key = $2, updated_at = now() where id = $1
         returning id, name, description, routing_key, rate_limit",
    )
    .bind(id)
    .bind(random_token(16))
    .fetch_optional(pool)
    .await?;
    row.map(with_key).ok_or_else(|| ApiError::not_found(format!("service {id}")))
}
