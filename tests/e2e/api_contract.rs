//! The API document is a contract: schemathesis (PyPI) reads `GET /api/openapi.json` from a live
//! `opssentinal serve` and sends every operation its examples, its coverage cases and fuzzed
//! requests. No answer may be a server error, a status code the document does not list, a body
//! that breaks the documented schema, or an undocumented content type.
//!
//! `SCHEMATHESIS_MAX_EXAMPLES` (default 30) sets the fuzzing depth per operation.

use std::process::Command;

use e2e::TestEnv;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_its_openapi_document_says() {
    let env = TestEnv::new().await;
    // Generous limits: the run must reach the handlers, not the rate limiter (429 is documented
    // anyway).
    let serve =
        env.spawn_serve(&[("RATE_LIMIT_API_PER_MINUTE", "1000000"), ("RATE_LIMIT_EVENTS_PER_MINUTE", "1000000")]).await;
    let (base, key) = (serve.base.as_str(), serve.admin_key.as_str());

    // Fixtures, so path parameters name things that exist and requests reach past the 404s.
    let (status, service) =
        env.send_json(Method::POST, &format!("{base}/api/services"), key, &json!({"name": "Contract"})).await;
    assert_eq!(status, 201, "{service}");
    let service = &service["service"];
    let (status, incident) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/incidents"),
            key,
            &json!({"title": "contract", "serviceId": service["id"]}),
        )
        .await;
    assert_eq!(status, 201, "{incident}");
    let admin: String = sqlx::query_scalar("select id from users limit 1").fetch_one(&env.pool).await.unwrap();
    let layer = json!({"start": "2026-01-01T09:00:00Z", "rotation": "daily", "users": [admin]});
    let (status, schedule) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/schedules"),
            key,
            &json!({"name": "Primary", "timeZone": "Europe/Berlin", "layers": [layer]}),
        )
        .await;
    assert_eq!(status, 201, "{schedule}");
    let (status, webhook) = env
        .send_json(Method::POST, &format!("{base}/api/webhooks"), key, &json!({"url": "http://127.0.0.1:9/contract"}))
        .await;
    assert_eq!(status, 201, "{webhook}");
    let (status, ping) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/webhooks/{}/ping", webhook["webhook"]["id"].as_str().unwrap()),
            key,
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{ping}");
    let env = &env;
    let post = |path: &'static str, body: serde_json::Value| {
        let url = format!("{base}{path}");
        async move {
            let (status, created) = env.send_json(Method::POST, &url, key, &body).await;
            assert_eq!(status, 201, "{path}: {created}");
            created
        }
    };
    let target = json!([{"type": "user", "id": admin}]);
    let policy = post(
        "/api/escalation-policies",
        json!({"name": "Contract", "steps": [{"escalateAfterMinutes": 5, "targets": target}]}),
    )
    .await;
    let (status, method) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/users/{admin}/contact-methods"),
            key,
            &json!({"type": "email", "address": "contract@example.com"}),
        )
        .await;
    assert_eq!(status, 201, "{method}");
    let window = post(
        "/api/maintenance-windows",
        json!({"serviceIds": [service["id"]], "start": "2030-01-01T00:00:00Z", "end": "2030-01-01T02:00:00Z"}),
    )
    .await;
    let heartbeat =
        post("/api/heartbeats", json!({"serviceId": service["id"], "name": "backup", "intervalSeconds": 3600})).await;
    let ping_url = heartbeat["heartbeat"]["pingUrl"].as_str().unwrap();
    let token = json!(ping_url.rsplit('/').next().unwrap());

    let dir = std::env::temp_dir().join(format!("opssentinal-contract-{}", env.db_name));
    std::fs::create_dir_all(&dir).unwrap();
    let operation = |path_regex: &str, parameter: &str, value: &serde_json::Value| {
        format!("[[operations]]\ninclude-path-regex = {path_regex:?}\nparameters = {{ {parameter:?} = {value} }}\n")
    };
    // Request bodies name things that exist most of the time (the rest stay fuzzed).
    let dictionary = |name: &str, values: &[&serde_json::Value]| {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        format!("[dictionaries.{name}]\nvalues = [{}]\n", values.join(", "))
    };
    let bind = |fields: &[&str], name: &str| {
        fields.iter().map(|f| format!("{f:?} = {{ dictionary = {name:?}, probability = 0.9 }}\n")).collect::<String>()
    };
    let zones = [&json!("UTC"), &json!("Europe/Berlin")];
    let config = [
        dictionary("users", &[&json!(admin)]),
        dictionary("zones", &zones),
        dictionary("services", &[&service["id"]]),
        dictionary("routing_keys", &[&service["routingKey"]]),
        "[parameters]\n".into(),
        bind(
            &["body.userId", "body.assigneeId", "body.users[*]", "body.layers[*].users[*]", "body.overrides[*].userId"],
            "users",
        ),
        bind(&["body.timeZone"], "zones"),
        bind(&["body.serviceId", "body.service_id", "body.serviceIds[*]"], "services"),
        bind(&["body.routing_key"], "routing_keys"),
        operation("^/api/incidents/", "path.id", &incident["incident"]["id"]),
        operation("^/api/services/", "path.id", &service["id"]),
        operation("^/api/schedules/", "path.id", &schedule["schedule"]["id"]),
        operation("^/api/integrations/alertmanager/", "path.routing_key", &service["routingKey"]),
        operation("^/api/webhooks/", "path.id", &webhook["webhook"]["id"]),
        operation("^/api/webhooks/.*/deliveries/", "path.delivery_id", &ping["delivery"]["id"]),
        operation("^/api/escalation-policies/", "path.id", &policy["escalationPolicy"]["id"]),
        operation("^/api/users/", "path.id", &json!(admin)),
        operation("^/api/users/.*/contact-methods/", "path.cid", &method["contactMethod"]["id"]),
        operation("^/api/maintenance-windows/", "path.id", &window["maintenanceWindow"]["id"]),
        operation("^/api/heartbeats/[^p]", "path.id", &heartbeat["heartbeat"]["id"]),
        operation("^/api/heartbeats/ping/", "path.token", &token),
    ]
    .concat();
    std::fs::write(dir.join("schemathesis.toml"), config).unwrap();
    let max_examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "30".into());
    let output = Command::new("schemathesis")
        .current_dir(&dir)
        .args(["--config-file", "schemathesis.toml", "run", &format!("{base}/api/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", &max_examples, "--seed", "1"])
        // A stream never ends: each request would wait out the timeout. tests/e2e/stream.rs covers it.
        .args(["--exclude-path", "/api/stream"])
        .args(["--workers", "1", "--no-color", "--generation-database", "none", "--request-timeout", "10"])
        .output()
        .expect("schemathesis is installed (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    // Every operation ran, in every phase.
    assert!(report.contains("Tested: 52"), "{report}");
    for phase in ["Examples", "Coverage", "Fuzzing"] {
        assert!(report.contains(&format!("✅ {phase}")), "{phase} did not run:\n{report}");
    }
}
