//! DESIGN §3–§4 at the ingest boundary: authentication, scopes, validation, limits.

use e2e::{TestEnv, trigger};
use futures_util::future::join_all;
use serde_json::{Value, json};

use common::auth::{Role, Scope};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    (status, body["error"].clone())
}

fn has_rate_limit_headers(response: &reqwest::Response) -> bool {
    ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]
        .iter()
        .all(|h| response.headers().contains_key(*h))
}

#[tokio::test]
async fn every_error_ingest_can_produce_has_its_code_and_names_the_field() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let key = env.admin_key().await;
    let rk = env.service("API").await.routing_key;
    let url = format!("{base}/api/events");
    let valid = trigger(&rk, "k", "CPU high");

    // 401: no key, unknown key, revoked key.
    let (status, error) = error_of(env.http.post(&url).json(&valid).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (401, "UNAUTHORIZED"));
    let (status, _) = error_of(env.http.post(&url).bearer_auth("osk_nope").json(&valid).send().await.unwrap()).await;
    assert_eq!(status, 401);
    let revoked = env.admin_key().await;
    sqlx::query("update api_keys set revoked_at = now() where key_hash = $1")
        .bind(common::auth::hash_key(&revoked).as_slice())
        .execute(&env.pool)
        .await
        .unwrap();
    let (status, _) = error_of(env.post_event(&base, &revoked, &valid).await).await;
    assert_eq!(status, 401);

    // The three header styles are all accepted.
    for request in [
        env.http.post(&url).header("Authorization", format!("Api-Key {key}")),
        env.http.post(&url).header("X-API-Key", key.as_str()),
        env.http.post(&url).bearer_auth(&key),
    ] {
        assert_eq!(request.json(&valid).send().await.unwrap().status(), 202);
    }

    // 403 names the missing scope.
    let reader = env.api_key(Role::Responder, Some(&[Scope::IncidentsRead]), None).await;
    let response = env.post_event(&base, &reader, &valid).await;
    assert!(has_rate_limit_headers(&response));
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (403, "FORBIDDEN"));
    assert!(error["message"].as_str().unwrap().contains("events:write"));

    // 415 and 413.
    let response =
        env.http.post(&url).bearer_auth(&key).header("content-type", "text/plain").body("hi").send().await.unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (415, "UNSUPPORTED_MEDIA_TYPE"));
    let mut huge = valid.clone();
    huge["payload"]["custom_details"] = json!({"blob": "x".repeat(600 * 1024)});
    let (status, error) = error_of(env.post_event(&base, &key, &huge).await).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (413, "PAYLOAD_TOO_LARGE"));

    // 400 VALIDATION_ERROR naming the field.
    let malformed =
        env.http.post(&url).bearer_auth(&key).header("content-type", "application/json").body("{\"event_action\":");
    let (status, error) = error_of(malformed.send().await.unwrap()).await;
    assert_eq!((status, error["details"]["field"].as_str().unwrap()), (400, "body"));
    let cases: Vec<(Value, &str)> = vec![
        (json!({"routing_key": rk, "event_action": "explode", "dedup_key": "k"}), "event_action"),
        (
            json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": 5, "source": "s", "severity": "info"}}),
            "payload.summary",
        ),
        (
            json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": "s", "source": "s", "severity": "fatal"}}),
            "payload.severity",
        ),
        (
            json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": "x".repeat(1025), "source": "s", "severity": "info"}}),
            "payload.summary",
        ),
        (
            json!({"routing_key": rk, "event_action": "trigger", "dedup_key": "k".repeat(256), "payload": {"summary": "s", "source": "s", "severity": "info"}}),
            "dedup_key",
        ),
        (json!({"routing_key": rk, "event_action": "resolve"}), "dedup_key"),
        (json!({"routing_key": rk, "event_action": "trigger"}), "payload"),
        (json!({"event_action": "resolve", "dedup_key": "k"}), "routing_key"),
        (
            json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": "s", "severity": "info"}}),
            "payload.source",
        ),
        (json!([1, 2]), "body"),
    ];
    // Every case is tried and every wrong answer reported, not only the first.
    let mut wrong = Vec::new();
    for (body, field) in cases {
        let response = env.post_event(&base, &key, &body).await;
        let headers = has_rate_limit_headers(&response);
        let (status, error) = error_of(response).await;
        if !headers || status != 400 || error["code"] != "VALIDATION_ERROR" || error["details"]["field"] != field {
            wrong.push(format!(
                "{body} → {status} {error} (rate-limit headers: {headers}), expected 400 naming {field}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{} case(s) answered wrongly:\n{}", wrong.len(), wrong.join("\n"));

    // Unknown routing key and unknown service id.
    let (status, error) = error_of(env.post_event(&base, &key, &trigger("no-such-key", "k", "s")).await).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (400, "INVALID_ROUTING_KEY"));
    let mut by_id = trigger("", "k", "s");
    by_id.as_object_mut().unwrap().remove("routing_key");
    by_id["service_id"] = "svc_missing".into();
    let (status, error) = error_of(env.post_event(&base, &key, &by_id).await).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (404, "NOT_FOUND"));

    // Unknown route and wrong method are JSON too.
    let (status, error) = error_of(env.http.get(format!("{base}/api/nothing")).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (404, "NOT_FOUND"));
    let (status, _) = error_of(env.http.get(&url).bearer_auth(&key).send().await.unwrap()).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn an_event_may_name_its_service_by_id() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let mut body = trigger("", "k", "s");
    body.as_object_mut().unwrap().remove("routing_key");
    body["service_id"] = service.id.clone().into();
    assert_eq!(env.post_event(&base, &key, &body).await.status(), 202);
}

/// Sends `n` events at once and returns their statuses.
async fn burst(env: &TestEnv, base: &str, key: &str, rk: &str, n: usize) -> Vec<u16> {
    let requests = (0..n).map(|i| {
        let body = trigger(rk, &format!("k{i}"), "burst");
        async move { env.post_event(base, key, &body).await.status().as_u16() }
    });
    join_all(requests).await
}

#[tokio::test]
async fn the_101st_event_in_a_minute_is_rate_limited_with_headers() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let key = env.admin_key().await;
    let rk = env.service("API").await.routing_key;
    let body = trigger(&rk, "k", "burst");

    let (admitted, response, elapsed) = e2e::admitted_until_limited(25, || env.post_event(&base, &key, &body)).await;
    // 100 at once, plus one per 0.6 s the burst took (none when it is quick).
    assert!(e2e::fits_limit(admitted, 100, elapsed), "{admitted} admitted in {elapsed:?}");
    assert_eq!(response.status(), 429);
    let header = |name: &str| response.headers()[name].to_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(header("x-ratelimit-limit"), 100);
    assert_eq!(header("x-ratelimit-remaining"), 0);
    let now = jiff::Timestamp::now().as_second().unsigned_abs();
    assert!(header("x-ratelimit-reset") > now && header("x-ratelimit-reset") <= now + 61);
    let retry_after = header("retry-after");
    assert!((1..=60).contains(&retry_after));
    let (_, error) = error_of(response).await;
    assert_eq!(error["code"], "RATE_LIMITED");
    assert_eq!(error["retry_after"], retry_after);
}

#[tokio::test]
async fn a_key_with_its_own_limit_may_send_more() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let key = env.api_key(Role::Admin, Some(&[Scope::EventsWrite]), Some(150)).await;
    let rk = env.service("API").await.routing_key;

    let started = std::time::Instant::now();
    let statuses = burst(&env, &base, &key, &rk, 120).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let body = trigger(&rk, "more", "still fine");
    let (admitted, response, _) = e2e::admitted_until_limited(25, || env.post_event(&base, &key, &body)).await;
    // The key's own limit, not the default 100, decides where it stops.
    let elapsed = started.elapsed();
    assert!(e2e::fits_limit(120 + admitted, 150, elapsed), "{admitted} more admitted in {elapsed:?}");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-ratelimit-limit"], "150");
}

#[tokio::test]
async fn repeated_failed_authentication_from_one_address_is_rate_limited() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let body = trigger("rk", "k", "s");
    for _ in 0..env.limits.auth_failures_per_minute {
        let response = env.post_event(&base, "osk_guess", &body).await;
        assert_eq!(response.status(), 401);
    }
    let (status, error) = error_of(env.post_event(&base, "osk_guess", &body).await).await;
    assert_eq!((status, error["code"].as_str().unwrap()), (429, "RATE_LIMITED"));
}

/// The limiter's group commit: while one script call for a bucket is in Redis, the checks that
/// arrive queue and go together in the next call. 32 clients in closed loops (each check sent
/// when its previous one is answered, as HTTP clients do) make 320 checks in a small fraction of
/// as many calls, and admission stays exact. A Redis server of its own counts the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_of_a_bucket_share_redis_calls_and_stay_exact() {
    let redis = e2e::servers::PrivateRedis::start();
    let limiter =
        common::ratelimit::RateLimiter::new(&redis.url(), "group:", std::time::Duration::from_secs(5)).unwrap();
    let started = std::time::Instant::now();
    let clients = (0..32).map(|_| {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..10 {
                admitted += usize::from(limiter.check("events:key", 250).await.expect("redis answers").allowed);
            }
            admitted
        })
    });
    let admitted: usize = join_all(clients).await.into_iter().map(Result::unwrap).sum();
    assert!(e2e::fits_limit(admitted, 250, started.elapsed()), "{admitted} of 320 admitted");

    let stats = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli");
    let stats = String::from_utf8(stats.stdout).unwrap();
    let calls: u64 = stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| line.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok())
        .sum();
    assert!((1..=100).contains(&calls), "320 checks took {calls} script calls");
}
