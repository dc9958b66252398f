//! DESIGN §1 guarantees 1 and 6 with dependencies going away: each test kills a private server
//! of its own, never the shared ones.

use std::time::Duration;

use e2e::servers::{PrivateNats, PrivatePostgres, PrivateRedis, ServiceProcess};
use e2e::{PG_ADMIN_URL, REDIS_URL, TestEnv, trigger, wait_until};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_means_503_and_never_202() {
    let mut nats = PrivateNats::start();
    let env = TestEnv::on(PG_ADMIN_URL, REDIS_URL, &nats.url()).await;
    let base = env.spawn_ingest().await;
    let key = env.admin_key().await;
    let rk = env.service("API").await.routing_key;
    assert_eq!(env.post_event(&base, &key, &trigger(&rk, "a", "before")).await.status(), 202);

    nats.kill();
    for i in 0..3 {
        let response = env.post_event(&base, &key, &trigger(&rk, &format!("down-{i}"), "while down")).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    }
    let pagerduty = serde_json::json!({"routing_key": rk, "event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "info"}});
    let response = env.http.post(format!("{base}/v2/enqueue")).json(&pagerduty).send().await.unwrap();
    assert_eq!(response.status(), 503, "the PagerDuty endpoint never answers 202 while NATS is down");
    assert!(response.headers().contains_key("retry-after"));

    nats.restart();
    wait_until(Duration::from_secs(30), "ingest to accept again after NATS returned", || async {
        env.post_event(&base, &key, &trigger(&rk, "after", "back")).await.status() == 202
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_events_still_flow_and_the_limiter_fails_open() {
    let mut redis = PrivateRedis::start();
    let env = TestEnv::on(PG_ADMIN_URL, &redis.url(), &e2e::nats_url()).await;
    // A process of its own, so its fail-open counter counts only this test's requests.
    let ingest = ServiceProcess::start("opssentinal-ingest", &env.service_env());
    let base = ingest.url();
    ingest.wait_ready(&env.http, Duration::from_secs(20)).await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let rk = env.service("API").await.routing_key;
    let response = env.post_event(&base, &key, &trigger(&rk, "a", "limited")).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "99");

    redis.kill();
    let fresh_key = env.admin_key().await; // never seen before: authenticated from PostgreSQL
    for k in [&key, &fresh_key] {
        let response = env.post_event(&base, k, &trigger(&rk, "b", "unlimited")).await;
        assert_eq!(response.status(), 202);
    }
    // Retries with one Idempotency-Key, all at once: Redis cannot remember the first acceptance,
    // so each goes out alone with the event id as Nats-Msg-Id and the stream keeps one.
    let retries = futures_util::future::join_all((0..10).map(|_| {
        let request = env.http.post(format!("{base}/api/events")).bearer_auth(&key).header("Idempotency-Key", "r-1");
        request.json(&trigger(&rk, "c", "retried")).send()
    }))
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for response in retries {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        ids.insert(response.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every retry answered with the same event id");
    env.wait_for_applied(4, Duration::from_secs(30)).await;
    env.wait_until_drained(Duration::from_secs(30)).await;
    assert_eq!(env.applied_events().await, 4, "the retried event applied once");
    assert!(
        ingest.metric(&env.http, "rate_limit_fail_open_total").await >= 2.0,
        "two requests passed without a limit check"
    );
    let ready: Value = env.http.get(format!("{base}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "degraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_ingest_keeps_accepting_and_workers_catch_up() {
    let postgres = PrivatePostgres::start();
    let env = TestEnv::on(&postgres.admin_url(), REDIS_URL, &e2e::nats_url()).await;
    let base = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let rk = env.service("API").await.routing_key;
    for i in 0..10 {
        assert_eq!(env.post_event(&base, &key, &trigger(&rk, &format!("k{i}"), "before")).await.status(), 202);
    }
    env.wait_for_applied(10, Duration::from_secs(30)).await;

    postgres.stop();
    for i in 0..10 {
        let response = env.post_event(&base, &key, &trigger(&rk, &format!("k{i}"), "during")).await;
        assert_eq!(response.status(), 202, "ingest accepts while PostgreSQL is down");
    }

    postgres.start_again();
    env.wait_for_applied(20, Duration::from_secs(60)).await;
    let counts: Vec<i32> =
        sqlx::query_scalar("select alert_count from incidents order by dedup_key").fetch_all(&env.pool).await.unwrap();
    assert_eq!(counts, vec![2; 10]);
}

/// DESIGN §1.6: every service starts with PostgreSQL and NATS down (`/readyz` 503 naming them),
/// connects by itself when they appear, and stops within its shutdown timeout when they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_with_dependencies_down_and_stop_within_their_timeout_with_them_gone() {
    let pg = PrivatePostgres::start();
    let mut nats = PrivateNats::start();
    let env = TestEnv::on(&pg.admin_url(), REDIS_URL, &nats.url()).await;
    let key = env.admin_key().await;
    let rk = env.service("API").await.routing_key;
    nats.kill();
    pg.stop();

    let mut vars = env.service_env();
    vars.push(("SHUTDOWN_TIMEOUT_SECS", "3".into()));
    let mut services: Vec<ServiceProcess> = ["opssentinal-ingest", "opssentinal-query-api", "opssentinal-worker"]
        .into_iter()
        .map(|binary| ServiceProcess::start(binary, &vars))
        .collect();
    for service in &services {
        wait_until(Duration::from_secs(20), "/readyz to answer 503 naming what is down", || async {
            service.readiness(&env.http).await.is_some_and(|(status, body)| {
                status == 503 && body["checks"].as_object().is_some_and(|c| c.values().any(|v| v == "down"))
            })
        })
        .await;
    }
    let (_, body) = services[2].readiness(&env.http).await.unwrap();
    assert_eq!((body["checks"]["postgres"].as_str(), body["checks"]["nats"].as_str()), (Some("down"), Some("down")));

    pg.start_again();
    nats.restart();
    for service in &services {
        service.wait_ready(&env.http, Duration::from_secs(60)).await;
    }
    let ingest = services[0].url();
    assert_eq!(env.post_event(&ingest, &key, &trigger(&rk, "k", "after the outage")).await.status(), 202);
    env.wait_for_applied(1, Duration::from_secs(30)).await;

    // Both gone again: SIGTERM must still end every process within its timeout (3 s) plus a margin.
    nats.kill();
    pg.stop();
    for service in &mut services {
        service.signal("-TERM");
        let exited = service.exited_within(Duration::from_secs(8)).await;
        assert!(
            exited.is_some(),
            "pid {} still running 8 s after SIGTERM with NATS and PostgreSQL down",
            service.pid()
        );
    }
    pg.start_again();
}
