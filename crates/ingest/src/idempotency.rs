//! Safe retries (DESIGN §3). An event that may be sent twice gets an id derived from what makes
//! it the same event (the API key and its `Idempotency-Key`; an Alertmanager alert's content: a
//! UUIDv8), so JetStream drops a re-published copy within its duplicate window, and the worker
//! drops any later copy: it claims derived ids in PostgreSQL (`idempotent_events`, kept as long as
//! the event log), whatever Redis remembers. Redis only remembers a first acceptance for
//! [`REMEMBER_FOR`], so that a retry reuses its receive time and a key reused with another body is
//! refused with 409 within that time; its memory is bounded by the keyed events of ten minutes.
//! Redis down: the retry still has no second effect (counted, logged).

use std::time::Duration;

use deadpool_redis::redis::Script;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::publisher::Company;

/// How long Redis remembers a first acceptance (not what dedup depends on: see the module).
pub const REMEMBER_FOR: Duration = Duration::from_secs(10 * 60);

/// Stores each record unless one is already stored; returns the stored ones, in order.
const REMEMBER: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[i + 1], 'NX', 'EX', ARGV[1]) then
    out[i] = ARGV[i + 1]
  else
    out[i] = redis.call('GET', key) or ARGV[i + 1]
  end
end
return out
";

/// An event id derived from `parts` (a UUIDv8 over their SHA-256): the same parts, the same id.
pub fn derived_id(parts: &[&str]) -> Uuid {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// The first acceptance of an event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct First {
    pub received_at: Timestamp,
    /// What the first request carried (a hash of its body), to refuse a key reused for another.
    pub fingerprint: String,
}

impl First {
    fn encode(&self) -> String {
        format!("{} {}", self.received_at.as_microsecond(), self.fingerprint)
    }

    fn decode(value: &str) -> Option<Self> {
        let (micros, fingerprint) = value.split_once(' ')?;
        let received_at = Timestamp::from_microsecond(micros.parse().ok()?).ok()?;
        Some(Self { received_at, fingerprint: fingerprint.to_owned() })
    }
}

pub struct Idempotency {
    redis: deadpool_redis::Pool,
    prefix: String,
    timeout: Duration,
    script: Script,
}

impl Idempotency {
    pub fn new(redis: deadpool_redis::Pool, prefix: String, timeout: Duration) -> Self {
        Self { redis, prefix, timeout, script: Script::new(REMEMBER) }
    }

    /// For each `(event id, this acceptance)`, the first acceptance: an earlier one if Redis
    /// remembers it, else this one (now remembered). Redis unreachable: these, as given, and
    /// [`Company::Alone`], since only the stream's duplicate window can then drop a retry.
    pub async fn remember(&self, events: Vec<(Uuid, First)>) -> (Vec<First>, Company) {
        if events.is_empty() {
            return (Vec::new(), Company::Shared);
        }
        let call = async {
            let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
            let mut invocation = self.script.prepare_invoke();
            for (id, _) in &events {
                invocation.key(format!("{}idem:{id}", self.prefix));
            }
            invocation.arg(REMEMBER_FOR.as_secs());
            for (_, first) in &events {
                invocation.arg(first.encode());
            }
            invocation.invoke_async::<Vec<String>>(&mut conn).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(stored) => (
                events
                    .into_iter()
                    .zip(stored)
                    .map(|((_, ours), stored)| First::decode(&stored).unwrap_or(ours))
                    .collect(),
                Company::Shared,
            ),
            Err(err) => {
                metrics::counter!("idempotency_unavailable_total").increment(1);
                tracing::warn!(error = %err, "cannot remember accepted event ids; retries are deduplicated within the stream's window only");
                (events.into_iter().map(|(_, first)| first).collect(), Company::Alone)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_depend_on_every_part_and_its_boundaries() {
        assert_eq!(derived_id(&["a", "b"]), derived_id(&["a", "b"]));
        assert_ne!(derived_id(&["a", "b"]), derived_id(&["ab", ""]));
        assert_eq!(derived_id(&["a"]).get_version_num(), 8);
    }

    #[test]
    fn a_first_acceptance_survives_encoding() {
        let first = First { received_at: "2026-11-27T10:00:00.123456Z".parse().unwrap(), fingerprint: "ab12".into() };
        assert_eq!(First::decode(&first.encode()), Some(first));
        assert_eq!(First::decode("garbage"), None);
    }
}
