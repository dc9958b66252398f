//! An in-process cache of database answers, for lookups on every request (API keys, routing
//! keys). An answer — including "not found" — is kept for `ttl`; past it the database is asked
//! again, and if the database is unreachable the stale answer is used, so known callers keep
//! working through a database outage.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LookupCache<K, V> {
    ttl: Duration,
    /// Beyond this many entries (mostly unknown keys from scanners) the cache starts over.
    max_entries: usize,
    /// Counter incremented each time a stale answer stands in for an unreachable database.
    stale_metric: &'static str,
    entries: Mutex<HashMap<K, (Option<V>, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> LookupCache<K, V> {
    pub fn new(ttl: Duration, max_entries: usize, stale_metric: &'static str) -> Self {
        Self { ttl, max_entries, stale_metric, entries: Mutex::new(HashMap::new()) }
    }

    /// The cached answer while it is fresh (`Some(None)`: known not to exist).
    pub fn fresh(&self, key: &K) -> Option<Option<V>> {
        let entries = self.entries.lock().expect("lookup cache poisoned");
        entries.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(value, _)| value.clone())
    }

    /// The fresh answer, or `fetch`'s (then cached); a stale answer if `fetch` finds the
    /// database unreachable.
    pub async fn get_or_fetch<F>(&self, key: K, fetch: F) -> Result<Option<V>, sqlx::Error>
    where
        F: Future<Output = Result<Option<V>, sqlx::Error>>,
    {
        let stale = {
            let entries = self.entries.lock().expect("lookup cache poisoned");
            match entries.get(&key) {
                Some((value, at)) if at.elapsed() < self.ttl => return Ok(value.clone()),
                Some((value, _)) => value.clone(),
                None => None,
            }
        };
        match fetch.await {
            Ok(value) => {
                let mut entries = self.entries.lock().expect("lookup cache poisoned");
                if entries.len() >= self.max_entries {
                    entries.clear();
                }
                entries.insert(key, (value.clone(), Instant::now()));
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
    async fn a_fresh_answer_is_served_without_asking() {
        let cache = LookupCache::new(Duration::from_secs(60), 10, "test_stale_total");
        cache.get_or_fetch("k", async { Ok(None::<u8>) }).await.unwrap();
        assert_eq!(cache.fresh(&"k"), Some(None));
        let again = cache.get_or_fetch("k", async { panic!("asked the database again") }).await.unwrap();
        assert_eq!(again, None);
    }
}
