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
    // Ann is also posted to as a webhook; Bob's Slack answers 503 once, then 200.
    let hook = WebhookReceiver::start();
    let path = format!("/api/users/{ann}/contact-methods");
    post(&env, &base, &key, &path, json!({"type": "webhook", "address": hook.url("/page")})).await;
    slack.configure(&env.http, json!({"responses": [503], "default": 200})).await;
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
    // The 503 is retried: its retry is made due once the attempt is recorded.
    wait_until(Duration::from_secs(20), "the retry to be scheduled", || async {
        let moved = sqlx::query(
            "update notifications set next_attempt_at = now() where status = 'pending' and attempts = 1 and channel = 'slack'",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        moved.rows_affected() == 1
    })
    .await;
    wait_until(Duration::from_secs(20), "the retried Slack post", || async {
        slack.received(&env.http).await.len() == 2
    })
    .await;
    let posts = slack.received(&env.http).await;
    assert_eq!(posts.iter().map(|p| p["status"].as_u64().unwrap()).collect::<Vec<_>>(), [503, 200]);
    assert!(posts[1]["body"]["text"].as_str().unwrap().contains("DB down"), "{posts:#?}");
    let paged = hook.received(&env.http).await;
    assert_eq!(paged.len(), 1, "{paged:#?}");
    assert_eq!(
        (paged[0]["body"]["type"].as_str(), paged[0]["body"]["incident"]["id"].as_str()),
        (Some("incident.notification"), Some(id.as_str()))
    );
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
    assert_eq!(outcomes, ["sent", "sent", "sent"], "{timeline:#?}");
    let (status, body) =
        env.send_json(Method::POST, &format!("{base}/api/incidents/{id}/escalate"), &key, &Value::Null).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")), "{body}");
    assert_eq!(sink.messages(&env.http).await.len(), 1);
    assert_eq!((slack.received(&env.http).await.len(), hook.received(&env.http).await.len()), (2, 1));
}

/// A user with an e-mail contact method, made through the service modules; returns its id and
/// the contact method's.
async fn reachable(env: &TestEnv, name: &str, email: &str) -> (String, String) {
    use query_api::users::service::add_contact_method;
    let user = env.user(name, email, common::auth::Role::Responder).await;
    let new = serde_json::from_value(json!({"type": "email", "address": email})).unwrap();
    let config = common::config::WebhookConfig { allow_private: true };
    let method = add_contact_method(&env.pool, &config, &user.id, &new).await.unwrap();
    (user.id, method.id)
}

/// A service whose incidents start `policy` (a policy body); returns the service and the policy's id.
async fn escalating_service(env: &TestEnv, policy: Value) -> (query_api::services::body::ServiceWithKey, String) {
    let policy = serde_json::from_value(policy).unwrap();
    let policy = query_api::escalation_policies::service::create(&env.pool, &policy).await.unwrap();
    let service = env.service("Payments").await;
    let link = serde_json::from_value(json!({"escalationPolicyId": policy.id})).unwrap();
    query_api::services::service::update(&env.pool, &service.id, &link).await.unwrap();
    (service, policy.id)
}

/// Opens an incident for each of `keys` on `service`, applied as a worker would; returns their ids.
async fn open_incidents(env: &TestEnv, service_id: &str, keys: &[String]) -> Vec<String> {
    use common::event::EventAction;
    use worker::apply::{QueuedEvent, apply_batch};
    let events: Vec<QueuedEvent> = (1..)
        .zip(keys)
        .map(|(seq, key)| QueuedEvent { seq, envelope: e2e::envelope(service_id, key, EventAction::Trigger, "down") })
        .collect();
    apply_batch(&env.pool, &events).await.unwrap();
    let mut ids = Vec::new();
    for key in keys {
        ids.push(opened(env, service_id, key).await);
    }
    ids
}

async fn firings(env: &TestEnv, ids: &[String]) -> i64 {
    sqlx::query_scalar("select coalesce(sum(escalation_firings), 0)::int8 from incidents where id = any($1)")
        .bind(ids)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Three worker processes racing over 20 escalating incidents, each step made due three times:
/// every (incident, firing, user, contact method) is e-mailed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_racing_workers_notify_each_person_once_per_step() {
    use e2e::servers::ServiceProcess;
    let env = TestEnv::new().await;
    let sink = SmtpSink::start();
    let (ann, _) = reachable(&env, "Ann", "ann@example.com").await;
    let (bob, _) = reachable(&env, "Bob", "bob@example.com").await;
    let targets = json!([{"type": "user", "id": ann}, {"type": "user", "id": bob}]);
    let (service, _) = escalating_service(
        &env,
        json!({"name": "Both", "repeat": 9, "steps": [{"escalateAfterMinutes": 30, "targets": targets}]}),
    )
    .await;
    let mut vars = env.service_env();
    vars.push(("SMTP_URL", sink.smtp_url()));
    let _workers: Vec<ServiceProcess> = (0..3).map(|_| ServiceProcess::start("opssentinal-worker", &vars)).collect();
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let ids = open_incidents(&env, &service.id, &keys).await;
    for round in 1..=3 {
        wait_until(Duration::from_secs(30), "the round's steps to fire", || async {
            firings(&env, &ids).await == 20 * round
        })
        .await;
        if round < 3 {
            sqlx::query("update incidents set escalation_next_at = now() where id = any($1)")
                .bind(&ids)
                .execute(&env.pool)
                .await
                .unwrap();
        }
    }
    wait_until(Duration::from_secs(30), "every notification to be sent", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from notifications where status = 'sent'")
            .fetch_one(&env.pool)
            .await
            .unwrap()
            == 120
    })
    .await;
    let messages = sink.messages(&env.http).await;
    let ids: std::collections::HashSet<&str> = messages.iter().map(|m| m["messageId"].as_str().unwrap()).collect();
    assert_eq!((messages.len(), ids.len()), (120, 120), "20 incidents × 3 firings × 2 people, each once");
}

/// A worker killed after claiming a step and before committing it notifies nobody; the next
/// worker fires the step, and the person is e-mailed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_claiming_a_step_and_committing_leaves_one_notification() {
    use e2e::servers::ServiceProcess;
    let env = TestEnv::new().await;
    let sink = SmtpSink::start();
    let (ann, method) = reachable(&env, "Ann", "ann@example.com").await;
    let (service, _) = escalating_service(
        &env,
        json!({"name": "Ann", "steps": [{"escalateAfterMinutes": 30, "targets": [{"type": "user", "id": ann}]}]}),
    )
    .await;
    let id = open_incidents(&env, &service.id, &["db".to_owned()]).await.remove(0);
    // Lock Ann's contact method in an open transaction: the worker that claims the step waits
    // there (queuing her notification needs it), with the step claimed and nothing committed.
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("select 1 from contact_methods where id = $1 for update")
        .bind(&method)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut vars = env.service_env();
    vars.push(("SMTP_URL", sink.smtp_url()));
    let mut doomed = ServiceProcess::start("opssentinal-worker", &vars);
    wait_until(Duration::from_secs(30), "the worker to claim the step and wait", || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity where datname = current_database()
             and wait_event_type = 'Lock' and query like '%insert into notifications%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    doomed.signal("-KILL");
    assert!(doomed.exited_within(Duration::from_secs(5)).await.is_some());
    holder.rollback().await.unwrap();
    let _next = ServiceProcess::start("opssentinal-worker", &vars);
    wait_until(Duration::from_secs(30), "the e-mail", || async { !sink.messages(&env.http).await.is_empty() }).await;
    wait_until(Duration::from_secs(30), "the notification to be recorded", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from notifications where status = 'sent'")
            .fetch_one(&env.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(sink.messages(&env.http).await.len(), 1);
    assert_eq!(fired(&env, &id).await.len(), 1, "the step fired once");
    assert_eq!(firings(&env, std::slice::from_ref(&id)).await, 1);
}

/// An acknowledgement that comes after a step fired but before its e-mail got through stops the
/// e-mail: the SMTP server refused the first attempt (451), and the retry is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_before_the_notification_is_sent_cancels_it() {
    let env = TestEnv::new().await;
    let sink = SmtpSink::start();
    sink.configure(&env.http, json!({"reject": 1})).await;
    let mut settings = env.worker_settings();
    settings.notify.smtp_url = Some(sink.smtp_url());
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let (ann, _) = reachable(&env, "Ann", "ann@example.com").await;
    let (service, _) = escalating_service(
        &env,
        json!({"name": "Ann", "steps": [{"escalateAfterMinutes": 30, "targets": [{"type": "user", "id": ann}]}]}),
    )
    .await;
    let id = open_incidents(&env, &service.id, &["db".to_owned()]).await.remove(0);
    wait_until(Duration::from_secs(20), "the refused attempt to be recorded", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from notifications where status = 'pending' and attempts = 1")
            .fetch_one(&env.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    let change = serde_json::from_value(json!({"status": "ACKNOWLEDGED"})).unwrap();
    query_api::incidents::service::update(&env.pool, &id, &change, &ann).await.unwrap();
    sqlx::query("update notifications set next_attempt_at = now()").execute(&env.pool).await.unwrap();
    wait_until(Duration::from_secs(20), "the notification to be cancelled", || async {
        sqlx::query_scalar::<_, String>("select status from notifications").fetch_one(&env.pool).await.unwrap()
            == "cancelled"
    })
    .await;
    assert_eq!(sink.rejected(&env.http).await.len(), 1);
    assert!(sink.messages(&env.http).await.is_empty(), "nothing sent after the acknowledgement");
    let outcome: Value =
        sqlx::query_scalar("select data from incident_timeline where incident_id = $1 and kind = 'notification'")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(outcome["outcome"], "cancelled", "{outcome}");
}

/// A step with nobody on call escalates at once; a running escalation keeps the policy version
/// it started with; `escalate` fires the next step now; an incident opened again starts over at
/// step 1 with the current version; resolving stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_on_call_escalates_at_once_and_a_reopened_incident_starts_over_on_the_current_version() {
    let env = TestEnv::new().await;
    let sink = SmtpSink::start();
    let mut settings = env.worker_settings();
    settings.notify.smtp_url = Some(sink.smtp_url());
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let (ann, _) = reachable(&env, "Ann", "ann@example.com").await;
    let (bob, _) = reachable(&env, "Bob", "bob@example.com").await;
    let empty = post(&env, &base, &key, "/api/schedules", json!({"name": "Nobody", "timeZone": "UTC"})).await;
    let user = |id: &str| json!({"escalateAfterMinutes": 10, "targets": [{"type": "user", "id": id}]});
    let nobody = json!({"escalateAfterMinutes": 10, "targets": [{"type": "schedule", "id": empty["schedule"]["id"]}]});
    let (service, policy) =
        escalating_service(&env, json!({"name": "P", "steps": [nobody, user(&ann), user(&ann)]})).await;
    let id = open_incidents(&env, &service.id, &["db".to_owned()]).await.remove(0);
    wait_until(Duration::from_secs(20), "Ann's e-mail", || async {
        !mail_to(&env, &sink, "ann@example.com").await.is_empty()
    })
    .await;
    let steps = fired(&env, &id).await;
    assert_eq!(steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2], "step 1 had nobody: step 2 at once");
    assert!(steps[1].1.duration_since(steps[0].1).as_secs_f64() < 2.0);
    let nobody_entry: Value = sqlx::query_scalar(
        "select data from incident_timeline where incident_id = $1 and kind = 'escalated' order by at, id limit 1",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(nobody_entry["notified"], json!([]), "{nobody_entry}");

    // A new version: Bob everywhere. The running escalation keeps version 1: step 3 is Ann's.
    let v2 = json!({"name": "P", "steps": [user(&bob), user(&bob), user(&bob)]});
    let (status, _) = env.send_json(Method::PUT, &format!("{base}/api/escalation-policies/{policy}"), &key, &v2).await;
    assert_eq!(status, 200);
    let (status, body) =
        env.send_json(Method::POST, &format!("{base}/api/incidents/{id}/escalate"), &key, &Value::Null).await;
    assert_eq!((status, body["incident"]["escalation"]["policyVersion"].as_i64()), (200, Some(1)), "{body}");
    wait_until(Duration::from_secs(20), "step 3", || async {
        mail_to(&env, &sink, "ann@example.com").await.len() == 2
    })
    .await;
    wait_until(Duration::from_secs(20), "the escalation to complete", || async {
        incident(&env, &base, &key, &id).await["escalation"]["status"] == "COMPLETED"
    })
    .await;
    assert!(mail_to(&env, &sink, "bob@example.com").await.is_empty());

    // Acknowledged, then opened again: it starts over at step 1, on version 2 (Bob).
    for status in ["ACKNOWLEDGED", "OPEN"] {
        let (code, body) =
            env.send_json(Method::PATCH, &format!("{base}/api/incidents/{id}"), &key, &json!({"status": status})).await;
        assert_eq!(code, 200, "{body}");
    }
    wait_until(Duration::from_secs(20), "Bob's e-mail", || async {
        !mail_to(&env, &sink, "bob@example.com").await.is_empty()
    })
    .await;
    let escalation = incident(&env, &base, &key, &id).await["escalation"].clone();
    assert_eq!((escalation["policyVersion"].as_i64(), escalation["step"].as_i64()), (Some(2), Some(2)), "{escalation}");
    let (code, _) =
        env.send_json(Method::PATCH, &format!("{base}/api/incidents/{id}"), &key, &json!({"status": "RESOLVED"})).await;
    assert_eq!(code, 200);
    let escalation = incident(&env, &base, &key, &id).await["escalation"].clone();
    assert_eq!((escalation["status"].as_str(), &escalation["nextAt"]), (Some("STOPPED"), &Value::Null), "{escalation}");
}

/// End to end with real senders: Alertmanager fires through `/v2/enqueue`, the service's
/// schedule's on-call user is e-mailed within 2 s of the incident opening, and when Alertmanager
/// resolves the escalation stops and nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alertmanager_alert_pages_the_on_call_user_and_its_resolve_stops_the_escalation() {
    use e2e::servers::PrivateAlertmanager;
    let env = TestEnv::new().await;
    let sink = SmtpSink::start();
    let pipeline = pipeline(&env, &sink).await;
    let (base, key) = (pipeline.query.clone(), env.admin_key().await);
    let (carol, _) = reachable(&env, "Carol", "carol@example.com").await;
    let schedule = post(
        &env,
        &base,
        &key,
        "/api/schedules",
        json!({"name": "Primary", "timeZone": "Europe/Berlin",
        "layers": [{"start": "2026-01-01T00:00:00Z", "rotation": "daily", "handoffTime": "09:00", "users": [carol]}]}),
    )
    .await;
    let (service, _) = escalating_service(
        &env,
        json!({"name": "On call", "repeat": 3, "steps": [{"escalateAfterMinutes": 1,
               "targets": [{"type": "schedule", "id": schedule["schedule"]["id"]}]}]}),
    )
    .await;
    let config = format!(
        "route:
  receiver: pager
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: pager
    pagerduty_configs:
      - routing_key: {key}
        url: {ingest}/v2/enqueue
        send_resolved: true
",
        key = service.routing_key,
        ingest = pipeline.ingest,
    );
    let alertmanager = PrivateAlertmanager::start(&config);
    let labels = ["alertname=CheckoutErrors", "severity=critical"];
    let mut firing = vec!["alert", "add"];
    firing.extend(labels);
    firing.push("--annotation=summary=Checkout errors above 5%");
    alertmanager.amtool(&firing);

    let find = || async {
        sqlx::query_scalar::<_, String>("select id from incidents where service_id = $1")
            .bind(&service.id)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    };
    wait_until(Duration::from_secs(60), "Alertmanager's incident", || async { find().await.is_some() }).await;
    let id = find().await.unwrap();
    wait_until(Duration::from_secs(20), "Carol's e-mail", || async {
        !mail_to(&env, &sink, "carol@example.com").await.is_empty()
    })
    .await;
    let mail = &mail_to(&env, &sink, "carol@example.com").await[0];
    assert!(mail["subject"].as_str().unwrap().contains("CheckoutErrors"), "{mail}");
    let created: Timestamp = incident(&env, &base, &key, &id).await["createdAt"].as_str().unwrap().parse().unwrap();
    let latency = mail["receivedAt"].as_f64().unwrap() - created.as_millisecond() as f64 / 1000.0;
    assert!(latency < 2.0, "e-mailed {latency:.2} s after the incident opened");

    let end = format!("--end={}", Timestamp::now());
    let mut resolved = vec!["alert", "add"];
    resolved.extend(labels);
    resolved.push(&end);
    alertmanager.amtool(&resolved);
    wait_until(Duration::from_secs(60), "the resolve", || async {
        incident(&env, &base, &key, &id).await["status"] == "RESOLVED"
    })
    .await;
    let escalation = incident(&env, &base, &key, &id).await["escalation"].clone();
    assert_eq!((escalation["status"].as_str(), &escalation["nextAt"]), (Some("STOPPED"), &Value::Null), "{escalation}");
    // The next step would have been due a minute after the first: make any step of it due now,
    // and give the workers a round to show they fire nothing.
    let moved =
        sqlx::query("update incidents set escalation_next_at = now() where id = $1 and escalation_status = 'ACTIVE'")
            .bind(&id)
            .execute(&env.pool)
            .await
            .unwrap();
    assert_eq!(moved.rows_affected(), 0, "nothing left to fire");
    assert_eq!(fired(&env, &id).await.len(), 1);
    assert_eq!(sink.messages(&env.http).await.len(), 1);
}
