//! DESIGN §10: outbound webhooks, delivered to a real receiver that verifies every signature with
//! the Standard Webhooks reference library. Retries are made due by rewriting their due time in
//! SQL, never by sleeping through the backoff.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::event::EventAction;
use e2e::servers::{ServiceProcess, WebhookReceiver};
use e2e::{TestEnv, action, trigger, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use worker::apply::{QueuedEvent, apply_batch};

/// Creates a webhook; returns its id and secret.
async fn create(env: &TestEnv, query: &str, key: &str, body: Value) -> (String, String) {
    let (status, created) = env.send_json(Method::POST, &format!("{query}/api/webhooks"), key, &body).await;
    assert_eq!(status, 201, "{created}");
    (created["webhook"]["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned())
}

/// Makes every pending retry due now.
async fn retries_due(env: &TestEnv) {
    sqlx::query("update webhook_deliveries set next_attempt_at = now() where status = 'pending' and attempts > 0")
        .execute(&env.pool)
        .await
        .unwrap();
}

/// Makes the retry after a delivery's `attempts`-th attempt due at once, waiting first for the
/// sender to record that attempt: a receiver sees an attempt before the sender schedules the next.
async fn retry_due_after(env: &TestEnv, attempts: i32) {
    wait_until(Duration::from_secs(20), "the attempt to be recorded", || async {
        sqlx::query_scalar::<_, bool>(
            "select exists (select from webhook_deliveries where status = 'pending' and attempts >= $1)",
        )
        .bind(attempts)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    })
    .await;
    retries_due(env).await;
}

/// The deliveries a webhook's log shows, newest first.
async fn deliveries(env: &TestEnv, query: &str, key: &str, webhook: &str, filter: &str) -> Vec<Value> {
    let (status, body) = env.get_json(&format!("{query}/api/webhooks/{webhook}/deliveries?{filter}"), key).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// What a receiver accepted (answered 2xx, signature verified), as (incident, type, version).
fn accepted(received: &[Value]) -> Vec<(String, String, i64)> {
    received
        .iter()
        .filter(|r| r["verified"] == true && r["status"].as_u64().is_some_and(|s| (200..300).contains(&s)))
        .filter(|r| r["body"]["type"] != "ping")
        .map(|r| {
            let body = &r["body"];
            let incident = body["data"]["incident"]["id"].as_str().unwrap().to_owned();
            (incident, body["type"].as_str().unwrap().to_owned(), body["data"]["change"]["version"].as_i64().unwrap())
        })
        .collect()
}

/// `503` three times then `200`: four attempts under one `webhook-id`, and the incident's later
/// changes only after it, in order. A `400` is not retried, and the incident's next change follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_one_id_and_the_order_per_incident_and_a_refusal_is_not_retried() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let key = env.admin_key().await;
    let service = env.service("Checkout").await;
    let receiver = WebhookReceiver::start();
    let (webhook, secret) = create(&env, &pipeline.query, &key, json!({"url": receiver.url("/hooks")})).await;
    receiver.configure(&env.http, json!({"secret": secret, "responses": [503, 503, 503], "default": 200})).await;

    for event in
        [trigger(&service.routing_key, "disk", "Disk full"), action(&service.routing_key, "disk", "acknowledge")]
    {
        assert_eq!(env.post_event(&pipeline.ingest, &key, &event).await.status(), 202);
    }
    // Each retry is made due as soon as the receiver has seen the attempt before it.
    for seen in 1..=3 {
        wait_until(Duration::from_secs(20), "the next attempt", || async {
            receiver.received(&env.http).await.len() >= seen
        })
        .await;
        retry_due_after(&env, seen as i32).await;
    }
    assert_eq!(
        env.post_event(&pipeline.ingest, &key, &action(&service.routing_key, "disk", "resolve")).await.status(),
        202
    );
    wait_until(Duration::from_secs(20), "the three changes to be accepted", || async {
        accepted(&receiver.received(&env.http).await).len() >= 3
    })
    .await;
    let received = receiver.received(&env.http).await;
    assert!(received.iter().all(|r| r["verified"] == true), "{received:#?}");
    let first_id = &received[0]["webhookId"];
    let statuses: Vec<_> =
        received.iter().filter(|r| &r["webhookId"] == first_id).map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [503, 503, 503, 200]);
    let types: Vec<_> = accepted(&received).into_iter().map(|(_, kind, version)| (kind, version)).collect();
    let kinds: Vec<&str> = types.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["incident.triggered", "incident.acknowledged", "incident.resolved"]);
    assert!(types.windows(2).all(|w| w[0].1 < w[1].1), "versions rise: {types:?}");
    // The log shows the four attempts of the first delivery.
    let log = deliveries(&env, &pipeline.query, &key, &webhook, "").await;
    let first = log.iter().find(|d| &d["id"] == first_id).unwrap();
    assert_eq!(first["status"], "succeeded");
    let codes: Vec<_> =
        first["attempts"].as_array().unwrap().iter().map(|a| a["httpStatus"].as_u64().unwrap()).collect();
    assert_eq!(codes, [503, 503, 503, 200]);

    // A 400 fails the delivery at once; the incident's next change is delivered after it.
    receiver.configure(&env.http, json!({"responses": [400]})).await;
    let before = receiver.received(&env.http).await.len();
    assert_eq!(
        env.post_event(&pipeline.ingest, &key, &trigger(&service.routing_key, "cpu", "CPU hot")).await.status(),
        202
    );
    wait_until(Duration::from_secs(20), "the refused delivery", || async {
        receiver.received(&env.http).await.len() > before
    })
    .await;
    assert_eq!(
        env.post_event(&pipeline.ingest, &key, &action(&service.routing_key, "cpu", "acknowledge")).await.status(),
        202
    );
    wait_until(Duration::from_secs(20), "the next change after the refusal", || async {
        accepted(&receiver.received(&env.http).await).len() == 4
    })
    .await;
    retries_due(&env).await;
    let failed = deliveries(&env, &pipeline.query, &key, &webhook, "status=failed").await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["type"], "incident.triggered");
    assert_eq!(failed[0]["attempts"].as_array().unwrap().len(), 1);
    let refused_id = &failed[0]["id"];
    let received = receiver.received(&env.http).await;
    assert_eq!(received.iter().filter(|r| &r["webhookId"] == refused_id).count(), 1, "a 400 is not retried");

    // A filter the log does not know is refused, naming it.
    let (status, body) =
        env.get_json(&format!("{}/api/webhooks/{webhook}/deliveries?status=lost", pipeline.query), &key).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("status")), "{body}");
}

/// A receiver that hangs for 30 s holds at most its own deliveries back: another webhook gets
/// every change at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_delay_another_webhook() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let (hanging, healthy) = (WebhookReceiver::start(), WebhookReceiver::start());
    hanging.configure(&env.http, json!({"hang_seconds": 30})).await;
    create(&env, &pipeline.query, &key, json!({"url": hanging.url("/")})).await;
    let (_, secret) = create(&env, &pipeline.query, &key, json!({"url": healthy.url("/")})).await;
    healthy.configure(&env.http, json!({"secret": secret})).await;

    // Forty incidents: more than a worker sends to one webhook at once.
    let started = Instant::now();
    let batch: Vec<QueuedEvent> = (0..40)
        .map(|i| QueuedEvent {
            seq: i + 1,
            envelope: e2e::envelope(&service.id, &format!("k{i}"), EventAction::Trigger, "down"),
        })
        .collect();
    apply_batch(&env.pool, &batch).await.unwrap();
    wait_until(Duration::from_secs(8), "the healthy receiver to get all forty", || async {
        accepted(&healthy.received(&env.http).await).len() == 40
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(!hanging.received(&env.http).await.is_empty(), "the hanging receiver was being sent to meanwhile");
}

/// A worker killed in the middle of an attempt: another worker sends the delivery again, under
/// the same `webhook-id`, once the claim lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_sender_is_killed_mid_attempt_is_sent_again_under_the_same_id() {
    let env = TestEnv::new().await;
    let key = env.admin_key().await;
    let query = env.spawn_query_api().await;
    let service = env.service("API").await;
    let receiver = WebhookReceiver::start();
    let (_, secret) = create(&env, &query, &key, json!({"url": receiver.url("/")})).await;
    receiver.configure(&env.http, json!({"secret": secret, "hang_seconds": 60})).await;
    let mut worker = ServiceProcess::start("opssentinal-worker", &env.service_env());
    apply_batch(
        &env.pool,
        &[QueuedEvent { seq: 1, envelope: e2e::envelope(&service.id, "disk", EventAction::Trigger, "full") }],
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(20), "the attempt to reach the receiver", || async {
        !receiver.received(&env.http).await.is_empty()
    })
    .await;
    worker.signal("-KILL");
    assert!(worker.exited_within(Duration::from_secs(5)).await.is_some());
    receiver.configure(&env.http, json!({"hang_seconds": 0})).await;
    let _other = ServiceProcess::start("opssentinal-worker", &env.service_env());
    wait_until(Duration::from_secs(40), "the delivery to be sent again", || async {
        receiver.received(&env.http).await.len() >= 2
    })
    .await;
    let received = receiver.received(&env.http).await;
    assert_eq!(received[0]["webhookId"], received[1]["webhookId"]);
    assert!(received.iter().all(|r| r["verified"] == true), "{received:#?}");
    assert_eq!(received[1]["status"], 200);
}

/// 10,000 incident changes in a burst reach a healthy receiver, each once, in order per incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_changes_in_a_burst_arrive_in_order_per_incident() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let receiver = WebhookReceiver::start();
    let (webhook, secret) = create(&env, &pipeline.query, &key, json!({"url": receiver.url("/")})).await;
    receiver.configure(&env.http, json!({"secret": secret})).await;

    // 3,334 incidents over 200 keys, each triggered, acknowledged and resolved: 10,002 changes.
    let (incidents, keys): (usize, usize) = (3334, 200);
    let mut seq = 0;
    for round in 0..incidents.div_ceil(keys) {
        let mut batch = Vec::new();
        for step in [EventAction::Trigger, EventAction::Acknowledge, EventAction::Resolve] {
            for k in 0..keys.min(incidents - round * keys) {
                seq += 1;
                batch.push(QueuedEvent { seq, envelope: e2e::envelope(&service.id, &format!("k{k}"), step, "down") });
            }
        }
        for chunk in batch.chunks(500) {
            apply_batch(&env.pool, chunk).await.unwrap();
        }
    }
    let changes = 3 * incidents;
    let started = Instant::now();
    wait_until(Duration::from_secs(180), "every change to be delivered", || async {
        let delivered: i64 = sqlx::query_scalar("select count(*) from webhook_deliveries where status = 'succeeded'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        delivered as usize == changes
    })
    .await;
    println!("10,002 changes delivered in {:?}", started.elapsed());
    let received = receiver.received(&env.http).await;
    assert!(received.iter().all(|r| r["verified"] == true));
    let ids: std::collections::HashSet<_> = received.iter().map(|r| r["webhookId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), changes, "each change once");
    let mut per_incident: HashMap<String, Vec<String>> = HashMap::new();
    for (incident, kind, _) in accepted(&received) {
        per_incident.entry(incident).or_default().push(kind);
    }
    assert_eq!(per_incident.len(), incidents);
    for (incident, kinds) in &per_incident {
        assert_eq!(kinds, &["incident.triggered", "incident.acknowledged", "incident.resolved"], "{incident}");
    }
    let failed = deliveries(&env, &pipeline.query, &key, &webhook, "status=failed").await;
    assert!(failed.is_empty());
}

/// The API: private destinations are refused naming `url` (and checked again on connecting),
/// bad fields are named; ping, rotation (both secrets sign for a day), redelivery, disabling
/// after a day of failures and re-enabling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_private_destinations_pings_rotates_redelivers_and_disables() {
    let env = TestEnv::new().await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let strict = env.spawn_query_api_with(common::config::WebhookConfig { allow_private: false }).await;
    for (body, field) in [
        (json!({"url": "http://127.0.0.1:9/hook"}), "url"),
        (json!({"url": "http://[::1]/hook"}), "url"),
        (json!({"url": "http://10.1.2.3/hook"}), "url"),
        (json!({"url": "http://169.254.169.254/latest/meta-data"}), "url"),
        (json!({"url": "http://localhost./hook"}), "url"),
        (json!({"url": "ftp://example.com/hook"}), "url"),
        (json!({"url": "https://user:pw@example.com/hook"}), "url"),
        (json!({"url": "https://example.com/hook", "events": []}), "events"),
        (json!({"url": "https://example.com/hook", "events": ["incident.exploded"]}), "events[0]"),
        (json!({"url": "https://example.com/hook", "colour": "red"}), "colour"),
        (json!({"url": "https://example.com/hook", "serviceIds": [service.id, "svc_missing"]}), "serviceIds[1]"),
    ] {
        let (status, error) = env.send_json(Method::POST, &format!("{strict}/api/webhooks"), &key, &body).await;
        assert_eq!((status, error["error"]["details"]["field"].as_str()), (400, Some(field)), "{body}: {error}");
    }
    let responder = env.api_key(common::auth::Role::Responder, None, None).await;
    let (status, _) = env
        .send_json(Method::POST, &format!("{strict}/api/webhooks"), &responder, &json!({"url": "https://example.com/"}))
        .await;
    assert_eq!(status, 403);

    // A worker that refuses private addresses does not connect to a name that resolves to one.
    let query = env.spawn_query_api().await;
    let receiver = WebhookReceiver::start();
    let (private, _) = create(&env, &query, &key, json!({"url": format!("http://localhost:{}/", receiver.port)})).await;
    let mut vars = env.service_env();
    vars.retain(|(name, _)| *name != "WEBHOOK_ALLOW_PRIVATE");
    let strict_worker = ServiceProcess::start("opssentinal-worker", &vars);
    let (status, _) =
        env.send_json(Method::POST, &format!("{query}/api/webhooks/{private}/ping"), &key, &json!({})).await;
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(20), "the refused attempt", || async {
        deliveries(&env, &query, &key, &private, "").await[0]["attempts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let attempt = &deliveries(&env, &query, &key, &private, "").await[0]["attempts"][0];
    assert!(attempt["error"].as_str().unwrap().contains("private"), "{attempt}");
    assert!(receiver.received(&env.http).await.is_empty());
    drop(strict_worker);
    env.send_json(Method::DELETE, &format!("{query}/api/webhooks/{private}"), &key, &json!({})).await;

    // Rotation: after it, a ping verifies with the new secret and with the old one.
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let (webhook, old) = create(&env, &query, &key, json!({"url": receiver.url("/")})).await;
    let (status, rotated) =
        env.send_json(Method::POST, &format!("{query}/api/webhooks/{webhook}/rotate-secret"), &key, &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated["webhook"]["previousSecretUntil"].is_string());
    for (n, secret) in [(1, &new), (2, &old)] {
        receiver.configure(&env.http, json!({"secret": secret, "default": 200})).await;
        let (status, ping) =
            env.send_json(Method::POST, &format!("{query}/api/webhooks/{webhook}/ping"), &key, &json!({})).await;
        assert_eq!(status, 202, "{ping}");
        wait_until(Duration::from_secs(20), "the ping", || async { receiver.received(&env.http).await.len() >= n })
            .await;
        let received = receiver.received(&env.http).await;
        assert_eq!(received[n - 1]["verified"], true, "{received:#?}");
        assert_eq!(received[n - 1]["webhookId"], ping["delivery"]["id"]);
        assert_eq!(received[n - 1]["signature"].as_str().unwrap().split(' ').count(), 2);
    }

    // Redelivery sends the same delivery again, under its id, and the log keeps both attempts.
    let ping = deliveries(&env, &query, &key, &webhook, "status=succeeded").await[0].clone();
    let (status, _) = env
        .send_json(
            Method::POST,
            &format!("{query}/api/webhooks/{webhook}/deliveries/{}/redeliver", ping["id"].as_str().unwrap()),
            &key,
            &json!({}),
        )
        .await;
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(20), "the redelivery", || async { receiver.received(&env.http).await.len() >= 3 })
        .await;
    assert_eq!(receiver.received(&env.http).await[2]["webhookId"], ping["id"]);
    wait_until(Duration::from_secs(20), "the redelivery's attempt in the log", || async {
        let log = deliveries(&env, &query, &key, &webhook, "").await;
        log.iter().any(|d| {
            d["id"] == ping["id"] && d["status"] == "succeeded" && d["attempts"].as_array().unwrap().len() == 2
        })
    })
    .await;

    // A 429's Retry-After, in seconds or as an HTTP date, sets when the next attempt is due.
    let in_two_minutes = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&in_two_minutes).unwrap();
    for (retry_after, wait) in [(json!(7), 7.0), (json!(date), 120.0)] {
        receiver.configure(&env.http, json!({"responses": [429], "retry_after": retry_after})).await;
        let (_, ping) =
            env.send_json(Method::POST, &format!("{query}/api/webhooks/{webhook}/ping"), &key, &json!({})).await;
        let id = ping["delivery"]["id"].clone();
        let delivery = || async {
            deliveries(&env, &query, &key, &webhook, "status=pending").await.into_iter().find(|d| d["id"] == id)
        };
        wait_until(Duration::from_secs(20), "the refused ping", || async {
            delivery().await.is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
        })
        .await;
        let pending = delivery().await.unwrap();
        let instant = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
        let due = instant(&pending["nextAttemptAt"]).duration_since(instant(&pending["attempts"][0]["at"]));
        assert!((due.as_secs_f64() - wait).abs() < 1.5, "due {due:?} after the attempt, not {wait} s");
    }

    // A webhook failing for 24 hours is disabled by its next failure; PATCH re-enables it.
    receiver.configure(&env.http, json!({"default": 500})).await;
    sqlx::query("update webhooks set failing_since = now() - interval '25 hours' where id = $1")
        .bind(&webhook)
        .execute(&env.pool)
        .await
        .unwrap();
    env.send_json(Method::POST, &format!("{query}/api/webhooks/{webhook}/ping"), &key, &json!({})).await;
    wait_until(Duration::from_secs(20), "the webhook to be disabled", || async {
        env.get_json(&format!("{query}/api/webhooks/{webhook}"), &key).await.1["webhook"]["enabled"] == false
    })
    .await;
    let (_, disabled) = env.get_json(&format!("{query}/api/webhooks/{webhook}"), &key).await;
    assert!(disabled["webhook"]["disabledReason"].as_str().unwrap().contains("24 hours"), "{disabled}");
    let (status, enabled) =
        env.send_json(Method::PATCH, &format!("{query}/api/webhooks/{webhook}"), &key, &json!({"enabled": true})).await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(
        (enabled["webhook"]["enabled"].as_bool(), enabled["webhook"]["failingSince"].as_str()),
        (Some(true), None)
    );
    assert!(enabled["webhook"]["disabledReason"].is_null());

    // The log keeps a finished delivery 30 days.
    let logged = deliveries(&env, &query, &key, &webhook, "").await.len();
    sqlx::query("update webhook_deliveries set finished_at = now() - interval '31 days' where id = $1")
        .bind(ping["id"].as_str().unwrap())
        .execute(&env.pool)
        .await
        .unwrap();
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    worker::roles::retention::maintain(&env.pool, 30, today).await.unwrap();
    let kept = deliveries(&env, &query, &key, &webhook, "").await;
    assert_eq!(kept.len(), logged - 1);
    assert!(kept.iter().all(|d| d["id"] != ping["id"]));

    let (status, _) = env.send_json(Method::DELETE, &format!("{query}/api/webhooks/{webhook}"), &key, &json!({})).await;
    assert_eq!(status, 204);
    let (status, _) = env.get_json(&format!("{query}/api/webhooks/{webhook}"), &key).await;
    assert_eq!(status, 404);
}
