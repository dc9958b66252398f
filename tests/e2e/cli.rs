//! The `opssentinal` binary itself: administration commands and the one-process server.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::{TestEnv, trigger, wait_until};
use serde_json::Value;

/// The CLI binary next to this test binary (`scripts/test.sh` builds it first).
fn opssentinal() -> std::path::PathBuf {
    e2e::service_binary("opssentinal")
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(opssentinal()).args(args).env("DATABASE_URL", &env.database.url).output().unwrap()
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn an_operator_creates_users_keys_and_services_with_the_cli() {
    let env = TestEnv::new().await;
    let migrate = run(&env, &["migrate"]);
    assert!(migrate.status.success() && String::from_utf8_lossy(&migrate.stdout).contains("migrations applied"));

    let created = run(
        &env,
        &["--user", "Jane Doe", "--email", "jane@example.com", "--password", "correct horse", "--role", "responder"],
    );
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let again = run(
        &env,
        &["--user", "Jane Doe", "--email", "jane@example.com", "--password", "correct horse", "--role", "user"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let promoted =
        json_of(&run(&env, &["--email", "jane@example.com", "--role", "admin", "--update", "--output", "json"]));
    assert_eq!((promoted["name"].as_str(), promoted["role"].as_str()), (Some("Jane Doe"), Some("admin")));
    let bad_role =
        run(&env, &["--user", "X", "--email", "x@example.com", "--password", "correct horse", "--role", "root"]);
    assert_eq!(bad_role.status.code(), Some(2), "bad usage exits 2");
    // Missing required input is bad usage too, found before connecting (the database given here
    // cannot be reached, so a connection attempt would exit 1).
    for args in [
        &[][..],
        &["--user", "X", "--email", "x@example.com", "--role", "user"][..],
        &["--user", "X", "--email", "x@example.com", "--password", "correct horse"][..],
        &["--email", "x@example.com", "--password", "correct horse", "--role", "user"][..],
        &["user", "create", "--name", "X", "--email", "x@example.com", "--role", "user"][..],
    ] {
        let output = Command::new(opssentinal())
            .args(args)
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
            .output()
            .expect("opssentinal runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("connect"), "{args:?} tried the database: {stderr}");
    }

    let key = json_of(&run(
        &env,
        &[
            "apikey",
            "create",
            "--email",
            "jane@example.com",
            "--name",
            "ci",
            "--scopes",
            "events:write,incidents:read",
            "--output",
            "json",
        ],
    ));
    assert!(key["id"].as_str().unwrap().starts_with("key_"));
    assert!(key["key"].as_str().unwrap().starts_with("osk_"));
    assert_eq!(key["scopes"], serde_json::json!(["events:write", "incidents:read"]));

    run(
        &env,
        &[
            "user",
            "create",
            "--name",
            "Una User",
            "--email",
            "una@example.com",
            "--password",
            "correct horse",
            "--role",
            "user",
        ],
    );
    let denied =
        run(&env, &["apikey", "create", "--email", "una@example.com", "--name", "x", "--scopes", "events:write"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("may not hold the scope events:write"));

    let service = json_of(&run(&env, &["service", "create", "--name", "API Gateway", "--output", "json"]));
    assert!(service["id"].as_str().unwrap().starts_with("svc_"));
    assert_eq!(service["name"], "API Gateway");
    assert_eq!(service["routingKey"].as_str().unwrap().len(), 32);

    // A password can come from standard input, out of the shell history.
    let mut piped = Command::new(opssentinal())
        .args([
            "user",
            "create",
            "--name",
            "Pia Piped",
            "--email",
            "pia@example.com",
            "--role",
            "user",
            "--password-stdin",
        ])
        .env("DATABASE_URL", &env.database.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut piped.stdin.take().unwrap(), b"from standard input\n").unwrap();
    assert!(piped.wait_with_output().unwrap().status.success());
    let hash: String = sqlx::query_scalar("select password_hash from users where email = 'pia@example.com'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && query_api::credentials::verify_password("from standard input", &hash));

    let listed = json_of(&run(&env, &["user", "list", "--output", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let unreachable = Command::new(opssentinal())
        .args(["user", "list"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the database"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_everything_on_one_port_and_prints_an_admin_key_once() {
    let env = TestEnv::new().await;
    let serve = env.spawn_serve(&[]).await;
    let (base, key) = (&serve.base, &serve.admin_key);
    let service = json_of(&run(&env, &["service", "create", "--name", "API", "--output", "json"]));

    let body = trigger(service["routingKey"].as_str().unwrap(), "disk", "Disk full");
    assert_eq!(env.post_event(base, key, &body).await.status(), 202);
    wait_until(Duration::from_secs(30), "the incident on the same port", || async {
        env.get_json(&format!("{base}/api/incidents"), key).await.1["total"] == 1
    })
    .await;
    let (status, document) = env.get_json(&format!("{base}/api/openapi.json"), "").await;
    assert_eq!((status, document["openapi"].is_string()), (200, true));
}

/// Runs the CLI as an API client against `url`.
fn client(env: &TestEnv, url: &str, key: &str, args: &[&str]) -> Output {
    Command::new(opssentinal())
        .args(args)
        .env("DATABASE_URL", &env.database.url)
        .env("OPSSENTINAL_URL", url)
        .env("OPSSENTINAL_API_KEY", key)
        .output()
        .unwrap()
}

fn failure(output: &Output) -> (Option<i32>, String) {
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_an_incident_from_alert_to_resolution_with_the_cli() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let query = env.spawn_query_api().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    run(
        &env,
        &[
            "user",
            "create",
            "--name",
            "Ada Admin",
            "--email",
            "ada@example.com",
            "--password",
            "correct horse",
            "--role",
            "admin",
        ],
    );
    let key =
        json_of(&run(&env, &["apikey", "create", "--email", "ada@example.com", "--name", "ops", "--output", "json"]));
    let key = key["key"].as_str().unwrap().to_owned();
    let service = json_of(&run(&env, &["service", "create", "--name", "Storage", "--output", "json"]));
    let rk = service["routingKey"].as_str().unwrap().to_owned();

    let sent = json_of(&client(
        &env,
        &ingest,
        &key,
        &[
            "event",
            "trigger",
            "--routing-key",
            &rk,
            "--dedup-key",
            "disk",
            "--summary",
            "Disk full",
            "--severity",
            "critical",
            "--detail",
            "host=web-01",
            "--output",
            "json",
        ],
    ));
    assert_eq!((sent["status"].as_str(), sent["dedup_key"].as_str()), (Some("success"), Some("disk")));
    env.wait_for_applied(1, Duration::from_secs(30)).await;

    let table = client(&env, &query, &key, &["incident", "list", "--status", "triggered"]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID") && table.contains("Disk full") && table.contains("HIGH"), "{table}");
    let list = json_of(&client(&env, &query, &key, &["incident", "list", "--status", "triggered", "--output", "json"]));
    let id = list["incidents"][0]["id"].as_str().unwrap().to_owned();

    let acked = json_of(&client(&env, &query, &key, &["incident", "ack", &id, "--output", "json"]));
    assert_eq!(acked["status"], "ACKNOWLEDGED");
    let users = json_of(&run(&env, &["user", "list", "--output", "json"]));
    let ada = users[0]["id"].as_str().unwrap().to_owned();
    let assigned = json_of(&client(&env, &query, &key, &["incident", "assign", &id, &ada, "--output", "json"]));
    assert_eq!(assigned["assignee"]["name"], "Ada Admin");
    assert!(client(&env, &query, &key, &["incident", "note", &id, "rolled back the deploy"]).status.success());
    let resolved = json_of(&client(&env, &query, &key, &["incident", "resolve", &id, "--output", "json"]));
    assert_eq!(resolved["status"], "RESOLVED");
    let detail = json_of(&client(&env, &query, &key, &["incident", "get", &id, "--output", "json"]));
    assert!(detail["timeline"].as_array().unwrap().iter().any(|e| e["message"] == "rolled back the deploy"));

    // Who is on call.
    let schedule = serde_json::json!({"name": "Primary", "timeZone": "UTC",
        "layers": [{"start": "2026-01-01T00:00:00Z", "rotation": "weekly", "users": [ada]}]});
    let (status, created) =
        env.send_json(reqwest::Method::POST, &format!("{query}/api/schedules"), &key, &schedule).await;
    assert_eq!(status, 201);
    let on_call = client(
        &env,
        &query,
        &key,
        &["oncall", created["schedule"]["id"].as_str().unwrap(), "--at", "2026-06-01T12:00:00Z"],
    );
    assert!(on_call.status.success());
    assert!(String::from_utf8_lossy(&on_call.stdout).contains("Ada Admin"));

    // Error paths: unknown id, missing scope, unreachable server, no key, bad usage.
    let (code, stderr) = failure(&client(&env, &query, &key, &["incident", "get", "inc_nope"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    run(
        &env,
        &[
            "user",
            "create",
            "--name",
            "Rex Reader",
            "--email",
            "rex@example.com",
            "--password",
            "correct horse",
            "--role",
            "user",
        ],
    );
    let reader =
        json_of(&run(&env, &["apikey", "create", "--email", "rex@example.com", "--name", "ro", "--output", "json"]));
    let (code, stderr) = failure(&client(&env, &query, reader["key"].as_str().unwrap(), &["incident", "ack", &id]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("FORBIDDEN") && stderr.contains("incidents:write"), "{stderr}");
    let (code, stderr) = failure(&client(&env, "http://127.0.0.1:1", &key, &["incident", "list"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot reach OpsSentinal") && !stderr.contains("panicked"), "{stderr}");
    let no_key =
        Command::new(opssentinal()).args(["incident", "list"]).env_remove("OPSSENTINAL_API_KEY").output().unwrap();
    assert_eq!(failure(&no_key).0, Some(1));
    assert_eq!(client(&env, &query, &key, &["incident", "list", "--limit", "many"]).status.code(), Some(2));

    // Keys are listed without their secret, and a revoked key stops working.
    let spare =
        json_of(&run(&env, &["apikey", "create", "--email", "ada@example.com", "--name", "spare", "--output", "json"]));
    let listed = run(&env, &["apikey", "list", "--email", "ada@example.com"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("spare") && !listed.contains(spare["key"].as_str().unwrap()), "{listed}");
    assert!(run(&env, &["apikey", "revoke", spare["id"].as_str().unwrap()]).status.success());
    let (code, stderr) = failure(&client(&env, &query, spare["key"].as_str().unwrap(), &["incident", "list"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("UNAUTHORIZED"), "{stderr}");

    // A rotated routing key replaces the old one.
    let fresh = json_of(&run(&env, &["service", "create", "--name", "Queue", "--output", "json"]));
    let rotated = json_of(&run(&env, &["service", "rotate-key", fresh["id"].as_str().unwrap(), "--output", "json"]));
    assert_ne!(rotated["routingKey"], fresh["routingKey"]);
    let old = ["event", "trigger", "--routing-key", fresh["routingKey"].as_str().unwrap(), "--summary", "x"];
    let (code, stderr) = failure(&client(&env, &ingest, &key, &old));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("INVALID_ROUTING_KEY"), "{stderr}");
    let services = json_of(&run(&env, &["service", "list", "--output", "json"]));
    assert_eq!(services.as_array().unwrap().len(), 2);
    let through_api = client(&env, &query, &key, &["service", "list", "--api"]);
    let through_api = String::from_utf8_lossy(&through_api.stdout);
    assert!(through_api.contains("Storage") && through_api.contains("OPERATIONAL"), "{through_api}");
    let schedules = json_of(&client(&env, &query, &key, &["schedule", "list", "--api", "--output", "json"]));
    assert_eq!(schedules[0]["name"], "Primary");
}

/// A key pasted with its newline works; a key with a character no HTTP header may hold is reported
/// as a bad key, before anything is sent, not as a server that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_key_is_trimmed_and_a_key_no_header_can_carry_is_reported_as_a_bad_key() {
    let env = TestEnv::new().await;
    let serve = env.spawn_serve(&[]).await;
    let (base, key) = (&serve.base, &serve.admin_key);

    for pasted in [format!("{key}\n"), format!("  {key}\r\n")] {
        let listed = json_of(&client(&env, base, &pasted, &["incident", "list", "--output", "json"]));
        assert_eq!(listed["total"], 0, "{pasted:?}");
    }

    let bad = [format!("{key}\u{1}"), format!("{}\n{}", &key[..10], &key[10..]), format!("{key}\u{7f}")];
    for bad in &bad {
        let (code, stderr) = failure(&client(&env, base, bad, &["incident", "list"]));
        assert_eq!(code, Some(1), "{bad:?}: {stderr}");
        assert!(stderr.contains("OPSSENTINAL_API_KEY or --api-key") && stderr.contains("is not valid"), "{stderr}");
        assert!(stderr.contains("control character"), "{stderr}");
        assert!(!stderr.contains("cannot reach") && !stderr.contains(&key[4..]), "{stderr}");
    }
    // The same through --api-key, and for a command that sends an event.
    let flag = Command::new(opssentinal())
        .args(["event", "trigger", "--routing-key", "rk", "--summary", "x", "--url", base, "--api-key"])
        .arg(&bad[0])
        .env_remove("OPSSENTINAL_API_KEY")
        .output()
        .unwrap();
    let (code, stderr) = failure(&flag);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--api-key") && !stderr.contains("cannot reach"), "{stderr}");
}

fn run_with_nats(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(opssentinal()).args(args).envs(env.service_env()).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_and_dead_letters_are_managed_with_the_cli() {
    let env = TestEnv::new().await;
    run(
        &env,
        &[
            "user",
            "create",
            "--name",
            "Ann",
            "--email",
            "ann@example.com",
            "--password",
            "correct horse",
            "--role",
            "responder",
        ],
    );
    let ann = json_of(&run(&env, &["user", "list", "--output", "json"]))[0]["id"].as_str().unwrap().to_owned();
    let schedule = json_of(&run(
        &env,
        &["schedule", "create", "--name", "Primary", "--time-zone", "Europe/Berlin", "--output", "json"],
    ));
    let id = schedule["id"].as_str().unwrap().to_owned();
    let layer = json_of(&run(
        &env,
        &[
            "schedule",
            "layer",
            "add",
            &id,
            "--start",
            "2026-01-01T08:00:00Z",
            "--rotation",
            "daily",
            "--users",
            &ann,
            "--output",
            "json",
        ],
    ));
    assert_eq!((layer["position"].as_i64(), layer["handoffTime"].as_str()), (Some(0), Some("09:00")));
    let added = run(
        &env,
        &[
            "schedule",
            "override",
            "add",
            &id,
            "--user",
            &ann,
            "--start",
            "2026-02-01T00:00:00Z",
            "--end",
            "2026-02-02T00:00:00Z",
        ],
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let (code, stderr) = failure(&run(&env, &["schedule", "create", "--name", "X", "--time-zone", "Mars/Base"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("timeZone"), "{stderr}");
    let (code, stderr) = failure(&run(
        &env,
        &[
            "schedule",
            "layer",
            "add",
            &id,
            "--start",
            "2026-01-01T00:00:00Z",
            "--rotation",
            "daily",
            "--users",
            "usr_nobody",
        ],
    ));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no user usr_nobody"), "{stderr}");
    assert_eq!(json_of(&run(&env, &["schedule", "list", "--output", "json"])).as_array().unwrap().len(), 1);

    // An event for a service that does not exist yet is dead-lettered; once the service exists,
    // replaying it applies it.
    let mut settings = env.worker_settings();
    settings.max_deliveries = 1;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let event = e2e::envelope("svc_later", "orphan", common::event::EventAction::Trigger, "late service");
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let subject = env.nats.event_subject(&event.service_id, &event.dedup_key);
    js.publish(subject, serde_json::to_vec(&event).unwrap().into()).await.unwrap().await.unwrap();
    wait_until(Duration::from_secs(30), "the trigger to be dead-lettered", || async {
        let listed = run_with_nats(&env, &["dlq", "list", "--output", "json"]);
        listed.status.success()
            && serde_json::from_slice::<Value>(&listed.stdout).is_ok_and(|l| l.as_array().is_some_and(|a| a.len() == 1))
    })
    .await;
    let table = String::from_utf8_lossy(&run_with_nats(&env, &["dlq", "list"]).stdout).into_owned();
    assert!(table.contains("svc_later") && table.contains("foreign key"), "{table}");

    sqlx::query("insert into services (id, name, routing_key) values ('svc_later', 'Late', 'late-key')")
        .execute(&env.pool)
        .await
        .unwrap();
    // The key's resolve came after the trigger and is applied (to no incident) before the replay.
    let resolve = e2e::envelope("svc_later", "orphan", common::event::EventAction::Resolve, "");
    js.publish(env.nats.event_subject("svc_later", "orphan"), serde_json::to_vec(&resolve).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    env.wait_for_applied(1, Duration::from_secs(30)).await;
    let replayed = json_of(&run_with_nats(&env, &["dlq", "replay", "--all", "--output", "json"]));
    assert_eq!(replayed["replayed"].as_array().unwrap().len(), 1);
    // Replayed at its original place, before the resolve: the incident it opens is resolved.
    wait_until(Duration::from_secs(30), "the replayed trigger to be applied", || async {
        env.applied_events().await == 2
    })
    .await;
    let statuses: Vec<String> = sqlx::query_scalar("select status from incidents where dedup_key = 'orphan'")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(statuses, ["RESOLVED"], "a replayed trigger reopened a resolved key");
    let listed = json_of(&run_with_nats(&env, &["dlq", "list", "--output", "json"]));
    assert!(listed.as_array().unwrap().is_empty());
    let (code, _) = failure(&run_with_nats(&env, &["dlq", "replay", "99"]));
    assert_eq!(code, Some(1));
}

/// DESIGN §1.5 with a replay too early: a dead letter replayed while its cause is not fixed (at
/// once, well within every duplicate window) goes back to the dead-letter stream, with its failed
/// attempts counted afresh; it never vanishes from both streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replayed_before_its_cause_is_fixed_is_dead_lettered_again() {
    let env = TestEnv::new().await;
    let mut settings = env.worker_settings();
    settings.max_deliveries = 2;
    let _worker = env.spawn_worker(&settings, env.shutdown.clone()).await;
    let event = e2e::envelope("svc_missing", "poison", common::event::EventAction::Trigger, "no such service");
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let subject = env.nats.event_subject(&event.service_id, &event.dedup_key);
    js.publish(subject, serde_json::to_vec(&event).unwrap().into()).await.unwrap().await.unwrap();
    let letters = || async {
        let listed = run_with_nats(&env, &["dlq", "list", "--output", "json"]);
        serde_json::from_slice::<Value>(&listed.stdout).ok().and_then(|l| l.as_array().cloned()).unwrap_or_default()
    };
    wait_until(Duration::from_secs(30), "the trigger to be dead-lettered", || async { letters().await.len() == 1 })
        .await;
    let first = letters().await[0]["seq"].as_u64().unwrap();

    let replayed = json_of(&run_with_nats(&env, &["dlq", "replay", &first.to_string(), "--output", "json"]));
    assert_eq!(replayed["replayed"], serde_json::json!([first]));
    wait_until(Duration::from_secs(30), "the replayed trigger to be dead-lettered again", || async {
        letters().await.iter().any(|l| l["seq"].as_u64() != Some(first) && l["eventId"] == event.event_id.to_string())
    })
    .await;
    let again = letters().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["deliveries"], "2", "attempts counted afresh: {again:?}");
    assert_eq!(env.backlog().await, Some(0), "the event stream still holds it");
}

/// `opssentinal webhook …` manages a webhook whose deliveries a real receiver verifies, and
/// `opssentinal incident watch` prints each change of an incident as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_managed_and_changes_watched_with_the_cli() {
    use e2e::servers::WebhookReceiver;
    use serde_json::json;
    use tokio::io::AsyncBufReadExt;
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let key = env.admin_key().await;
    let service = env.service("Storage").await;
    let receiver = WebhookReceiver::start();

    let url = receiver.url("/ops");
    let args = ["webhook", "create", &url, "--events", "incident.triggered,incident.resolved", "--output", "json"];
    let created = client(&env, &pipeline.query, &key, &args);
    assert!(created.status.success(), "{}", failure(&created).1);
    let created = json_of(&created);
    let (webhook, secret) = (created["webhook"]["id"].as_str().unwrap(), created["secret"].as_str().unwrap());
    receiver.configure(&env.http, json!({"secret": secret})).await;
    let list = String::from_utf8(client(&env, &pipeline.query, &key, &["webhook", "list"]).stdout).unwrap();
    assert!(list.contains(webhook) && list.contains("incident.triggered,incident.resolved"), "{list}");

    // The watcher is connected before the incident changes.
    let mut watch = tokio::process::Command::new(opssentinal())
        .args(["incident", "watch", "--service", &service.id])
        .env("OPSSENTINAL_URL", &pipeline.query)
        .env("OPSSENTINAL_API_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut notices = tokio::io::BufReader::new(watch.stderr.take().unwrap()).lines();
    let connected = tokio::time::timeout(Duration::from_secs(10), notices.next_line()).await.unwrap().unwrap();
    assert!(connected.is_some_and(|line| line.contains("watching")), "the watcher says when it is connected");
    for event in [
        e2e::trigger(&service.routing_key, "disk", "Disk full"),
        e2e::action(&service.routing_key, "disk", "acknowledge"),
        e2e::action(&service.routing_key, "disk", "resolve"),
    ] {
        assert_eq!(env.post_event(&pipeline.ingest, &key, &event).await.status(), 202);
    }
    let mut watched = Vec::new();
    while watched.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
        watched.push(line);
    }
    for (line, (kind, status)) in
        watched.iter().zip([("triggered", "OPEN"), ("acknowledged", "ACKNOWLEDGED"), ("resolved", "RESOLVED")])
    {
        assert!(line.contains(kind) && line.contains(status) && line.contains("Disk full"), "{line}");
    }
    drop(watch);

    // Only the two wanted types were delivered, verified; redeliver and rotate work.
    e2e::wait_until(Duration::from_secs(20), "both deliveries", || async {
        receiver.received(&env.http).await.iter().filter(|r| r["status"] == 200).count() == 2
    })
    .await;
    let received = receiver.received(&env.http).await;
    let types: Vec<_> = received.iter().map(|r| r["body"]["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["incident.triggered", "incident.resolved"]);
    assert!(received.iter().all(|r| r["verified"] == true));
    let log = json_of(&client(&env, &pipeline.query, &key, &["webhook", "deliveries", webhook, "--output", "json"]));
    let resolved = log["deliveries"][0]["id"].as_str().unwrap();
    let table =
        String::from_utf8(client(&env, &pipeline.query, &key, &["webhook", "deliveries", webhook]).stdout).unwrap();
    assert!(table.contains(resolved) && table.contains("succeeded"), "{table}");
    let again = client(&env, &pipeline.query, &key, &["webhook", "redeliver", webhook, resolved]);
    assert!(again.status.success(), "{}", failure(&again).1);
    e2e::wait_until(Duration::from_secs(20), "the redelivery", || async {
        receiver.received(&env.http).await.iter().filter(|r| r["webhookId"] == resolved).count() == 2
    })
    .await;
    let rotated =
        json_of(&client(&env, &pipeline.query, &key, &["webhook", "rotate-secret", webhook, "--output", "json"]));
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(rotated["secret"].as_str(), Some(secret));
    let missing = client(&env, &pipeline.query, &key, &["webhook", "redeliver", webhook, "msg_missing"]);
    assert_eq!(failure(&missing).0, Some(1));
    assert!(failure(&missing).1.contains("NOT_FOUND"), "{}", failure(&missing).1);
}
