//! PagerDuty Events API v2 compatibility at `/v2/enqueue`.

use std::time::Duration;

use e2e::TestEnv;
use futures_util::FutureExt;
use serde_json::{Value, json};

async fn enqueue(env: &TestEnv, base: &str, body: &Value) -> (u16, Value) {
    let response = env.http.post(format!("{base}/v2/enqueue")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_events_drive_the_incident_lifecycle_and_repairs_are_kept() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let rk = env.service("Payments").await.routing_key;

    let trigger = json!({
        "routing_key": rk, "event_action": "trigger", "client": "Alertmanager", "client_url": "http://am:9093",
        "links": [{"href": "http://grafana/d/1", "text": "dashboard"}],
        "payload": {"summary": "s".repeat(1100), "severity": "LOUD", "custom_details": {"firing": "2 alerts"}}
    });
    let (status, accepted) = enqueue(&env, &ingest, &trigger).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!((accepted["status"].as_str(), accepted["message"].as_str()), (Some("success"), Some("Event processed")));
    let dedup_key = accepted["dedup_key"].as_str().unwrap().to_owned();
    let mut again = trigger.clone();
    again["dedup_key"] = json!(dedup_key);
    assert_eq!(enqueue(&env, &ingest, &again).await.0, 202);
    assert_eq!(
        enqueue(&env, &ingest, &json!({"routing_key": rk, "event_action": "acknowledge", "dedup_key": dedup_key}))
            .await
            .0,
        202
    );
    env.wait_for_applied(3, Duration::from_secs(30)).await;

    let (status, alert_count, urgency): (String, i32, String) =
        sqlx::query_as("select status, alert_count, urgency from incidents where dedup_key = $1")
            .bind(&dedup_key)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), alert_count, urgency.as_str()), ("ACKNOWLEDGED", 2, "MEDIUM"));
    let payload: Value = sqlx::query_scalar("select payload from events where dedup_key = $1 order by seq limit 1")
        .bind(&dedup_key)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(payload["summary"].as_str().unwrap().chars().count(), 1024);
    assert_eq!((payload["severity"].as_str(), payload["source"].as_str()), (Some("error"), Some("Alertmanager")));
    let details = &payload["custom_details"];
    assert_eq!(details["firing"], "2 alerts");
    assert_eq!(details["pagerduty"]["links"][0]["text"], "dashboard");
    assert_eq!(details["opssentinal_repairs"].as_array().unwrap().len(), 3, "{details}");

    let (status, resolved) = enqueue(
        &env,
        &ingest,
        &json!({"routing_key": rk, "event_action": "resolve", "dedup_key": dedup_key, "payload": {"summary": "ok"}}),
    )
    .await;
    assert_eq!((status, resolved["dedup_key"].as_str()), (202, Some(dedup_key.as_str())));
    env.wait_for_applied(4, Duration::from_secs(30)).await;

    // Only structurally invalid events are refused, in PagerDuty's format.
    for body in [
        json!({"event_action": "trigger", "payload": {"summary": "s"}}),
        json!({"routing_key": "not-a-key", "event_action": "trigger"}),
        json!({"routing_key": rk, "event_action": "escalate"}),
        json!({"routing_key": rk, "event_action": "resolve"}),
    ] {
        let (status, error) = enqueue(&env, &ingest, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            (error["status"].as_str(), error["message"].as_str()),
            (Some("invalid event"), Some("Event object is invalid"))
        );
        assert!(!error["errors"].as_array().unwrap().is_empty());
    }
    let response = env.http.post(format!("{ingest}/v2/enqueue")).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "invalid event");
}

#[tokio::test]
async fn a_service_routing_key_has_its_own_limit() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let service = env.service_limited("Noisy", Some(5)).await;
    let body = json!({"routing_key": service.routing_key, "event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "info"}});
    let (admitted, response, elapsed) = e2e::admitted_until_limited(3, || {
        env.http.post(format!("{ingest}/v2/enqueue")).json(&body).send().map(Result::unwrap)
    })
    .await;
    assert!(e2e::fits_limit(admitted, 5, elapsed), "{admitted} admitted in {elapsed:?}");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["x-ratelimit-limit"], "5");
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "throttle event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alertmanager_webhook_takes_a_routing_key_or_an_api_key_with_a_service() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let service = env.service("Web").await;
    let key = env.admin_key().await;
    let notification = |status: &str| {
        json!({"version": "4", "status": status, "receiver": "ops", "groupKey": "{}:{alertname=\"Down\"}",
               "alerts": [{"status": status, "fingerprint": "f00d", "labels": {"alertname": "Down", "severity": "warning"},
                           "annotations": {}, "startsAt": "2026-11-26T10:00:00Z"}]})
    };
    let url = format!("{ingest}/api/integrations/alertmanager");
    let by_path =
        env.http.post(format!("{url}/{}", service.routing_key)).json(&notification("firing")).send().await.unwrap();
    assert_eq!(by_path.status(), 202);
    let by_key = env
        .http
        .post(format!("{url}?service_id={}", service.id))
        .header("X-API-Key", &key)
        .json(&notification("resolved"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 202);
    let body: Value = by_key.json().await.unwrap();
    assert_eq!(body["events"][0]["event_action"], "resolve");
    env.wait_for_applied(2, Duration::from_secs(30)).await;
    let (status, title): (String, String) =
        sqlx::query_as("select status, title from incidents where dedup_key = 'f00d'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), title.as_str()), ("RESOLVED", "Down"));

    let no_key =
        env.http.post(format!("{url}?service_id={}", service.id)).json(&notification("firing")).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let unknown = env.http.post(format!("{url}?routing_key=nope")).json(&notification("firing")).send().await.unwrap();
    assert_eq!(unknown.status(), 400);
    assert_eq!(unknown.json::<Value>().await.unwrap()["error"]["code"], "INVALID_ROUTING_KEY");
}
