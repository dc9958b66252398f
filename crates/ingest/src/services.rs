//! Resolving an event's service (by routing key or id), cached in process. A cached answer is
//! kept for `ttl`, and used beyond it while PostgreSQL is unreachable, so ingest keeps accepting
//! events for known services when the database is down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::event::ServiceRef;
use common::{ApiError, ErrorCode};
use sqlx::PgPool;

/// A service events can be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub id: String,
    /// Events per minute through the routing key, if the service has its own limit.
    pub rate_limit: Option<u32>,
}

pub struct ServiceDirectory {
    pool: PgPool,
    ttl: Duration,
    cache: Mutex<HashMap<ServiceRef, (Option<ServiceTarget>, Instant)>>,
}

const MAX_CACHED: usize = 100_000;

impl ServiceDirectory {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// The service an event names: `400 INVALID_ROUTING_KEY` for an unknown routing key,
    /// `404 NOT_FOUND` for an unknown service id.
    pub async fn resolve(&self, reference: &ServiceRef) -> Result<ServiceTarget, ApiError> {
        let found = self.lookup(reference).await?;
        found.ok_or_else(|| match reference {
            ServiceRef::RoutingKey(_) => {
                ApiError::new(ErrorCode::InvalidRoutingKey, "routing_key does not match any service integration")
            }
            ServiceRef::ServiceId(id) => ApiError::not_found(format!("service {id}")),
        })
    }

    async fn lookup(&self, reference: &ServiceRef) -> Result<Option<ServiceTarget>, ApiError> {
        let stale = {
            let cache = self.cache.lock().expect("service cache poisoned");
            match cache.get(reference) {
                Some((target, at)) if at.elapsed() < self.ttl => return Ok(target.clone()),
                Some((target, _)) => target.clone(),
                None => None,
            }
        };
        let query = match reference {
            ServiceRef::RoutingKey(key) => {
                sqlx::query_as::<_, (String, Option<i32>)>("select id, rate_limit from services where routing_key = $1")
                    .bind(key)
            }
            ServiceRef::ServiceId(id) => {
                sqlx::query_as::<_, (String, Option<i32>)>("select id, rate_limit from services where id = $1").bind(id)
            }
        };
        match query.fetch_optional(&self.pool).await {
            Ok(row) => {
                let target = row.map(|(id, limit)| ServiceTarget { id, rate_limit: limit.map(i32::unsigned_abs) });
                let mut cache = self.cache.lock().expect("service cache poisoned");
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(reference.clone(), (target.clone(), Instant::now()));
                Ok(target)
            }
            Err(err) if common::db::is_unavailable(&err) && stale.is_some() => {
                metrics::counter!("service_stale_cache_used_total").increment(1);
                Ok(stale)
            }
            Err(err) => Err(err.into()),
        }
    }
}
