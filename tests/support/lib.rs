//! Test support: every test gets its own PostgreSQL database, JetStream stream and subject
//! prefix, Redis key prefix and consumer name, so the suite runs in parallel and twice in a row.
//! Services run in process on port 0; fault tests start private servers of their own.

pub mod bench;
pub mod load;
pub mod model;
pub mod servers;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use common::auth::{Role, Scope};
use common::config::{
    DatabaseConfig, LogConfig, LogFormat, NatsConfig, RateLimitConfig, RedisConfig, ShutdownConfig, WebhookConfig,
};
use ingest::IngestConfig;
use query_api::api_keys::body::NewApiKey;
use query_api::services::body::{NewService, ServiceWithKey};
use query_api::users::body::{NewUser, User};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use worker::WorkerSettings;
use worker::config::NotifyConfig;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The shared NATS server: `NATS_URL` (set by `scripts/test.sh` to the pinned nats-server it
/// runs), else the standard local port.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The nats-server release the project is built and tested against (`scripts/services.sh` pins
/// the same): older servers lack what the pipeline relies on.
pub const NATS_MIN_VERSION: (u64, u64) = (2, 12);

/// Waits for `condition` to hold, polling, at most `timeout`. Panics with `what` otherwise.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service binary built next to the running test or benchmark (`scripts/test.sh` and
/// `scripts/bench.sh` build them first), e.g. `opssentinal-worker`.
/// The log filter of the services a test starts: `TEST_LOG` (e.g. `TEST_LOG=info,worker=debug`),
/// else warnings only. With `TEST_LOG` set, in-process services log too.
pub fn test_log() -> String {
    std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())
}

pub fn service_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let binary = dir.join(name);
    assert!(binary.exists(), "{} is missing: run `cargo build --workspace --bins` first", binary.display());
    binary
}

/// A unique name for this test's resources: `<prefix>_<unix seconds>_<random>`, so stale ones from
/// crashed runs can be recognised by age and removed.
fn unique(prefix: &str) -> String {
    let now = jiff::Timestamp::now().as_second();
    format!("{prefix}_{now}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Resources older than this, left by crashed runs, are removed when a test starts.
const STALE_AFTER_SECS: i64 = 3600;

fn is_stale(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    let secs = rest.split('_').next().and_then(|s| s.parse::<i64>().ok());
    secs.is_some_and(|s| jiff::Timestamp::now().as_second() - s > STALE_AFTER_SECS)
}

/// Partitions of a test's event stream: fewer than the default, so workers start quickly, and
/// still more than the most workers a test runs.
pub const TEST_PARTITIONS: u32 = 8;

/// One test's isolated world.
pub struct TestEnv {
    pub pool: PgPool,
    pub db_name: String,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub nats: NatsConfig,
    pub limits: RateLimitConfig,
    pub consumer: String,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
    pg_admin_url: String,
}

impl TestEnv {
    /// A fresh environment on the shared local services.
    pub async fn new() -> Self {
        Self::on(PG_ADMIN_URL, REDIS_URL, &nats_url()).await
    }

    /// A fresh environment on the given servers (`pg_admin_url` names a database to connect to
    /// for creating this test's own).
    pub async fn on(pg_admin_url: &str, redis_url: &str, nats_url: &str) -> Self {
        // reqwest is built with rustls and no default crypto provider: use ring, as async-nats does.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            let config = LogConfig { format: LogFormat::Pretty, filter: test_log() };
            let _logging = common::telemetry::init_tracing(&config, "e2e").expect("TEST_LOG is a valid filter");
        }
        let db_name = unique("ostest");
        let admin = PgPool::connect(pg_admin_url).await.expect("connect to PostgreSQL");
        drop_stale_databases(&admin).await;
        sqlx::query(&format!("create database {db_name}")).execute(&admin).await.expect("create test database");
        admin.close().await;
        let url = database_url(pg_admin_url, &db_name);
        let database = DatabaseConfig { url: url.clone(), max_connections: 16 };
        let pool = common::db::pool(&database).expect("pool");
        common::db::migrate(&pool).await.expect("migrate");
        let suffix = db_name.trim_start_matches("ostest_").to_owned();
        let nats = NatsConfig {
            url: nats_url.to_owned(),
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            stream: format!("OSTEST_{suffix}"),
            subject_prefix: format!("ostest.{suffix}"),
            replicas: 1,
            max_bytes: -1,
            publish_timeout_ms: 2000,
            partitions: TEST_PARTITIONS,
            duplicate_window_secs: 120,
            max_frame_events: 1024,
        };
        if let Ok(client) = async_nats::connect(nats_url).await {
            assert_current_nats(&client, nats_url);
            delete_stale_streams(client).await;
        }
        Self {
            pool,
            database,
            redis: RedisConfig { url: redis_url.to_owned(), key_prefix: format!("ostest:{suffix}:"), timeout_ms: 250 },
            nats,
            limits: RateLimitConfig {
                events_per_minute: 100,
                api_per_minute: 300,
                auth_failures_per_minute: 30,
                auth_cache_ttl_secs: 10,
                trusted_proxies: Vec::new(),
            },
            consumer: "workers".into(),
            shutdown: CancellationToken::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("http client"),
            pg_admin_url: pg_admin_url.to_owned(),
            db_name,
        }
    }

    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            listen: "127.0.0.1:0".into(),
            database: self.database.clone(),
            redis: self.redis.clone(),
            nats: self.nats.clone(),
            limits: self.limits.clone(),
            log: LogConfig { format: LogFormat::Pretty, filter: test_log() },
            shutdown: ShutdownConfig { timeout_secs: 10 },
        }
    }

    /// Starts ingest on a free port and waits until it is ready. Returns its base URL.
    pub async fn spawn_ingest(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (config, shutdown) = (self.ingest_config(), self.shutdown.clone());
        tokio::spawn(async move { ingest::run(config, listener, shutdown).await.expect("ingest runs") });
        let base = format!("http://{addr}");
        let http = self.http.clone();
        wait_until(Duration::from_secs(20), "ingest to be ready", || {
            let url = format!("{base}/readyz");
            let http = http.clone();
            async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        base
    }

    /// Starts query-api on a free port and waits until it is ready. Returns its base URL.
    pub async fn spawn_query_api(&self) -> String {
        // The tests' webhook receivers listen on loopback.
        self.spawn_query_api_with(WebhookConfig { allow_private: true }).await
    }

    /// Starts query-api with `webhooks` on a free port and waits until it is ready. Returns its
    /// base URL.
    pub async fn spawn_query_api_with(&self, webhooks: WebhookConfig) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let config = query_api::QueryApiConfig {
            listen: "127.0.0.1:0".into(),
            database: self.database.clone(),
            redis: self.redis.clone(),
            nats: self.nats.clone(),
            limits: self.limits.clone(),
            webhooks,
            ingest_public_url: "http://localhost:8081".into(),
            log: LogConfig { format: LogFormat::Pretty, filter: test_log() },
            shutdown: ShutdownConfig { timeout_secs: 10 },
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { query_api::run(config, listener, shutdown).await.expect("query-api runs") });
        let base = format!("http://{addr}");
        let http = self.http.clone();
        wait_until(Duration::from_secs(20), "query-api to be ready", || {
            let url = format!("{base}/readyz");
            let http = http.clone();
            async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        base
    }

    /// Environment variables pointing a service process at this test's database, Redis prefix,
    /// stream, subjects and consumer.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database.url.clone()),
            ("REDIS_URL", self.redis.url.clone()),
            ("REDIS_KEY_PREFIX", self.redis.key_prefix.clone()),
            ("NATS_URL", self.nats.url.clone()),
            ("NATS_STREAM", self.nats.stream.clone()),
            ("NATS_SUBJECT_PREFIX", self.nats.subject_prefix.clone()),
            ("NATS_PARTITIONS", self.nats.partitions.to_string()),
            ("NATS_DUPLICATE_WINDOW_SECS", self.nats.duplicate_window_secs.to_string()),
            ("NATS_MAX_FRAME_EVENTS", self.nats.max_frame_events.to_string()),
            ("WORKER_CONSUMER", self.consumer.clone()),
            ("WEBHOOK_ALLOW_PRIVATE", "true".into()),
            ("RUST_LOG", test_log()),
        ]
    }

    /// A GET with a bearer key; returns status and JSON body.
    pub async fn get_json(&self, url: &str, key: &str) -> (u16, Value) {
        let response = self.http.get(url).bearer_auth(key).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A request with a JSON body and a bearer key; returns status and JSON body.
    pub async fn send_json(&self, method: reqwest::Method, url: &str, key: &str, body: &Value) -> (u16, Value) {
        let response = self.http.request(method, url).bearer_auth(key).json(body).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            consumer: self.consumer.clone(),
            batch_size: 200,
            batch_linger_ms: 10,
            batch_quiet_ms: 100,
            retention_days: 30,
            concurrency: 1,
            ack_wait_secs: 30,
            max_deliveries: 5,
            max_ack_pending: 5_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            // The tests' receivers listen on loopback.
            webhooks: WebhookConfig { allow_private: true },
            notify: NotifyConfig { smtp_url: None, smtp_from: "OpsSentinal <pager@example.com>".into() },
        }
    }

    /// (members, partitions owned, partitions owned twice) as PostgreSQL's lock table shows the
    /// workers' ownership locks.
    pub async fn ownership(&self) -> (i64, i64, i64) {
        let name = worker::ownership::lock_name(&self.nats.stream, &self.consumer);
        let (members, partitions) = worker::ownership::lock_spaces(&name);
        sqlx::query_as(
            "select count(*) filter (where classid = $1::int8::oid),
                    count(distinct objid) filter (where classid = $2::int8::oid),
                    count(*) filter (where classid = $2::int8::oid) - count(distinct objid) filter (where classid = $2::int8::oid)
             from pg_locks
             where locktype = 'advisory' and granted and objsubid = 2
               and database = (select oid from pg_database where datname = current_database())",
        )
        .bind(i64::from(members))
        .bind(i64::from(partitions))
        .fetch_one(&self.pool)
        .await
        .expect("pg_locks")
    }

    /// Waits (at most 10 s) until `members` workers share every partition, each owned once.
    pub async fn wait_for_even_ownership(&self, members: i64, what: &str) {
        let all = i64::from(self.nats.partitions);
        wait_until(Duration::from_secs(10), what, || async { self.ownership().await == (members, all, 0) }).await;
    }

    /// Events accepted and not yet applied: the messages the work-queue stream still holds.
    pub async fn backlog(&self) -> Option<u64> {
        let client = async_nats::connect(&self.nats.url).await.ok()?;
        let mut stream = async_nats::jetstream::new(client).get_stream(&self.nats.stream).await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    }

    /// The names of the consumers on this test's event stream.
    pub async fn consumer_names(&self) -> Vec<String> {
        use futures_util::StreamExt;
        self.event_stream().await.consumer_names().filter_map(|name| async move { name.ok() }).collect().await
    }

    /// The partition consumers of this test's workers on the event stream, by partition.
    pub async fn partition_consumers(&self) -> Vec<u32> {
        let names = self.consumer_names().await;
        (0..self.nats.partitions).filter(|&p| names.contains(&common::nats::consumer_name(&self.consumer, p))).collect()
    }

    /// This test's event stream, on a connection of its own.
    async fn event_stream(&self) -> async_nats::jetstream::stream::Stream {
        let client = async_nats::connect(&self.nats.url).await.expect("NATS");
        async_nats::jetstream::new(client).get_stream(&self.nats.stream).await.expect("the event stream")
    }

    /// Waits until the workers acknowledged every message of the stream (each only after the
    /// commit that applied it).
    pub async fn wait_until_drained(&self, timeout: Duration) {
        wait_until(timeout, "the workers to drain the stream", || async { self.backlog().await == Some(0) }).await;
    }

    /// The whole pipeline in process: ingest, query-api and a worker, each ready.
    pub async fn spawn_pipeline(&self) -> Pipeline {
        self.spawn_pipeline_with(&self.worker_settings()).await
    }

    /// The whole pipeline in process, its worker run with `settings`.
    pub async fn spawn_pipeline_with(&self, settings: &WorkerSettings) -> Pipeline {
        let ingest = self.spawn_ingest().await;
        let query = self.spawn_query_api().await;
        let worker = self.spawn_worker(settings, self.shutdown.clone()).await;
        Pipeline { ingest, query, _worker: worker }
    }

    /// Starts a worker in process; cancel `stop` to drain it, or abort the set to crash it.
    pub async fn spawn_worker(&self, settings: &WorkerSettings, stop: CancellationToken) -> JoinSet<()> {
        let client = common::nats::connect(&self.nats, "test-worker").await.expect("nats");
        worker::start(settings, &self.nats, self.pool.clone(), client, stop).await.expect("worker starts")
    }

    /// A user with `role` and an API key with `scopes` (all the role allows if `None`).
    pub async fn api_key(&self, role: Role, scopes: Option<&[Scope]>, rate_limit: Option<u32>) -> String {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        self.user("Test User", &email, role).await;
        let key = NewApiKey {
            email,
            name: "test".parse().expect("a name"),
            scopes: scopes.map(<[Scope]>::to_vec),
            rate_limit: rate_limit.map(|r| r.to_string().parse().expect("a positive rate limit")),
        };
        query_api::api_keys::service::create(&self.pool, &key).await.expect("key").key
    }

    /// A user with a valid password.
    pub async fn user(&self, name: &str, email: &str, role: Role) -> User {
        let new = NewUser::parse(name, email, "correct horse battery", role).expect("a valid user");
        query_api::users::service::create(&self.pool, &new).await.expect("user")
    }

    pub async fn admin_key(&self) -> String {
        self.api_key(Role::Admin, None, None).await
    }

    pub async fn service(&self, name: &str) -> ServiceWithKey {
        self.service_limited(name, None).await
    }

    /// A service whose routing key takes `events_per_minute` (the default if `None`).
    pub async fn service_limited(&self, name: &str, events_per_minute: Option<u32>) -> ServiceWithKey {
        let new = NewService {
            name: name.parse().expect("a name"),
            description: None,
            rate_limit: events_per_minute.map(|r| r.to_string().parse().expect("a positive rate limit")),
            escalation_policy_id: None,
        };
        query_api::services::service::create(&self.pool, &new).await.expect("service")
    }

    /// Posts to `/api/events` with a bearer key.
    pub async fn post_event(&self, base: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{base}/api/events"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request reaches ingest")
    }

    /// Number of events applied (stored) so far.
    pub async fn applied_events(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events").fetch_one(&self.pool).await.unwrap_or(-1)
    }

    /// Waits until `n` events are applied.
    pub async fn wait_for_applied(&self, n: i64, timeout: Duration) {
        wait_until(timeout, &format!("{n} applied events"), || async { self.applied_events().await >= n }).await;
    }
}

/// `opssentinal serve` on a free port of this env, and the admin key it printed on first start.
pub struct Serve {
    pub base: String,
    pub admin_key: String,
    _process: tokio::process::Child,
}

impl TestEnv {
    /// Starts `opssentinal serve` (with `extra` environment) and waits until it is ready.
    pub async fn spawn_serve(&self, extra: &[(&str, &str)]) -> Serve {
        use tokio::io::AsyncBufReadExt;
        let port = servers::free_port();
        let mut process = tokio::process::Command::new(service_binary("opssentinal"))
            .arg("serve")
            .envs(self.service_env())
            .envs(extra.iter().copied())
            .env("OPSSENTINAL_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("opssentinal serve starts");
        let mut lines = tokio::io::BufReader::new(process.stdout.take().expect("stdout")).lines();
        let admin_key = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("serve's output") {
                if let Some(key) = line.trim().strip_prefix("admin API key:") {
                    return key.trim().to_owned();
                }
            }
            panic!("serve exited without printing an admin key");
        })
        .await
        .expect("the admin key is printed on first start");
        let base = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(30), "serve to be ready", || async {
            self.http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        Serve { base, admin_key, _process: process }
    }
}

/// What [`TestEnv::spawn_pipeline`] started: the base URLs, and the worker (stopped with the env).
pub struct Pipeline {
    pub ingest: String,
    pub query: String,
    _worker: JoinSet<()>,
}

impl Drop for TestEnv {
    /// Removes this test's database and streams, whether it passed or failed (what a killed run
    /// leaves is removed by age when a later test starts). Services it started in process stop.
    fn drop(&mut self) {
        self.shutdown.cancel();
        let (nats, pg_admin_url, db_name) = (self.nats.clone(), self.pg_admin_url.clone(), self.db_name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread and a
        // runtime of its own.
        let cleaning = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let first = nats.servers().ok().and_then(|s| s.into_iter().next());
                let connect = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1));
                if let Some(server) = first
                    && let Ok(client) = connect.connect(server).await
                {
                    let js = async_nats::jetstream::new(client);
                    let _events = js.delete_stream(&nats.stream).await;
                    let _dlq = js.delete_stream(nats.dlq_stream()).await;
                    let _changes = js.delete_stream(nats.changes_stream()).await;
                }
                if let Ok(admin) = PgPool::connect(&pg_admin_url).await {
                    let drop = format!("drop database if exists {db_name} with (force)");
                    let _dropped = sqlx::query(&drop).execute(&admin).await;
                }
            });
        });
        let _cleaned = cleaning.join();
    }
}

/// Sends requests (`in_flight` at a time) until one is answered `429`; returns how many were
/// admitted before it and that answer. With GCRA, a limit of `per_minute` admits a burst of
/// `per_minute` and then one more every `60 / per_minute` seconds, so callers can check the count
/// against the elapsed time exactly, however slow the machine.
pub async fn admitted_until_limited<F, Fut>(in_flight: usize, mut send: F) -> (usize, reqwest::Response, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = reqwest::Response>,
{
    let started = std::time::Instant::now();
    let mut admitted = 0;
    loop {
        let responses = futures_util::future::join_all((0..in_flight).map(|_| send())).await;
        let mut limited = None;
        for response in responses {
            match response.status().as_u16() {
                429 => limited = limited.or(Some(response)),
                status if status < 300 => admitted += 1,
                status => panic!("unexpected status {status}"),
            }
        }
        if let Some(response) = limited {
            return (admitted, response, started.elapsed());
        }
        assert!(admitted < 100_000, "never rate limited");
    }
}

/// Whether `admitted` fits a GCRA limit of `per_minute` over `elapsed`.
pub fn fits_limit(admitted: usize, per_minute: u32, elapsed: Duration) -> bool {
    let refilled = (elapsed.as_secs_f64() * f64::from(per_minute) / 60.0).ceil() as usize;
    admitted >= per_minute as usize && admitted <= per_minute as usize + refilled
}

/// An accepted event as ingest would publish it (received now, to the microsecond); a trigger
/// carries a payload with `summary`.
pub fn envelope(
    service_id: &str,
    dedup_key: &str,
    action: common::event::EventAction,
    summary: &str,
) -> common::event::EventEnvelope {
    use common::event::{AlertPayload, EventAction, EventEnvelope, Severity};
    EventEnvelope {
        event_id: uuid::Uuid::now_v7(),
        service_id: service_id.to_owned(),
        dedup_key: dedup_key.to_owned(),
        action,
        payload: (action == EventAction::Trigger).then(|| AlertPayload {
            summary: summary.to_owned(),
            source: "tests".into(),
            severity: Severity::Critical,
            timestamp: None,
            component: None,
            group: None,
            class: None,
            custom_details: None,
        }),
        received_at: jiff::Timestamp::now().round(jiff::Unit::Microsecond).expect("rounds"),
        api_key_id: None,
    }
}

/// A trigger event body.
pub fn trigger(routing_key: &str, dedup_key: &str, summary: &str) -> Value {
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {"summary": summary, "source": "tests", "severity": "critical", "custom_details": {"host": "web-01"}}
    })
}

/// An acknowledge or resolve event body.
pub fn action(routing_key: &str, dedup_key: &str, event_action: &str) -> Value {
    json!({"routing_key": routing_key, "event_action": event_action, "dedup_key": dedup_key})
}

fn database_url(admin_url: &str, db_name: &str) -> String {
    let (base, _) = admin_url.rsplit_once('/').expect("admin URL has a database");
    format!("{base}/{db_name}")
}

async fn drop_stale_databases(admin: &PgPool) {
    let names: Vec<String> = sqlx::query_scalar("select datname from pg_database where datname like 'ostest_%'")
        .fetch_all(admin)
        .await
        .unwrap_or_default();
    for name in names.into_iter().filter(|n| is_stale(n, "ostest")) {
        let drop = format!("drop database if exists {name} with (force)");
        let _dropped = sqlx::query(&drop).execute(admin).await;
    }
}

/// Fails the test at once on a nats-server older than [`NATS_MIN_VERSION`] (Debian's 2.9, say):
/// its results would say nothing of the server the project ships with.
fn assert_current_nats(client: &async_nats::Client, nats_url: &str) {
    let version = client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        found >= NATS_MIN_VERSION,
        "nats-server {version} at {nats_url} is older than {}.{}: run the tests with scripts/test.sh, which starts the pinned release",
        NATS_MIN_VERSION.0,
        NATS_MIN_VERSION.1
    );
}

async fn delete_stale_streams(client: async_nats::Client) {
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().filter_map(|n| async move { n.ok() }).collect().await;
    for name in names {
        let base = name.trim_end_matches("_DLQ");
        if is_stale(base, "OSTEST") {
            let _deleted = js.delete_stream(&name).await;
        }
    }
}
