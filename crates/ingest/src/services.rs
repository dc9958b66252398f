//! Resolving an event's service (by routing key or id), cached in process. A cached answer is
//! kept for `ttl`, and used beyond it while PostgreSQL is unreachable, so ingest keeps accepting
//! events for known services when the database is down.

use std::time::Duration;

use common::cache::LookupCache;
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
    cache: LookupCache<ServiceRef, ServiceTarget>,
}

impl ServiceDirectory {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, cache: LookupCache::new(ttl, 100_000, "service_stale_cache_used_total") }
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
        let query = match reference {
            ServiceRef::RoutingKey(key) => {
                sqlx::query_as::<_, (String, Option<i32>)>("select id, rate_limit from services where routing_key = $1")
                    .bind(key)
            }
            ServiceRef::ServiceId(id) => {
                sqlx::query_as::<_, (String, Option<i32>)>("select id, rate_limit from services where id = $1").bind(id)
            }
        };
        let fetch = async {
            let row = query.fetch_optional(&self.pool).await?;
            Ok(row.map(|(id, limit)| ServiceTarget { id, rate_limit: limit.map(i32::unsigned_abs) }))
        };
        Ok(self.cache.get_or_fetch(reference.clone(), fetch).await?)
    }
}
