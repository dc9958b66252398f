//! The fault matrix: a steady stream of events through the real binaries (ingest, two workers)
//! on private PostgreSQL, Redis and NATS servers, while each fault happens in turn. The sender
//! behaves as a well-written client: every event carries an `Idempotency-Key`, and a request that
//! fails (503, 429, a refused connection, a timeout) is retried with the same key. For every fault
//! the table says how many events were sent, answered `202`, applied, lost (answered `202` and
//! never applied: must be 0), applied twice (must be 0), and the time to recover (from the end of
//! the fault until an event sent then is applied).
//!
//! Outages last `FAULT_MATRIX_DOWN_SECS` (3 in the suite; the README's table uses 30):
//! `FAULT_MATRIX_DOWN_SECS=30 cargo nextest run -p e2e fault_matrix --no-capture`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::load::{Client, Sent, load};
use e2e::servers::{PrivateNats, PrivatePostgres, PrivateRedis, ServiceProcess};
use e2e::{TestEnv, wait_until};
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// The stream's cap: about five seconds of events when no worker drains it.
const STREAM_CAP: u64 = 512 * 1024;

struct Rig {
    env: TestEnv,
    pg: PrivatePostgres,
    nats: PrivateNats,
    redis: PrivateRedis,
    ingest: ServiceProcess,
    workers: Vec<ServiceProcess>,
    client: Client,
}

impl Rig {
    async fn start() -> Self {
        let pg = PrivatePostgres::start();
        let nats = PrivateNats::start();
        let redis = PrivateRedis::start();
        let env = TestEnv::on(&pg.admin_url(), &redis.url(), &nats.url()).await;
        let key = env.api_key(common::auth::Role::Admin, None, Some(1_000_000)).await;
        let routing_key = env.service("Matrix").await.routing_key;
        let mut vars = env.service_env();
        vars.push(("SHUTDOWN_TIMEOUT_SECS", "5".into()));
        vars.push(("NATS_STREAM_MAX_BYTES", STREAM_CAP.to_string()));
        let ingest = ServiceProcess::start("opssentinal-ingest", &vars);
        let workers = (0..2).map(|_| ServiceProcess::start("opssentinal-worker", &vars)).collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let client = Client { http, url: format!("{}/api/events", ingest.url()), key, routing_key };
        let rig = Self { env, pg, nats, redis, ingest, workers, client };
        rig.wait_ready().await;
        rig
    }

    async fn wait_ready(&self) {
        for service in std::iter::once(&self.ingest).chain(&self.workers) {
            service.wait_ready(&self.env.http, Duration::from_secs(60)).await;
        }
    }

    /// How many times each of the phase's keys was applied.
    async fn applied(&self, phase: usize) -> HashMap<String, i64> {
        sqlx::query_as("select dedup_key, count(*) from events where dedup_key like $1 group by dedup_key")
            .bind(format!("p{phase}-%"))
            .fetch_all(&self.env.pool)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// From the end of a fault until an event sent then is applied.
    async fn recovery(&self, phase: usize, fault_ended: Instant) -> Duration {
        let probe = format!("p{phase}-probe");
        assert!(self.client.send(&probe, &CancellationToken::new()).await);
        wait_until(Duration::from_secs(120), "the probe to be applied", || async {
            self.applied(phase).await.contains_key(&probe)
        })
        .await;
        fault_ended.elapsed()
    }

    /// Makes `fault` happen; returns when it ended (the dependency or process is back).
    async fn inject(&mut self, fault: Fault, down: Duration) -> Instant {
        match fault {
            Fault::WorkerKills => {
                for _ in 0..10 {
                    let pause = rand::rng().random_range(200..700);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let victim = rand::rng().random_range(0..self.workers.len());
                    self.workers[victim].restart();
                }
            }
            Fault::WorkerTerm => {
                let worker = &mut self.workers[0];
                worker.signal("-TERM");
                assert!(worker.exited_within(Duration::from_secs(10)).await.is_some(), "SIGTERM: no exit in 10 s");
                worker.restart();
            }
            Fault::IngestKill => self.ingest.restart(),
            Fault::NatsRestart => {
                self.nats.kill();
                self.nats.restart();
            }
            Fault::NatsDown => {
                self.nats.kill();
                tokio::time::sleep(down).await;
                self.nats.restart();
            }
            Fault::PostgresRestart => {
                self.pg.stop();
                self.pg.start_again();
            }
            Fault::PostgresDown => {
                self.pg.stop();
                tokio::time::sleep(down).await;
                self.pg.start_again();
            }
            Fault::RedisDown => {
                self.redis.kill();
                tokio::time::sleep(down).await;
                self.redis.restart();
            }
            Fault::StreamFull => {
                // Workers stopped: the backlog grows to the cap (`NATS_STREAM_MAX_BYTES`), then
                // ingest answers 503 (never 202) until restarted workers drain it.
                for worker in &mut self.workers {
                    worker.signal("-TERM");
                    assert!(worker.exited_within(Duration::from_secs(10)).await.is_some());
                }
                wait_until(Duration::from_secs(60), "the capped stream to refuse events", || self.client.refused())
                    .await;
                for worker in &mut self.workers {
                    worker.restart();
                }
            }
        }
        let restored = Instant::now();
        self.wait_ready().await;
        restored
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    WorkerKills,
    WorkerTerm,
    IngestKill,
    NatsRestart,
    NatsDown,
    PostgresRestart,
    PostgresDown,
    RedisDown,
    StreamFull,
}

impl Fault {
    fn describe(self, down: Duration) -> String {
        let secs = down.as_secs();
        match self {
            Self::WorkerKills => "worker SIGKILL x10 at random moments".into(),
            Self::WorkerTerm => "worker SIGTERM during a batch".into(),
            Self::IngestKill => "ingest SIGKILL (restarted)".into(),
            Self::NatsRestart => "NATS restart (SIGKILL, start)".into(),
            Self::NatsDown => format!("NATS down {secs} s"),
            Self::PostgresRestart => "PostgreSQL restart (`pg_ctl -m immediate`)".into(),
            Self::PostgresDown => format!("PostgreSQL down {secs} s"),
            Self::RedisDown => format!("Redis down {secs} s"),
            Self::StreamFull => "NATS stream full (max bytes reached)".into(),
        }
    }
}

struct Row {
    fault: String,
    sent: usize,
    accepted: usize,
    applied: usize,
    lost: usize,
    twice: usize,
    recovery: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_loses_nothing_and_applies_nothing_twice() {
    let secs = std::env::var("FAULT_MATRIX_DOWN_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let down = Duration::from_secs(secs);
    let mut rig = Rig::start().await;
    let mut rows = Vec::new();
    for (phase, fault) in [
        Fault::WorkerKills,
        Fault::WorkerTerm,
        Fault::IngestKill,
        Fault::NatsRestart,
        Fault::NatsDown,
        Fault::PostgresRestart,
        Fault::PostgresDown,
        Fault::RedisDown,
        Fault::StreamFull,
    ]
    .into_iter()
    .enumerate()
    {
        println!("fault {phase}: {}", fault.describe(down));
        let sent = Arc::new(Sent::default());
        let stop = CancellationToken::new();
        let senders = load(&rig.client, phase, &sent, &stop);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let fault_ended = rig.inject(fault, down).await;
        let recovery = rig.recovery(phase, fault_ended).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.cancel();
        for sender in senders {
            sender.await.unwrap();
        }
        let accepted = sent.accepted.lock().await.clone();
        wait_until(Duration::from_secs(120), "every accepted event to be applied", || async {
            let applied = rig.applied(phase).await;
            accepted.iter().all(|k| applied.contains_key(k))
        })
        .await;
        rig.env.wait_until_drained(Duration::from_secs(60)).await;
        let applied: HashMap<String, i64> =
            rig.applied(phase).await.into_iter().filter(|(k, _)| !k.ends_with("-probe")).collect();
        rows.push(Row {
            fault: fault.describe(down),
            sent: sent.attempted.load(Ordering::Relaxed),
            accepted: accepted.len(),
            applied: applied.len(),
            lost: accepted.iter().filter(|k| !applied.contains_key(*k)).count(),
            twice: applied.values().filter(|n| **n > 1).count(),
            recovery,
        });
    }
    println!("| fault | events sent | answered 202 | applied | lost | applied twice | time to recover |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let recovery = r.recovery.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {} | {recovery:.1} s |",
            r.fault, r.sent, r.accepted, r.applied, r.lost, r.twice
        );
    }
    for r in &rows {
        assert_eq!((r.lost, r.twice), (0, 0), "{}: lost {}, applied twice {}", r.fault, r.lost, r.twice);
        assert!(r.accepted > 0, "{}: nothing was accepted", r.fault);
    }
}
