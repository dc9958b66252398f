//! DESIGN §7 over HTTP: schedules, layers, overrides, on-call and shifts.

use common::auth::Role;
use e2e::TestEnv;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn who_is_on_call_follows_layers_and_overrides_in_the_schedule_zone() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let mut users = Vec::new();
    for name in ["Ann", "Bob", "Cid"] {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        users.push(env.user(name, &email, Role::Responder).await.id);
    }
    let url = format!("{base}/api/schedules");
    let body = json!({
        "name": "Primary", "timeZone": "Europe/Berlin",
        "layers": [{"name": "Weekdays", "start": "2026-03-23T08:00:00Z", "rotation": "daily", "handoffTime": "09:00", "users": [users[0], users[1]]}]
    });
    let (status, created) = env.send_json(Method::POST, &url, &key, &body).await;
    assert_eq!(status, 201, "{created}");
    let schedule = &created["schedule"];
    assert_eq!(schedule["layers"][0]["users"][1]["name"], "Bob");
    let id = schedule["id"].as_str().unwrap().to_owned();

    // Berlin moves to summer time on 2026-03-29: the 09:00 hand-off goes from 08:00Z to 07:00Z.
    let on_call = |at: &str| {
        let (env, key, url) = (&env, key.clone(), format!("{url}/{id}/on-call?at={at}"));
        async move { env.get_json(&url, &key).await }
    };
    let (_, before) = on_call("2026-03-28T12:00:00Z").await;
    assert_eq!(before["onCall"]["start"], "2026-03-28T08:00:00Z");
    assert_eq!(before["onCall"]["end"], "2026-03-29T07:00:00Z");
    let (_, after) = on_call("2026-03-29T07:30:00Z").await;
    assert_eq!(after["onCall"]["start"], "2026-03-29T07:00:00Z");
    assert_ne!(before["onCall"]["user"]["id"], after["onCall"]["user"]["id"]);
    assert_eq!(after["onCall"]["override"], false);

    let (status, override_created) = env
        .send_json(
            Method::POST,
            &format!("{url}/{id}/overrides"),
            &key,
            &json!({"userId": users[2], "start": "2026-03-29T10:00:00Z", "end": "2026-03-29T12:00:00Z"}),
        )
        .await;
    assert_eq!(status, 201, "{override_created}");
    let (_, covered) = on_call("2026-03-29T11:00:00Z").await;
    assert_eq!(
        (covered["onCall"]["user"]["name"].as_str(), covered["onCall"]["override"].as_bool()),
        (Some("Cid"), Some(true))
    );

    let (status, shifts) =
        env.get_json(&format!("{url}/{id}/shifts?from=2026-03-29T07:00:00Z&to=2026-03-30T07:00:00Z"), &key).await;
    assert_eq!(status, 200, "{shifts}");
    let spans: Vec<(String, String, String)> = shifts["shifts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["start"].as_str().unwrap().into(),
                s["end"].as_str().unwrap().into(),
                s["user"]["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    let daily = after["onCall"]["user"]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        spans,
        [
            ("2026-03-29T07:00:00Z".into(), "2026-03-29T10:00:00Z".into(), daily.clone()),
            ("2026-03-29T10:00:00Z".into(), "2026-03-29T12:00:00Z".into(), "Cid".into()),
            ("2026-03-29T12:00:00Z".into(), "2026-03-30T07:00:00Z".into(), daily),
        ]
    );

    // A window near the largest timestamp is a 400 naming the parameter, not a 500.
    let (status, error) = env.get_json(&format!("{url}/{id}/shifts?from=9999-12-30T00:00:00Z"), &key).await;
    assert_eq!((status, error["error"]["details"]["field"].as_str()), (400, Some("from")), "{error}");

    // A higher layer added later wins where it has someone.
    let (status, layer) = env
        .send_json(Method::POST, &format!("{url}/{id}/layers"), &key, &json!({"start": "2026-04-01T00:00:00Z", "end": "2026-04-02T00:00:00Z", "rotation": "hours", "rotationHours": 12, "handoffTime": "00:00", "users": [users[2]]}))
        .await;
    assert_eq!((status, layer["layer"]["position"].as_i64()), (201, Some(1)));
    assert_eq!(on_call("2026-04-01T12:00:00Z").await.1["onCall"]["user"]["name"], "Cid");

    let (status, detail) = env.get_json(&format!("{url}/{id}"), &key).await;
    assert_eq!(status, 200);
    let detail = &detail["schedule"];
    assert_eq!((detail["layers"].as_array().unwrap().len(), detail["overrides"].as_array().unwrap().len()), (2, 1));
    assert_eq!(detail["overrides"][0]["user"]["name"], "Cid");
    assert_eq!(env.get_json(&format!("{url}/sch_missing"), &key).await.0, 404);
    let (_, list) = env.get_json(&url, &key).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["schedules"][0]["timeZone"], "Europe/Berlin");
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let url = format!("{base}/api/schedules");
    let layer = |extra: serde_json::Value| {
        let mut l = json!({"start": "2026-01-01T00:00:00Z", "rotation": "daily", "users": ["usr_missing"]});
        l.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"name": "S", "timeZone": "UTC", "layers": [l]})
    };
    for (body, field) in [
        (json!({"timeZone": "UTC"}), "name"),
        (json!({"name": "S", "timeZone": "Mars/Olympus"}), "timeZone"),
        (layer(json!({"rotation": "monthly"})), "layers[0].rotation"),
        (layer(json!({"rotation": "hours"})), "layers[0].rotationHours"),
        (layer(json!({"handoffTime": "25:99"})), "layers[0].handoffTime"),
        (layer(json!({"users": []})), "layers[0].users"),
        (layer(json!({})), "layers[0].users[0]"),
    ] {
        let (status, error) = env.send_json(Method::POST, &url, &key, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error"]["details"]["field"], field, "{error}");
    }
    let (status, _) = env.get_json(&format!("{url}/sch_missing/on-call"), &key).await;
    assert_eq!(status, 404);
    let reader = env.api_key(Role::User, None, None).await;
    let (status, error) = env.send_json(Method::POST, &url, &reader, &json!({"name": "S", "timeZone": "UTC"})).await;
    assert_eq!(status, 403);
    assert!(error["error"]["message"].as_str().unwrap().contains("schedules:write"));
}

#[tokio::test]
async fn user_ids_with_control_characters_or_surrogates_are_refused_naming_the_entry() {
    let env = TestEnv::new().await;
    let base = env.spawn_query_api().await;
    let key = env.admin_key().await;
    let (status, created) = env
        .send_json(Method::POST, &format!("{base}/api/schedules"), &key, &json!({"name": "S", "timeZone": "UTC"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let url = format!("{base}/api/schedules/{}/layers", created["schedule"]["id"].as_str().unwrap());
    // Raw JSON text, as a fuzzer sends it: escaped control characters, a surrogate pair, a lone surrogate.
    for (users, field) in [
        (r#"["usr_a\u0000b"]"#, "users[0]"),
        (r#"["\u0001\u001f\u007f"]"#, "users[0]"),
        (r#"["\ud83d\ude00"]"#, "users[0]"),
        (r#"["\ud800"]"#, "body"),
    ] {
        let body = format!(r#"{{"start": "2026-01-01T00:00:00Z", "rotation": "daily", "users": {users}}}"#);
        let response = env
            .http
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!((status, error["error"]["details"]["field"].as_str()), (400, Some(field)), "{users}: {error}");
    }
    let (_, schedule) =
        env.get_json(&format!("{base}/api/schedules/{}", created["schedule"]["id"].as_str().unwrap()), &key).await;
    assert_eq!(schedule["schedule"]["layers"], json!([]), "nothing was added: {schedule}");
}
