//! PostgreSQL over TLS: `sslmode=require` against the shared server (Debian's serves TLS with its
//! snakeoil certificate) and `sslmode=verify-full` against a private server whose CA the test made.

use std::time::Duration;

use e2e::servers::{PrivatePostgres, ServiceProcess};
use e2e::{REDIS_URL, TestEnv, wait_until};
use sqlx::PgPool;

async fn over_tls(pool: &PgPool) -> bool {
    sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_tls_with_sslmode_require_and_verify_full() {
    let shared = PgPool::connect(&format!("{}?sslmode=require", e2e::PG_ADMIN_URL)).await.expect("sslmode=require");
    assert!(over_tls(&shared).await, "sslmode=require connected without TLS");
    shared.close().await;

    let (pg, ca) = PrivatePostgres::start_tls();
    let mut env = TestEnv::on(&pg.admin_url(), REDIS_URL, &e2e::nats_url()).await;
    let verified = format!("{}?sslmode=verify-full&sslrootcert={}", env.database.url, ca.display());
    let pool = PgPool::connect(&verified).await.expect("sslmode=verify-full with the test's CA");
    assert!(over_tls(&pool).await);
    pool.close().await;
    let wrong_ca = format!("{}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem", env.database.url);
    assert!(PgPool::connect(&wrong_ca).await.is_err(), "verify-full accepted a certificate its CA did not sign");

    // A service configured that way works, over TLS.
    env.database.url = verified;
    let query = ServiceProcess::start("opssentinal-query-api", &env.service_env());
    query.wait_ready(&env.http, Duration::from_secs(30)).await;
    let key = env.admin_key().await;
    let (status, _) = env.get_json(&format!("{}/api/services", query.url()), &key).await;
    assert_eq!(status, 200);
    let tls_sessions: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid)
         where s.ssl and a.datname = current_database() and a.pid <> pg_backend_pid()",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(tls_sessions > 0, "query-api's connections are not TLS");
}

/// Redis over TLS: `rediss://` against a Redis started with TLS only, the test's CA trusted
/// through `SSL_CERT_FILE` (the standard variable the TLS roots are read from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_work_over_rediss() {
    let (redis, ca) = e2e::servers::PrivateRedis::start_tls();
    let env = TestEnv::on(e2e::PG_ADMIN_URL, &redis.url(), &e2e::nats_url()).await;
    let mut vars = env.service_env();
    vars.push(("SSL_CERT_FILE", ca.display().to_string()));
    let ingest = ServiceProcess::start("opssentinal-ingest", &vars);
    wait_until(Duration::from_secs(30), "ingest to see Redis up over TLS", || async {
        ingest.readiness(&env.http).await.is_some_and(|(status, body)| status == 200 && body["checks"]["redis"] == "up")
    })
    .await;
    let key = env.admin_key().await;
    let rk = env.service("Limited over TLS").await.routing_key;
    let response = env.post_event(&ingest.url(), &key, &e2e::trigger(&rk, "k", "s")).await;
    assert_eq!(response.status(), 202);
    // The limiter answered (it omits the headers while it fails open).
    assert_eq!(response.headers()["x-ratelimit-remaining"], "99");
    assert_eq!(ingest.metric(&env.http, "rate_limit_fail_open_total").await, 0.0);
}
