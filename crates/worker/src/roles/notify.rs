//! Background role: sends the notifications escalation steps queued (DESIGN §11), by e-mail over
//! SMTP, or as a JSON post to a webhook or a Slack incoming webhook. Every worker sends. A sender
//! first cancels due notifications whose incident is no longer `OPEN` (an acknowledgement stops
//! what was not sent yet), then claims due ones by moving their due time past the attempt's
//! timeout (`for update skip locked`), sends, and records the outcome; a sender killed
//! mid-attempt leaves its claims to fall due again. Failures worth retrying are retried with
//! the backoff of webhooks for 15 minutes; every final outcome is in the incident's timeline.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::webhooks::send::{TIMEOUT, backoff, client, describe};
use crate::config::NotifyConfig;

/// The channel queued notifications are announced on, so idle senders send them at once.
pub const WAKE_CHANNEL: &str = "notifications";
use common::config::WebhookConfig;

/// How long a claim lasts: past it, the notification is due again (its sender died).
const LEASE_SECS: f64 = 30.0;
/// Attempts one worker has in flight at once.
const IN_FLIGHT: usize = 64;
/// Longest an idle sender waits before looking for due notifications (retries fall due unannounced).
const IDLE: Duration = Duration::from_secs(1);
/// How long a notification is retried before it fails.
const GIVE_UP_MINUTES: i64 = 15;

/// Where notifications go out: the SMTP transport (if `SMTP_URL` is set) and the HTTP client.
#[derive(Clone)]
struct Senders {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    http: reqwest::Client,
}

/// A claimed notification and what it is about.
#[derive(sqlx::FromRow)]
struct Claim {
    id: String,
    incident_id: String,
    channel: String,
    address: String,
    attempts: i32,
    user_id: String,
    user_name: String,
    title: String,
    urgency: String,
    service: String,
}

enum Outcome {
    Sent,
    Retry(String),
    Failed(String),
}

/// Sends until `shutdown`; attempts in flight then finish (each within [`TIMEOUT`]).
pub async fn run(pool: PgPool, webhooks: WebhookConfig, config: NotifyConfig, shutdown: CancellationToken) {
    let senders = match senders(&webhooks, &config) {
        Ok(senders) => senders,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "cannot set up notification senders; not notifying");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        if let Err(err) = send(&pool, &senders, &shutdown).await {
            tracing::warn!(error = %format!("{err:#}"), "sending notifications failed; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(IDLE) => {}
            }
        }
    }
}

fn senders(webhooks: &WebhookConfig, config: &NotifyConfig) -> anyhow::Result<Senders> {
    let http = client(webhooks)?;
    let smtp = match &config.smtp_url {
        Some(url) => Some(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.timeout(Some(TIMEOUT)).build()),
        None => None,
    };
    Ok(Senders { smtp, from: config.smtp_from.parse()?, http })
}

async fn send(pool: &PgPool, senders: &Senders, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut wake = PgListener::connect_with(pool).await?;
    wake.listen(WAKE_CHANNEL).await?;
    let mut in_flight: JoinSet<()> = JoinSet::new();
    loop {
        if shutdown.is_cancelled() {
            while in_flight.join_next().await.is_some() {}
            return Ok(());
        }
        cancel_closed(pool).await?;
        let room = IN_FLIGHT - in_flight.len();
        let claims = if room > 0 { claim(pool, room).await? } else { Vec::new() };
        for claim in claims {
            let (pool, senders) = (pool.clone(), senders.clone());
            in_flight.spawn(async move {
                let outcome = attempt(&senders, &claim).await;
                if let Err(err) = record(&pool, &claim, &outcome).await {
                    // The claim lapses and the notification is tried again.
                    tracing::warn!(error = %err, notification = %claim.id, "could not record a notification attempt");
                }
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            notified = wake.recv() => { notified?; }
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// Cancels due notifications whose incident left `OPEN` (acknowledged, resolved, snoozed) before
/// they were sent, each with a timeline entry.
async fn cancel_closed(pool: &PgPool) -> Result<(), sqlx::Error> {
    let cancelled: Vec<(String, i64)> = sqlx::query_as(
        "with gone as (
            update notifications n set status = 'cancelled', finished_at = now()
            from incidents i
            where i.id = n.incident_id and n.status = 'pending' and n.next_attempt_at <= now() and i.status <> 'OPEN'
            returning n.id, n.incident_id, n.user_id, n.channel, n.address, i.status
         ), logged as (
            insert into incident_timeline (incident_id, kind, actor_id, message, data)
            select incident_id, 'notification', 'system',
                   channel || ' to ' || address || ': not sent, the incident is ' || lower(status),
                   jsonb_build_object('notificationId', id, 'userId', user_id, 'channel', channel, 'address', address,
                                      'outcome', 'cancelled')
            from gone
         )
         select channel, count(*) from gone group by channel",
    )
    .fetch_all(pool)
    .await?;
    for (channel, n) in cancelled {
        metrics::counter!("notifications_total", "channel" => channel, "outcome" => "cancelled")
            .increment(u64::try_from(n).unwrap_or(0));
    }
    Ok(())
}

/// Claims at most `room` due notifications of open incidents.
async fn claim(pool: &PgPool, room: usize) -> anyhow::Result<Vec<Claim>> {
    Ok(sqlx::query_as(
        "with locked as (
            select n.id from notifications n join incidents i on i.id = n.incident_id
            where n.status = 'pending' and n.next_attempt_at <= now() and i.status = 'OPEN'
            order by n.next_attempt_at limit $1
            for update of n skip locked
         )
         update notifications n set next_attempt_at = now() + make_interval(secs => $2), attempts = n.attempts + 1
         from locked, incidents i, services s, users u
         where n.id = locked.id and i.id = n.incident_id and s.id = i.service_id and u.id = n.user_id
         returning n.id, n.incident_id, n.channel, n.address, n.attempts, n.user_id, u.name as user_name,
                   i.title, i.urgency, s.name as service",
    )
    .bind(i64::try_from(room)?)
    .bind(LEASE_SECS)
    .fetch_all(pool)
    .await?)
}

/// The words of a notification: a subject line and a body.
fn words(claim: &Claim) -> (String, String) {
    let subject = format!("[OpsSentinal] {} incident on {}: {}", claim.urgency, claim.service, claim.title);
    let body = format!(
        "{}\n\nService: {}\nUrgency: {}\nIncident: {}\n\nAcknowledge it to stop the escalation:\n  opssentinal incident ack {}\n",
        claim.title, claim.service, claim.urgency, claim.incident_id, claim.incident_id
    );
    (subject, body)
}

async fn attempt(senders: &Senders, claim: &Claim) -> Outcome {
    let (subject, body) = words(claim);
    match claim.channel.as_str() {
        "email" => email(senders, claim, subject, body).await,
        "slack" => post(senders, &claim.address, &json!({"text": format!("*{subject}*\n{body}")})).await,
        _ => {
            let payload = json!({
                "type": "incident.notification",
                "notificationId": claim.id,
                "user": {"id": claim.user_id, "name": claim.user_name},
                "incident": {"id": claim.incident_id, "title": claim.title, "urgency": claim.urgency, "service": claim.service},
                "summary": subject,
            });
            post(senders, &claim.address, &payload).await
        }
    }
}

async fn email(senders: &Senders, claim: &Claim, subject: String, body: String) -> Outcome {
    let Some(smtp) = &senders.smtp else { return Outcome::Failed("SMTP_URL is not set".into()) };
    let to: Mailbox = match claim.address.parse() {
        Ok(to) => to,
        Err(err) => return Outcome::Failed(format!("not an e-mail address: {err}")),
    };
    let message = Message::builder()
        .from(senders.from.clone())
        .to(to)
        .subject(subject)
        // One Message-ID per notification: a copy sent again after a crash is recognisable.
        .message_id(Some(format!("<{}@opssentinal>", claim.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body);
    let message = match message {
        Ok(message) => message,
        Err(err) => return Outcome::Failed(format!("cannot build the message: {err}")),
    };
    match smtp.send(message).await {
        Ok(_) => Outcome::Sent,
        Err(err) if err.is_permanent() => Outcome::Failed(format!("refused: {err}")),
        Err(err) => Outcome::Retry(err.to_string()),
    }
}

async fn post(senders: &Senders, url: &str, payload: &serde_json::Value) -> Outcome {
    match senders.http.post(url).json(payload).send().await {
        Ok(response) if response.status().is_success() => Outcome::Sent,
        Ok(response) => {
            let status = response.status();
            let text = format!("answered {status}");
            if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                Outcome::Retry(text)
            } else {
                Outcome::Failed(text)
            }
        }
        Err(err) => Outcome::Retry(describe(&err)),
    }
}

/// Records an attempt: the notification is sent, fails, or falls due again (failing once it has
/// been retried for 15 minutes); a final outcome goes in the incident's timeline.
async fn record(pool: &PgPool, claim: &Claim, outcome: &Outcome) -> Result<(), sqlx::Error> {
    let (label, error, retry_in) = match outcome {
        Outcome::Sent => ("sent", None, 0.0),
        Outcome::Failed(error) => ("failed", Some(error.as_str()), 0.0),
        Outcome::Retry(error) => ("retried", Some(error.as_str()), backoff(claim.attempts).as_secs_f64()),
    };
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar(&format!(
        "update notifications set
            status = case
                when $2 = 'sent' then 'sent'
                when $2 = 'failed' or now() + make_interval(secs => $3) > created_at + interval '{GIVE_UP_MINUTES} minutes' then 'failed'
                else 'pending' end,
            next_attempt_at = now() + make_interval(secs => $3), last_error = $4,
            finished_at = case when $2 = 'retried' and now() + make_interval(secs => $3) <= created_at + interval '{GIVE_UP_MINUTES} minutes'
                               then null else now() end
         where id = $1 and status = 'pending' and attempts = $5
         returning status"
    ))
    .bind(&claim.id)
    .bind(label)
    .bind(retry_in)
    .bind(error)
    // Still this attempt's claim: a sender whose claim lapsed and was taken over records nothing.
    .bind(claim.attempts)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(status) = status.filter(|s| s != "pending") {
        let message = match error {
            Some(error) if status == "failed" => format!("{} to {}: failed: {error}", claim.channel, claim.address),
            _ => format!("{} to {}: sent", claim.channel, claim.address),
        };
        sqlx::query(
            "insert into incident_timeline (incident_id, kind, actor_id, message, data) values ($1, 'notification', 'system', $2, $3)",
        )
        .bind(&claim.incident_id)
        .bind(message)
        .bind(json!({"notificationId": claim.id, "userId": claim.user_id, "channel": claim.channel,
                     "address": claim.address, "outcome": status, "attempts": claim.attempts, "error": error}))
        .execute(&mut *tx)
        .await?;
        metrics::counter!("notifications_total", "channel" => claim.channel.clone(), "outcome" => status).increment(1);
    }
    tx.commit().await
}
