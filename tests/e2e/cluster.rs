//! A real three-node JetStream cluster (issue 11): services given all three nodes as seeds in
//! `NATS_URL`, streams with 3 replicas, each node killed (SIGKILL) and restarted in turn while a
//! well-behaved client keeps sending. No event answered `202` is lost or applied twice, and the
//! services are never restarted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use e2e::load::{Client, Sent, load};
use e2e::servers::{PrivateNatsCluster, ServiceProcess};
use e2e::{PG_ADMIN_URL, REDIS_URL, TestEnv, wait_until};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_loses_nothing_while_each_node_is_killed_in_turn() {
    let mut cluster = PrivateNatsCluster::start();
    let mut env = TestEnv::on(PG_ADMIN_URL, REDIS_URL, &cluster.url(0)).await;
    env.nats.url = cluster.seeds();
    env.nats.replicas = 3;
    let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
    let routing_key = env.service("Clustered").await.routing_key;
    let mut vars = env.service_env();
    vars.push(("NATS_STREAM_REPLICAS", "3".into()));
    let ingest = ServiceProcess::start("opssentinal-ingest", &vars);
    let workers: Vec<ServiceProcess> = (0..2).map(|_| ServiceProcess::start("opssentinal-worker", &vars)).collect();
    for service in std::iter::once(&ingest).chain(&workers) {
        service.wait_ready(&env.http, Duration::from_secs(90)).await;
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let client = Client { http, url: format!("{}/api/events", ingest.url()), key, routing_key };
    let sent = Arc::new(Sent::default());
    let stop = CancellationToken::new();
    let senders = load(&client, 0, &sent, &stop);

    for node in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.kill(node);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.restart(node);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = sent.accepted.lock().await.clone();
    let applied = || async {
        sqlx::query_as::<_, (String, i64)>("select dedup_key, count(*) from events group by dedup_key")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect::<HashMap<String, i64>>()
    };
    wait_until(Duration::from_secs(120), "every accepted event to be applied", || async {
        let applied = applied().await;
        accepted.iter().all(|k| applied.contains_key(k))
    })
    .await;
    let applied = applied().await;
    let twice: Vec<&String> = applied.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k).collect();
    println!("{} accepted, {} applied, applied twice: {twice:?}", accepted.len(), applied.len());
    assert!(accepted.len() > 200, "too little got through to say anything");
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    for service in std::iter::once(&ingest).chain(&workers) {
        assert!(service.is_ready(&env.http).await, "a service needs a restart");
    }
}

/// NATS over TLS (a CA made by the test, `NATS_TLS_CA`), a server that verifies clients
/// (`NATS_TLS_CERT`, `NATS_TLS_KEY`), and a user and password in `NATS_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_nats_over_tls_with_a_password() {
    let (nats, ca) = e2e::servers::PrivateNats::start_tls();
    let url = format!("nats://user:secret@127.0.0.1:{}", nats.port);
    let mut env = TestEnv::on(PG_ADMIN_URL, REDIS_URL, &url).await;
    env.nats.url = url;
    env.nats.tls_ca = Some(ca.clone());
    let key = env.admin_key().await;
    let routing_key = env.service("Over TLS").await.routing_key;
    let mut vars = env.service_env();
    vars.push(("NATS_TLS_CA", ca.display().to_string()));
    let dir = ca.parent().unwrap();
    vars.push(("NATS_TLS_CERT", dir.join("client.pem").display().to_string()));
    vars.push(("NATS_TLS_KEY", dir.join("client.key").display().to_string()));
    one_event_through(&env, &vars, &key, &routing_key, "tls").await;
}

/// NATS with a `.creds` file (`NATS_CREDS`): a server in operator mode that knows no user but
/// trusts the account that signed ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_nats_with_a_creds_file() {
    let (nats, creds) = e2e::servers::start_nats_with_creds();
    let mut env = TestEnv::on(PG_ADMIN_URL, REDIS_URL, &nats.url()).await;
    env.nats.creds = Some(creds.clone());
    let key = env.admin_key().await;
    let routing_key = env.service("With creds").await.routing_key;
    let mut vars = env.service_env();
    vars.push(("NATS_CREDS", creds.display().to_string()));
    one_event_through(&env, &vars, &key, &routing_key, "creds").await;
}

/// Starts ingest and a worker with `vars` and sends one trigger through them: `202`, then applied.
async fn one_event_through(env: &TestEnv, vars: &[(&str, String)], key: &str, routing_key: &str, dedup_key: &str) {
    let ingest = ServiceProcess::start("opssentinal-ingest", vars);
    let worker = ServiceProcess::start("opssentinal-worker", vars);
    for service in [&ingest, &worker] {
        service.wait_ready(&env.http, Duration::from_secs(30)).await;
    }
    let response = env.post_event(&ingest.url(), key, &e2e::trigger(routing_key, dedup_key, dedup_key)).await;
    assert_eq!(response.status(), 202);
    env.wait_for_applied(1, Duration::from_secs(30)).await;
}
