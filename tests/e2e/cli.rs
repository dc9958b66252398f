//! The `opssentinal` binary itself: administration commands and the one-process server.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::servers::free_port;
use e2e::{TestEnv, trigger, wait_until};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The CLI binary next to this test binary (`scripts/test.sh` builds it first).
fn opssentinal() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(|deps| deps.parent()).unwrap().join("opssentinal");
    assert!(binary.exists(), "{} is missing: run `cargo build --workspace --bins` first", binary.display());
    binary
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

    let listed = json_of(&run(&env, &["user", "list", "--output", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let unreachable = Command::new(opssentinal())
        .args(["user", "list"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the database"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_everything_on_one_port_and_prints_an_admin_key_once() {
    let env = TestEnv::new().await;
    let port = free_port();
    let mut serve = tokio::process::Command::new(opssentinal())
        .arg("serve")
        .env("DATABASE_URL", &env.database.url)
        .env("REDIS_URL", &env.redis.url)
        .env("REDIS_KEY_PREFIX", &env.redis.key_prefix)
        .env("NATS_URL", &env.nats.url)
        .env("NATS_STREAM", &env.nats.stream)
        .env("NATS_SUBJECT_PREFIX", &env.nats.subject_prefix)
        .env("OPSSENTINAL_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let key = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(key) = line.trim().strip_prefix("admin API key:") {
                return key.trim().to_owned();
            }
        }
        panic!("serve exited without printing an admin key");
    })
    .await
    .expect("the admin key is printed on first start");
    let service = json_of(&run(&env, &["service", "create", "--name", "API", "--output", "json"]));
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "serve to be ready", || async {
        env.http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    let body = trigger(service["routingKey"].as_str().unwrap(), "disk", "Disk full");
    assert_eq!(env.post_event(&base, &key, &body).await.status(), 202);
    wait_until(Duration::from_secs(30), "the incident on the same port", || async {
        env.get_json(&format!("{base}/api/incidents"), &key).await.1["total"] == 1
    })
    .await;
    let (status, document) = env.get_json(&format!("{base}/api/openapi.json"), "").await;
    assert_eq!((status, document["openapi"].is_string()), (200, true));
    serve.kill().await.unwrap();
    env.cleanup().await;
}
