//! The shared rate limiter: GCRA in one atomic Redis script that reads the time from Redis
//! itself (`TIME`), so every instance agrees whatever their clocks say.
//!
//! A limit of `n` per minute admits a burst of `n` and then one request every `60/n` seconds.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use axum::http::{HeaderMap, HeaderValue};
use deadpool_redis::redis::{self, Script, aio::MultiplexedConnection};

/// Admits up to `ARGV[3]` requests at once (0 only looks): as many as fit, in order; with
/// `ARGV[4]` = 1 all of them or none (a group larger than the whole burst is admitted only from a
/// full bucket, and what follows waits until the debt is paid). Returns `{admitted, remaining,
/// reset (unix s), retry_after (s, for the first not admitted)}`.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local now_s = tonumber(now_parts[1])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local whole = tonumber(ARGV[4])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local fit = math.floor((now + period - tat) / interval)
if fit < 0 then fit = 0 end
local admitted = math.min(cost, fit)
local wanted = 1
if whole == 1 and admitted < cost then
  if tat == now then admitted = cost else admitted = 0 end
  wanted = math.min(cost, limit)
end
local new_tat = tat + admitted * interval
if admitted > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
local remaining = math.floor((now + period - new_tat) / interval)
local retry_after = math.ceil((new_tat + wanted * interval - period - now) / 1000000)
return {admitted, remaining, now_s + math.ceil((new_tat - now) / 1000000), retry_after}
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
    #[error("{0}")]
    Batch(String),
}

/// After Redis could not be reached, checks fail open at once for this long before the next
/// connection attempt, so an outage adds no latency to requests.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// Checks of one bucket waiting for the batch in flight.
type Waiters = Vec<oneshot::Sender<Result<Decision, String>>>;

/// Checks run over one multiplexed connection, with no pool checkout (and its health-check round
/// trip) per request. Concurrent checks of the same bucket are coalesced (group commit): while
/// one batch is in Redis, the next requests queue, and the next single script call admits as many
/// of them as fit, in order. Admission stays exact; Redis does one call per batch, not per request.
pub struct RateLimiter {
    me: Weak<RateLimiter>,
    pending: std::sync::Mutex<HashMap<String, Waiters>>,
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    down_since: std::sync::Mutex<Option<Instant>>,
    prefix: String,
    script: Script,
    timeout: Duration,
    last_warning: AtomicU64,
}

impl RateLimiter {
    pub fn new(url: &str, prefix: impl Into<String>, timeout: Duration) -> Result<Arc<Self>, LimiterError> {
        let client = redis::Client::open(url)?;
        let prefix = prefix.into();
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            pending: std::sync::Mutex::new(HashMap::new()),
            client,
            connection: tokio::sync::Mutex::new(None),
            down_since: std::sync::Mutex::new(None),
            prefix,
            script: Script::new(GCRA),
            timeout,
            last_warning: AtomicU64::new(0),
        }))
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
        let key = format!("{}rl:{bucket}", self.prefix);
        let (sender, receiver) = oneshot::channel();
        // The bucket's entry exists while a batch of it runs: a check arriving meanwhile only
        // queues for the next one. The first check of an idle bucket starts the batches.
        let lead = {
            let mut pending = self.pending.lock().expect("limiter queue poisoned");
            match pending.entry(key.clone()) {
                Entry::Occupied(mut queued) => {
                    queued.get_mut().push(sender);
                    false
                }
                Entry::Vacant(idle) => {
                    idle.insert(vec![sender]);
                    true
                }
            }
        };
        if lead && let Some(limiter) = self.me.upgrade() {
            tokio::spawn(async move { limiter.drain(key, limit_per_minute).await });
        }
        match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(result)) => result.map_err(LimiterError::Batch),
            Ok(Err(_)) => Err(LimiterError::Batch("the batch was abandoned".into())),
            Err(_) => Err(LimiterError::Timeout),
        }
    }

    /// Runs batches for `key` until nobody waits: each batch is every check queued so far. The
    /// bucket's entry goes only when a batch finds nobody waiting.
    async fn drain(&self, key: String, limit: u32) {
        loop {
            let waiters = {
                let mut pending = self.pending.lock().expect("limiter queue poisoned");
                let waiters = pending.get_mut(&key).map(std::mem::take).unwrap_or_default();
                if waiters.is_empty() {
                    pending.remove(&key);
                    return;
                }
                waiters
            };
            match self.run(&key, limit, waiters.len(), false).await {
                Ok(decisions) => {
                    for (waiter, decision) in waiters.into_iter().zip(decisions) {
                        let _gone = waiter.send(Ok(decision));
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    for waiter in waiters {
                        let _gone = waiter.send(Err(message.clone()));
                    }
                }
            }
        }
    }

    /// Whether a request would pass, without counting it.
    pub async fn peek(&self, bucket: &str, limit_per_minute: u32) -> Result<Decision, LimiterError> {
        let key = format!("{}rl:{bucket}", self.prefix);
        let mut decisions = self.run(&key, limit_per_minute, 0, false).await?;
        Ok(decisions.pop().expect("a look yields one decision"))
    }

    /// Counts `cost` requests against `bucket` as one: all are admitted or none (an Alertmanager
    /// notification is admitted whole, so its re-send is not half counted); a single request goes
    /// through the coalescing [`check`](Self::check). Fails open like
    /// [`check_or_fail_open`](Self::check_or_fail_open).
    pub async fn check_all_or_fail_open(&self, bucket: &str, limit_per_minute: u32, cost: usize) -> Option<Decision> {
        if cost <= 1 {
            return self.check_or_fail_open(bucket, limit_per_minute).await;
        }
        let key = format!("{}rl:{bucket}", self.prefix);
        match self.run(&key, limit_per_minute, cost, true).await {
            Ok(decisions) => decisions.into_iter().last(),
            Err(err) => {
                self.fail_open(&err);
                None
            }
        }
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

    /// One script call admitting up to `cost` requests (0: only look). Returns a decision per
    /// request, in order (one for a look).
    async fn run(&self, key: &str, limit: u32, cost: usize, whole: bool) -> Result<Vec<Decision>, LimiterError> {
        let limit = limit.max(1);
        let call = async {
            let mut conn = self.connection().await?;
            let (admitted, remaining, reset, retry_after): (i64, i64, i64, i64) = self
                .script
                .key(key)
                .arg(limit)
                .arg(60_000_000u64)
                .arg(cost)
                .arg(u8::from(whole))
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, LimiterError>((admitted, remaining, reset, retry_after))
        };
        let result = tokio::time::timeout(self.timeout, call).await.unwrap_or(Err(LimiterError::Timeout));
        if matches!(result, Err(LimiterError::Timeout | LimiterError::Redis(_))) {
            self.discard().await;
        }
        let (admitted, remaining, reset, retry_after) = result?;
        let remaining_after = u32::try_from(remaining.clamp(0, i64::from(limit))).unwrap_or(0);
        let admitted = usize::try_from(admitted.max(0)).unwrap_or(0);
        let decision = |allowed: bool, remaining: u32| Decision {
            allowed,
            limit,
            remaining,
            reset: reset.unsigned_abs(),
            retry_after: if allowed { 0 } else { retry_after.max(1).unsigned_abs() },
        };
        if cost == 0 {
            return Ok(vec![decision(remaining_after > 0, remaining_after)]);
        }
        // The admitted requests, in order, each saw one more left than the next.
        Ok((0..cost)
            .map(|i| {
                if i < admitted {
                    let later = u32::try_from(admitted - 1 - i).unwrap_or(0);
                    decision(true, remaining_after.saturating_add(later).min(limit))
                } else {
                    decision(false, 0)
                }
            })
            .collect())
    }
}
