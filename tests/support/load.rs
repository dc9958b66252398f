//! A well-behaved client under faults: senders posting triggers to ingest at a steady pace, each
//! event with an `Idempotency-Key` and retried with it until answered `202`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::trigger;

/// Senders at once, and the pause between one's events (about 200 events/s in all).
const SENDERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(20);

/// A well-written client of ingest (whose port stays the same across restarts).
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub key: String,
    pub routing_key: String,
}

impl Client {
    /// Sends one event until it is answered `202` (same `Idempotency-Key` each time), or `stop`.
    pub async fn send(&self, dedup_key: &str, stop: &CancellationToken) -> bool {
        let body = trigger(&self.routing_key, dedup_key, "steady load");
        loop {
            let request =
                self.http.post(&self.url).bearer_auth(&self.key).header("Idempotency-Key", dedup_key).json(&body);
            if request.send().await.is_ok_and(|r| r.status() == 202) {
                return true;
            }
            if stop.is_cancelled() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether ingest refuses an event with 503 now.
    pub async fn refused(&self) -> bool {
        let body = trigger(&self.routing_key, "full-check", "is the stream full?");
        let request = self.http.post(&self.url).bearer_auth(&self.key).json(&body);
        request.send().await.is_ok_and(|r| r.status() == 503)
    }
}

/// What the senders did.
#[derive(Default)]
pub struct Sent {
    pub attempted: AtomicUsize,
    pub accepted: Mutex<Vec<String>>,
}

/// Senders sending `p<phase>-<sender>-<n>` until `stop`, each event until answered `202`.
pub fn load(client: &Client, phase: usize, sent: &Arc<Sent>, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    (0..SENDERS)
        .map(|sender| {
            let (client, sent, stop) = (client.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.is_cancelled() {
                        return;
                    }
                    let key = format!("p{phase}-{sender}-{n}");
                    sent.attempted.fetch_add(1, Ordering::Relaxed);
                    if client.send(&key, &stop).await {
                        sent.accepted.lock().await.push(key);
                    }
                    tokio::time::sleep(PAUSE).await;
                }
            })
        })
        .collect()
}
