//! DESIGN §1.6 and §3: what PostgreSQL cannot store is refused or repaired at ingest, every
//! rejection is our JSON envelope naming the parameter, retries are safe, and the
//! failed-authentication limit never refuses a valid key.

use std::time::Duration;

use e2e::{TestEnv, trigger};
use serde_json::{Value, json};

const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "error answers are JSON"
    );
    let body: Value = response.json().await.expect("error bodies are JSON");
    (status, body["error"].clone())
}

async fn notify(env: &TestEnv, url: &str, alerts: Value) -> reqwest::Response {
    let body = json!({"version": "4", "status": "firing", "receiver": "ops", "groupKey": "{}:{}", "alerts": alerts});
    env.http.post(url).json(&body).send().await.expect("request reaches ingest")
}

fn firing(fingerprint: &str) -> Value {
    json!({"status": "firing", "fingerprint": fingerprint, "startsAt": "2026-11-27T10:00:00Z",
           "labels": {"alertname": "DiskFull", "instance": fingerprint}, "annotations": {"summary": "disk full"}})
}

async fn alert_counts(env: &TestEnv, service_id: &str) -> Vec<i32> {
    sqlx::query_scalar("select alert_count from incidents where service_id = $1 order by dedup_key")
        .bind(service_id)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_by_the_events_api_and_repaired_by_integrations() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let (ingest, query) = (&pipeline.ingest, &pipeline.query);
    let key = env.admin_key().await;
    let service = env.service("NUL").await;
    let rk = &service.routing_key;

    let mut cases = Vec::new();
    let mut body = trigger(rk, "a\u{0}b", "s");
    cases.push((body.clone(), "dedup_key"));
    body = trigger(rk, "k", "cpu\u{0}high");
    cases.push((body.clone(), "payload.summary"));
    body = trigger(rk, "k", "s");
    body["payload"]["custom_details"] = json!({"host": "web\u{0}01"});
    cases.push((body, "payload.custom_details.host"));
    for (body, field) in cases {
        let (status, error) = error_of(env.post_event(ingest, &key, &body).await).await;
        assert_eq!((status, error["details"]["field"].as_str()), (400, Some(field)), "{error}");
    }

    let pd = json!({"routing_key": rk, "event_action": "trigger", "dedup_key": "pd\u{0}key",
        "payload": {"summary": "pd\u{0}summary", "source": "h", "severity": "info", "custom_details": {"x\u{0}": "y"}}});
    let response = env.http.post(format!("{ingest}/v2/enqueue")).json(&pd).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let mut alert = firing("am-fp");
    alert["annotations"]["summary"] = json!("am\u{0}summary");
    let response = notify(&env, &format!("{ingest}/api/integrations/alertmanager/{rk}"), json!([alert])).await;
    assert_eq!(response.status(), 202);
    env.wait_for_applied(2, APPLY_TIMEOUT).await;
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "select i.dedup_key, i.title, e.payload->'custom_details'->'opssentinal_repairs'
         from incidents i join events e on e.incident_id = i.id order by i.dedup_key",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let titles: Vec<(&str, &str)> = rows.iter().map(|(k, t, _)| (k.as_str(), t.as_str())).collect();
    assert_eq!(titles, vec![("am-fp", "amsummary"), ("pdkey", "pdsummary")]);
    assert!(rows.iter().all(|(_, _, repairs)| repairs[0].as_str().is_some_and(|r| r.contains("NUL"))), "{rows:?}");
    let dead: i64 = sqlx::query_scalar("select count(*) from incidents where title like '%' || chr(1) || '%'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);

    // A NUL in a path or a query parameter is a 400 naming it, not a 500.
    let (status, error) =
        error_of(env.http.get(format!("{query}/api/incidents/a%00b")).bearer_auth(&key).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("VALIDATION_ERROR")));
    let url = format!("{query}/api/incidents?serviceId=a%00b");
    let (status, error) = error_of(env.http.get(url).bearer_auth(&key).send().await.unwrap()).await;
    assert_eq!((status, error["details"]["field"].as_str()), (400, Some("serviceId")));
}

#[tokio::test]
async fn path_and_query_rejections_are_json_naming_the_parameter() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let query = env.spawn_query_api().await;
    let key = env.admin_key().await;

    let (status, error) =
        error_of(env.http.get(format!("{query}/api/incidents/%FF")).bearer_auth(&key).send().await.unwrap()).await;
    assert_eq!((status, error["details"]["field"].as_str()), (400, Some("id")), "{error}");
    let url = format!("{ingest}/api/integrations/alertmanager?routing_key=a&routing_key=b");
    let (status, error) = error_of(notify(&env, &url, json!([])).await).await;
    assert_eq!((status, error["details"]["field"].as_str()), (400, Some("routing_key")), "{error}");
    let url = format!("{ingest}/api/integrations/alertmanager/%FF");
    let (status, error) = error_of(notify(&env, &url, json!([])).await).await;
    assert_eq!((status, error["details"]["field"].as_str()), (400, Some("routing_key")), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_has_no_second_effect_even_after_the_stream_window() {
    let mut env = TestEnv::new().await;
    env.nats.duplicate_window_secs = 1;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Retries").await;
    let mut body = trigger(&service.routing_key, "", "disk full");
    body.as_object_mut().unwrap().remove("dedup_key");
    let send = |body: Value, idempotency_key: &'static str| {
        let request =
            env.http.post(format!("{ingest}/api/events")).bearer_auth(&key).header("Idempotency-Key", idempotency_key);
        async move { request.json(&body).send().await.unwrap() }
    };

    let first: Value = send(body.clone(), "retry-1").await.json().await.unwrap();
    env.wait_for_applied(1, APPLY_TIMEOUT).await;
    // Past JetStream's duplicate window (1 s here), only the remembered first acceptance helps.
    let window_passed = tokio::time::Instant::now() + Duration::from_millis(1500);
    tokio::time::sleep_until(window_passed).await;
    let again = send(body.clone(), "retry-1").await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!((&again["event_id"], &again["dedup_key"]), (&first["event_id"], &first["dedup_key"]));
    let other: Value = send(body.clone(), "retry-2").await.json().await.unwrap();
    assert_ne!(other["event_id"], first["event_id"]);
    env.wait_for_applied(2, APPLY_TIMEOUT).await;
    env.wait_until_drained(APPLY_TIMEOUT).await;
    assert_eq!(env.applied_events().await, 2, "the retry was applied as a new event");
    let counts = alert_counts(&env, &service.id).await;
    assert_eq!(counts, vec![1, 1]);

    body["payload"]["summary"] = json!("something else");
    let (status, error) = error_of(send(body, "retry-1").await).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("CONFLICT")));
}

/// DESIGN §1.2, dedup never depends on a cache: a retry with the same `Idempotency-Key` after Redis
/// forgot the first acceptance (flushed, restarted without persistence, evicted), past the
/// stream's duplicate window and after the key's resolve, has no second effect: one event-log row,
/// the incident stays resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_redis_forgot_the_first_acceptance_has_no_second_effect() {
    let mut env = TestEnv::new().await;
    env.nats.duplicate_window_secs = 1;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Forgetful").await;
    let body = trigger(&service.routing_key, "disk", "disk full");
    let send = |body: Value| {
        let request = env.http.post(format!("{ingest}/api/events")).bearer_auth(&key).header("Idempotency-Key", "t-1");
        async move { request.json(&body).send().await.unwrap() }
    };
    let first: Value = send(body.clone()).await.json().await.unwrap();
    env.wait_for_applied(1, APPLY_TIMEOUT).await;
    let resolve = e2e::action(&service.routing_key, "disk", "resolve");
    let response = env.http.post(format!("{ingest}/api/events")).bearer_auth(&key).json(&resolve).send().await.unwrap();
    assert_eq!(response.status(), 202);
    env.wait_for_applied(2, APPLY_TIMEOUT).await;

    // Redis forgets this test's idempotency records; JetStream's duplicate window (1 s) passes.
    let forget = format!(
        "redis-cli --scan --pattern '{}idem:*' | xargs -r redis-cli del",
        env.redis.key_prefix.replace('\'', "")
    );
    assert!(std::process::Command::new("sh").args(["-c", &forget]).status().unwrap().success());
    let window_passed = tokio::time::Instant::now() + Duration::from_millis(1500);
    tokio::time::sleep_until(window_passed).await;
    let again = send(body).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["event_id"], first["event_id"]);
    env.wait_until_drained(APPLY_TIMEOUT).await;

    let rows: i64 = sqlx::query_scalar("select count(*) from events where event_id = $1::uuid")
        .bind(first["event_id"].as_str().unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the retry was stored a second time");
    let statuses: Vec<String> = sqlx::query_scalar("select status from incidents").fetch_all(&env.pool).await.unwrap();
    assert_eq!(statuses, ["RESOLVED"], "the retry reopened the resolved incident");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_sent_alertmanager_notification_counts_once_and_a_large_group_is_admitted_whole() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let service = env.service("Alertmanager").await;
    let url = format!("{ingest}/api/integrations/alertmanager?routing_key={}", service.routing_key);

    // 120 alerts against the default 100 a minute: one notification, admitted whole.
    let alerts: Vec<Value> = (0..120).map(|i| firing(&format!("fp-{i:03}"))).collect();
    let response = notify(&env, &url, json!(alerts)).await;
    assert_eq!(response.status(), 202);
    env.wait_for_applied(120, APPLY_TIMEOUT).await;
    // Alertmanager re-sends the whole group (it saw no answer): refused whole while the bucket
    // is in debt, and counted once when admitted.
    let (status, error) = error_of(notify(&env, &url, json!(alerts)).await).await;
    assert_eq!((status, error["code"].as_str()), (429, Some("RATE_LIMITED")));
    env.wait_until_drained(APPLY_TIMEOUT).await;
    assert_eq!(env.applied_events().await, 120, "a refused notification published nothing");

    let small = env.service("Small group").await;
    let url = format!("{ingest}/api/integrations/alertmanager?routing_key={}", small.routing_key);
    let group = json!([firing("a"), firing("b"), firing("c")]);
    assert_eq!(notify(&env, &url, group.clone()).await.status(), 202);
    assert_eq!(notify(&env, &url, group).await.status(), 202);
    env.wait_for_applied(123, APPLY_TIMEOUT).await;
    env.wait_until_drained(APPLY_TIMEOUT).await;
    assert_eq!(alert_counts(&env, &small.id).await, vec![1, 1, 1], "the re-send was counted again");
    assert!(alert_counts(&env, &service.id).await.iter().all(|c| *c == 1));
}

#[tokio::test]
async fn one_failing_client_behind_a_proxy_never_locks_out_valid_keys() {
    let mut env = TestEnv::new().await;
    env.limits.trusted_proxies = vec![Some("127.0.0.1/32".parse().unwrap())];
    env.limits.auth_cache_ttl_secs = 0;
    let ingest = env.spawn_ingest().await;
    let key = env.admin_key().await;
    let service = env.service("Proxy").await;
    let body = trigger(&service.routing_key, "k", "s");
    // The proxy (127.0.0.1, trusted) says the request came from 10.9.9.9; what 10.9.9.9 itself
    // claims (10.0.0.1) could be forged and is not believed.
    let from = |spoofed: &str, secret: &str| {
        let hops = format!("{spoofed}, 10.9.9.9");
        env.http.post(format!("{ingest}/api/events")).bearer_auth(secret).header("X-Forwarded-For", hops).json(&body)
    };
    for i in 0..env.limits.auth_failures_per_minute {
        assert_eq!(from(&format!("10.0.0.{i}"), "osk_wrong").send().await.unwrap().status(), 401);
    }
    assert_eq!(from("10.0.0.1", "osk_wrong").send().await.unwrap().status(), 429);
    // The same address with a valid key (looked up again: no cache), and others, are unaffected.
    assert_eq!(from("10.0.0.1", &key).send().await.unwrap().status(), 202);
    let response = env
        .http
        .post(format!("{ingest}/api/events"))
        .bearer_auth("osk_wrong")
        .header("X-Forwarded-For", "10.9.9.8")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "another client has its own bucket");

    // The Alertmanager webhook's API-key form goes through the same gate.
    let url = format!("{ingest}/api/integrations/alertmanager?service_id={}", service.id);
    let hook = |secret: &str| {
        env.http
            .post(&url)
            .bearer_auth(secret)
            .header("X-Forwarded-For", "10.9.9.9")
            .json(&json!({"alerts": [firing("f")]}))
    };
    assert_eq!(hook("osk_wrong").send().await.unwrap().status(), 429, "10.9.9.9's failures were counted");
    assert_eq!(hook(&key).send().await.unwrap().status(), 202);
    let limited = env.api_key(common::auth::Role::Admin, Some(&[common::auth::Scope::EventsWrite]), Some(5)).await;
    let six: Vec<Value> = (0..6).map(|i| firing(&format!("g{i}"))).collect();
    let response =
        env.http.post(&url).bearer_auth(&limited).json(&json!({"alerts": [firing("x")]})).send().await.unwrap();
    assert_eq!(response.headers()["x-ratelimit-limit"], "5");
    let response = env.http.post(&url).bearer_auth(&limited).json(&json!({"alerts": six})).send().await.unwrap();
    assert_eq!(response.status(), 429, "the key's own limit applies to the webhook, per alert");
}
