//! DESIGN §13: the web console, signed into and used in a real browser (Debian's Chromium through
//! Playwright, `tests/support/console_check.py`), and its sessions over plain HTTP.

use std::path::PathBuf;
use std::time::Duration;

use common::auth::Role;
use e2e::TestEnv;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

/// Where the browser test leaves its screenshots.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// Signs in over HTTP; returns the answer's status, its `Set-Cookie` and the session token.
async fn sign_in(
    env: &TestEnv,
    base: &str,
    email: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request = env.http.post(format!("{base}/api/session")).json(&json!({"email": email, "password": password}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cookie = response.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let token =
        cookie.split(';').next().and_then(|pair| pair.split_once('=')).map(|(_, v)| v.to_owned()).unwrap_or_default();
    (status, cookie, token)
}

async fn with_session(env: &TestEnv, method: Method, url: &str, token: &str, csrf: bool, body: Option<Value>) -> u16 {
    let mut request = env.http.request(method, url).header("cookie", format!("opssentinal_session={token}"));
    if csrf {
        request = request.header("x-opssentinal-csrf", "1");
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Sign in, see an incident appear live after an event is posted to ingest, acknowledge it in the
/// page and see the API agree, sign out; a responder cannot make a service; screenshots of every
/// page. The browser part is `console_check.py`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_incidents_live_acknowledges_and_signs_out_in_a_real_browser() {
    let env = TestEnv::new().await;
    let pipeline = env.spawn_pipeline().await;
    let key = env.admin_key().await;
    let admin = env.user("Ann Admin", "ann@example.com", Role::Admin).await;
    env.user("Rex Responder", "rex@example.com", Role::Responder).await;
    let service = env.service("Checkout").await;
    let schedule = json!({"name": "Primary", "timeZone": "Europe/Berlin",
        "layers": [{"start": "2026-01-01T00:00:00Z", "rotation": "weekly", "handoffTime": "09:00", "users": [admin.id]}]});
    let (status, _) = env.send_json(Method::POST, &format!("{}/api/schedules", pipeline.query), &key, &schedule).await;
    assert_eq!(status, 201);
    let shots = screenshots();
    std::fs::create_dir_all(&shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/console_check.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .env("CONSOLE_URL", &pipeline.query)
        .env("INGEST_URL", &pipeline.ingest)
        .env("API_KEY", &key)
        .env("ROUTING_KEY", &service.routing_key)
        .env("ADMIN_EMAIL", "ann@example.com")
        .env("RESPONDER_EMAIL", "rex@example.com")
        .env("PASSWORD", PASSWORD)
        .env("SCREENSHOTS", &shots)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the browser test ends").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed (is playwright installed? scripts/test.sh installs it):\n{stderr}"
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("the browser test's result");
    let appeared = result["appearSeconds"].as_f64().unwrap();
    assert!(appeared < 2.0, "the incident appeared {appeared} s after the event was accepted");
    for page in ["sign-in", "incidents", "incident", "services", "on-call", "incidents-phone"] {
        let file = shots.join(format!("{page}.png"));
        assert!(std::fs::metadata(&file).is_ok_and(|m| m.len() > 1000), "no screenshot {}", file.display());
    }
    // What the page did, as the API has it.
    let id = result["incidentId"].as_str().unwrap();
    let (status, body) = env.get_json(&format!("{}/api/incidents/{id}", pipeline.query), &key).await;
    assert_eq!(status, 200);
    let incident = &body["incident"];
    assert_eq!((incident["status"].as_str(), incident["urgency"].as_str()), (Some("ACKNOWLEDGED"), Some("LOW")));
    let notes: Vec<&Value> = incident["timeline"].as_array().unwrap().iter().filter(|e| e["type"] == "note").collect();
    assert_eq!(notes.len(), 1, "{incident}");
    assert_eq!(
        (notes[0]["message"].as_str(), notes[0]["actor"].as_str()),
        (Some("rolled back the deploy"), Some(admin.id.as_str()))
    );
}

/// Sessions over HTTP: the cookie's flags (Secure behind TLS), CSRF refusals, a role's caps,
/// failed sign-ins limited like bad API keys, sign-out and revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_http_only_strict_capped_by_role_limited_and_revocable() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    env.user("Rex Responder", "rex@example.com", Role::Responder).await;
    let csrf = [("x-opssentinal-csrf", "1")];

    let (status, cookie, token) = sign_in(&env, &base, "rex@example.com", PASSWORD, &csrf).await;
    assert_eq!(status, 200, "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"),
        "{cookie}"
    );
    let (_, behind_tls, _) =
        sign_in(&env, &base, "rex@example.com", PASSWORD, &[csrf[0], ("x-forwarded-proto", "https")]).await;
    assert!(behind_tls.contains("; Secure"), "{behind_tls}");
    let (status, _, _) = sign_in(&env, &base, "rex@example.com", PASSWORD, &[]).await;
    assert_eq!(status, 403, "a sign-in without the CSRF header");

    // The session is the responder: reads and incident writes, no service writes; writes need the header.
    assert_eq!(with_session(&env, Method::GET, &format!("{base}/api/incidents"), &token, false, None).await, 200);
    let new_service = json!({"name": "Rogue"});
    assert_eq!(
        with_session(&env, Method::POST, &format!("{base}/api/services"), &token, true, Some(new_service.clone()))
            .await,
        403
    );
    let service = env.service("Checkout").await;
    let incident = json!({"title": "By hand", "serviceId": service.id});
    let url = format!("{base}/api/incidents");
    assert_eq!(
        with_session(&env, Method::POST, &url, &token, false, Some(incident.clone())).await,
        403,
        "no CSRF header"
    );
    assert_eq!(with_session(&env, Method::POST, &url, &token, true, Some(incident)).await, 201);

    // Sign-out ends a session and clears its cookie.
    let (_, _, other) = sign_in(&env, &base, "rex@example.com", PASSWORD, &csrf).await;
    let response = env
        .http
        .delete(format!("{base}/api/session"))
        .header("cookie", format!("opssentinal_session={other}"))
        .header("x-opssentinal-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(with_session(&env, Method::GET, &format!("{base}/api/session"), &other, false, None).await, 401);

    // `opssentinal user sessions list` shows the two still open; `revoke` ends both: the next
    // request is a 401.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(e2e::service_binary("opssentinal"))
            .args(args)
            .args(["--output", "json"])
            .env("DATABASE_URL", &env.database.url)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let listed = cli(&["user", "sessions", "list", "--email", "rex@example.com"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let revoked = cli(&["user", "sessions", "revoke", "--email", "rex@example.com"]);
    assert_eq!(revoked["revoked"], 2, "{revoked}");
    assert_eq!(with_session(&env, Method::GET, &format!("{base}/api/incidents"), &token, false, None).await, 401);

    // Wrong passwords (and unknown e-mails) are 401s, then 429s, per client address; once over
    // the limit, the right password is refused too.
    let mut statuses = Vec::new();
    for i in 0..40 {
        let email = if i % 2 == 0 { "rex@example.com" } else { "nobody@example.com" };
        statuses.push(sign_in(&env, &base, email, "wrong password", &csrf).await.0);
    }
    assert_eq!(statuses[0], 401);
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(sign_in(&env, &base, "rex@example.com", PASSWORD, &csrf).await.0, 429);
}
