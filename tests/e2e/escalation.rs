//! DESIGN §11: escalation policies and notifications, delivered to a real SMTP server (aiosmtpd)
//! and a real HTTP receiver. Time moves by rewriting due times in SQL, never by sleeping through
//! a step's delay.

use std::time::Duration;

use e2e::servers::{SmtpSink, WebhookReceiver};
use e2e::{Pipeline, TestEnv, action, trigger, wait_until};
use jiff::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};

/// A pipeline whose worker sends e-mail through `sink`.
async fn pipeline(env: &TestEnv, sink: &SmtpSink) -> Pipeline {
    let mut settings = env.worker_settings();
    settings.notify.smtp_url = Some(sink.smtp_url());
    env.spawn_pipeline_with(&settings).await
}

/// Creates `body` at `path`; returns the answer (201 asserted).
async fn post(env: &TestEnv, base: &str, key: &str, path: &str, body: Value) -> Value {
    let (status, created) = env.send_json(Method::POST, &format!("{base}{path}"), key, &body).await;
    assert_eq!(status, 201, "{path}: {created}");
    created
}

/// A user with an e-mail contact method; returns the user's id.
async fn person(env: &TestEnv, base: &str, key: &str, name: &str, email: &str) -> String {
    let user = env.user(name, email, common::auth::Role::Responder).await;
    let path = format!("/api/users/{}/contact-methods", user.id);
    post(env, base, key, &path, json!({"type": "email", "address": email})).await;
    user.id
}

async fn incident(env: &TestEnv, base: &str, key: &str, id: &str) -> Value {
    let (status, body) = env.get_json(&format!("{base}/api/incidents/{id}"), key).await;
    assert_eq!(status, 200, "{body}");
    body["incident"].clone()
}

/// The incident opened for `dedup_key`, once there is one.
async fn opened(env: &TestEnv, service_id: &str, dedup_key: &str) -> String {
    let find = || async {
        sqlx::query_scalar::<_, String>("select id from incidents where service_id = $1 and dedup_key = $2")
            .bind(service_id)
            .bind(dedup_key)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    };
    wait_until(Duration::from_secs(20), "the incident", || async { find().await.is_some() }).await;
    find().await.unwrap()
}

/// The e-mails `sink` accepted for `to`.
async fn mail_to(env: &TestEnv, sink: &SmtpSink, to: &str) -> Vec<Value> {
    sink.messages(&env.http).await.into_iter().filter(|m| m["to"].as_array().unwrap().contains(&json!(to))).collect()
}

/// The escalation steps in an incident's timeline, oldest first, as (step, at).
async fn fired(env: &TestEnv, id: &str) -> Vec<(i64, Timestamp)> {
    let rows: Vec<(Value, String)> = sqlx::query_as(
        "select data, at::text from incident_timeline where incident_id = $1 and kind = 'escalated' order by at, id",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(data, at)| (data["step"].as_i64().unwrap(), at.replace(' ', "T").parse().unwrap())).collect()
}

/// Makes the incident's next step due `in_secs` from now; returns when that is.
async fn step_due(env: &TestEnv, id: &str, in_secs: f64) -> Timestamp {
    let due: String = sqlx::query_scalar(
        "update incidents set escalation_next_at = now() + make_interval(secs => $2)
         where id = $1 and escalation_status = 'ACTIVE' returning escalation_next_at::text",
    )
    .bind(id)
    .bind(in_secs)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    due.replace(' ', "T").parse().unwrap()
}

/// Policies: created, read, replaced (a new version), refused naming the field, in use → 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_versioned_validated_and_kept_while_a_service_uses_them() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let user = env.user("Ann", "ann@example.com", common::auth::Role::Responder).await;
    let url = format!("{base}/api/escalation-policies");
    let steps = json!([{"escalateAfterMinutes": 5, "targets": [{"type": "user", "id": user.id}]}]);
    let created = post(&env, &base, &key, "/api/escalation-policies", json!({"name": "Primary", "steps": steps})).await;
    let policy = &created["escalationPolicy"];
    let id = policy["id"].as_str().unwrap();
    assert_eq!((policy["version"].as_i64(), policy["repeat"].as_i64()), (Some(1), Some(0)), "{policy}");

    for (body, field) in [
        (json!({"steps": steps}), "name"),
        (json!({"name": "P", "steps": []}), "steps"),
        (json!({"name": "P", "repeat": 10, "steps": steps}), "repeat"),
        (
            json!({"name": "P", "steps": [{"escalateAfterMinutes": 0, "targets": [{"type": "user", "id": user.id}]}]}),
            "steps[0].escalateAfterMinutes",
        ),
        (json!({"name": "P", "steps": [{"escalateAfterMinutes": 5, "targets": []}]}), "steps[0].targets"),
        (
            json!({"name": "P", "steps": [{"escalateAfterMinutes": 5, "targets": [{"type": "team", "id": "x"}]}]}),
            "steps[0].targets[0].type",
        ),
        (
            json!({"name": "P", "steps": [steps[0], {"escalateAfterMinutes": 5, "targets": [{"type": "user", "id": user.id}, {"type": "schedule", "id": "sch_missing"}]}]}),
            "steps[1].targets[1].id",
        ),
    ] {
        let (status, error) = env.send_json(Method::POST, &url, &key, &body).await;
        assert_eq!((status, error["error"]["details"]["field"].as_str()), (400, Some(field)), "{body}: {error}");
    }

    let replaced = json!({"name": "Primary", "repeat": 2, "steps": [steps[0], steps[0]]});
    let (status, body) = env.send_json(Method::PUT, &format!("{url}/{id}"), &key, &replaced).await;
    assert_eq!(status, 200, "{body}");
    let policy = &body["escalationPolicy"];
    assert_eq!((policy["version"].as_i64(), policy["steps"].as_array().unwrap().len()), (Some(2), 2));

    // A service using it keeps it from being deleted.
    let service = env.service("API").await;
    let link = json!({"escalationPolicyId": id});
    let (status, body) =
        env.send_json(Method::PATCH, &format!("{base}/api/services/{}", service.id), &key, &link).await;
    assert_eq!((status, body["service"]["escalationPolicyId"].as_str()), (200, Some(id)), "{body}");
    let (status, body) = env.send_json(Method::DELETE, &format!("{url}/{id}"), &key, &Value::Null).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")), "{body}");
    let unknown = json!({"escalationPolicyId": "esc_missing"});
    let (status, body) =
        env.send_json(Method::PATCH, &format!("{base}/api/services/{}", service.id), &key, &unknown).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("escalationPolicyId")), "{body}");
    let unlink = json!({"escalationPolicyId": null});
    let (status, _) = env.send_json(Method::PATCH, &format!("{base}/api/services/{}", service.id), &key, &unlink).await;
    assert_eq!(status, 200);
    let (status, _) = env.send_json(Method::DELETE, &format!("{url}/{id}"), &key, &Value::Null).await;
    assert_eq!(status, 204);
    let (status, _) = env.get_json(&format!("{url}/{id}"), &key).await;
    assert_eq!(status, 404);
}

/// Step 1 notifies at once, step 2 (a schedule's on-call user, by Slack) fires when due and not
/// before, and an acknowledgement stops the escalation: nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_fire_on_time_and_an_acknowledgement_stops_them() {
    let env = TestEnv::new().await;
    let sink = SmtpSink::start();
    let slack = WebhookReceiver::start();
    let pipeline = pipeline(&env, &sink).await;
    let (base, key) = (pipeline.query.clone(), env.admin_key().await);
    let ann = person(&env, &base, &key, "Ann", "ann@example.com").await;
    let bob = env.user("Bob", "bob@example.com", common::auth::Role::Responder).await.id;
    let path = format!("/api/users/{bob}/contact-methods");
    post(&env, &base, &key, &path, json!({"type": "slack", "address": slack.url("/slack")})).await;
    let schedule = post(
        &env,
        &base,
        &key,
        "/api/schedules",
        json!({"name": "Ops", "timeZone": "UTC",
        "layers": [{"start": "2026-01-01T00:00:00Z", "rotation": "weekly", "handoffTime": "09:00", "users": [bob]}]}),
    )
    .await;
    let policy = post(
        &env,
        &base,
        &key,
        "/api/escalation-policies",
        json!({"name": "Primary", "repeat": 1, "steps": [
        {"escalateAfterMinutes": 10, "targets": [{"type": "user", "id": ann}]},
        {"escalateAfterMinutes": 10, "targets": [{"type": "schedule", "id": schedule["schedule"]["id"]}]}]}),
    )
    .await;
    let service = env.service("Checkout").await;
    let link = json!({"escalationPolicyId": policy["escalationPolicy"]["id"]});
    env.send_json(Method::PATCH, &format!("{base}/api/services/{}", service.id), &key, &link).await;

    assert_eq!(
        env.post_event(&pipeline.ingest, &key, &trigger(&service.routing_key, "db", "DB down")).await.status(),
        202
    );
    let id = opened(&env, &service.id, "db").await;
    wait_until(Duration::from_secs(20), "Ann's e-mail", || async {
        !mail_to(&env, &sink, "ann@example.com").await.is_empty()
    })
    .await;
    let mail = &mail_to(&env, &sink, "ann@example.com").await[0];
    assert!(mail["subject"].as_str().unwrap().contains("DB down"), "{mail}");
    let created: Timestamp = incident(&env, &base, &key, &id).await["createdAt"].as_str().unwrap().parse().unwrap();
    let latency = mail["receivedAt"].as_f64().unwrap() - created.as_millisecond() as f64 / 1000.0;
    assert!(latency < 2.0, "e-mailed {latency:.2} s after the incident opened");

    // Step 2 is due ten minutes after step 1 fired, not before.
    let shown = incident(&env, &base, &key, &id).await;
    let escalation = &shown["escalation"];
    assert_eq!((escalation["status"].as_str(), escalation["step"].as_i64()), (Some("ACTIVE"), Some(2)), "{shown}");
    let next: Timestamp = escalation["nextAt"].as_str().unwrap().parse().unwrap();
    let first = fired(&env, &id).await[0].1;
    assert!(next.duration_since(first).as_secs() >= 600, "step 2 due at {next}, step 1 fired at {first}");
    let due = step_due(&env, &id, 1.5).await;
    wait_until(Duration::from_secs(20), "Bob's Slack post", || async { !slack.received(&env.http).await.is_empty() })
        .await;
    let steps = fired(&env, &id).await;
    assert_eq!(steps.iter().map(|(step, _)| *step).collect::<Vec<_>>(), [1, 2]);
    let late = steps[1].1.duration_since(due).as_secs_f64();
    assert!((0.0..=2.0).contains(&late), "step 2 fired {late:.3} s after it was due");
    let post = &slack.received(&env.http).await[0];
    assert!(post["body"]["text"].as_str().unwrap().contains("DB down"), "{post}");
    // After the last step, the policy starts over (repeat 1) at step 1.
    let escalation = incident(&env, &base, &key, &id).await["escalation"].clone();
    assert_eq!((escalation["step"].as_i64(), escalation["loop"].as_i64()), (Some(1), Some(1)), "{escalation}");

    // Acknowledged: the escalation stops; nothing more fires or is sent.
    assert_eq!(
        env.post_event(&pipeline.ingest, &key, &action(&service.routing_key, "db", "acknowledge")).await.status(),
        202
    );
    wait_until(Duration::from_secs(20), "the escalation to stop", || async {
        incident(&env, &base, &key, &id).await["escalation"]["status"] == "STOPPED"
    })
    .await;
    let shown = incident(&env, &base, &key, &id).await;
    assert_eq!(shown["escalation"]["nextAt"], Value::Null, "{shown}");
    let timeline = shown["timeline"].as_array().unwrap();
    let outcomes: Vec<&str> = timeline
        .iter()
        .filter(|e| e["type"] == "notification")
        .map(|e| e["data"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["sent", "sent"], "{timeline:#?}");
    let (status, body) =
        env.send_json(Method::POST, &format!("{base}/api/incidents/{id}/escalate"), &key, &Value::Null).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")), "{body}");
    assert_eq!(sink.messages(&env.http).await.len(), 1);
    assert_eq!(slack.received(&env.http).await.len(), 1);
}
