//! Pipeline benchmark: events over HTTP into the real `opssentinal-ingest` and
//! `opssentinal-worker` release binaries (separate processes), against local PostgreSQL, Redis
//! and NATS, each run in a fresh database, stream and key prefix. Phases (all by default, or
//! those named as arguments: `scripts/bench.sh pipeline scale steady`):
//!
//! - `ingest`: ingest alone (no worker): accepted events/s, request latency p50/p99; then one
//!   worker alone drains that backlog: applied events/s.
//! - `scale`: ingest and N = 1..=BENCH_MAX_WORKERS worker processes at once, closed loop
//!   (BENCH_CONCURRENCY requests in flight): accepted/s, end to end/s (first request until every
//!   event is applied), p50/p99, re-folded keys per 10,000 events, and CPU by process.
//! - `steady`: ingest and one worker at a fixed offered load (BENCH_RATE events/s for
//!   BENCH_SECONDS): accepted/s, end to end/s, p50/p99, the backlog every second.
//! - `wide` (only when named): one worker draining BENCH_WIDE_EVENTS events over BENCH_WIDE_KEYS
//!   keys (most open a new incident): applied/s and the worker's peak RSS.
//!
//! Every phase is run BENCH_RUNS times and reported with medians. Other settings: BENCH_EVENTS
//! (100000 per closed-loop run), BENCH_KEYS (1000 dedup keys), BENCH_PARTITIONS (32, the default
//! NATS_PARTITIONS), BENCH_PRELOAD_ROWS (0: old events put in the log before each run, to show
//! that rates do not depend on the log's size).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::bench::{CpuClock, READY, median, ms, quantile, setting};
use e2e::servers::ServiceProcess;
use e2e::{TestEnv, trigger};

struct Load {
    accepted: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

/// Sends `events` triggers over `keys` dedup keys with `concurrency` requests in flight; with a
/// `rate`, request `i` is not sent before `i / rate` seconds (an open loop at that offered load).
async fn send(
    base: &str,
    key: &str,
    routing_key: &str,
    events: usize,
    concurrency: usize,
    keys: usize,
    rate: Option<f64>,
) -> Load {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    // Bodies and the credential made once, so the load generator spends its CPU on requests.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..keys)
            .map(|k| {
                serde_json::to_vec(&trigger(routing_key, &format!("bench-{k}"), "benchmark alert"))
                    .expect("body")
                    .into()
            })
            .collect(),
    );
    let authorization = format!("Bearer {key}");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, next, bodies) = (http.clone(), next.clone(), bodies.clone());
        let (url, authorization) = (format!("{base}/api/events"), authorization.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return latencies;
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
                }
                let request = http
                    .post(&url)
                    .header("authorization", &authorization)
                    .header("content-type", "application/json")
                    .body(bodies[i % keys].clone());
                let sent = Instant::now();
                let response = request.send().await.expect("request");
                assert_eq!(response.status(), 202, "event {i} not accepted");
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(events);
    for task in tasks {
        latencies.extend(task.await.expect("sender"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Load { accepted: latencies.len(), elapsed, p50: quantile(&latencies, 0.50), p99: quantile(&latencies, 0.99) }
}

/// Waits until the workers acknowledged every message (each only after its commit), polling the
/// stream rather than counting rows so the measurement costs PostgreSQL nothing; then checks
/// that all `n` events are in the database.
async fn wait_applied(env: &TestEnv, n: usize) -> Instant {
    env.wait_until_drained(Duration::from_secs(900)).await;
    let done = Instant::now();
    let applied: i64 = sqlx::query_scalar("select count(*) from events where dedup_key like 'bench-%'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(applied, n as i64, "every accepted event applied");
    done
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Settings {
    events: usize,
    concurrency: usize,
    keys: usize,
}

/// A fresh environment with a bench key and service, ingest and `workers` worker processes.
struct Pipeline {
    env: TestEnv,
    base: String,
    key: String,
    routing_key: String,
    ingest: ServiceProcess,
    workers: Vec<ServiceProcess>,
}

impl Pipeline {
    async fn start(workers: usize) -> Self {
        let mut env = TestEnv::new().await;
        env.nats.partitions = u32::try_from(setting("BENCH_PARTITIONS", 32)).expect("BENCH_PARTITIONS");
        let key = env.api_key(common::auth::Role::Admin, None, Some(100_000_000)).await;
        let service = env.service("bench").await;
        preload(&env, &service.id, setting("BENCH_PRELOAD_ROWS", 0)).await;
        let routing_key = service.routing_key;
        let ingest = ServiceProcess::start("opssentinal-ingest", &env.service_env());
        ingest.wait_ready(&env.http, READY).await;
        let mut pipeline = Self { base: ingest.url(), env, key, routing_key, ingest, workers: Vec::new() };
        for _ in 0..workers {
            pipeline.add_worker().await;
        }
        pipeline
    }

    async fn add_worker(&mut self) {
        let worker = ServiceProcess::start("opssentinal-worker", &self.env.service_env());
        worker.wait_ready(&self.env.http, READY).await;
        self.workers.push(worker);
    }

    async fn send(&self, settings: &Settings, rate: Option<f64>) -> Load {
        send(&self.base, &self.key, &self.routing_key, settings.events, settings.concurrency, settings.keys, rate).await
    }

    /// A metric summed over all workers.
    async fn worker_metric(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for worker in &self.workers {
            total += worker.metric(&self.env.http, name).await;
        }
        total
    }

    /// Keys re-folded by all workers so far.
    async fn refolds(&self) -> f64 {
        self.worker_metric("worker_refolds_total").await
    }

    /// Mean events per transaction and mean transaction time (ms) over all workers.
    async fn transactions(&self) -> (f64, f64) {
        let count = self.worker_metric("worker_batch_size_count").await;
        let events = self.worker_metric("worker_batch_size_sum").await;
        let seconds = self.worker_metric("worker_apply_batch_seconds_sum").await;
        (events / count, seconds * 1000.0 / count)
    }

    fn clock(&self) -> CpuClock {
        let mut named = vec![("ingest".to_owned(), self.ingest.pid())];
        named.extend(self.workers.iter().enumerate().map(|(i, w)| (format!("worker {}", i + 1), w.pid())));
        CpuClock::start(named)
    }

    async fn stop(self) {
        drop(self.workers);
        drop(self.ingest);
    }
}

/// Fills the event log with `rows` old events spread over the 29 days before today (one
/// partition each), as a log a month into production at high volume would be.
async fn preload(env: &TestEnv, service_id: &str, rows: usize) {
    if rows == 0 {
        return;
    }
    let started = Instant::now();
    sqlx::query("select events_ensure_day((now() at time zone 'UTC')::date - d) from generate_series(1, 29) d")
        .execute(&env.pool)
        .await
        .expect("partitions");
    sqlx::query(
        "insert into events (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome)
         select gen_random_uuid(), g, $1, 'old-' || (g % 100000), 'trigger', '{\"summary\": \"old\"}'::jsonb,
                date_trunc('day', now()) - (1 + g % 29) * interval '1 day' + (g % 86400) * interval '1 second',
                'absorbed'
         from generate_series(1, $2::int8) g",
    )
    .bind(service_id)
    .bind(i64::try_from(rows).expect("rows"))
    .execute(&env.pool)
    .await
    .expect("preload");
    sqlx::query("analyze events").execute(&env.pool).await.expect("analyze");
    println!("  preloaded {rows} events over 29 day partitions in {:.0} s", started.elapsed().as_secs_f64());
}

#[derive(Default)]
struct Series(BTreeMap<String, Vec<f64>>);

impl Series {
    fn push(&mut self, name: &str, value: f64) {
        self.0.entry(name.to_owned()).or_default().push(value);
    }

    fn median(&self, name: &str) -> f64 {
        median(self.0.get(name).cloned().unwrap_or_else(|| vec![f64::NAN]))
    }
}

async fn ingest_then_drain(settings: &Settings, results: &mut Series) {
    let mut pipeline = Pipeline::start(0).await;
    let load = pipeline.send(settings, None).await;
    println!(
        "  ingest alone:   {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms",
        rate(load.accepted, load.elapsed),
        ms(load.p50),
        ms(load.p99)
    );
    results.push("ingest rate", rate(load.accepted, load.elapsed));
    results.push("ingest p50", ms(load.p50));
    results.push("ingest p99", ms(load.p99));
    let drain_started = Instant::now();
    pipeline.add_worker().await;
    let drained = wait_applied(&pipeline.env, load.accepted).await;
    println!("  worker drain:   {:>8.0} events/s applied", rate(load.accepted, drained - drain_started));
    results.push("drain rate", rate(load.accepted, drained - drain_started));
    pipeline.stop().await;
}

async fn scale(settings: &Settings, workers: usize, results: &mut Series) {
    let pipeline = Pipeline::start(workers).await;
    let clock = pipeline.clock();
    let started = Instant::now();
    let load = pipeline.send(settings, None).await;
    let done = wait_applied(&pipeline.env, load.accepted).await;
    let cpu = clock.stop();
    let refolds = pipeline.refolds().await;
    let per_10k = refolds * 10_000.0 / load.accepted as f64;
    println!(
        "  {workers} worker(s): {:>8.0} accepted/s  {:>8.0} end to end/s  p50 {:.2} ms  p99 {:.2} ms  re-folds {refolds} ({per_10k:.2} per 10,000)",
        rate(load.accepted, load.elapsed),
        rate(load.accepted, done - started),
        ms(load.p50),
        ms(load.p99),
    );
    let (batch, batch_ms) = pipeline.transactions().await;
    let frame = pipeline.ingest.metric(&pipeline.env.http, "ingest_frame_events_sum").await
        / pipeline.ingest.metric(&pipeline.env.http, "ingest_frame_events_count").await;
    println!(
        "      {frame:.1} events per JetStream message; {batch:.0} events and {batch_ms:.1} ms per transaction; CPU (% of one core): {}",
        cpu.summary()
    );
    let name = |what: &str| format!("{workers} {what}");
    results.push(&name("accepted"), rate(load.accepted, load.elapsed));
    results.push(&name("end to end"), rate(load.accepted, done - started));
    results.push(&name("p50"), ms(load.p50));
    results.push(&name("p99"), ms(load.p99));
    results.push(&name("refolds per 10k"), per_10k);
    for (process, percent) in cpu.percent() {
        results.push(&name(&format!("cpu {process}")), *percent);
    }
    pipeline.stop().await;
}

async fn steady(offered: f64, seconds: u64, settings: &Settings, results: &mut Series) {
    let pipeline = Pipeline::start(1).await;
    let events = (offered * seconds as f64) as usize;
    let env = &pipeline.env;
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (stop, env_backlog) = (sampling.clone(), TestEnvBacklog::of(env));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                samples.push(env_backlog.backlog().await);
            }
            samples
        })
    };
    let clock = pipeline.clock();
    let started = Instant::now();
    let load = pipeline.send(&Settings { events, ..*settings }, Some(offered)).await;
    sampling.cancel();
    let backlog = sampler.await.expect("sampler");
    let done = wait_applied(env, load.accepted).await;
    let cpu = clock.stop();
    let half = backlog.len() / 2;
    let (first_half, second_half) = backlog.split_at(half);
    let peak = |s: &[u64]| s.iter().copied().max().unwrap_or(0);
    println!(
        "  offered {offered:.0}/s for {seconds} s: {:>8.0} accepted/s  {:>8.0} end to end/s  p50 {:.2} ms  p99 {:.2} ms; \
         applied {:.2} s after the last request",
        rate(load.accepted, load.elapsed),
        rate(load.accepted, done - started),
        ms(load.p50),
        ms(load.p99),
        (done - started).as_secs_f64() - load.elapsed.as_secs_f64(),
    );
    println!("      backlog each second: {backlog:?}");
    let (batch, batch_ms) = pipeline.transactions().await;
    let frame = pipeline.ingest.metric(&pipeline.env.http, "ingest_frame_events_sum").await
        / pipeline.ingest.metric(&pipeline.env.http, "ingest_frame_events_count").await;
    println!(
        "      {frame:.1} events per JetStream message; {batch:.0} events and {batch_ms:.1} ms per transaction; CPU (% of one core): {}",
        cpu.summary()
    );
    results.push("steady accepted", rate(load.accepted, load.elapsed));
    results.push("steady end to end", rate(load.accepted, done - started));
    results.push("steady p50", ms(load.p50));
    results.push("steady p99", ms(load.p99));
    results.push("steady backlog peak first half", peak(first_half) as f64);
    results.push("steady backlog peak second half", peak(second_half) as f64);
    pipeline.stop().await;
}

/// Reads the backlog of an environment's stream from a task of its own.
struct TestEnvBacklog {
    url: String,
    stream: String,
}

impl TestEnvBacklog {
    fn of(env: &TestEnv) -> Self {
        Self { url: env.nats.url.clone(), stream: env.nats.stream.clone() }
    }

    async fn backlog(&self) -> u64 {
        let Ok(client) = async_nats::connect(&self.url).await else { return 0 };
        let Ok(mut stream) = async_nats::jetstream::new(client).get_stream(&self.stream).await else { return 0 };
        stream.info().await.map_or(0, |i| i.state.messages)
    }
}

async fn wide(events: usize, keys: usize, results: &mut Series) {
    let mut pipeline = Pipeline::start(0).await;
    let load = pipeline.send(&Settings { events, concurrency: 64, keys }, None).await;
    let started = Instant::now();
    pipeline.add_worker().await;
    let pid = pipeline.workers[0].pid();
    let peak = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..3600 {
            match e2e::bench::peak_rss_kib(pid) {
                Some(kib) => peak = peak.max(kib),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    });
    let done = wait_applied(&pipeline.env, load.accepted).await;
    let peak_kib = e2e::bench::peak_rss_kib(pipeline.workers[0].pid()).unwrap_or(0);
    peak.abort();
    println!(
        "  wide drain: {events} events over {keys} keys: {:>8.0} applied/s, worker peak RSS {:.0} MiB",
        rate(load.accepted, done - started),
        peak_kib as f64 / 1024.0
    );
    results.push("wide drain", rate(load.accepted, done - started));
    results.push("wide rss", peak_kib as f64 / 1024.0);
    pipeline.stop().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench --list` / `cargo test --benches` probe
    }
    let phases: Vec<&str> =
        if args.is_empty() { vec!["ingest", "scale", "steady"] } else { args.iter().map(String::as_str).collect() };
    let settings = Settings {
        events: setting("BENCH_EVENTS", 100_000),
        concurrency: setting("BENCH_CONCURRENCY", 64),
        keys: setting("BENCH_KEYS", 1000),
    };
    let runs = setting("BENCH_RUNS", 3);
    let max_workers = setting("BENCH_MAX_WORKERS", 4);
    let offered = setting("BENCH_RATE", 15_000) as f64;
    let seconds = setting("BENCH_SECONDS", 20) as u64;
    println!(
        "pipeline benchmark ({phases:?}): {} events, {} in flight, {} dedup keys, {runs} runs, on {} cores",
        settings.events,
        settings.concurrency,
        settings.keys,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results = Series::default();
    for run in 1..=runs {
        println!("run {run}:");
        for phase in &phases {
            match *phase {
                "ingest" => ingest_then_drain(&settings, &mut results).await,
                "scale" => {
                    for workers in 1..=max_workers {
                        scale(&settings, workers, &mut results).await;
                    }
                }
                "steady" => steady(offered, seconds, &settings, &mut results).await,
                "wide" => {
                    let (events, keys) = (setting("BENCH_WIDE_EVENTS", 500_000), setting("BENCH_WIDE_KEYS", 100_000));
                    wide(events, keys, &mut results).await;
                }
                other => panic!("unknown phase {other:?}: ingest, scale, steady or wide"),
            }
        }
    }
    println!("median of {runs} runs:");
    for (name, values) in &results.0 {
        println!("  {name:<40} {:>10.2}   (runs: {values:.0?})", results.median(name));
    }
}
