//! The shared rate limiter: GCRA in one atomic Redis script that reads the time from Redis
//! itself (`TIME`), so every instance agrees whatever their clocks say.
//!
//! A limit of `n` per minute admits a burst of `n` and then one request every `60/n` seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use deadpool_redis::redis::{self, Script, aio::MultiplexedConnection};

const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local peek = ARGV[3] == '1'
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
local now_s = tonumber(now_parts[1])
if now < allow_at then
  local remaining = math.floor((period - (tat - now)) / interval)
  return {0, remaining, now_s + math.ceil((tat - now) / 1000000), math.ceil((allow_at - now) / 1000000)}
end
if peek then
  return {1, math.floor((period - (tat - now)) / interval), now_s + math.ceil((tat - now) / 1000000), 0}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((period - (new_tat - now)) / interval)
return {1, remaining, now_s + math.ceil((new_tat - now) / 1000000), 0}
";

/// The answer of the limiter for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the bucket is full again.
    pub reset: u64,
    /// Seconds to wait before a retry can succeed (0 when allowed).
    pub retry_after: u64,
}

impl Decision {
    /// Writes `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("redis was unreachable moments ago; not retrying yet")]
    Backoff,
}

/// After Redis could not be reached, checks fail open at once for this long before the next
/// connection attempt, so an outage adds no latency to requests.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// Checks run over one multiplexed connection: every concurrent check is pipelined on it, with
/// no pool checkout (and its health-check round trip) per request.
pub struct RateLimiter {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    down_since: std::sync::Mutex<Option<Instant>>,
    prefix: String,
    script: Script,
    timeout: Duration,
    last_warning: AtomicU64,
}

impl RateLimiter {
    pub fn new(url: &str, prefix: impl Into<String>, timeout: Duration) -> Result<Self, LimiterError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: tokio::sync::Mutex::new(None),
            down_since: std::sync::Mutex::new(None),
            prefix: prefix.into(),
            script: Script::new(GCRA),
            timeout,
            last_warning: AtomicU64::new(0),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, LimiterError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        if self.down_since.lock().expect("limiter state poisoned").is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF) {
            return Err(LimiterError::Backoff);
        }
        match tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection()).await {
            Ok(Ok(connection)) => {
                *self.down_since.lock().expect("limiter state poisoned") = None;
                *slot = Some(connection.clone());
                Ok(connection)
            }
            Ok(Err(err)) => {
                *self.down_since.lock().expect("limiter state poisoned") = Some(Instant::now());
                Err(err.into())
            }
            Err(_) => {
                *self.down_since.lock().expect("limiter state poisoned") = Some(Instant::now());
                Err(LimiterError::Timeout)
            }
        }
    }

    /// Forgets a connection that failed or stalled, so a later check reconnects.
    async fn discard(&self) {
        *self.connection.lock().await = None;
    }

    /// Counts one request against `bucket` (limit per minute) and says whether it may pass.
    pub async fn check(&self, bucket: &str, limit_per_minute: u32) -> Result<Decision, LimiterError> {
        self.run(bucket, limit_per_minute, false).await
    }

    /// Whether a request would pass, without counting it.
    pub async fn peek(&self, bucket: &str, limit_per_minute: u32) -> Result<Decision, LimiterError> {
        self.run(bucket, limit_per_minute, true).await
    }

    /// Like [`check`](Self::check), but fails open when Redis is unreachable: the failure is
    /// counted, logged at most every ten seconds, and the request passes (`None`).
    pub async fn check_or_fail_open(&self, bucket: &str, limit_per_minute: u32) -> Option<Decision> {
        match self.check(bucket, limit_per_minute).await {
            Ok(decision) => Some(decision),
            Err(err) => {
                self.fail_open(&err);
                None
            }
        }
    }

    /// Counts and (rate-limited) logs a limiter failure that let a request through.
    pub fn fail_open(&self, err: &LimiterError) {
        metrics::counter!("rate_limit_fail_open_total").increment(1);
        let now = jiff::Timestamp::now().as_second().unsigned_abs();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(error = %err, "rate limiter unavailable, failing open");
        }
    }

    async fn run(&self, bucket: &str, limit: u32, peek: bool) -> Result<Decision, LimiterError> {
        let limit = limit.max(1);
        let key = format!("{}rl:{bucket}", self.prefix);
        let call = async {
            let mut conn = self.connection().await?;
            let (allowed, remaining, reset, retry_after): (i64, i64, i64, i64) = self
                .script
                .key(key)
                .arg(limit)
                .arg(60_000_000u64)
                .arg(if peek { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, LimiterError>(Decision {
                allowed: allowed == 1,
                limit,
                remaining: u32::try_from(remaining.clamp(0, i64::from(limit))).unwrap_or(0),
                reset: reset.unsigned_abs(),
                retry_after: retry_after.max(i64::from(allowed == 0)).unsigned_abs(),
            })
        };
        let result = tokio::time::timeout(self.timeout, call).await.unwrap_or(Err(LimiterError::Timeout));
        if matches!(result, Err(LimiterError::Timeout | LimiterError::Redis(_))) {
            self.discard().await;
        }
        result
    }
}
