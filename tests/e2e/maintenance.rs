//! DESIGN §12: maintenance windows (created, listed by state, deleted or ended by their rules; a
//! trigger inside a window opens its incident `SUPPRESSED`, opened when the window is ended) and
//! heartbeats (missed → an incident through the pipeline, the next ping resolves it; a real
//! Alertmanager's always-firing Watchdog as the pinger). Time is moved by rewriting start, end
//! and due times in SQL, never by sleeping through it.

use std::time::Duration;

use common::auth::{Role, Scope};
use e2e::servers::PrivateAlertmanager;
use e2e::{TestEnv, admitted_until_limited, fits_limit, trigger, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// RFC 3339, `seconds` from now (negative: ago).
fn at(seconds: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)).to_string()
}

fn instant(value: &Value) -> jiff::Timestamp {
    value.as_str().unwrap_or_else(|| panic!("{value} is no instant")).parse().expect("an RFC 3339 instant")
}

/// Creates a maintenance window; returns it.
async fn create_window(env: &TestEnv, query: &str, key: &str, body: Value) -> Value {
    let (status, created) = env.send_json(Method::POST, &format!("{query}/api/maintenance-windows"), key, &body).await;
    assert_eq!(status, 201, "{created}");
    created["maintenanceWindow"].clone()
}

/// The ids a maintenance window listing answers for `filter`, and its total.
async fn listed(env: &TestEnv, query: &str, key: &str, filter: &str) -> (Vec<String>, i64) {
    let (status, body) = env.get_json(&format!("{query}/api/maintenance-windows?{filter}"), key).await;
    assert_eq!(status, 200, "{filter}: {body}");
    let ids = body["maintenanceWindows"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap().to_owned());
    (ids.collect(), body["total"].as_i64().unwrap())
}

/// Asserts a `400` naming `field`.
fn assert_names(status: u16, body: &Value, field: &str, sent: &Value) {
    assert_eq!(status, 400, "{sent}: {body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{sent}: {body}");
    assert_eq!(body["error"]["details"]["field"], field, "{sent}: {body}");
}

/// Waits (at most 15 s) until the worker has ended `window`: what it suppressed is opened.
async fn wait_until_ended(env: &TestEnv, window: &str) {
    wait_until(Duration::from_secs(15), "the worker to end the window", || async {
        sqlx::query_scalar::<_, bool>("select ended_at is not null from maintenance_windows where id = $1")
            .bind(window)
            .fetch_one(&env.pool)
            .await
            .unwrap()
    })
    .await;
}

/// The incident of `(service, dedup_key)` once it exists (at most 20 s): its id.
async fn incident_of(env: &TestEnv, service_id: &str, dedup_key: &str) -> String {
    let find = || async {
        sqlx::query_scalar::<_, String>(
            "select id from incidents where service_id = $1 and dedup_key = $2 order by created_at desc limit 1",
        )
        .bind(service_id)
        .bind(dedup_key)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
    };
    wait_until(Duration::from_secs(20), &format!("an incident for {dedup_key}"), || async { find().await.is_some() })
        .await;
    find().await.unwrap()
}

/// `GET /api/incidents/{id}`.
async fn incident(env: &TestEnv, query: &str, key: &str, id: &str) -> Value {
    let (status, body) = env.get_json(&format!("{query}/api/incidents/{id}"), key).await;
    assert_eq!(status, 200, "{body}");
    body["incident"].clone()
}

/// Waits (at most 20 s) until incident `id` reads `status` through the API; returns it.
async fn wait_for_status(env: &TestEnv, query: &str, key: &str, id: &str, status: &str) -> Value {
    wait_until(Duration::from_secs(20), &format!("incident {id} to be {status}"), || async {
        incident(env, query, key, id).await["status"] == status
    })
    .await;
    incident(env, query, key, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_windows_are_refused_listed_by_state_and_deleted_or_ended_by_their_rules() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let query = &pipeline.query;
    let key = env.admin_key().await;
    let (checkout, search) = (env.service("Checkout").await, env.service("Search").await);
    let windows = format!("{query}/api/maintenance-windows");

    // Refusals name the field.
    let ok = json!({"serviceIds": [checkout.id], "start": at(3600), "end": at(7200), "description": "Upgrade"});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let too_many: Vec<String> = (0..101).map(|_| checkout.id.clone()).collect();
    let cases = [
        (with("serviceIds", json!([])), "serviceIds"),
        (with("serviceIds", json!(too_many)), "serviceIds"),
        (with("serviceIds", json!([checkout.id, "svc_missing", "svc_gone"])), "serviceIds[1]"),
        (with("serviceIds", json!([7])), "serviceIds[0]"),
        (with("start", json!("tomorrow")), "start"),
        (with("end", json!(at(1800))), "end"),
        (with("end", ok["start"].clone()), "end"),
        (json!({"serviceIds": [checkout.id], "start": at(-120), "end": at(-60)}), "end"),
        (with("description", json!("x".repeat(1025))), "description"),
        (with("colour", json!("red")), "colour"),
        (json!({"serviceIds": [checkout.id], "start": at(60)}), "end"),
    ];
    for (body, field) in &cases {
        let (status, answer) = env.send_json(Method::POST, &windows, &key, body).await;
        assert_names(status, &answer, field, body);
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from maintenance_windows").fetch_one(&env.pool).await.unwrap(),
        0
    );
    // services:write is needed to plan one, services:read to read them.
    let responder = env.api_key(Role::Responder, None, None).await;
    let (status, answer) = env.send_json(Method::POST, &windows, &responder, &ok).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "{answer}");
    let unrelated = env.api_key(Role::Admin, Some(&[Scope::IncidentsRead]), None).await;
    assert_eq!(env.get_json(&windows, &unrelated).await.0, 403);

    // One of each state; a start in the past is taken as now, a repeated service counts once.
    let future = create_window(&env, query, &key, ok.clone()).await;
    assert_eq!((future["state"].as_str(), future["description"].as_str()), (Some("future"), Some("Upgrade")));
    assert!(future["id"].as_str().unwrap().starts_with("mw_"), "{future}");
    let asked = jiff::Timestamp::now();
    let ongoing = create_window(
        &env,
        query,
        &key,
        json!({"serviceIds": [search.id, checkout.id, search.id], "start": at(-600), "end": at(3600)}),
    )
    .await;
    assert_eq!(ongoing["state"], "ongoing", "{ongoing}");
    let mut both = vec![checkout.id.clone(), search.id.clone()];
    both.sort();
    assert_eq!(ongoing["serviceIds"], json!(both));
    assert_eq!(ongoing["description"], "");
    assert!(instant(&ongoing["start"]) >= asked - jiff::SignedDuration::from_secs(1), "start taken as now: {ongoing}");
    let past =
        create_window(&env, query, &key, json!({"serviceIds": [checkout.id], "start": at(0), "end": at(60)})).await;
    let past_id = past["id"].as_str().unwrap().to_owned();
    sqlx::query(
        "update maintenance_windows set starts_at = now() - interval '2 hours', ends_at = now() - interval '1 hour'
         where id = $1",
    )
    .bind(&past_id)
    .execute(&env.pool)
    .await
    .unwrap();
    let id = |w: &Value| w["id"].as_str().unwrap().to_owned();
    let (future_id, ongoing_id) = (id(&future), id(&ongoing));

    // Listed newest first, filtered by state and service, paged.
    assert_eq!(listed(&env, query, &key, "").await, (vec![past_id.clone(), ongoing_id.clone(), future_id.clone()], 3));
    assert_eq!(listed(&env, query, &key, "state=future").await, (vec![future_id.clone()], 1));
    assert_eq!(listed(&env, query, &key, "state=ongoing").await, (vec![ongoing_id.clone()], 1));
    assert_eq!(listed(&env, query, &key, "state=past").await, (vec![past_id.clone()], 1));
    assert_eq!(listed(&env, query, &key, &format!("serviceId={}", search.id)).await, (vec![ongoing_id.clone()], 1));
    assert_eq!(
        listed(&env, query, &key, &format!("serviceId={}&state=future", checkout.id)).await,
        (vec![future_id.clone()], 1)
    );
    let (status, page) = env.get_json(&format!("{windows}?limit=2"), &key).await;
    assert_eq!((status, page["pagination"]["hasMore"].as_bool()), (200, Some(true)), "{page}");
    let cursor = page["pagination"]["nextCursor"].as_str().unwrap();
    assert_eq!(listed(&env, query, &key, &format!("limit=2&cursor={cursor}")).await, (vec![future_id.clone()], 3));
    let (status, answer) = env.get_json(&format!("{windows}?state=soon"), &key).await;
    assert_names(status, &answer, "state", &json!("state=soon"));
    let (status, one) = env.get_json(&format!("{windows}/{past_id}"), &key).await;
    assert_eq!((status, one["maintenanceWindow"]["state"].as_str()), (200, Some("past")), "{one}");
    assert_eq!(env.get_json(&format!("{windows}/mw_missing"), &key).await.0, 404);

    // Deleting: a future window goes; an ongoing one is ended now and kept, state past; a past
    // one goes once the worker has ended it.
    let delete = |id: String| {
        let (http, url, key) = (env.http.clone(), format!("{windows}/{id}"), key.clone());
        async move { http.delete(url).bearer_auth(key).send().await.expect("request") }
    };
    assert_eq!(delete(future_id.clone()).await.status(), 204);
    assert_eq!(env.get_json(&format!("{windows}/{future_id}"), &key).await.0, 404);
    let ended = delete(ongoing_id.clone()).await;
    assert_eq!(ended.status(), 200);
    let ended: Value = ended.json().await.unwrap();
    assert_eq!(ended["maintenanceWindow"]["state"], "past", "{ended}");
    assert!(instant(&ended["maintenanceWindow"]["end"]) <= jiff::Timestamp::now(), "{ended}");
    assert_eq!(listed(&env, query, &key, "state=ongoing").await, (vec![], 0));
    wait_until_ended(&env, &past_id).await;
    assert_eq!(delete(past_id.clone()).await.status(), 204);
    wait_until_ended(&env, &ongoing_id).await;
    assert_eq!(delete(ongoing_id.clone()).await.status(), 204);
    assert_eq!(listed(&env, query, &key, "").await, (vec![], 0));
    let missing = delete("mw_missing".into()).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_inside_a_window_is_suppressed_and_opened_when_the_window_is_ended_early() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let key = env.admin_key().await;
    let (quiet, loud) = (env.service("Checkout").await, env.service("Search").await);
    let window = create_window(
        &env,
        &pipeline.query,
        &key,
        json!({"serviceIds": [quiet.id], "start": at(0), "end": at(3600), "description": "Deploy"}),
    )
    .await;
    let window_id = window["id"].as_str().unwrap();
    let (_, service) = env.get_json(&format!("{}/api/services/{}", pipeline.query, quiet.id), &key).await;
    assert_eq!(service["service"]["inMaintenance"], true, "{service}");

    for service in [&quiet, &loud] {
        let sent = env.post_event(&pipeline.ingest, &key, &trigger(&service.routing_key, "disk", "Disk full")).await;
        assert_eq!(sent.status(), 202);
    }
    let suppressed = incident_of(&env, &quiet.id, "disk").await;
    let open = incident_of(&env, &loud.id, "disk").await;
    assert_eq!(incident(&env, &pipeline.query, &key, &suppressed).await["status"], "SUPPRESSED");
    assert_eq!(incident(&env, &pipeline.query, &key, &open).await["status"], "OPEN");

    // Ended early: the worker opens what the window suppressed, saying so in the timeline.
    let ended = env.http.delete(format!("{}/api/maintenance-windows/{window_id}", pipeline.query)).bearer_auth(&key);
    let ended = ended.send().await.unwrap();
    assert_eq!(ended.status(), 200);
    let opened = wait_for_status(&env, &pipeline.query, &key, &suppressed, "OPEN").await;
    let entry = opened["timeline"].as_array().unwrap().iter().find(|e| e["type"] == "maintenance_ended").cloned();
    let entry = entry.unwrap_or_else(|| panic!("no maintenance_ended entry: {opened:#}"));
    assert_eq!(entry["data"]["maintenanceWindowId"], window_id, "{entry}");
    let (_, service) = env.get_json(&format!("{}/api/services/{}", pipeline.query, quiet.id), &key).await;
    assert_eq!(service["service"]["inMaintenance"], false, "{service}");
    // A trigger after the window opens its incident as usual.
    let sent = env.post_event(&pipeline.ingest, &key, &trigger(&quiet.routing_key, "cpu", "CPU hot")).await;
    assert_eq!(sent.status(), 202);
    let after = incident_of(&env, &quiet.id, "cpu").await;
    assert_eq!(incident(&env, &pipeline.query, &key, &after).await["status"], "OPEN");
}

/// Creates a heartbeat; returns it (with its ping URL).
async fn create_heartbeat(env: &TestEnv, query: &str, key: &str, body: Value) -> Value {
    let (status, created) = env.send_json(Method::POST, &format!("{query}/api/heartbeats"), key, &body).await;
    assert_eq!(status, 201, "{created}");
    created["heartbeat"].clone()
}

/// The ping URL of `heartbeat` on the test's ingest at `ingest` (query-api builds it on
/// `INGEST_PUBLIC_URL`, the default here).
fn ping_url(ingest: &str, heartbeat: &Value) -> String {
    let url = heartbeat["pingUrl"].as_str().unwrap();
    let token = url.strip_prefix("http://localhost:8081/api/heartbeats/ping/").unwrap_or_else(|| panic!("{url}"));
    assert_eq!(token.len(), 48, "{url}");
    format!("{ingest}/api/heartbeats/ping/{token}")
}

/// `GET /api/heartbeats/{id}`.
async fn heartbeat(env: &TestEnv, query: &str, key: &str, id: &str) -> Value {
    let (status, body) = env.get_json(&format!("{query}/api/heartbeats/{id}"), key).await;
    assert_eq!(status, 200, "{body}");
    body["heartbeat"].clone()
}

/// Makes a heartbeat due now, as if its interval and grace had passed without a ping.
async fn make_due(env: &TestEnv, id: &str) {
    sqlx::query("update heartbeats set due_at = now() where id = $1").bind(id).execute(&env.pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_heartbeat_opens_an_incident_and_the_next_ping_resolves_it() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let (query, key) = (&pipeline.query, env.admin_key().await);
    let service = env.service("Backups").await;
    let heartbeats = format!("{query}/api/heartbeats");

    let ok = json!({"serviceId": service.id, "name": "Nightly backup", "intervalSeconds": 5, "graceSeconds": 0});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("serviceId", json!("svc_missing")), "serviceId"),
        (with("name", json!(" ")), "name"),
        (with("name", json!("n".repeat(256))), "name"),
        (with("intervalSeconds", json!(4)), "intervalSeconds"),
        (with("intervalSeconds", json!(604_801)), "intervalSeconds"),
        (with("intervalSeconds", json!("5")), "intervalSeconds"),
        (with("graceSeconds", json!(-1)), "graceSeconds"),
        (with("graceSeconds", json!(86_401)), "graceSeconds"),
        (json!({"serviceId": service.id, "name": "x"}), "intervalSeconds"),
        (with("token", json!("mine")), "token"),
    ];
    for (body, field) in &cases {
        let (status, answer) = env.send_json(Method::POST, &heartbeats, &key, body).await;
        assert_names(status, &answer, field, body);
    }
    let responder = env.api_key(Role::Responder, None, None).await;
    assert_eq!(env.send_json(Method::POST, &heartbeats, &responder, &ok).await.0, 403);

    // Grace defaults to 60 s; the ping URL is in the creation's answer only.
    let hourly = create_heartbeat(
        &env,
        query,
        &key,
        json!({"serviceId": service.id, "name": "Hourly report", "intervalSeconds": 3600}),
    )
    .await;
    assert_eq!((hourly["graceSeconds"].as_i64(), hourly["state"].as_str()), (Some(60), Some("up")), "{hourly}");
    let hourly_id = hourly["id"].as_str().unwrap().to_owned();
    let due = instant(&hourly["dueAt"]).duration_since(instant(&hourly["createdAt"]));
    assert!((due.as_secs() - 3660).abs() <= 1, "{hourly}");
    let beat = create_heartbeat(&env, query, &key, ok.clone()).await;
    let id = beat["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("hb_"), "{beat}");
    assert_eq!(beat["lastPingAt"], Value::Null);
    let url = ping_url(&pipeline.ingest, &beat);
    let shown = heartbeat(&env, query, &key, &id).await;
    assert!(shown.get("pingUrl").is_none(), "{shown}");
    let (status, list) = env.get_json(&format!("{heartbeats}?serviceId={}", service.id), &key).await;
    assert_eq!((status, list["total"].as_i64()), (200, Some(2)), "{list}");
    assert_eq!(list["heartbeats"][0]["id"], id.as_str(), "newest first: {list}");
    assert!(list["heartbeats"].as_array().unwrap().iter().all(|h| h.get("pingUrl").is_none()));

    // A ping: GET with no key, or POST with any body.
    let pinged = env.http.get(&url).send().await.unwrap();
    assert_eq!(pinged.status(), 200);
    let pinged: Value = pinged.json().await.unwrap();
    assert_eq!(
        (pinged["heartbeat"]["id"].as_str(), pinged["heartbeat"]["state"].as_str()),
        (Some(id.as_str()), Some("up"))
    );
    let shown = heartbeat(&env, query, &key, &id).await;
    assert!(shown["lastPingAt"].is_string(), "{shown}");
    assert_eq!(shown["dueAt"], pinged["heartbeat"]["dueAt"]);
    let posted = env.http.post(&url).header("content-type", "text/plain").body("done in 42 s").send().await.unwrap();
    assert_eq!(posted.status(), 200);

    // No ping by the due time: an incident through the pipeline, keyed heartbeat:<id>.
    make_due(&env, &id).await;
    let dedup_key = format!("heartbeat:{id}");
    let incident_id = incident_of(&env, &service.id, &dedup_key).await;
    let opened = wait_for_status(&env, query, &key, &incident_id, "OPEN").await;
    assert_eq!(opened["dedupKey"], dedup_key.as_str());
    assert!(opened["title"].as_str().unwrap().contains("Nightly backup"), "{opened}");
    wait_until(Duration::from_secs(10), "the heartbeat to read down", || async {
        heartbeat(&env, query, &key, &id).await["state"] == "down"
    })
    .await;
    // The next ping resolves it.
    assert_eq!(env.http.post(&url).json(&json!({"status": "firing"})).send().await.unwrap().status(), 200);
    wait_for_status(&env, query, &key, &incident_id, "RESOLVED").await;
    assert_eq!(heartbeat(&env, query, &key, &id).await["state"], "up");

    // An unknown token: a 404 in the error format, saying nothing of the token.
    let unknown = format!("{}/api/heartbeats/ping/{}", pipeline.ingest, "0".repeat(48));
    let refused = env.http.get(&unknown).send().await.unwrap();
    assert_eq!(refused.status(), 404);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "NOT_FOUND", "{refused}");
    assert!(!refused.to_string().contains(&"0".repeat(48)), "{refused}");

    // 60 pings a minute per heartbeat; another heartbeat's pings still pass.
    let hourly_url = ping_url(&pipeline.ingest, &hourly);
    let (admitted, limited, elapsed) =
        admitted_until_limited(8, || async { env.http.get(&hourly_url).send().await.unwrap() }).await;
    assert!(fits_limit(admitted, 60, elapsed), "{admitted} pings admitted in {elapsed:?}");
    assert!(limited.headers().contains_key("retry-after"));
    let limited: Value = limited.json().await.unwrap();
    assert_eq!(limited["error"]["code"], "RATE_LIMITED", "{limited}");
    assert_eq!(env.http.get(&url).send().await.unwrap().status(), 200);

    // Deleted: gone, and its ping URL is refused.
    let deleted = env.http.delete(format!("{heartbeats}/{hourly_id}")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(env.get_json(&format!("{heartbeats}/{hourly_id}"), &key).await.0, 404);
    let again = env.http.delete(format!("{heartbeats}/{hourly_id}")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(again.status(), 404);
}

/// The heartbeat's last ping, once it has one.
async fn last_ping(env: &TestEnv, id: &str) -> Option<jiff::Timestamp> {
    let at: Option<String> = sqlx::query_scalar(
        "select to_char(last_ping_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') from heartbeats where id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    at.map(|at| at.parse().expect("an RFC 3339 instant"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_watchdog_keeps_a_heartbeat_up_and_its_silence_opens_an_incident() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let (query, key) = (&pipeline.query, env.admin_key().await);
    let service = env.service("Prometheus").await;
    // A long interval: only the due time rewritten below makes it missed.
    let beat = create_heartbeat(
        &env,
        query,
        &key,
        json!({"serviceId": service.id, "name": "Watchdog", "intervalSeconds": 300, "graceSeconds": 0}),
    )
    .await;
    let id = beat["id"].as_str().unwrap().to_owned();
    let url = ping_url(&pipeline.ingest, &beat);
    let config = format!(
        "route:
  receiver: deadmans-switch
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1s
receivers:
  - name: deadmans-switch
    webhook_configs:
      - url: {url}
        send_resolved: false
"
    );
    let alertmanager = PrivateAlertmanager::start(&config);
    // Always firing: it ends an hour from now, and Alertmanager re-sends it every second.
    let end = format!("--end={}", at(3600));
    alertmanager.amtool(&[
        "alert",
        "add",
        "alertname=Watchdog",
        "severity=none",
        "--annotation=summary=Pipeline alive",
        &end,
    ]);

    wait_until(Duration::from_secs(30), "Alertmanager's first ping", || async { last_ping(&env, &id).await.is_some() })
        .await;
    let first = last_ping(&env, &id).await.unwrap();
    wait_until(Duration::from_secs(30), "Alertmanager to ping again", || async {
        last_ping(&env, &id).await.is_some_and(|at| at > first)
    })
    .await;
    assert_eq!(heartbeat(&env, query, &key, &id).await["state"], "up");

    // Alertmanager dies: once its last ping is seen, the due time passes.
    drop(alertmanager);
    wait_until(Duration::from_secs(10), "the due time to be moved after the last ping", || async {
        let seen = last_ping(&env, &id).await.unwrap();
        let moved =
            sqlx::query("update heartbeats set due_at = now() where id = $1 and last_ping_at = $2::timestamptz")
                .bind(&id)
                .bind(seen.to_string())
                .execute(&env.pool)
                .await
                .unwrap();
        moved.rows_affected() == 1
    })
    .await;
    let dedup_key = format!("heartbeat:{id}");
    let incident_id = incident_of(&env, &service.id, &dedup_key).await;
    wait_for_status(&env, query, &key, &incident_id, "OPEN").await;

    // Pinging again (curl, as a cron job would) resolves it.
    let curl = tokio::process::Command::new("curl").args(["-fsS", "-X", "POST", "-d", "{}", &url]).output();
    let curl = curl.await.expect("curl runs");
    assert!(curl.status.success(), "curl: {}", String::from_utf8_lossy(&curl.stderr));
    let answer: Value = serde_json::from_slice(&curl.stdout).expect("a JSON answer");
    assert_eq!(answer["heartbeat"]["state"], "up", "{answer}");
    wait_for_status(&env, query, &key, &incident_id, "RESOLVED").await;
}
