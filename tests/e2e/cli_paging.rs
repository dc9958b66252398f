//! The paging commands of the `opssentinal` binary, against a running query API: contact
//! methods, escalation policies, maintenance windows, heartbeats and `incident escalate`.

use std::process::{Command, Output};

use common::auth::Role;
use e2e::TestEnv;
use reqwest::Method;
use serde_json::{Value, json};

fn cli(base: &str, key: &str, args: &[&str]) -> Output {
    Command::new(e2e::service_binary("opssentinal"))
        .args(args)
        .env("OPSSENTINAL_URL", base)
        .env("OPSSENTINAL_API_KEY", key)
        .output()
        .unwrap()
}

/// The command's JSON output (`--output json` appended); panics with its stderr on failure.
fn json(base: &str, key: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let output = cli(base, key, &args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_are_paged_as_the_cli_sets_up() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let jane = env.user("Jane Doe", "jane@example.com", Role::Responder).await;
    let service = env.service("Checkout").await;
    let (status, schedule) = env
        .send_json(Method::POST, &format!("{base}/api/schedules"), &key, &json!({"name": "Primary", "timeZone": "UTC"}))
        .await;
    assert_eq!(status, 201);
    let schedule = schedule["schedule"]["id"].as_str().unwrap();

    // Contact methods.
    let added =
        json(&base, &key, &["user", "contact", "add", &jane.id, "--type", "email", "--address", "jane@example.com"]);
    assert_eq!(added["type"], "email", "{added}");
    let listed = json(&base, &key, &["user", "contact", "list", &jane.id]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["address"], "jane@example.com");

    // Escalation policies: two steps, listed and shown; a malformed step is refused naming --step.
    let schedule_step = format!("10:schedule:{schedule}");
    let user_step = format!("15:user:{}", jane.id);
    let policy = json(
        &base,
        &key,
        &[
            "escalation-policy",
            "create",
            "--name",
            "Checkout",
            "--repeat",
            "1",
            "--step",
            &schedule_step,
            "--step",
            &user_step,
        ],
    );
    let id = policy["id"].as_str().unwrap();
    assert_eq!(policy["steps"].as_array().unwrap().len(), 2, "{policy}");
    let listed = json(&base, &key, &["escalation-policy", "list"]);
    assert_eq!(listed[0]["id"], id);
    let shown = String::from_utf8(cli(&base, &key, &["escalation-policy", "show", id]).stdout).unwrap();
    assert!(shown.contains(&format!("schedule:{schedule}")) && shown.contains(&format!("user:{}", jane.id)), "{shown}");
    assert!(shown.contains("10 min") && shown.contains("15 min"), "{shown}");
    // A malformed step is a usage error (exit 2, like clap's own), caught before any request.
    let bad = cli(
        &base,
        &key,
        &["escalation-policy", "create", "--name", "Bad", "--step", "5:user:x", "--step", "soon:user:x"],
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--step") && stderr.contains("\"soon\" are not a whole number"), "{stderr}");
    assert_eq!(json(&base, &key, &["escalation-policy", "list"]).as_array().unwrap().len(), 1, "nothing was sent");

    // Maintenance windows: made for an hour, listed as ongoing, ended, then past.
    let window = json(
        &base,
        &key,
        &["maintenance", "create", "--service", &service.id, "--duration", "1h", "--description", "DB upgrade"],
    );
    let window_id = window["id"].as_str().unwrap();
    assert_eq!(window["state"], "ongoing", "{window}");
    let ongoing = json(&base, &key, &["maintenance", "list", "--state", "ongoing"]);
    assert_eq!(ongoing[0]["id"], window_id);
    let ended = json(&base, &key, &["maintenance", "end", window_id]);
    assert_eq!(ended["state"], "past", "{ended}");
    let past = json(&base, &key, &["maintenance", "list", "--state", "past"]);
    assert_eq!(past[0]["id"], window_id);
    // A future window is deleted, not ended, and the table says so.
    let future = json(
        &base,
        &key,
        &["maintenance", "create", "--service", &service.id, "--start", "2099-01-01T00:00:00Z", "--duration", "2h"],
    );
    assert_eq!((future["state"].as_str(), future["end"].as_str()), (Some("future"), Some("2099-01-01T02:00:00Z")));
    let deleted = cli(&base, &key, &["maintenance", "end", future["id"].as_str().unwrap()]);
    let printed = String::from_utf8_lossy(&deleted.stdout);
    assert!(deleted.status.success() && printed.contains("deleted"), "{printed}");
    assert!(json(&base, &key, &["maintenance", "list", "--state", "future"]).as_array().unwrap().is_empty());

    // Heartbeats: the ping URL is printed once.
    let created =
        cli(&base, &key, &["heartbeat", "create", "--service", &service.id, "--name", "Backup", "--interval", "3600"]);
    let printed = String::from_utf8(created.stdout).unwrap();
    assert!(created.status.success() && printed.contains("/api/heartbeats/ping/"), "{printed}");
    let heartbeats = json(&base, &key, &["heartbeat", "list"]);
    assert_eq!((heartbeats[0]["name"].as_str(), heartbeats[0]["state"].as_str()), (Some("Backup"), Some("up")));

    // `incident escalate` on an incident whose service has no policy: the 409, on stderr.
    let (status, incident) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/incidents"),
            &key,
            &json!({"title": "By hand", "serviceId": service.id}),
        )
        .await;
    assert_eq!(status, 201);
    let refused = cli(&base, &key, &["incident", "escalate", incident["incident"]["id"].as_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("CONFLICT") && stderr.contains("no escalation policy"), "{stderr}");

    // With the policy on the service, a new incident escalates: its first step fires now.
    let (status, _) = env
        .send_json(
            Method::PATCH,
            &format!("{base}/api/services/{}", service.id),
            &key,
            &json!({"escalationPolicyId": id}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, incident) = env
        .send_json(
            Method::POST,
            &format!("{base}/api/incidents"),
            &key,
            &json!({"title": "Paged", "serviceId": service.id}),
        )
        .await;
    assert_eq!(status, 201, "{incident}");
    let incident = incident["incident"]["id"].as_str().unwrap();
    let escalated = cli(&base, &key, &["incident", "escalate", incident]);
    let printed = String::from_utf8_lossy(&escalated.stdout);
    assert!(escalated.status.success(), "{}", String::from_utf8_lossy(&escalated.stderr));
    assert!(printed.contains(incident) && printed.contains("step 1") && printed.contains(id), "{printed}");
}
