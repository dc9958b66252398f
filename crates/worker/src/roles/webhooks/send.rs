//! Sends due webhook deliveries and records each attempt. Every worker sends: a sender claims
//! deliveries by moving their due time past the attempt's timeout (`for update skip locked`, so
//! senders never claim the same one), posts them, and records the outcome; a sender killed
//! mid-attempt leaves its claims to fall due again, under the same `webhook-id`.
//!
//! Order per (webhook, incident): only the oldest unfinished delivery of each is claimed, so the
//! next is sent after it succeeded or failed for good. One slow receiver never delays another:
//! each webhook has at most [`PER_WEBHOOK`] attempts in flight per worker, and every attempt
//! gives up after [`TIMEOUT`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use common::config::WebhookConfig;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sign::signatures;

/// How long an attempt may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim lasts: past it, the delivery is due again (its sender died).
const LEASE_SECS: i64 = 15;
/// Attempts one worker has in flight at once.
const IN_FLIGHT: usize = 256;
/// Attempts one worker has in flight at once to one webhook.
const PER_WEBHOOK: i32 = 16;
/// Longest an idle sender waits before looking for due deliveries (retries fall due unannounced).
const IDLE: Duration = Duration::from_secs(1);
/// How long deliveries are retried before they fail, and a webhook may fail before it is disabled.
const GIVE_UP_HOURS: i64 = 24;

/// Sends until `shutdown`; attempts in flight then finish (each within [`TIMEOUT`]).
pub async fn run(pool: PgPool, config: WebhookConfig, shutdown: CancellationToken) {
    let client = match client(&config) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the webhook client; not sending webhooks");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        if let Err(err) = send(&pool, &client, &config, &shutdown).await {
            tracing::warn!(error = %format!("{err:#}"), "webhook sending failed; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(IDLE) => {}
            }
        }
    }
}

/// The HTTP client: no redirects, [`TIMEOUT`], and a resolver that leaves out the addresses
/// `config` does not allow, so the check applies to the address actually connected to.
pub fn client(config: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    // reqwest is built with rustls and no default crypto provider: use ring, as async-nats does.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would be the address connected to, and the check below would not apply.
        .no_proxy()
        .user_agent(concat!("OpsSentinal-Webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(AllowedAddresses(config.clone())))
        .build()
}

struct AllowedAddresses(WebhookConfig);

impl reqwest::dns::Resolve for AllowedAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let config = self.0.clone();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| config.allows(a.ip())).collect();
            if allowed.is_empty() && !all.is_empty() {
                return Err(format!(
                    "{} resolves only to loopback, private or link-local addresses (WEBHOOK_ALLOW_PRIVATE is off)",
                    name.as_str()
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// A claimed delivery: what to send, where, signed with which secrets.
#[derive(sqlx::FromRow)]
struct Claim {
    id: String,
    webhook_id: String,
    body: String,
    /// This attempt's number, from 1.
    attempts: i32,
    url: String,
    secret: String,
    previous_secret: Option<String>,
}

/// How an attempt ended.
enum Outcome {
    Delivered,
    /// Worth trying again: no answer, 408, 429 or 5xx; with the receiver's `Retry-After`.
    Retry(Option<Duration>),
    /// Refused for good.
    Failed,
}

struct Attempt {
    outcome: Outcome,
    http_status: Option<u16>,
    latency: Duration,
    error: Option<String>,
}

async fn send(
    pool: &PgPool,
    client: &reqwest::Client,
    config: &WebhookConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut wake = PgListener::connect_with(pool).await?;
    wake.listen(common::db::WEBHOOK_WAKE_CHANNEL).await?;
    let mut in_flight: JoinSet<String> = JoinSet::new();
    let mut per_webhook: HashMap<String, i32> = HashMap::new();
    loop {
        if shutdown.is_cancelled() {
            while in_flight.join_next().await.is_some() {}
            return Ok(());
        }
        let room = IN_FLIGHT - in_flight.len();
        let claims = if room > 0 { claim(pool, room, &per_webhook).await? } else { Vec::new() };
        for claim in claims {
            *per_webhook.entry(claim.webhook_id.clone()).or_default() += 1;
            let (pool, client, config) = (pool.clone(), client.clone(), config.clone());
            in_flight.spawn(async move {
                let attempt = attempt(&client, &config, &claim).await;
                if let Err(err) = record(&pool, &claim, &attempt).await {
                    // The claim lapses and the delivery is tried again, under the same id.
                    tracing::warn!(error = %err, delivery = %claim.id, "could not record a webhook attempt");
                }
                claim.webhook_id
            });
        }
        // Wait for something to do: a finished attempt (its incident's next delivery may be
        // due), an announced delivery, or a retry falling due.
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let mut finished = vec![done];
                while let Some(done) = in_flight.try_join_next() {
                    finished.push(done);
                }
                for webhook_id in finished.into_iter().flatten() {
                    if let Some(n) = per_webhook.get_mut(&webhook_id) {
                        *n -= 1;
                        if *n <= 0 {
                            per_webhook.remove(&webhook_id);
                        }
                    }
                }
            }
            notified = wake.recv() => { notified?; }
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// Claims at most `room` due deliveries: the oldest unfinished one of each (webhook, incident),
/// at most [`PER_WEBHOOK`] per webhook counting those in flight here, of enabled webhooks (pings
/// go to disabled ones too).
async fn claim(pool: &PgPool, room: usize, in_flight: &HashMap<String, i32>) -> anyhow::Result<Vec<Claim>> {
    let (busy, counts): (Vec<&str>, Vec<i32>) = in_flight.iter().map(|(id, n)| (id.as_str(), *n)).unzip();
    let claims = sqlx::query_as(
        "with due as (
            select d.id, d.webhook_id, d.next_attempt_at, d.stream_seq,
                   row_number() over (partition by d.webhook_id order by d.next_attempt_at, d.stream_seq) as n
            from webhook_deliveries d join webhooks w on w.id = d.webhook_id
            where d.status = 'pending' and d.next_attempt_at <= now() and (w.enabled or d.type = 'ping')
              and not exists (select 1 from webhook_deliveries e
                              where e.webhook_id = d.webhook_id and e.incident_id = d.incident_id
                                and e.status = 'pending' and e.stream_seq < d.stream_seq)
         ), chosen as (
            select due.id from due
            left join unnest($2::text[], $3::int4[]) busy (webhook_id, n) on busy.webhook_id = due.webhook_id
            where due.n <= $4 - coalesce(busy.n, 0)
            order by due.next_attempt_at, due.stream_seq
            limit $1
         ), locked as (
            select d.id from webhook_deliveries d
            where d.id in (select id from chosen) and d.status = 'pending' and d.next_attempt_at <= now()
            for update skip locked
         )
         update webhook_deliveries d
         set next_attempt_at = now() + make_interval(secs => $5), attempts = d.attempts + 1
         from locked, webhooks w
         where d.id = locked.id and w.id = d.webhook_id
         returning d.id, d.webhook_id, d.body, d.attempts, w.url, w.secret,
                   case when w.previous_until > now() then w.previous_secret end as previous_secret",
    )
    .bind(i64::try_from(room)?)
    .bind(&busy)
    .bind(&counts)
    .bind(PER_WEBHOOK)
    .bind(LEASE_SECS as f64)
    .fetch_all(pool)
    .await?;
    Ok(claims)
}

/// Posts one delivery and says how it went.
async fn attempt(client: &reqwest::Client, config: &WebhookConfig, claim: &Claim) -> Attempt {
    let started = Instant::now();
    let failed =
        |outcome, error: String| Attempt { outcome, http_status: None, latency: started.elapsed(), error: Some(error) };
    // Host names are checked as they resolve; an address in the URL is checked here.
    let url = match url::Url::parse(&claim.url) {
        Ok(url) => url,
        Err(err) => return failed(Outcome::Failed, format!("bad URL: {err}")),
    };
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if literal.is_some_and(|ip| !config.allows(ip)) {
        return failed(
            Outcome::Failed,
            "a loopback, private or link-local address (WEBHOOK_ALLOW_PRIVATE is off)".into(),
        );
    }
    let timestamp = jiff::Timestamp::now().as_second();
    let secrets: Vec<&str> = std::iter::once(claim.secret.as_str()).chain(claim.previous_secret.as_deref()).collect();
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &claim.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures(&secrets, &claim.id, timestamp, &claim.body))
        .body(claim.body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => return failed(Outcome::Retry(None), describe(&err)),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, jiff::Timestamp::now()));
    let outcome = if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
        Outcome::Retry(retry_after.filter(|_| matches!(status.as_u16(), 429 | 503)))
    } else {
        Outcome::Failed
    };
    let error = (!status.is_success()).then(|| format!("answered {status}"));
    Attempt { outcome, http_status: Some(status.as_u16()), latency: started.elapsed(), error }
}

/// A `Retry-After` value as the wait from `now`: seconds, or an HTTP date (past dates: none).
fn retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Duration::try_from(at.duration_since(now)).ok().filter(|wait| !wait.is_zero())
}

/// What went wrong with a request that got no answer, with its causes.
pub fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The pause before attempt `attempts + 1`: exponential with jitter from 2 s, four times longer
/// each time, at most an hour (the first three retries come within about a minute and a half).
pub fn backoff(attempts: i32) -> Duration {
    const LONGEST: Duration = Duration::from_secs(3600);
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(2))
        .with_factor(4.0)
        .with_max_delay(LONGEST)
        .with_jitter()
        .without_max_times()
        .build();
    // The jitter is added after the cap: cap again.
    delays.nth(usize::try_from(attempts.max(1) - 1).unwrap_or(0)).unwrap_or(LONGEST).min(LONGEST)
}

/// Records an attempt and its consequences in one transaction: the delivery succeeds, fails, or
/// falls due again (failing once it has been retried for 24 hours); the webhook's failing streak
/// starts or ends, and a webhook failing for 24 hours is disabled.
async fn record(pool: &PgPool, claim: &Claim, attempt: &Attempt) -> Result<(), sqlx::Error> {
    let (label, retry_in) = match attempt.outcome {
        Outcome::Delivered => ("delivered", None),
        Outcome::Failed => ("failed", None),
        Outcome::Retry(after) => {
            let pause = after.map_or_else(
                || backoff(claim.attempts),
                |after| after.clamp(Duration::from_secs(1), Duration::from_secs(3600)),
            );
            ("retried", Some(pause))
        }
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into webhook_attempts (delivery_id, n, at, http_status, latency_ms, error)
         values ($1, $2, now(), $3, $4, $5) on conflict do nothing",
    )
    .bind(&claim.id)
    .bind(claim.attempts)
    .bind(attempt.http_status.map(i32::from))
    .bind(i32::try_from(attempt.latency.as_millis()).unwrap_or(i32::MAX))
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await?;
    let given_up: Option<bool> = sqlx::query_scalar(&format!(
        "update webhook_deliveries set
            status = case
                when $2 = 'delivered' then 'succeeded'
                when $2 = 'failed' or now() + make_interval(secs => $3) > created_at + interval '{GIVE_UP_HOURS} hours' then 'failed'
                else 'pending' end,
            next_attempt_at = now() + make_interval(secs => $3),
            finished_at = case when $2 = 'retried' and now() + make_interval(secs => $3) <= created_at + interval '{GIVE_UP_HOURS} hours'
                               then null else now() end
         where id = $1 and status = 'pending' and attempts = $4
         returning status = 'failed' and $2 = 'retried'"
    ))
    .bind(&claim.id)
    .bind(label)
    .bind(retry_in.unwrap_or_default().as_secs_f64())
    // Still this attempt's claim: a sender whose claim lapsed and was taken over records nothing.
    .bind(claim.attempts)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "update webhooks set
            failing_since = case when $2 then null else coalesce(failing_since, now()) end,
            enabled = enabled and ($2 or coalesce(failing_since, now()) > now() - interval '{GIVE_UP_HOURS} hours'),
            disabled_reason = case
                when enabled and not $2 and coalesce(failing_since, now()) <= now() - interval '{GIVE_UP_HOURS} hours'
                then 'every delivery failed for {GIVE_UP_HOURS} hours' else disabled_reason end
         where id = $1"
    ))
    .bind(&claim.webhook_id)
    .bind(matches!(attempt.outcome, Outcome::Delivered))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("webhook_attempts_total", "outcome" => label).increment(1);
    metrics::histogram!("webhook_attempt_seconds").record(attempt.latency.as_secs_f64());
    if given_up == Some(true) {
        metrics::counter!("webhook_deliveries_given_up_total").increment(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::retry_after;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Mon, 07 Dec 2026 10:01:30 GMT", now), Some(Duration::from_secs(90)));
        assert_eq!(retry_after("Mon, 07 Dec 2026 09:59:00 GMT", now), None, "a past date");
        assert_eq!(retry_after("soon", now), None);
    }
}
