//! An in-process cache of database answers, for lookups on every request (API keys, routing
//! keys). An answer — including "not found" — is kept for `ttl`; past it the database is asked
//! again, and if the database is unreachable the stale answer is used, so known callers keep
//! working through a database outage. Beyond its capacity entries are evicted one by one, the
//! ones asked for least first (quick_cache's CLOCK-Pro): a flood of unknown keys cannot flush the
//! known ones that keep ingest running through an outage.

use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct LookupCache<K, V> {
    ttl: Duration,
    /// Counter incremented each time a stale answer stands in for an unreachable database.
    stale_metric: &'static str,
    entries: quick_cache::sync::Cache<K, (Option<V>, Instant)>,
}

impl<K: Eq + Hash + Clone, V: Clone> LookupCache<K, V> {
    pub fn new(ttl: Duration, max_entries: usize, stale_metric: &'static str) -> Self {
        Self { ttl, stale_metric, entries: quick_cache::sync::Cache::new(max_entries) }
    }

    /// The cached answer while it is fresh (`Some(None)`: known not to exist).
    pub fn fresh(&self, key: &K) -> Option<Option<V>> {
        self.entries.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(value, _)| value)
    }

    /// The fresh answer, or `fetch`'s (then cached); a stale answer if `fetch` finds the
    /// database unreachable.
    pub async fn get_or_fetch<F>(&self, key: K, fetch: F) -> Result<Option<V>, sqlx::Error>
    where
        F: Future<Output = Result<Option<V>, sqlx::Error>>,
    {
        let stale = match self.entries.get(&key) {
            Some((value, at)) if at.elapsed() < self.ttl => return Ok(value),
            Some((value, _)) => value,
            None => None,
        };
        match fetch.await {
            Ok(value) => {
                self.entries.insert(key, (value.clone(), Instant::now()));
                Ok(value)
            }
            Err(err) if crate::db::is_unavailable(&err) && stale.is_some() => {
                metrics::counter!(self.stale_metric).increment(1);
                Ok(stale)
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_cached_and_a_stale_one_covers_an_outage() {
        let cache = LookupCache::new(Duration::ZERO, 10, "test_stale_total");
        let found = cache.get_or_fetch("k", async { Ok(Some(1)) }).await.unwrap();
        assert_eq!(found, Some(1));
        assert_eq!(cache.fresh(&"k"), None, "a zero TTL is never fresh");
        let during_outage = cache.get_or_fetch("k", async { Err(sqlx::Error::PoolTimedOut) }).await.unwrap();
        assert_eq!(during_outage, Some(1));
        let never_seen = cache.get_or_fetch("other", async { Err(sqlx::Error::PoolTimedOut) }).await;
        assert!(never_seen.is_err());
        let bad_query = cache.get_or_fetch("k", async { Err(sqlx::Error::RowNotFound) }).await;
        assert!(bad_query.is_err(), "only an unreachable database falls back");
    }

    #[tokio::test]
    async fn a_flood_of_unknown_keys_does_not_flush_the_known_ones() {
        let cache = LookupCache::new(Duration::ZERO, 1_000, "test_stale_total");
        cache.get_or_fetch("known".to_owned(), async { Ok(Some(1)) }).await.unwrap();
        for i in 0..100_000 {
            // The database is down for the known key, which keeps being asked for (a live
            // integration), while a scanner's unknown keys are answered and cached.
            if i % 100 == 0 {
                let during_outage =
                    cache.get_or_fetch("known".to_owned(), async { Err(sqlx::Error::PoolTimedOut) }).await;
                assert_eq!(during_outage.ok(), Some(Some(1)), "lost after {i} unknown keys");
            }
            cache.get_or_fetch(format!("scan-{i}"), async { Ok(None) }).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_fresh_answer_is_served_without_asking() {
        let cache = LookupCache::new(Duration::from_secs(60), 10, "test_stale_total");
        cache.get_or_fetch("k", async { Ok(None::<u8>) }).await.unwrap();
        assert_eq!(cache.fresh(&"k"), Some(None));
        let again = cache.get_or_fetch("k", async { panic!("asked the database again") }).await.unwrap();
        assert_eq!(again, None);
    }
}
