//! DESIGN §5–§6: the incidents and services API.

use std::collections::HashSet;
use std::time::Duration;

use common::auth::{Role, Scope};
use e2e::{TestEnv, action, trigger, wait_until};
use futures_util::{FutureExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};

async fn create_incident(env: &TestEnv, base: &str, key: &str, body: Value) -> Value {
    let (status, created) = env.send_json(Method::POST, &format!("{base}/api/incidents"), key, &body).await;
    assert_eq!(status, 201, "{created}");
    created["incident"].clone()
}

fn ids(list: &Value) -> Vec<String> {
    list["incidents"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn incidents_can_be_filtered_sorted_and_paged() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let api = env.service("API").await;
    let db = env.service("DB").await;
    let mut created = Vec::new();
    for (i, (service, urgency)) in
        [(&api, "HIGH"), (&api, "LOW"), (&db, "MEDIUM"), (&db, "HIGH"), (&api, "MEDIUM")].iter().enumerate()
    {
        let incident = create_incident(
            &env,
            &base,
            &key,
            json!({"title": format!("incident {i}"), "serviceId": service.id, "urgency": urgency, "priority": "P3"}),
        )
        .await;
        assert_eq!(incident["status"], "OPEN");
        assert_eq!(incident["service"]["name"], service.name);
        assert_eq!(incident["alertCount"], 0);
        created.push(incident["id"].as_str().unwrap().to_owned());
    }
    let url = |q: &str| format!("{base}/api/incidents?{q}");

    let (status, all) = env.get_json(&url(""), &key).await;
    assert_eq!(status, 200);
    assert_eq!(all["total"], 5);
    assert_eq!(ids(&all), created.iter().rev().cloned().collect::<Vec<_>>(), "newest first");
    assert_eq!(all["pagination"], json!({"limit": 50, "offset": 0, "hasMore": false, "nextCursor": null}));

    let (_, high_or_low) = env.get_json(&url("urgency=HIGH,low"), &key).await;
    assert_eq!(high_or_low["total"], 3);
    let (_, by_service) = env.get_json(&url(&format!("service_id={}", db.id)), &key).await;
    assert_eq!(ids(&by_service), vec![created[3].clone(), created[2].clone()]);
    let (_, triggered) = env.get_json(&url(&format!("status=triggered&serviceId={}", api.id)), &key).await;
    assert_eq!(triggered["total"], 3);
    let (_, resolved) = env.get_json(&url("status=RESOLVED"), &key).await;
    assert_eq!(resolved["total"], 0);
    let (_, by_urgency) = env.get_json(&url("sort=urgency&order=asc"), &key).await;
    let urgencies: Vec<&str> =
        by_urgency["incidents"].as_array().unwrap().iter().map(|i| i["urgency"].as_str().unwrap()).collect();
    assert_eq!(urgencies, ["LOW", "MEDIUM", "MEDIUM", "HIGH", "HIGH"]);
    let (_, future) = env.get_json(&url("created_after=2999-01-01T00:00:00Z"), &key).await;
    assert_eq!(future["total"], 0);

    let (_, first) = env.get_json(&url("limit=2"), &key).await;
    assert_eq!(first["pagination"]["hasMore"], true);
    let (_, offset_page) = env.get_json(&url("limit=2&offset=2"), &key).await;
    assert_eq!(ids(&offset_page), created.iter().rev().skip(2).take(2).cloned().collect::<Vec<_>>());

    for (query, field) in [
        ("limit=201", "limit"),
        ("limit=0", "limit"),
        ("status=closed", "status"),
        ("urgency=URGENT", "urgency"),
        ("sort=title", "sort"),
        ("order=up", "order"),
        ("cursor=zz", "cursor"),
        ("created_after=yesterday", "created_after"),
    ] {
        let (status, body) = env.get_json(&url(query), &key).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{query}");
        assert_eq!(body["error"]["details"]["field"], field, "{query}");
    }
    let (status, body) = env.get_json(&format!("{base}/api/incidents/inc_nope"), &key).await;
    assert_eq!((status, body["error"]["code"].as_str().unwrap()), (404, "NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_by_cursor_yields_every_incident_once_while_new_ones_arrive() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.api_key(Role::Admin, None, Some(100_000)).await;
    let service = env.service("API").await;
    let mut before = HashSet::new();
    for i in 0..40 {
        let incident =
            create_incident(&env, &base, &key, json!({"title": format!("old {i}"), "serviceId": service.id})).await;
        before.insert(incident["id"].as_str().unwrap().to_owned());
    }
    let writer = {
        let (http, base, key, service_id) = (env.http.clone(), base.clone(), key.clone(), service.id.clone());
        tokio::spawn(async move {
            for i in 0..30 {
                let body = json!({"title": format!("new {i}"), "serviceId": service_id});
                let response =
                    http.post(format!("{base}/api/incidents")).bearer_auth(&key).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 201);
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=7&cursor={c}"),
            None => "limit=7".to_owned(),
        };
        let (status, page) = env.get_json(&format!("{base}/api/incidents?{query}"), &key).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["pagination"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    writer.await.unwrap();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no incident appears twice");
    assert!(before.is_subset(&unique), "every incident that existed when the walk began is seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detail_shows_timeline_and_alerts_and_manual_changes_work() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let (ingest, base) = (&pipeline.ingest, &pipeline.query);
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let rk = &service.routing_key;
    for body in [trigger(rk, "cpu", "CPU high"), trigger(rk, "cpu", "CPU high")] {
        assert_eq!(env.post_event(ingest, &key, &body).await.status(), 202);
    }
    env.wait_for_applied(2, Duration::from_secs(30)).await;
    let (_, list) = env.get_json(&format!("{base}/api/incidents?status=OPEN"), &key).await;
    let id = list["incidents"][0]["id"].as_str().unwrap().to_owned();
    let url = format!("{base}/api/incidents/{id}");

    let responder_email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let responder = env.user("Rita Responder", &responder_email, Role::Responder).await;
    let patch = |body: Value| {
        let (env, url, key) = (&env, url.clone(), key.clone());
        async move { env.send_json(Method::PATCH, &url, &key, &body).await }
    };
    let (status, updated) = patch(json!({"status": "ACKNOWLEDGED", "assigneeId": responder.id, "priority": "P2", "urgency": "LOW", "note": "looking"})).await;
    assert_eq!(status, 200, "{updated}");
    let incident = &updated["incident"];
    assert_eq!(incident["status"], "ACKNOWLEDGED");
    assert!(incident["acknowledgedAt"].is_string());
    assert_eq!(incident["assignee"]["name"], "Rita Responder");
    assert_eq!((incident["priority"].as_str(), incident["urgency"].as_str()), (Some("P2"), Some("LOW")));
    let (status, body) = patch(json!({"assigneeId": "usr_nobody"})).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("assigneeId")));
    let (status, body) = patch(json!({"status": "SUPPRESSED"})).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("status")));
    let (status, body) = patch(json!({"colour": "red"})).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("colour")));
    let (status, updated) = patch(json!({"assigneeId": ""})).await;
    assert_eq!((status, updated["incident"]["assignee"].clone()), (200, Value::Null));

    // An alert still arriving is absorbed; the manual acknowledgement is kept.
    assert_eq!(env.post_event(ingest, &key, &trigger(rk, "cpu", "CPU high")).await.status(), 202);
    env.wait_for_applied(4, Duration::from_secs(30)).await;
    let (_, detail) = env.get_json(&url, &key).await;
    let incident = &detail["incident"];
    assert_eq!((incident["status"].as_str(), incident["alertCount"].as_i64()), (Some("ACKNOWLEDGED"), Some(3)));
    assert_eq!(incident["alerts"].as_array().unwrap().len(), 3);
    assert_eq!(incident["alerts"][0]["summary"], "CPU high");
    assert_eq!(incident["alerts"][0]["customDetails"]["host"], "web-01");
    let kinds: Vec<&str> =
        incident["timeline"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in ["event", "change", "note"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    assert!(incident["description"].as_str().unwrap().contains("web-01"));

    let (status, _) = patch(json!({"status": "RESOLVED"})).await;
    assert_eq!(status, 200);
    let (status, body) = patch(json!({"status": "ACKNOWLEDGED"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("CONFLICT")));
    let (status, _) =
        env.send_json(Method::PATCH, &format!("{base}/api/incidents/inc_nope"), &key, &json!({"note": "x"})).await;
    assert_eq!(status, 404);

    // A trigger after the manual resolve opens a new incident.
    assert_eq!(env.post_event(ingest, &key, &trigger(rk, "cpu", "CPU high again")).await.status(), 202);
    env.wait_for_applied(6, Duration::from_secs(30)).await;
    let (_, all) = env.get_json(&format!("{base}/api/incidents?serviceId={}", service.id), &key).await;
    assert_eq!(all["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_change_racing_alert_events_loses_neither() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let base = env.spawn_query_api().await;
    let mut settings = env.worker_settings();
    settings.batch_size = 5;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let key = env.api_key(Role::Admin, None, Some(100_000)).await;
    let rk = env.service("API").await.routing_key;
    assert_eq!(env.post_event(&ingest, &key, &trigger(&rk, "flap", "flapping")).await.status(), 202);
    env.wait_for_applied(1, Duration::from_secs(30)).await;
    let (_, list) = env.get_json(&format!("{base}/api/incidents"), &key).await;
    let url = format!("{base}/api/incidents/{}", list["incidents"][0]["id"].as_str().unwrap());

    // Triggers flow until every manual change was made while alerts were still arriving: each
    // change waits until the worker applied more alerts since the previous one, and triggers keep
    // coming after the last. So every change races the worker's applies by construction.
    let changes_done = std::sync::atomic::AtomicBool::new(false);
    let events = async {
        let mut sent = 0usize;
        let mut after_changes = 0;
        while after_changes < 20 {
            assert_eq!(env.post_event(&ingest, &key, &trigger(&rk, "flap", "flapping")).await.status(), 202);
            sent += 1;
            if changes_done.load(std::sync::atomic::Ordering::SeqCst) {
                after_changes += 1;
            }
        }
        sent
    };
    let manual = async {
        let mut seen = 1;
        for body in [
            json!({"status": "ACKNOWLEDGED"}),
            json!({"urgency": "LOW"}),
            json!({"priority": "P1"}),
            json!({"note": "on it"}),
        ] {
            wait_until(Duration::from_secs(30), "more alerts to be applied", || async {
                env.get_json(&url, &key).await.1["incident"]["alertCount"].as_i64().unwrap_or(0) > seen
            })
            .await;
            let (status, response) = env.send_json(Method::PATCH, &url, &key, &body).await;
            assert_eq!(status, 200, "{response}");
            seen = response["incident"]["alertCount"].as_i64().unwrap();
        }
        changes_done.store(true, std::sync::atomic::Ordering::SeqCst);
        seen
    };
    let (sent, last_seen_by_a_change) = tokio::join!(events, manual);
    let total = 1 + sent as i64;
    assert!(last_seen_by_a_change < total, "the last change came after every alert: no race");
    env.wait_for_applied(total + 1, Duration::from_secs(30)).await;
    let (_, detail) = env.get_json(&url, &key).await;
    let incident = &detail["incident"];
    assert_eq!(incident["alertCount"], total);
    assert_eq!(incident["status"], "ACKNOWLEDGED");
    assert_eq!((incident["urgency"].as_str(), incident["priority"].as_str()), (Some("LOW"), Some("P1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_always_agrees_with_the_page_while_incidents_are_created() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.api_key(Role::Admin, None, Some(100_000)).await;
    let service = env.service("Busy").await;
    const CREATED: usize = 150;
    let done = std::sync::atomic::AtomicBool::new(false);
    let create = async {
        let creations = (0..CREATED).map(|i| {
            let body = json!({"title": format!("incident {i}"), "serviceId": service.id, "urgency": "HIGH"});
            let (env, base, key) = (&env, &base, &key);
            async move { create_incident(env, base, key, body).await }
        });
        futures_util::stream::iter(creations).buffer_unordered(4).collect::<Vec<_>>().await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let url = format!("{base}/api/incidents?serviceId={}&status=OPEN&limit=200", service.id);
    let read = async {
        let mut answers = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || answers == 0 {
            let (status, list) = env.get_json(&url, &key).await;
            assert_eq!(status, 200, "{list}");
            let shown = list["incidents"].as_array().unwrap().len() as i64;
            assert_eq!(list["total"].as_i64(), Some(shown), "answer {answers}: the total disagrees with the page");
            answers += 1;
        }
        answers
    };
    let ((), answers) = tokio::join!(create, read);
    assert!(answers > 10, "only {answers} reads raced the creations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snoozed_incident_is_open_again_when_its_snooze_ends() {
    let env = TestEnv::new().await;
    // The query API shows the end at once; a worker's upkeep role stores it.
    let pipeline = env.spawn_pipeline().await;
    let base = &pipeline.query;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let incident = create_incident(&env, base, &key, json!({"title": "noisy", "serviceId": service.id})).await;
    let url = format!("{base}/api/incidents/{}", incident["id"].as_str().unwrap());
    let (status, body) = env.send_json(Method::PATCH, &url, &key, &json!({"status": "SNOOZED"})).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("snoozedUntil")));
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    let (status, body) = env
        .send_json(Method::PATCH, &url, &key, &json!({"status": "SNOOZED", "snoozedUntil": until.to_string()}))
        .await;
    assert_eq!((status, body["incident"]["status"].as_str()), (200, Some("SNOOZED")));
    let (_, snoozed) = env.get_json(&format!("{base}/api/incidents?status=SNOOZED"), &key).await;
    assert_eq!(snoozed["total"], 1);
    wait_until(Duration::from_secs(10), "the snooze to end", || async {
        env.get_json(&url, &key).await.1["incident"]["status"] == "OPEN"
    })
    .await;
    let (_, open) = env.get_json(&format!("{base}/api/incidents?status=OPEN"), &key).await;
    assert_eq!(open["total"], 1);
    wait_until(Duration::from_secs(10), "the stored status to be OPEN", || async {
        sqlx::query_scalar::<_, String>("select status from incidents").fetch_one(&env.pool).await.unwrap() == "OPEN"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_show_status_derived_from_open_incidents() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let (ingest, base) = (&pipeline.ingest, &pipeline.query);
    let key = env.admin_key().await;
    let (status, created) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/services"),
            &key,
            &json!({"name": "Checkout", "description": "payments"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let service = &created["service"];
    let rk = service["routingKey"].as_str().unwrap().to_owned();
    let url = format!("{base}/api/services/{}", service["id"].as_str().unwrap());
    assert_eq!(service["status"], "OPERATIONAL");

    let mut warning = trigger(&rk, "slow", "slow");
    warning["payload"]["severity"] = "warning".into();
    assert_eq!(env.post_event(ingest, &key, &warning).await.status(), 202);
    env.wait_for_applied(1, Duration::from_secs(30)).await;
    let (_, got) = env.get_json(&url, &key).await;
    assert_eq!(got["service"]["status"], "DEGRADED");
    assert_eq!(got["service"]["openIncidents"], json!({"HIGH": 0, "MEDIUM": 1, "LOW": 0}));
    assert_eq!(env.post_event(ingest, &key, &trigger(&rk, "down", "down")).await.status(), 202);
    env.wait_for_applied(2, Duration::from_secs(30)).await;
    let (_, list) = env.get_json(&format!("{base}/api/services"), &key).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["services"][0]["status"], "CRITICAL");
    for dedup in ["slow", "down"] {
        assert_eq!(env.post_event(ingest, &key, &action(&rk, dedup, "resolve")).await.status(), 202);
    }
    env.wait_for_applied(4, Duration::from_secs(30)).await;
    assert_eq!(env.get_json(&url, &key).await.1["service"]["status"], "OPERATIONAL");

    // The routing key is shown only to keys that may manage services.
    let reader = env.api_key(Role::User, None, None).await;
    let (status, seen) = env.get_json(&url, &reader).await;
    assert_eq!(status, 200);
    assert!(seen["service"].get("routingKey").is_none());
    let (status, body) =
        env.send_json(Method::POST, &format!("{base}/api/services"), &key, &json!({"description": "no name"})).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("name")));
}

#[tokio::test]
async fn scopes_are_enforced_and_named() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let service = env.service("API").await;
    let reader = env.api_key(Role::Responder, Some(&[Scope::IncidentsRead]), None).await;
    let responder = env.api_key(Role::Responder, None, None).await;
    let cases = [
        (Method::GET, "/api/services".to_owned(), &reader, "services:read"),
        (Method::POST, "/api/incidents".to_owned(), &reader, "incidents:write"),
        (Method::POST, "/api/services".to_owned(), &responder, "services:write"),
    ];
    for (method, path, key, scope) in cases {
        let body = json!({"title": "t", "serviceId": service.id, "name": "n"});
        let (status, error) = env.send_json(method, &format!("{base}{path}"), key, &body).await;
        assert_eq!(status, 403, "{path}");
        assert!(error["error"]["message"].as_str().unwrap().contains(scope), "{error}");
    }
    let (status, _) = env.get_json(&format!("{base}/api/incidents"), &reader).await;
    assert_eq!(status, 200);
    let (status, _) = env.get_json(&format!("{base}/api/incidents"), "osk_wrong").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn queries_past_300_a_minute_are_rate_limited() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let url = format!("{base}/api/services");
    let (admitted, response, elapsed) =
        e2e::admitted_until_limited(50, || env.http.get(&url).bearer_auth(&key).send().map(Result::unwrap)).await;
    assert!(e2e::fits_limit(admitted, 300, elapsed), "{admitted} admitted in {elapsed:?}");
    assert_eq!(response.headers()["x-ratelimit-limit"], "300");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_key_without_the_scope_is_refused_before_its_query_is_read() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let writer = env.api_key(Role::Responder, Some(&[Scope::EventsWrite]), None).await;
    let reader = env.api_key(Role::Admin, None, None).await;
    for path in
        ["/api/incidents?limit=0&status=NOPE", "/api/services?offset=-1", "/api/schedules/sch_x/shifts?from=soon"]
    {
        let (status, body) = env.get_json(&format!("{base}{path}"), &writer).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "{path}: {body}");
        let (status, body) = env.get_json(&format!("{base}{path}"), &reader).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{path}: {body}");
    }
    // A parameter given twice is refused, naming it: which was meant?
    let (status, body) = env.get_json(&format!("{base}/api/incidents?limit=10&limit=5"), &reader).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("limit")), "{body}");
}

#[tokio::test]
async fn a_body_over_512_kib_is_refused_with_a_json_413() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let service = env.service("API").await;
    let url = format!("{base}/api/incidents");
    let body = |title: usize| json!({"title": "t", "serviceId": service.id, "description": "x".repeat(title)});
    let (status, error) = env.send_json(Method::POST, &url, &key, &body(600 * 1024)).await;
    assert_eq!((status, error["error"]["code"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")), "{error}");
    // Just under the bound, the body is read and judged on its fields.
    let (status, error) = env.send_json(Method::POST, &url, &key, &body(500 * 1024)).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["details"]["field"], "description", "{error}");
}
