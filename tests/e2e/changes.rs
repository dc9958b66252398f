//! DESIGN §9: every committed incident change reaches the change stream once, in order per
//! incident, with the incident's version; a relay killed at any point loses and duplicates
//! nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use e2e::{TestEnv, action, trigger, wait_until};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

/// Every incident change the stream holds, oldest first (services' status changes left out).
async fn changes(env: &TestEnv) -> Vec<Value> {
    all_changes(env).await.into_iter().filter(|c| !c["incidentId"].is_null()).collect()
}

/// Every change the stream holds, oldest first.
async fn all_changes(env: &TestEnv) -> Vec<Value> {
    let js = jetstream::new(async_nats::connect(&env.nats.url).await.unwrap());
    let stream = js.get_stream(env.nats.changes_stream()).await.unwrap();
    let held = stream.get_info().await.unwrap().state.messages as usize;
    if held == 0 {
        return Vec::new();
    }
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = reader.messages().await.unwrap();
    let mut all = Vec::with_capacity(held);
    while all.len() < held {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap().unwrap().unwrap();
        all.push(serde_json::from_slice(&message.payload).unwrap());
    }
    all
}

/// The changes of each incident, in stream order.
fn by_incident(all: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut by = BTreeMap::<String, Vec<&Value>>::new();
    for change in all {
        by.entry(change["incidentId"].as_str().unwrap().to_owned()).or_default().push(change);
    }
    by
}

/// Each incident's versions are 1, 2, 3, … in stream order, and no change id repeats.
fn assert_complete_and_ordered(all: &[Value]) {
    let ids: HashSet<&str> = all.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "a change was published twice");
    for (incident, list) in by_incident(all) {
        let versions: Vec<i64> = list.iter().map(|c| c["version"].as_i64().unwrap()).collect();
        assert_eq!(versions, (1..=list.len() as i64).collect::<Vec<_>>(), "{incident}: {list:?}");
        for change in &list {
            assert_eq!(change["incident"]["version"], change["version"], "{change}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_the_stream_once_in_order_per_incident_with_its_version() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let query = env.spawn_query_api().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Changes").await;
    let keys: Vec<String> = (0..20).map(|i| format!("disk-{i}")).collect();
    let sends = keys.iter().map(|k| {
        let (env, ingest, key, rk) = (&env, &ingest, &key, &service.routing_key);
        async move {
            for body in [
                trigger(rk, k, "disk full"),
                trigger(rk, k, "disk full"),
                trigger(rk, k, "disk full"),
                action(rk, k, "acknowledge"),
                action(rk, k, "resolve"),
            ] {
                assert_eq!(env.post_event(ingest, key, &body).await.status(), 202);
            }
        }
    });
    futures_util::future::join_all(sends).await;
    // People change an incident too: one opened by hand, then re-prioritised and noted.
    let (status, made) = env
        .send_json(
            Method::POST,
            &format!("{query}/api/incidents"),
            &key,
            &json!({"title": "by hand", "serviceId": service.id}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let manual = made["incident"]["id"].as_str().unwrap().to_owned();
    let patch = json!({"priority": "P2", "note": "on it", "status": "ACKNOWLEDGED"});
    let (status, patched) =
        env.send_json(Method::PATCH, &format!("{query}/api/incidents/{manual}"), &key, &patch).await;
    assert_eq!(status, 200, "{patched}");

    let resolved = |all: &[Value]| all.iter().filter(|c| c["type"] == "resolved").count();
    wait_until(Duration::from_secs(30), "every resolve on the change stream", || async {
        let all = changes(&env).await;
        resolved(&all) == keys.len() && by_incident(&all).get(&manual).is_some_and(|l| l.len() == 4)
    })
    .await;
    let all = changes(&env).await;
    assert_complete_and_ordered(&all);
    let by = by_incident(&all);
    assert_eq!(by.len(), keys.len() + 1);
    for (incident, list) in &by {
        let kinds: Vec<&str> = list.iter().map(|c| c["type"].as_str().unwrap()).collect();
        if *incident == manual {
            assert_eq!(kinds, ["triggered", "acknowledged", "priority_changed", "note_added"], "{list:?}");
            assert_eq!(list[3]["incident"]["priority"], "P2");
            assert!(list[1]["actor"].as_str().unwrap().starts_with("user:"), "{}", list[1]);
            continue;
        }
        // State changes are never coalesced; alert-count changes may be, and the last says 3.
        let states: Vec<&str> = kinds.iter().copied().filter(|k| *k != "alert_added").collect();
        assert_eq!(states, ["triggered", "acknowledged", "resolved"], "{incident}: {kinds:?}");
        let counts: Vec<i64> = list.iter().map(|c| c["incident"]["alertCount"].as_i64().unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]) && counts.last() == Some(&3), "{incident}: {counts:?}");
        assert!(list.iter().all(|c| c["actor"].as_str().unwrap().starts_with("event:")), "{list:?}");
        assert_eq!(list.last().unwrap()["incident"]["status"], "RESOLVED");
    }
    let left: i64 = sqlx::query_scalar("select count(*) from incident_changes").fetch_one(&env.pool).await.unwrap();
    assert_eq!(left, 0, "the outbox is drained once everything is relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_at_any_point_loses_and_duplicates_nothing() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
    let service = env.service_limited("Relay", Some(1_000_000)).await;
    let settings = env.worker_settings();
    let senders = (0..4).map(|s| {
        let (env, ingest, key, rk) = (&env, &ingest, &key, &service.routing_key);
        async move {
            for i in 0..150 {
                let k = format!("k-{s}-{}", i % 10);
                let body = if i % 3 == 2 { action(rk, &k, "resolve") } else { trigger(rk, &k, "flapping") };
                assert_eq!(env.post_event(ingest, key, &body).await.status(), 202);
            }
        }
    });
    let sending = futures_util::future::join_all(senders);
    // Workers (each relays when it holds the lock) are crashed while changes flow: their tasks
    // are aborted mid-publish, mid-delete or mid-batch, and two run at once in between.
    let crashing = async {
        for round in 0..6u64 {
            let first = env.spawn_worker(&settings, env.shutdown.child_token()).await;
            let second = env.spawn_worker(&settings, env.shutdown.child_token()).await;
            tokio::time::sleep(Duration::from_millis(150 + 70 * round)).await;
            drop(first);
            tokio::time::sleep(Duration::from_millis(90)).await;
            drop(second);
        }
    };
    // And for a while the database fails every delete after the relay's publishes.
    let failing_deletes = async {
        sqlx::raw_sql(
            "create function refuse_delete() returns trigger language plpgsql as
               $$ begin raise exception 'the database fails after the publish'; end $$;
             create trigger refuse_delete before delete on incident_changes execute function refuse_delete();",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sqlx::raw_sql("drop trigger refuse_delete on incident_changes").execute(&env.pool).await.unwrap();
    };
    tokio::join!(sending, crashing, failing_deletes);
    let _survivor = env.spawn_worker(&settings, env.shutdown.clone()).await;
    env.wait_for_applied(600, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(30), "the outbox to drain", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from incident_changes").fetch_one(&env.pool).await.unwrap() == 0
    })
    .await;
    let all = changes(&env).await;
    assert_complete_and_ordered(&all);
    // Nothing lost: every incident's last change is its stored version and state.
    let stored: Vec<(String, i64, String)> =
        sqlx::query_as("select id, version, status from incidents").fetch_all(&env.pool).await.unwrap();
    let by = by_incident(&all);
    assert_eq!(by.len(), stored.len());
    for (id, version, status) in stored {
        let last = by[&id].last().unwrap();
        assert_eq!(
            (last["version"].as_i64(), last["incident"]["status"].as_str()),
            (Some(version), Some(status.as_str()))
        );
    }
}

/// A service's derived status goes out as a change when it changes, in order, with the
/// service's own version: CRITICAL with an open HIGH incident, DEGRADED with another open one,
/// OPERATIONAL with none. Alerts absorbed change nothing. `GET /api/stream?topics=services`
/// serves exactly these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_status_changes_reach_the_stream_in_order() {
    let env = TestEnv::new().await;
    let ingest = env.spawn_ingest().await;
    let query = env.spawn_query_api().await;
    let _worker = env.spawn_worker(&env.worker_settings(), env.shutdown.clone()).await;
    let key = env.admin_key().await;
    let service = env.service("Checkout").await;
    let rk = &service.routing_key;
    let warning = |k: &str| {
        let mut body = trigger(rk, k, "slow");
        body["payload"]["severity"] = json!("warning");
        body
    };
    // Each step waits for the one before to be applied, so each is its own transaction.
    for (body, applied) in [
        (trigger(rk, "db", "down"), 1),
        (trigger(rk, "db", "down"), 2),
        (warning("cache"), 3),
        (action(rk, "db", "resolve"), 4),
        (action(rk, "cache", "resolve"), 5),
    ] {
        assert_eq!(env.post_event(&ingest, &key, &body).await.status(), 202);
        env.wait_for_applied(applied, Duration::from_secs(20)).await;
    }
    wait_until(Duration::from_secs(20), "the service's changes", || async {
        all_changes(&env).await.iter().filter(|c| c["incidentId"].is_null()).count() >= 3
    })
    .await;
    let of_service: Vec<Value> = all_changes(&env).await.into_iter().filter(|c| c["incidentId"].is_null()).collect();
    let seen: Vec<(&str, &str, i64)> = of_service
        .iter()
        .map(|c| {
            (c["type"].as_str().unwrap(), c["service"]["status"].as_str().unwrap(), c["version"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("service.status_changed", "CRITICAL", 1),
            ("service.status_changed", "DEGRADED", 2),
            ("service.status_changed", "OPERATIONAL", 3)
        ]
    );
    assert!(of_service.iter().all(|c| c["serviceId"] == service.id.as_str() && c["service"]["name"] == "Checkout"));
    assert_eq!(of_service[1]["service"]["previousStatus"], "CRITICAL");

    // The stream's services topic serves them, from the start.
    let response = env
        .http
        .get(format!("{query}/api/stream?topics=services"))
        .bearer_auth(&key)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = String::new();
    let mut response = response;
    while body.matches("event: service.status_changed").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.unwrap().unwrap().unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!body.contains("event: triggered"), "only the services topic: {body}");
}

/// A worker standing by for a one-at-a-time role (the relay, the webhook fan-out) keeps the
/// connection it tries the role's lock on: over a few seconds of standing by, two workers open
/// no new PostgreSQL sessions (one per attempt would be two a second per role).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_standing_by_for_a_role_opens_no_session_per_attempt() {
    let env = TestEnv::new().await;
    let settings = env.worker_settings();
    let _first = env.spawn_worker(&settings, env.shutdown.child_token()).await;
    let _second = env.spawn_worker(&settings, env.shutdown.child_token()).await;
    env.wait_for_even_ownership(2, "two workers to share the partitions").await;
    let sessions = || async {
        sqlx::query_scalar::<_, i64>("select sessions from pg_stat_database where datname = current_database()")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let before = sessions().await;
    // A window to observe: the standby worker retries each role's lock three or four times in it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let opened = sessions().await - before;
    assert!(opened <= 2, "{opened} new sessions in 4 s of standing by");
}
