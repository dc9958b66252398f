//! The OpenAPI document and the routers come from the same registrations; this checks the
//! document against what is actually routed.

use std::collections::BTreeSet;

use e2e::TestEnv;
use reqwest::Method;

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routed_operations() {
    let mut env = TestEnv::new().await;
    // Every operation is tried without a key: more failed authentications than the default allows.
    env.limits.auth_failures_per_minute = 1000;
    let ingest = env.spawn_ingest().await;
    let query = env.spawn_query_api().await;
    let document: serde_json::Value =
        env.http.get(format!("{query}/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);

    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/api/events"),
        ("POST", "/v2/enqueue"),
        ("POST", "/api/integrations/alertmanager"),
        ("POST", "/api/integrations/alertmanager/{routing_key}"),
        ("GET", "/api/incidents"),
        ("POST", "/api/incidents"),
        ("GET", "/api/incidents/{id}"),
        ("PATCH", "/api/incidents/{id}"),
        ("GET", "/api/services"),
        ("POST", "/api/services"),
        ("GET", "/api/services/{id}"),
        ("GET", "/api/schedules"),
        ("POST", "/api/schedules"),
        ("GET", "/api/schedules/{id}"),
        ("POST", "/api/schedules/{id}/layers"),
        ("POST", "/api/schedules/{id}/overrides"),
        ("GET", "/api/schedules/{id}/on-call"),
        ("GET", "/api/schedules/{id}/shifts"),
        ("GET", "/api/stream"),
        ("POST", "/api/stream/tokens"),
        ("GET", "/api/webhooks"),
        ("POST", "/api/webhooks"),
        ("GET", "/api/webhooks/{id}"),
        ("PATCH", "/api/webhooks/{id}"),
        ("DELETE", "/api/webhooks/{id}"),
        ("POST", "/api/webhooks/{id}/rotate-secret"),
        ("POST", "/api/webhooks/{id}/ping"),
        ("GET", "/api/webhooks/{id}/deliveries"),
        ("POST", "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver"),
        ("PATCH", "/api/services/{id}"),
        ("POST", "/api/incidents/{id}/escalate"),
        ("GET", "/api/escalation-policies"),
        ("POST", "/api/escalation-policies"),
        ("GET", "/api/escalation-policies/{id}"),
        ("PUT", "/api/escalation-policies/{id}"),
        ("DELETE", "/api/escalation-policies/{id}"),
        ("GET", "/api/users"),
        ("GET", "/api/users/{id}/contact-methods"),
        ("POST", "/api/users/{id}/contact-methods"),
        ("DELETE", "/api/users/{id}/contact-methods/{cid}"),
        ("GET", "/api/maintenance-windows"),
        ("POST", "/api/maintenance-windows"),
        ("GET", "/api/maintenance-windows/{id}"),
        ("DELETE", "/api/maintenance-windows/{id}"),
        ("GET", "/api/heartbeats"),
        ("POST", "/api/heartbeats"),
        ("GET", "/api/heartbeats/{id}"),
        ("DELETE", "/api/heartbeats/{id}"),
        ("GET", "/api/heartbeats/ping/{token}"),
        ("POST", "/api/heartbeats/ping/{token}"),
        ("POST", "/api/session"),
        ("GET", "/api/session"),
        ("DELETE", "/api/session"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);

    // Every documented operation is routed: without a key the authentication layer answers 401
    // (integration endpoints refuse the bodiless request itself), while a path nobody routes gets
    // the 404 fallback.
    for (method, path) in &documented {
        let ingested = path == "/api/events"
            || path.starts_with("/v2/")
            || path.starts_with("/api/integrations/")
            || path.starts_with("/api/heartbeats/ping/");
        let base = if ingested { &ingest } else { &query };
        let url = format!(
            "{base}{}",
            ["{id}", "{routing_key}", "{delivery_id}", "{cid}", "{token}"]
                .iter()
                .fold(path.clone(), |p, name| p.replace(name, "x"))
        );
        let response = env.http.request(Method::from_bytes(method.as_bytes()).unwrap(), &url).send().await.unwrap();
        // Integration endpoints authenticate by routing key: a bodiless request is refused as such.
        // A heartbeat ping authenticates by its token (an unknown one is a 404); signing in needs
        // no key, and refuses the bodiless request itself.
        let expected = match path.as_str() {
            p if p.starts_with("/v2/") => 400,
            p if p.starts_with("/api/integrations/") => 415,
            p if p.starts_with("/api/heartbeats/ping/") => 404,
            "/api/session" if method == "POST" => 415,
            _ => 401,
        };
        assert_eq!(response.status(), expected, "{method} {path}");
    }
    let unrouted = env.http.get(format!("{query}/api/nothing")).send().await.unwrap();
    assert_eq!(unrouted.status(), 404);
}

/// `docs/openapi.json` is what query-api serves. It must be exactly the document the route
/// registrations generate; `OPENAPI_UPDATE=1` rewrites it after an API change.
#[test]
fn the_committed_document_is_the_generated_one() {
    let mut api = query_api::openapi();
    api.merge(ingest::openapi());
    let generated = api.to_pretty_json().expect("the document serialises") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("OPENAPI_UPDATE").is_some() {
        // Written for the next build to embed; this run's binaries still hold the old file.
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    assert!(
        query_api::OPENAPI_JSON == generated,
        "docs/openapi.json is stale: run `OPENAPI_UPDATE=1 cargo nextest run -p e2e openapi` and commit it"
    );
}

/// Every declared field type is its own component, so two with the same name would silently
/// share one schema: the document keeps each body's own limits and each source's own shapes.
#[test]
fn each_field_type_keeps_its_own_schema() {
    let document: serde_json::Value = serde_json::from_str(query_api::OPENAPI_JSON).unwrap();
    let schemas = &document["components"]["schemas"];
    let reference = |schema: &str, field: &str| {
        let r = &schemas[schema]["properties"][field];
        let r = r["$ref"].as_str().or_else(|| r["oneOf"].as_array()?.iter().find_map(|s| s["$ref"].as_str()));
        r.unwrap_or_else(|| panic!("{schema}.{field} refers to a component")).rsplit('/').next().unwrap().to_owned()
    };
    let max = |component: &str| schemas[component]["maxLength"].as_u64();
    let service = query_api::services::body::ServiceDescription::MAX_CHARS as u64;
    let incident = query_api::incidents::body::IncidentDescription::MAX_CHARS as u64;
    assert_ne!(service, incident);
    assert_eq!(max(&reference("NewService", "description")), Some(service));
    assert_eq!(max(&reference("CreateIncident", "description")), Some(incident));
    let alert = schemas["Notification"]["properties"]["alerts"]["items"]["$ref"].as_str().unwrap();
    assert!(schemas[alert.rsplit('/').next().unwrap()]["properties"].get("fingerprint").is_some(), "{alert}");
}
