//! A property test of ingest's boundary (DESIGN §3, §1.6): random JSON, built to break things
//! (control characters, NUL, escaped lone surrogates, huge numbers, deep nesting, very long
//! strings, wrong types), posted to each ingest endpoint. Every answer must be `202` or a 4xx with
//! a JSON body, and every event answered `202` must be applied: none may fail in PostgreSQL or the
//! worker and end in the dead-letter stream. The seed is printed; `BAD_INPUT_SEED` replays a run.

use std::time::Duration;

use e2e::{TestEnv, wait_until};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Cases per endpoint (`BAD_INPUT_CASES` for more).
fn cases() -> usize {
    std::env::var("BAD_INPUT_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

/// A JSON text meant to hurt, for one field.
fn junk(rng: &mut StdRng) -> String {
    let chars = ['\0', '\u{1}', '\u{1f}', '\u{7f}', 'a', 'é', '😀', '\u{202e}', '"', '\\', '\n'];
    match rng.random_range(0..9) {
        0 => {
            let text: String = (0..rng.random_range(0..40)).map(|_| *chars.choose(rng).unwrap()).collect();
            serde_json::to_string(&text).unwrap()
        }
        1 => ["\"ab\\ud800cd\"", "\"\\udc00\"", "\"\\ud83d\"", "\"ok\\u0000\""].choose(rng).unwrap().to_string(),
        2 => ["1e400", "-1e400", "123456789012345678901234567890", "1.7976931348623157e309", "-0", "1e-400"]
            .choose(rng)
            .unwrap()
            .to_string(),
        3 => {
            let depth = *[10, 100, 120, 124, 125, 126, 127, 128, 129, 1000].choose(rng).unwrap();
            if rng.random_bool(0.5) {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            } else {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
            }
        }
        4 => {
            let len = *[255, 256, 1024, 1025, 70_000, 600_000].choose(rng).unwrap();
            serde_json::to_string(&"x".repeat(len)).unwrap()
        }
        5 => ["true", "null", "42", "[]", "{}", "\"\"", "\" \""].choose(rng).unwrap().to_string(),
        6 => format!("{{\"k\\u0000\": 1, \"nested\": {{\"v\": {}}}}}", serde_json::to_string("x\u{0}y").unwrap()),
        7 => ["\"critical\"", "\"CRITICAL\"", "\"page\"", "\"trigger\"", "\"resolve\"", "\"acknowledge\""]
            .choose(rng)
            .unwrap()
            .to_string(),
        _ => {
            ["\"2026-11-27T10:00:00Z\"", "\"yesterday\"", "\"+275760-09-13T00:00:00Z\"", "\"-271821-04-20T00:00:00Z\""]
                .choose(rng)
                .unwrap()
                .to_string()
        }
    }
}

/// Replaces the value at `path` (dotted; `*` adds a new field) in `body` by `junk`, as raw JSON text.
fn mutate(mut body: Value, path: &str, junk: &str) -> String {
    const HOLE: &str = "__opssentinal_junk__";
    let mut at = &mut body;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        at = match part.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*part],
        };
    }
    match parts[parts.len() - 1] {
        "*" => at["extra"] = json!(HOLE),
        last => match last.parse::<usize>() {
            Ok(i) => at[i] = json!(HOLE),
            Err(_) => at[last] = json!(HOLE),
        },
    }
    serde_json::to_string(&body).unwrap().replace(&format!("\"{HOLE}\""), junk)
}

struct Endpoint {
    url: String,
    bearer: bool,
    template: Value,
    fields: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_hostile_json_gets_202_or_a_json_4xx_and_every_202_is_applied() {
    let seed = std::env::var("BAD_INPUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("BAD_INPUT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
    let service = env.service_limited("Hostile", Some(1_000_000)).await;
    let rk = service.routing_key.clone();
    let payload = json!({"summary": "s", "source": "h", "severity": "info", "custom_details": {"a": 1}});
    let endpoints = [
        Endpoint {
            url: format!("{ingest}/api/events"),
            bearer: true,
            template: json!({"routing_key": rk, "event_action": "trigger", "dedup_key": "k", "payload": payload}),
            fields: &[
                "routing_key",
                "event_action",
                "dedup_key",
                "payload",
                "payload.summary",
                "payload.source",
                "payload.severity",
                "payload.timestamp",
                "payload.component",
                "payload.custom_details",
                "payload.custom_details.a",
                "*",
            ],
        },
        Endpoint {
            url: format!("{ingest}/v2/enqueue"),
            bearer: false,
            template: json!({"routing_key": rk, "event_action": "trigger", "dedup_key": "k", "payload": payload,
                             "client": "c", "links": [{"href": "http://x"}]}),
            fields: &[
                "event_action",
                "dedup_key",
                "payload",
                "payload.summary",
                "payload.source",
                "payload.severity",
                "payload.timestamp",
                "payload.class",
                "payload.custom_details",
                "payload.custom_details.a",
                "client",
                "links",
                "*",
            ],
        },
        Endpoint {
            url: format!("{ingest}/api/integrations/alertmanager?routing_key={rk}"),
            bearer: false,
            template: json!({"version": "4", "status": "firing", "receiver": "r", "externalURL": "http://am",
                "alerts": [{"status": "firing", "fingerprint": "f", "startsAt": "2026-11-27T10:00:00Z",
                            "labels": {"alertname": "A", "severity": "page"}, "annotations": {"summary": "s"}}]}),
            fields: &[
                "version",
                "status",
                "receiver",
                "externalURL",
                "alerts",
                "alerts.0",
                "alerts.0.status",
                "alerts.0.fingerprint",
                "alerts.0.startsAt",
                "alerts.0.labels",
                "alerts.0.labels.alertname",
                "alerts.0.labels.severity",
                "alerts.0.annotations",
                "alerts.0.annotations.summary",
                "*",
            ],
        },
    ];

    // Distinct events accepted: the same Alertmanager alert twice (a fingerprint made equal by the
    // junk) is one event, by design. PagerDuty's answer has no id; its events are all distinct.
    let mut accepted_ids = std::collections::HashSet::new();
    let mut enqueued = 0usize;
    let mut statuses = std::collections::BTreeMap::new();
    for endpoint in &endpoints {
        for case in 0..cases() {
            let field = *endpoint.fields.choose(&mut rng).unwrap();
            let bad = junk(&mut rng);
            let mut body =
                if rng.random_bool(0.05) { bad.clone() } else { mutate(endpoint.template.clone(), field, &bad) };
            // Unique keys, so each accepted trigger is its own event.
            body = body.replace("\"k\"", &format!("\"k{case}-{}\"", rng.random::<u32>()));
            body = body.replace("\"f\"", &format!("\"f{case}-{}\"", rng.random::<u32>()));
            let mut request =
                env.http.post(&endpoint.url).header("content-type", "application/json").body(body.clone());
            if endpoint.bearer {
                request = request.bearer_auth(&key);
            }
            let response = request.send().await.expect("ingest answers");
            let status = response.status().as_u16();
            let is_json =
                response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let text = response.text().await.unwrap_or_default();
            let shown: String = body.chars().take(300).collect();
            let what = format!("seed {seed}, {} field {field}: {shown}", endpoint.url);
            let answer: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status} not JSON ({text:?}); {what}"));
            assert!(is_json, "{status} without a JSON content type; {what}");
            assert!(status == 202 || (400..500).contains(&status), "{status} {answer}; {what}");
            if status != 202 && endpoint.bearer {
                assert!(answer["error"]["code"].is_string(), "not our error envelope: {answer}; {what}");
            }
            if status == 202 {
                match (answer["event_id"].as_str(), answer["events"].as_array()) {
                    (Some(id), _) => {
                        accepted_ids.insert(id.to_owned());
                    }
                    (None, Some(events)) => {
                        accepted_ids.extend(events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)));
                    }
                    (None, None) => enqueued += 1,
                }
            }
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    let expected = accepted_ids.len() + enqueued;
    println!("answers: {statuses:?}; events accepted {expected}");
    assert!(expected > 50, "too few accepted cases to say anything about applying them");
    // Every accepted event ends applied or (a defect) dead-lettered; wait for both, then judge.
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let dead_letters = || async {
        match js.get_stream(env.nats.dlq_stream()).await {
            Ok(mut dlq) => dlq.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        }
    };
    wait_until(Duration::from_secs(120), "every accepted event to be applied or dead-lettered", || async {
        env.applied_events().await + i64::try_from(dead_letters().await).unwrap() >= expected as i64
    })
    .await;
    let dead = dead_letters().await;
    let mut reasons = Vec::new();
    if dead > 0 {
        let dlq = js.get_stream(env.nats.dlq_stream()).await.unwrap();
        for seq in 1..=dead.min(5) {
            if let Ok(letter) = dlq.get_raw_message(seq).await {
                let reason = letter.headers.get("OpsSentinal-Reason").map(|v| v.to_string());
                let payload: String = String::from_utf8_lossy(&letter.payload).chars().take(300).collect();
                reasons.push(format!("{reason:?}: {payload}"));
            }
        }
    }
    assert_eq!(dead, 0, "accepted events were dead-lettered (seed {seed}): {reasons:#?}");
    env.wait_until_drained(Duration::from_secs(60)).await;
    assert_eq!(env.applied_events().await, expected as i64, "seed {seed}");
}
