//! DESIGN §9 for dashboards: `GET /api/stream` serves the change stream as Server-Sent Events; a
//! client that disconnects and resumes with `Last-Event-ID` misses nothing, on any query-api
//! process; past what the stream keeps it gets `reset`.

use std::time::Duration;

use async_nats::jetstream;
use e2e::{TestEnv, action, trigger};
use reqwest::Method;
use serde_json::Value;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: String,
}

/// An open stream, read event by event.
struct Client {
    response: reqwest::Response,
    buffer: String,
}

impl Client {
    async fn open(
        env: &TestEnv,
        url: &str,
        key: Option<&str>,
        last_event_id: Option<u64>,
    ) -> Result<Self, (u16, Value)> {
        // A stream lasts longer than the client's usual timeout allows.
        let mut request = env.http.get(url).header("accept", "text/event-stream").timeout(Duration::from_secs(300));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        if response.status() != 200 {
            let status = response.status().as_u16();
            return Err((status, response.json().await.unwrap_or(Value::Null)));
        }
        Ok(Self { response, buffer: String::new() })
    }

    /// The next event (comments and `retry` skipped), within 20 s.
    async fn next(&mut self) -> Sse {
        // Keepalives arrive meanwhile: the 20 s are for the event, not for each chunk.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse { id: None, event: "message".into(), data: String::new() };
                let mut fields = false;
                for line in block.lines() {
                    if let Some((name, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match name {
                            "id" => (event.id, fields) = (value.parse().ok(), true),
                            "event" => (event.event, fields) = (value.to_owned(), true),
                            "data" => (event.data, fields) = (value.to_owned(), true),
                            _ => {}
                        }
                    }
                }
                if fields {
                    return event;
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within 20 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            events.push(self.next().await);
        }
        events
    }
}

/// The change stream's last position once every accepted event is applied and every change it
/// made relayed (the outbox is empty).
async fn relayed_position(env: &TestEnv) -> u64 {
    e2e::wait_until(Duration::from_secs(20), "every change relayed", || async {
        env.backlog().await == Some(0)
            && sqlx::query_scalar::<_, i64>("select count(*) from incident_changes").fetch_one(&env.pool).await.unwrap()
                == 0
    })
    .await;
    let js = jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    js.get_stream(env.nats.changes_stream()).await.unwrap().info().await.unwrap().state.last_sequence
}

async fn stream_token(env: &TestEnv, base: &str, key: &str) -> String {
    let (status, body) = env.send_json(Method::POST, &format!("{base}/api/stream/tokens"), key, &Value::Null).await;
    assert_eq!(status, 201, "{body}");
    body["stream"]["token"].as_str().unwrap().to_owned()
}

/// Every key: trigger, acknowledge, resolve — three state changes each (and no alert changes).
async fn incidents(env: &TestEnv, ingest: &str, key: &str, routing_key: &str, keys: std::ops::Range<u32>) {
    for k in keys {
        for body in [
            trigger(routing_key, &format!("k{k}"), "down"),
            action(routing_key, &format!("k{k}"), "acknowledge"),
            action(routing_key, &format!("k{k}"), "resolve"),
        ] {
            assert_eq!(env.post_event(ingest, key, &body).await.status(), 202);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resumes_on_another_process_misses_nothing_and_both_serve_one_sequence() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let (a, b) = (env.spawn_query_api().await, env.spawn_query_api().await);
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Streamed").await;

    // A browser-style client on A with a token (no key in the request), from the start.
    let token = stream_token(&env, &b, &key).await;
    let mut first = Client::open(&env, &format!("{a}/api/stream?token={token}"), None, Some(0)).await.unwrap();
    incidents(&env, &ingest, &key, &service.routing_key, 0..10).await;
    let before = first.take(12).await;
    let last = before.last().unwrap().id.unwrap();
    drop(first);
    // While it is away, more changes are made (60 of incidents, and the service's status
    // changes); it comes back to B with its last position and gets every one after it.
    incidents(&env, &ingest, &key, &service.routing_key, 10..20).await;
    let end = relayed_position(&env).await;
    let mut resumed = Client::open(&env, &format!("{b}/api/stream"), Some(&key), Some(last)).await.unwrap();
    let after = resumed.take(end as usize - before.len()).await;
    let seen: Vec<u64> = before.iter().chain(&after).map(|e| e.id.unwrap()).collect();
    assert_eq!(seen, (1..=end).collect::<Vec<u64>>(), "every position once, in order");
    let of_incidents = before.iter().chain(&after).filter(|e| !e.event.starts_with("service.")).count();
    assert_eq!(of_incidents, 60, "20 incidents triggered, acknowledged and resolved");
    for event in before.iter().chain(&after) {
        let change: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(change["type"].as_str(), Some(event.event.as_str()));
    }
    // Live clients of both processes see one sequence.
    let (mut on_a, mut on_b) = (
        Client::open(&env, &format!("{a}/api/stream"), Some(&key), None).await.unwrap(),
        Client::open(&env, &format!("{b}/api/stream"), Some(&key), None).await.unwrap(),
    );
    incidents(&env, &ingest, &key, &service.routing_key, 20..25).await;
    let live_end = relayed_position(&env).await;
    let count = (live_end - end) as usize;
    let (live_a, live_b) = tokio::join!(on_a.take(count), on_b.take(count));
    assert_eq!(live_a, live_b);
    assert_eq!(live_a.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(), (end + 1..=live_end).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_tokens_limits_and_a_resume_past_retention() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let query = env.spawn_query_api().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let (one, other) = (env.service("One").await, env.service("Other").await);

    // The list tells where its snapshot ends; streaming from there with filters gets only what follows.
    incidents(&env, &ingest, &key, &one.routing_key, 0..2).await;
    let snapshot = relayed_position(&env).await;
    let url = format!("{query}/api/stream?serviceId={}&status=resolved", other.id);
    let mut filtered = Client::open(&env, &url, Some(&key), Some(snapshot)).await.unwrap();
    incidents(&env, &ingest, &key, &one.routing_key, 2..4).await;
    incidents(&env, &ingest, &key, &other.routing_key, 0..2).await;
    let got = filtered.take(2).await;
    assert!(got.iter().all(|e| e.event == "resolved" && e.data.contains(&other.id)), "{got:?}");
    assert!(got.iter().all(|e| e.id.unwrap() > snapshot), "{got:?}");

    // A token works once; no key at all is a 401.
    let token = stream_token(&env, &query, &key).await;
    let _open = Client::open(&env, &format!("{query}/api/stream?token={token}"), None, None).await.unwrap();
    let (status, _) = Client::open(&env, &format!("{query}/api/stream?token={token}"), None, None).await.err().unwrap();
    assert_eq!(status, 401);
    let (status, _) = Client::open(&env, &format!("{query}/api/stream"), None, None).await.err().unwrap();
    assert_eq!(status, 401);

    // At most 20 streams per key (two are open already: the filtered one and the token's).
    let mut open = Vec::new();
    for _ in 0..18 {
        open.push(Client::open(&env, &format!("{query}/api/stream"), Some(&key), None).await.unwrap());
    }
    let (status, error) = Client::open(&env, &format!("{query}/api/stream"), Some(&key), None).await.err().unwrap();
    assert_eq!((status, error["error"]["code"].as_str()), (429, Some("RATE_LIMITED")), "{error}");
    drop(open);

    // Past what the stream keeps, a resuming client is told to refetch.
    let js = jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    js.get_stream(env.nats.changes_stream()).await.unwrap().purge().await.unwrap();
    let mut gone = Client::open(&env, &format!("{query}/api/stream"), Some(&key), Some(3)).await.unwrap();
    assert_eq!(gone.next().await.event, "reset");
}

/// A client that stops reading is cut off once more than 1 MiB waits for it: it gets `reset` and
/// the stream ends, while a client that reads gets every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_with_reset_and_a_reading_one_is_not() {
    use common::event::EventAction;
    use worker::apply::{QueuedEvent, apply_batch};
    let env = TestEnv::new().await;
    // query-api first: its feed follows the change stream from its start once a worker makes it.
    let query = env.spawn_query_api().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let url = format!("{query}/api/stream?serviceId={}&topics=incidents", service.id);
    let mut stalled = Client::open(&env, &url, Some(&key), None).await.unwrap();
    let mut reading = Client::open(&env, &url, Some(&key), None).await.unwrap();
    // About 12 MB of changes: more than the socket buffers between the two hold, then 1 MiB. The
    // reading client reads each batch before the next is applied, so it is never far behind.
    let (batches, size) = (48, 500);
    let changes = batches * size;
    for batch in 0..batches {
        let events: Vec<QueuedEvent> = (0..size)
            .map(|i| {
                let seq = batch * size + i + 1;
                let envelope = e2e::envelope(&service.id, &format!("k{seq}"), EventAction::Trigger, "down");
                QueuedEvent { seq, envelope }
            })
            .collect();
        apply_batch(&env.pool, &events).await.unwrap();
        let read = reading.take(size as usize).await;
        assert!(read.iter().all(|e| e.event == "triggered"), "the reading client got every change, none a reset");
    }
    // The stalled client's socket buffers hold the first few thousand changes; then its reset.
    let mut last = stalled.next().await;
    let mut seen = 1;
    while last.event != "reset" {
        last = stalled.next().await;
        seen += 1;
        assert!(seen <= changes, "the stalled client got everything without a reset");
    }
    assert!(last.data.contains("too slowly"), "{last:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), stalled.response.chunk()).await.unwrap().unwrap();
    assert!(end.is_none(), "the stream ends after reset");
}
