//! Webhooks and their deliveries in PostgreSQL: typed input in, webhooks out. The HTTP handlers
//! and the CLI both call these. Workers send the deliveries (`worker::roles::webhooks`); asking
//! for one here (ping, redeliver) wakes them with a notification.

use crate::credentials::new_webhook_secret;
use common::ApiError;
use common::config::WebhookConfig;
use common::fields::Id;
use common::ids::new_id;
use common::incident::store::{optional_timestamp, timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::body::{
    Attempt, Delivery, DeliveryList, DeliveryQuery, DeliveryStatus, NewWebhook, Webhook, WebhookList, WebhookPatch,
    WebhookUrl, WebhookWithSecret,
};
use crate::page::{NewestFirst, PageRequest, newest_first};

const SELECT: &str = "select t.id, t.url, t.events, t.service_ids, t.description, t.enabled, t.disabled_reason,
        t.failing_since, case when t.previous_until > now() then t.previous_until end as previous_until,
        t.created_at, t.updated_at
     from webhooks t";

fn webhook_of(row: &PgRow) -> Result<Webhook, sqlx::Error> {
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: row.try_get("events")?,
        service_ids: row.try_get("service_ids")?,
        description: row.try_get("description")?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: optional_timestamp(row, "failing_since")?.map(Into::into),
        previous_secret_until: optional_timestamp(row, "previous_until")?.map(Into::into),
        created_at: timestamp(row, "created_at")?.into(),
        updated_at: timestamp(row, "updated_at")?.into(),
    })
}

/// Refuses a URL (the body's `field`) whose host is a non-public address (or `localhost`) unless
/// `config` allows them. Host names are checked again on every connection, against the addresses
/// they resolve to.
pub fn check_destination(config: &WebhookConfig, url: &WebhookUrl, field: &str) -> Result<(), ApiError> {
    let private = match url.0.host() {
        Some(url::Host::Ipv4(ip)) => !config.allows(ip.into()),
        Some(url::Host::Ipv6(ip)) => !config.allows(ip.into()),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            !config.allow_private && (name == "localhost" || name.ends_with(".localhost"))
        }
        None => false,
    };
    if private {
        return Err(ApiError::validation(
            field,
            "is a loopback, private or link-local address; set WEBHOOK_ALLOW_PRIVATE=true to allow it",
        ));
    }
    Ok(())
}

/// Refuses service ids that name no service, naming the first such entry (`serviceIds[i]`). A
/// webhook's services are a filter held in an array, which no foreign key can check.
async fn check_services(pool: &PgPool, ids: Option<&Vec<Id>>) -> Result<(), ApiError> {
    match ids {
        Some(ids) => crate::services::service::check_ids(pool, ids).await,
        None => Ok(()),
    }
}

fn names<T>(list: &Option<Vec<T>>, name: impl Fn(&T) -> String) -> Option<Vec<String>> {
    list.as_ref().map(|list| list.iter().map(name).collect())
}

/// Creates a webhook with a fresh secret, shown this once.
pub async fn create(pool: &PgPool, config: &WebhookConfig, new: &NewWebhook) -> Result<WebhookWithSecret, ApiError> {
    check_destination(config, &new.url, "url")?;
    check_services(pool, new.service_ids.as_ref()).await?;
    let (id, secret) = (new_id("whk"), new_webhook_secret());
    sqlx::query(
        "insert into webhooks (id, url, events, service_ids, description, secret) values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(new.url.0.as_str())
    .bind(names(&new.events, |e| e.as_str().to_owned()))
    .bind(names(&new.service_ids, |s| s.as_str().to_owned()))
    .bind(new.description.as_ref().map(|d| d.as_str()).unwrap_or_default())
    .bind(&secret)
    .execute(pool)
    .await?;
    Ok(WebhookWithSecret { webhook: get(pool, &id).await?, secret })
}

/// One webhook; `404` when missing.
pub async fn get(pool: &PgPool, id: &str) -> Result<Webhook, ApiError> {
    let row = sqlx::query(&format!("{SELECT} where t.id = $1")).bind(id).fetch_optional(pool).await?;
    Ok(webhook_of(&row.ok_or_else(|| ApiError::not_found(format!("webhook {id}")))?)?)
}

/// A page of webhooks, newest first.
pub async fn list(pool: &PgPool, page: &PageRequest<NewestFirst>) -> Result<WebhookList, ApiError> {
    let (rows, total, pagination) = newest_first(pool, page, "webhooks", SELECT, "").await?;
    let webhooks = rows.iter().map(webhook_of).collect::<Result<Vec<_>, _>>()?;
    Ok(WebhookList { webhooks, total, pagination })
}

/// Applies `patch`; re-enabling clears what disabled it. `404` when missing.
pub async fn update(
    pool: &PgPool,
    config: &WebhookConfig,
    id: &str,
    patch: &WebhookPatch,
) -> Result<Webhook, ApiError> {
    if let Some(url) = &patch.url {
        check_destination(config, url, "url")?;
    }
    check_services(pool, patch.service_ids.as_ref().and_then(Option::as_ref)).await?;
    let updated = sqlx::query(
        "update webhooks set
            url = coalesce($2, url),
            events = case when $3 then $4 else events end,
            service_ids = case when $5 then $6 else service_ids end,
            description = case when $7 then coalesce($8, '') else description end,
            enabled = coalesce($9, enabled),
            disabled_reason = case when $9 then null else disabled_reason end,
            failing_since = case when $9 and not enabled then null else failing_since end,
            updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(patch.url.as_ref().map(|u| u.0.as_str()))
    .bind(patch.events.is_some())
    .bind(patch.events.as_ref().and_then(|e| names(e, |e| e.as_str().to_owned())))
    .bind(patch.service_ids.is_some())
    .bind(patch.service_ids.as_ref().and_then(|s| names(s, |s| s.as_str().to_owned())))
    .bind(patch.description.is_some())
    .bind(patch.description.as_ref().and_then(|d| d.as_ref().map(|d| d.as_str())))
    .bind(patch.enabled)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("webhook {id}")));
    }
    get(pool, id).await
}

/// Deletes a webhook and its delivery log. `404` when missing.
pub async fn delete(pool: &PgPool, id: &str) -> Result<(), ApiError> {
    let deleted = sqlx::query("delete from webhooks where id = $1").bind(id).execute(pool).await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("webhook {id}")));
    }
    Ok(())
}

/// How long the secret before a rotation keeps signing deliveries, beside the new one.
const ROTATION_OVERLAP: &str = "24 hours";

/// Gives a webhook a new secret, shown this once; the old one signs too for 24 hours, so
/// receivers can switch without missing a delivery. `404` when missing.
pub async fn rotate_secret(pool: &PgPool, id: &str) -> Result<WebhookWithSecret, ApiError> {
    let secret = new_webhook_secret();
    let rotated = sqlx::query(&format!(
        "update webhooks set previous_secret = secret, previous_until = now() + interval '{ROTATION_OVERLAP}',
                             secret = $2, updated_at = now()
         where id = $1"
    ))
    .bind(id)
    .bind(&secret)
    .execute(pool)
    .await?;
    if rotated.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("webhook {id}")));
    }
    Ok(WebhookWithSecret { webhook: get(pool, id).await?, secret })
}

/// Queues a `ping` to the webhook (sent even if it is disabled, so a receiver can be tested
/// before re-enabling it); the delivery log shows how it went. `404` when missing.
pub async fn ping(pool: &PgPool, id: &str) -> Result<Delivery, ApiError> {
    let delivery_id = new_id("msg");
    let body = serde_json::json!({
        "type": "ping",
        "timestamp": jiff::Timestamp::now().to_string(),
        "data": {"webhookId": id},
    });
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "insert into webhook_deliveries (id, webhook_id, stream_seq, type, body)
         select $1, id, 0, 'ping', $3 from webhooks where id = $2",
    )
    .bind(&delivery_id)
    .bind(id)
    .bind(body.to_string())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("webhook {id}")));
    }
    wake(&mut tx).await?;
    tx.commit().await?;
    delivery(pool, id, &delivery_id).await
}

/// Sends a delivery again, under the same `webhook-id`, as soon as a worker can: its attempts so
/// far stay in the log. `404` when either is missing.
pub async fn redeliver(pool: &PgPool, webhook_id: &str, delivery_id: &str) -> Result<Delivery, ApiError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "update webhook_deliveries set status = 'pending', next_attempt_at = now(), finished_at = null
         where webhook_id = $1 and id = $2",
    )
    .bind(webhook_id)
    .bind(delivery_id)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("delivery {delivery_id} of webhook {webhook_id}")));
    }
    wake(&mut tx).await?;
    tx.commit().await?;
    delivery(pool, webhook_id, delivery_id).await
}

/// Tells the workers, when `tx` commits, that a delivery is due.
async fn wake(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, '')").bind(common::db::WEBHOOK_WAKE_CHANNEL).execute(tx).await.map(drop)
}

const DELIVERY_SELECT: &str = "select d.id, d.webhook_id, d.type, d.incident_id, d.status,
        case when d.status = 'pending' then greatest(d.next_attempt_at, now()) end as next_attempt_at,
        d.created_at, d.finished_at,
        coalesce((select jsonb_agg(jsonb_build_object('at', a.at, 'httpStatus', a.http_status,
                                                      'latencyMs', a.latency_ms, 'error', a.error) order by a.n)
                  from webhook_attempts a where a.delivery_id = d.id), '[]'::jsonb) as attempts
     from webhook_deliveries d";

fn delivery_of(row: &PgRow) -> Result<Delivery, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Stored {
        at: jiff::Timestamp,
        http_status: Option<i32>,
        latency_ms: i32,
        error: Option<String>,
    }
    let attempts: Vec<Stored> = serde_json::from_value(row.try_get("attempts")?).map_err(ApiError::internal)?;
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        kind: row.try_get("type")?,
        incident_id: row.try_get("incident_id")?,
        status: status.parse().map_err(ApiError::internal)?,
        next_attempt_at: optional_timestamp(row, "next_attempt_at")?.map(Into::into),
        attempts: attempts
            .into_iter()
            .map(|a| Attempt { at: a.at.into(), http_status: a.http_status, latency_ms: a.latency_ms, error: a.error })
            .collect(),
        created_at: timestamp(row, "created_at")?.into(),
        finished_at: optional_timestamp(row, "finished_at")?.map(Into::into),
    })
}

/// One delivery of a webhook with its attempts; `404` when missing.
pub async fn delivery(pool: &PgPool, webhook_id: &str, delivery_id: &str) -> Result<Delivery, ApiError> {
    let row = sqlx::query(&format!("{DELIVERY_SELECT} where d.webhook_id = $1 and d.id = $2"))
        .bind(webhook_id)
        .bind(delivery_id)
        .fetch_optional(pool)
        .await?;
    delivery_of(&row.ok_or_else(|| ApiError::not_found(format!("delivery {delivery_id} of webhook {webhook_id}")))?)
}

/// A page of a webhook's deliveries, newest first, each with its attempts. `404` when the
/// webhook is missing.
pub async fn deliveries(
    pool: &PgPool,
    webhook_id: &str,
    query: &DeliveryQuery,
    page: &PageRequest<NewestFirst>,
) -> Result<DeliveryList, ApiError> {
    get(pool, webhook_id).await?;
    let sql = format!(
        "{DELIVERY_SELECT}
         where d.webhook_id = $1 and ($2::text is null or d.status = $2)
           and ($3::text is null or (d.created_at, d.id) < ($3::timestamptz, $4))
         order by d.created_at desc, d.id desc limit $5 offset $6"
    );
    let (after_created, after_id) = page.cursor.as_ref().map(NewestFirst::parts).unzip();
    let mut rows = sqlx::query(&sql)
        .bind(webhook_id)
        .bind(query.status.map(DeliveryStatus::as_str))
        .bind(after_created)
        .bind(after_id)
        .bind(page.fetch())
        .bind(page.skip())
        .fetch_all(pool)
        .await?;
    let pagination = page.finish(&mut rows, NewestFirst::of)?;
    let deliveries = rows.iter().map(delivery_of).collect::<Result<Vec<_>, _>>()?;
    Ok(DeliveryList { deliveries, pagination })
}
