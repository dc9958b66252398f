//! What a stream client gets: the changes after its `Last-Event-ID` (or a `reset` when those
//! are older than the stream keeps), then the live ones, filtered; cut off with `reset` when it
//! reads too slowly. Stream tokens and the per-key stream limit live in Redis, so they hold
//! across query-api processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::ApiError;
use common::auth::{Principal, Role, Scope};

use crate::credentials::random_token;
use deadpool_redis::redis;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use super::body::{StreamQuery, Topic};
use super::feed::{Change, Feed};

/// How long a stream token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most streams one API key may hold open.
pub const STREAMS_PER_KEY: usize = 20;
/// Bytes a client may leave unread before it is cut off with `reset`.
pub const SLOW_CLIENT_BYTES: usize = 1024 * 1024;
/// How often an open stream renews its place in the per-key count (and how stale a place may
/// get, three times that, before a crashed process's streams stop counting).
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What a client is sent.
pub enum Item {
    Change(Arc<Change>),
    /// The client must refetch: what it asked for is gone, or it fell too far behind.
    Reset(&'static str),
}

/// Which changes a client wants.
pub struct Filter {
    incidents: bool,
    services: bool,
    service_id: Option<String>,
    statuses: Option<Vec<&'static str>>,
}

impl Filter {
    pub fn of(query: &StreamQuery) -> Self {
        Self {
            incidents: query.topics.as_ref().is_none_or(|t| t.0.contains(&Topic::Incidents)),
            services: query.topics.as_ref().is_none_or(|t| t.0.contains(&Topic::Services)),
            service_id: query.service_id.clone(),
            statuses: query.status.as_ref().map(|s| s.0.iter().map(|s| s.as_str()).collect()),
        }
    }

    /// The `status` filter keeps incidents' changes leaving an incident so; a service's change
    /// leaves none, so it is sent only without one.
    fn wants(&self, change: &Change) -> bool {
        let service = self.service_id.as_ref().is_none_or(|s| *s == change.service_id);
        if change.of_service {
            return self.services && service && self.statuses.is_none();
        }
        self.incidents && service && self.statuses.as_ref().is_none_or(|s| s.contains(&change.status.as_str()))
    }
}

/// A client's items, and the bytes of them it has not read yet.
pub struct Outbox {
    pub items: mpsc::UnboundedReceiver<Item>,
    pub unread: Arc<AtomicUsize>,
}

/// Starts a client's stream: replay after `last_event_id`, then live, until it ends or is cut
/// off; `slot` is released when it ends.
pub fn open(feed: Arc<Feed>, filter: Filter, last_event_id: Option<u64>, slot: Slot) -> Outbox {
    let (sender, items) = mpsc::unbounded_channel();
    let unread = Arc::new(AtomicUsize::new(0));
    let forward = Forward { sender, unread: unread.clone(), filter };
    tokio::spawn(async move {
        let live = feed.subscribe(forward.filter.service_id.as_deref());
        forward.run(&feed, live, last_event_id, &slot).await;
        slot.release().await;
    });
    Outbox { items, unread }
}

struct Forward {
    sender: mpsc::UnboundedSender<Item>,
    unread: Arc<AtomicUsize>,
    filter: Filter,
}

impl Forward {
    async fn run(
        &self,
        feed: &Feed,
        mut live: broadcast::Receiver<Arc<Change>>,
        last_event_id: Option<u64>,
        slot: &Slot,
    ) {
        let mut sent_through = 0;
        if let Some(last) = last_event_id {
            let Ok((first, newest)) = feed.bounds().await else {
                return self.reset("the change stream is unavailable");
            };
            if last + 1 < first || last > newest {
                return self.reset("Last-Event-ID is older than the change stream keeps");
            }
            if last < newest {
                let Ok(replay) = feed.replay(last + 1, newest).await else {
                    return self.reset("the change stream is unavailable");
                };
                let mut replay = std::pin::pin!(replay);
                while let Some(change) = replay.next().await {
                    if !self.send(Arc::new(change)) {
                        return;
                    }
                }
            }
            sent_through = newest;
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(change) if change.seq <= sent_through => {}
                    Ok(change) => if !self.send(change) { return },
                    Err(broadcast::error::RecvError::Lagged(_)) => return self.reset("the client fell behind"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = heartbeat.tick() => slot.renew().await,
                () = self.sender.closed() => return,
            }
        }
    }

    /// Queues `change` if the client wants it; `false` once the client is gone or cut off.
    fn send(&self, change: Arc<Change>) -> bool {
        if !self.filter.wants(&change) {
            return true;
        }
        let unread = self.unread.fetch_add(change.data.len(), Ordering::AcqRel) + change.data.len();
        if unread > SLOW_CLIENT_BYTES {
            metrics::counter!("stream_clients_cut_off_total").increment(1);
            self.reset("the client read too slowly");
            return false;
        }
        self.sender.send(Item::Change(change)).is_ok()
    }

    fn reset(&self, why: &'static str) {
        let _ = self.sender.send(Item::Reset(why));
    }
}

/// Redis access for tokens and the per-key count.
#[derive(Clone)]
pub struct Registry {
    pub redis: deadpool_redis::Pool,
    pub prefix: String,
}

/// What a token stands for: the key that asked for it.
#[derive(Serialize, Deserialize)]
struct Grant {
    key_id: String,
    user_id: String,
    role: Role,
    scopes: Vec<Scope>,
    rate_limit: Option<u32>,
}

fn unavailable(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "Redis unavailable for stream tokens");
    ApiError::unavailable("cannot issue or check stream tokens right now, retry later", 5)
}

impl Registry {
    /// A new single-use token standing for `principal`, valid for [`TOKEN_TTL`].
    pub async fn issue(&self, principal: &Principal) -> Result<String, ApiError> {
        let token = format!("ost_{}", random_token(24));
        let grant = Grant {
            key_id: principal.key_id.clone(),
            user_id: principal.user_id.clone(),
            role: principal.role,
            scopes: principal.scopes.clone(),
            rate_limit: principal.rate_limit,
        };
        let mut conn = self.redis.get().await.map_err(unavailable)?;
        redis::cmd("SET")
            .arg(format!("{}stream-token:{token}", self.prefix))
            .arg(serde_json::to_string(&grant).map_err(ApiError::internal)?)
            .arg("EX")
            .arg(TOKEN_TTL.as_secs())
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(token)
    }

    /// Who `token` stands for, once: `401` for an unknown, used or expired token.
    pub async fn redeem(&self, token: &str) -> Result<Principal, ApiError> {
        let mut conn = self.redis.get().await.map_err(unavailable)?;
        let grant: Option<String> = redis::cmd("GETDEL")
            .arg(format!("{}stream-token:{token}", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let grant: Grant = grant
            .and_then(|g| serde_json::from_str(&g).ok())
            .ok_or_else(|| ApiError::unauthorized("unknown, used or expired stream token"))?;
        Ok(Principal {
            key_id: grant.key_id,
            user_id: grant.user_id,
            role: grant.role,
            scopes: grant.scopes,
            rate_limit: grant.rate_limit,
        })
    }

    /// A place among the key's open streams: `429` past [`STREAMS_PER_KEY`]. With Redis down the
    /// stream opens uncounted.
    pub async fn claim(&self, key_id: &str) -> Result<Slot, ApiError> {
        let slot =
            Slot { registry: self.clone(), set: format!("{}streams:{key_id}", self.prefix), id: random_token(8) };
        match slot.claim().await {
            Ok(true) => Ok(slot),
            Ok(false) => Err(ApiError::new(
                common::ErrorCode::RateLimited,
                format!("at most {STREAMS_PER_KEY} streams may be open per API key"),
            )),
            Err(err) => {
                tracing::warn!(error = %err, "Redis unavailable; stream opened uncounted");
                Ok(slot)
            }
        }
    }
}

/// One open stream's place in its key's count.
pub struct Slot {
    registry: Registry,
    set: String,
    id: String,
}

fn now_secs() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

impl Slot {
    async fn claim(&self) -> Result<bool, anyhow::Error> {
        let mut conn = self.registry.redis.get().await?;
        let stale = now_secs() - 3.0 * HEARTBEAT.as_secs_f64();
        let (_, _, open, _): ((), (), usize, ()) = redis::pipe()
            .atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.set)
            .arg("-inf")
            .arg(stale)
            .cmd("ZADD")
            .arg(&self.set)
            .arg(now_secs())
            .arg(&self.id)
            .cmd("ZCARD")
            .arg(&self.set)
            .cmd("EXPIRE")
            .arg(&self.set)
            .arg(3 * HEARTBEAT.as_secs())
            .query_async(&mut conn)
            .await?;
        if open > STREAMS_PER_KEY {
            redis::cmd("ZREM").arg(&self.set).arg(&self.id).query_async::<()>(&mut conn).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn renew(&self) {
        if let Ok(mut conn) = self.registry.redis.get().await {
            let _ = redis::pipe()
                .cmd("ZADD")
                .arg(&self.set)
                .arg(now_secs())
                .arg(&self.id)
                .cmd("EXPIRE")
                .arg(&self.set)
                .arg(3 * HEARTBEAT.as_secs())
                .query_async::<()>(&mut conn)
                .await;
        }
    }

    async fn release(self) {
        if let Ok(mut conn) = self.registry.redis.get().await {
            let _ = redis::cmd("ZREM").arg(&self.set).arg(&self.id).query_async::<()>(&mut conn).await;
        }
    }
}
