//! DESIGN §4: what events do to incidents.

use std::time::Duration;

use e2e::{TestEnv, action, trigger};

const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Row {
    status: String,
    urgency: String,
    alert_count: i32,
    acknowledged: bool,
    resolved: bool,
}

async fn incidents(env: &TestEnv, dedup_key: &str) -> Vec<Row> {
    sqlx::query_as(
        "select status, urgency, alert_count, acknowledged_at is not null as acknowledged, resolved_at is not null as resolved
         from incidents where dedup_key = $1 order by created_at",
    )
    .bind(dedup_key)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn trigger_twice_acknowledge_resolve_then_trigger_opens_a_second_incident() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("API Gateway").await;
    let rk = &service.routing_key;

    for body in [trigger(rk, "db-timeout", "Database timeout"), trigger(rk, "db-timeout", "Database timeout")] {
        assert_eq!(env.post_event(&base, &key, &body).await.status(), 202);
    }
    env.wait_for_applied(2, APPLY_TIMEOUT).await;
    let open =
        Row { status: "OPEN".into(), urgency: "HIGH".into(), alert_count: 2, acknowledged: false, resolved: false };
    assert_eq!(incidents(&env, "db-timeout").await, vec![open]);

    assert_eq!(env.post_event(&base, &key, &action(rk, "db-timeout", "acknowledge")).await.status(), 202);
    env.wait_for_applied(3, APPLY_TIMEOUT).await;
    assert_eq!(incidents(&env, "db-timeout").await[0].status, "ACKNOWLEDGED");

    assert_eq!(env.post_event(&base, &key, &action(rk, "db-timeout", "resolve")).await.status(), 202);
    assert_eq!(env.post_event(&base, &key, &trigger(rk, "db-timeout", "Database timeout again")).await.status(), 202);
    env.wait_for_applied(5, APPLY_TIMEOUT).await;
    let resolved =
        Row { status: "RESOLVED".into(), urgency: "HIGH".into(), alert_count: 2, acknowledged: true, resolved: true };
    let reopened =
        Row { status: "OPEN".into(), urgency: "HIGH".into(), alert_count: 1, acknowledged: false, resolved: false };
    assert_eq!(incidents(&env, "db-timeout").await, vec![resolved, reopened]);

    let (title, description): (String, Option<String>) = sqlx::query_as(
        "select title, description from incidents where dedup_key = 'db-timeout' order by created_at limit 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(title, "Database timeout");
    assert!(description.unwrap().contains("\"host\": \"web-01\""));
}

#[tokio::test]
async fn acknowledge_and_resolve_of_an_unknown_key_are_recorded_and_ignored() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Payments").await;

    for name in ["acknowledge", "resolve"] {
        let response = env.post_event(&base, &key, &action(&service.routing_key, "never-triggered", name)).await;
        assert_eq!(response.status(), 202);
    }
    env.wait_for_applied(2, APPLY_TIMEOUT).await;
    let outcomes: Vec<String> =
        sqlx::query_scalar("select outcome from events where dedup_key = 'never-triggered' order by seq")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(outcomes, ["ignored", "ignored"]);
    assert!(incidents(&env, "never-triggered").await.is_empty());
}

#[tokio::test]
async fn a_trigger_without_dedup_key_gets_one_that_later_events_can_use() {
    let env = TestEnv::new().await;
    let base = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Search").await;

    let mut body = trigger(&service.routing_key, "", "Index lagging");
    body.as_object_mut().unwrap().remove("dedup_key");
    body["payload"]["severity"] = "info".into();
    let response = env.post_event(&base, &key, &body).await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let dedup_key = accepted["dedup_key"].as_str().unwrap().to_owned();
    assert!(!dedup_key.is_empty());
    assert_eq!(accepted["incident_key"], accepted["dedup_key"]);
    assert_eq!(accepted["status"], "success");
    assert_eq!(accepted["message"], "Event processed");
    assert!(accepted["event_id"].is_string());

    let response = env.post_event(&base, &key, &action(&service.routing_key, &dedup_key, "resolve")).await;
    assert_eq!(response.status(), 202);
    env.wait_for_applied(2, APPLY_TIMEOUT).await;
    let rows = incidents(&env, &dedup_key).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].status.as_str(), rows[0].urgency.as_str()), ("RESOLVED", "LOW"));
}
