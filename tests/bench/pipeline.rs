//! Pipeline benchmark: events over HTTP into the real `opssentinal-ingest` and
//! `opssentinal-worker` release binaries (separate processes), against local PostgreSQL, Redis
//! and NATS, each run in a fresh database, stream and key prefix. Phases (all by default, or
//! those named as arguments: `scripts/bench.sh pipeline scale steady`):
//!
//! - `ingest`: ingest alone (no worker): accepted events/s, request latency p50/p99; then one
//!   worker alone drains that backlog: applied events/s.
//! - `scale`: ingest and N = 1..=BENCH_MAX_WORKERS worker processes at once (or the counts
//!   BENCH_WORKERS lists, in its order, e.g. `4,3,2,1`), closed loop
//!   (BENCH_CONCURRENCY requests in flight): accepted/s, end to end/s (first request until every
//!   event is applied), p50/p99, re-folded keys per 10,000 events, and CPU by process.
//! - `steady`: ingest and one worker at a fixed offered load (BENCH_RATE events/s for
//!   BENCH_SECONDS): accepted/s, end to end/s, p50/p99, the backlog every second.
//! - `wide` (only when named): one worker draining BENCH_WIDE_EVENTS events over BENCH_WIDE_KEYS
//!   keys (most open a new incident): applied/s and the worker's peak RSS.
//!
//! The closed loops (`ingest`, `scale`) are sent by wrk (one thread, BENCH_CONCURRENCY
//! connections, BENCH_WRK_SECONDS = 15 s), as the issue measured; BENCH_CLIENT=builtin sends
//! exactly BENCH_EVENTS (100000) events from this process instead. The open loop (`steady`) and
//! `wide` are always sent from this process.
//!
//! Every phase is run BENCH_RUNS times and reported with medians. Other settings: BENCH_KEYS
//! (1000 dedup keys), BENCH_PARTITIONS (32, the default NATS_PARTITIONS), BENCH_FRAME_EVENTS (1024,
//! the default NATS_MAX_FRAME_EVENTS; 1 publishes every event alone), BENCH_WORKER_THREADS and
//! BENCH_INGEST_THREADS (the workers' and ingest's tokio threads, TOKIO_WORKER_THREADS; one per
//! core by default), BENCH_PRELOAD_ROWS (0: old events put in the log before each run, to show
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
    /// Whether the generator stopped with requests in flight (wrk, at its deadline): ingest may
    /// have accepted some of those, so more than `accepted` events may be applied.
    cut_off: bool,
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
    // Bodies and the credential made once, so the load generator spends its CPU on requests.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new((0..keys).map(|k| body(routing_key, k).into()).collect());
    let authorization = format!("Bearer {key}");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let address = base.strip_prefix("http://").expect("an http:// address").to_owned();
    for _ in 0..concurrency {
        let (next, bodies, address, authorization) =
            (next.clone(), bodies.clone(), address.clone(), authorization.clone());
        tasks.push(tokio::spawn(async move {
            // One keep-alive HTTP/1.1 connection per task, with no client pool in between: the
            // generator shares the two cores with what it measures.
            let stream = tokio::net::TcpStream::connect(&address).await.expect("connect to ingest");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("HTTP/1.1");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return latencies;
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
                }
                let request = hyper::Request::post("/api/events")
                    .header("host", &address)
                    .header("authorization", &authorization)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bodies[i % keys].clone()))
                    .expect("request");
                let sent = Instant::now();
                let response = sender.send_request(request).await.expect("request");
                let status = response.status();
                http_body_util::BodyExt::collect(response.into_body()).await.expect("response body");
                assert_eq!(status, 202, "event {i} not accepted");
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
    Load {
        accepted: latencies.len(),
        cut_off: false,
        elapsed,
        p50: quantile(&latencies, 0.50),
        p99: quantile(&latencies, 0.99),
    }
}

/// The trigger the closed loops send for dedup key `bench-<k>`.
fn body(routing_key: &str, k: usize) -> String {
    serde_json::to_string(&trigger(routing_key, &format!("bench-{k}"), "benchmark alert")).expect("body")
}

/// wrk (what the figures were measured with): `concurrency` connections on one thread for
/// `seconds`, cycling over `keys` dedup keys; the bodies are made once, in the Lua script.
/// `accepted` is what wrk saw answered `202`.
fn wrk(base: &str, key: &str, routing_key: &str, seconds: usize, concurrency: usize, keys: usize) -> Load {
    let mut script = String::from("local requests = {}\nlocal n = 0\ninit = function(args)\n");
    script.push_str(&format!(
        "  wrk.headers[\"Authorization\"] = \"Bearer {key}\"\n  wrk.headers[\"Content-Type\"] = \"application/json\"\n"
    ));
    for k in 0..keys {
        let body = body(routing_key, k);
        script.push_str(&format!("  requests[{k}] = wrk.format(\"POST\", \"/api/events\", nil, [==[{body}]==])\n"));
    }
    script.push_str(&format!(
        "end\nrequest = function()\n  n = n + 1\n  return requests[n % {keys}]\nend\n\
         done = function(summary, latency)\n  io.write(string.format(\"RESULT %d %d %d %d %d\\n\", summary.requests, \
         summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, \
         summary.duration, latency:percentile(50), latency:percentile(99)))\nend\n"
    ));
    let path = std::env::temp_dir().join(format!("opssentinal-bench-{}.lua", std::process::id()));
    std::fs::write(&path, script).expect("wrk script");
    let output = std::process::Command::new("wrk")
        .args(["-t1", &format!("-c{concurrency}"), &format!("-d{seconds}s"), "--timeout", "10s", "-s"])
        .arg(&path)
        .arg(format!("{base}/api/events"))
        .output()
        .expect("wrk is installed (scripts/bench.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("wrk printed no result: {stdout} {}", String::from_utf8_lossy(&output.stderr)))
        .split(' ')
        .map(|n| n.parse().expect("number"))
        .collect();
    let [requests, errors, duration_us, p50_us, p99_us] = result[..] else { panic!("wrk result {result:?}") };
    assert_eq!(errors, 0, "every request answered 202: {stdout}");
    Load {
        accepted: usize::try_from(requests).expect("requests"),
        cut_off: true,
        elapsed: Duration::from_micros(duration_us),
        p50: Duration::from_micros(p50_us),
        p99: Duration::from_micros(p99_us),
    }
}

/// Waits until the workers acknowledged every message (each only after its commit), polling the
/// stream rather than counting rows so the measurement costs PostgreSQL nothing; then checks
/// that every accepted event is in the database. Returns when, and how many were applied.
async fn wait_applied(env: &TestEnv, load: &Load) -> (Instant, usize) {
    env.wait_until_drained(Duration::from_secs(900)).await;
    let done = Instant::now();
    let applied: i64 = sqlx::query_scalar("select count(*) from events where dedup_key like 'bench-%'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    let applied = usize::try_from(applied).expect("count");
    if load.cut_off {
        assert!(applied >= load.accepted, "every accepted event applied: {applied} of {}", load.accepted);
    } else {
        assert_eq!(applied, load.accepted, "every accepted event applied");
    }
    (done, applied)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Settings {
    events: usize,
    concurrency: usize,
    keys: usize,
    /// The closed-loop phases' load generator, and how long wrk runs.
    generator: Generator,
    seconds: usize,
}

/// What sends the closed-loop phases' requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Generator {
    /// wrk, one thread (the default): the cheapest generator, leaving the cores to the pipeline.
    Wrk,
    /// This process (hyper, a connection per request in flight), sending exactly BENCH_EVENTS events.
    Builtin,
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

/// A process's variables with its tokio threads (`TOKIO_WORKER_THREADS`) as `setting` says, if set.
fn threads(mut vars: Vec<(&'static str, String)>, setting: &str) -> Vec<(&'static str, String)> {
    if let Ok(threads) = std::env::var(setting) {
        vars.push(("TOKIO_WORKER_THREADS", threads));
    }
    vars
}

impl Pipeline {
    async fn start(workers: usize) -> Self {
        let mut env = TestEnv::new().await;
        env.nats.partitions = u32::try_from(setting("BENCH_PARTITIONS", 32)).expect("BENCH_PARTITIONS");
        env.nats.max_frame_events = setting("BENCH_FRAME_EVENTS", 1024);
        let key = env.api_key(common::auth::Role::Admin, None, Some(100_000_000)).await;
        let service = env.service("bench").await;
        preload(&env, &service.id, setting("BENCH_PRELOAD_ROWS", 0)).await;
        let routing_key = service.routing_key;
        let ingest = ServiceProcess::start("opssentinal-ingest", &threads(env.service_env(), "BENCH_INGEST_THREADS"));
        ingest.wait_ready(&env.http, READY).await;
        let mut pipeline = Self { base: ingest.url(), env, key, routing_key, ingest, workers: Vec::new() };
        for _ in 0..workers {
            pipeline.add_worker().await;
        }
        pipeline.settle().await;
        pipeline
    }

    /// Waits until the workers' membership has settled (each sees them all and owns exactly its
    /// share through exactly its blocks) and ingest has read its routes twice since (a read under
    /// way may have started before), so that load meets the steady state, not the joins'
    /// hand-overs.
    async fn settle(&self) {
        let members = self.workers.len() as f64;
        e2e::wait_until(Duration::from_secs(30), "the workers' ownership to settle", || async {
            let mut settled = true;
            for worker in &self.workers {
                settled &= worker.metric(&self.env.http, "worker_members").await == members
                    && worker.metric(&self.env.http, "worker_settled").await == 1.0;
            }
            settled
        })
        .await;
        let reads = self.ingest.metric(&self.env.http, "ingest_route_reads_total").await;
        e2e::wait_until(Duration::from_secs(5), "ingest to read the settled blocks", || async {
            self.ingest.metric(&self.env.http, "ingest_route_reads_total").await > reads + 1.0
        })
        .await;
    }

    async fn add_worker(&mut self) {
        let vars = threads(self.env.service_env(), "BENCH_WORKER_THREADS");
        let worker = ServiceProcess::start("opssentinal-worker", &vars);
        worker.wait_ready(&self.env.http, READY).await;
        self.workers.push(worker);
    }

    async fn send(&self, settings: &Settings, rate: Option<f64>) -> Load {
        send(&self.base, &self.key, &self.routing_key, settings.events, settings.concurrency, settings.keys, rate).await
    }

    /// A closed loop: `concurrency` requests in flight, with the configured generator.
    async fn closed_loop(&self, settings: &Settings) -> Load {
        match settings.generator {
            Generator::Builtin => self.send(settings, None).await,
            Generator::Wrk => {
                let (base, key, rk) = (self.base.clone(), self.key.clone(), self.routing_key.clone());
                let (seconds, concurrency, keys) = (settings.seconds, settings.concurrency, settings.keys);
                tokio::task::spawn_blocking(move || wrk(&base, &key, &rk, seconds, concurrency, keys))
                    .await
                    .expect("wrk")
            }
        }
    }

    /// Mean events per JetStream message ingest published.
    async fn frame_events(&self) -> f64 {
        let metric = |name| self.ingest.metric(&self.env.http, name);
        metric("ingest_frame_events_sum").await / metric("ingest_frame_events_count").await
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

/// Fills the event log with `rows` old events spread over the 29 days before today, as a log a
/// month into production at high volume would be. Each day is loaded as a table of its own,
/// indexed after its rows are in (one sort per index instead of a random insert per row and
/// index) and checked against its range, then attached as that day's partition: the attach
/// adopts the indexes and skips the scan, and the log is the same as if the rows had been
/// inserted one by one.
async fn preload(env: &TestEnv, service_id: &str, rows: usize) {
    const DAYS: usize = 29;
    if rows == 0 {
        return;
    }
    let started = Instant::now();
    for day in 1..=DAYS {
        let first = (day - 1) * rows / DAYS;
        let count = day * rows / DAYS - first;
        let (name, low, high): (String, String, String) = sqlx::query_as(
            "select 'events_' || to_char(d, 'YYYYMMDD'), (d::timestamp at time zone 'UTC')::text,
                    ((d + 1)::timestamp at time zone 'UTC')::text
             from (select (now() at time zone 'UTC')::date - $1::int as d) day",
        )
        .bind(i32::try_from(day).expect("day"))
        .fetch_one(&env.pool)
        .await
        .expect("day bounds");
        let statements = [
            // A fresh database already has yesterday's (empty) partition.
            format!("drop table if exists {name}"),
            format!("create table {name} (like events including defaults including constraints)"),
            format!(
                "insert into {name} (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome)
                 select gen_random_uuid(), g, '{service_id}', 'old-' || (g % 100000), 'trigger',
                        '{{\"summary\": \"old\"}}'::jsonb,
                        '{low}'::timestamptz + (g - {first}) * interval '86399 seconds' / {count}, 'absorbed'
                 from generate_series({first} + 1, {first} + {count}) g"
            ),
            format!("alter table {name} add primary key (event_id, received_at)"),
            format!("create index on {name} (service_id, dedup_key, seq)"),
            format!("create index on {name} (incident_id, seq desc)"),
            format!("alter table {name} add check (received_at >= '{low}' and received_at < '{high}')"),
            format!("alter table events attach partition {name} for values from ('{low}') to ('{high}')"),
            format!("analyze {name}"),
        ];
        for statement in statements {
            sqlx::query(&statement).execute(&env.pool).await.unwrap_or_else(|err| panic!("{statement}: {err}"));
        }
    }
    // The measurement starts from a settled database, not in the middle of the load's checkpoint.
    sqlx::query("checkpoint").execute(&env.pool).await.expect("checkpoint");
    println!("  preloaded {rows} events over {DAYS} day partitions in {:.0} s", started.elapsed().as_secs_f64());
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
    let load = pipeline.closed_loop(settings).await;
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
    let (drained, applied) = wait_applied(&pipeline.env, &load).await;
    println!("  worker drain:   {:>8.0} events/s applied", rate(applied, drained - drain_started));
    results.push("drain rate", rate(applied, drained - drain_started));
    pipeline.stop().await;
}

async fn scale(settings: &Settings, workers: usize, results: &mut Series) {
    let pipeline = Pipeline::start(workers).await;
    let clock = pipeline.clock();
    let before = pipeline.refolds().await;
    let started = Instant::now();
    let load = pipeline.closed_loop(settings).await;
    let (done, applied) = wait_applied(&pipeline.env, &load).await;
    let cpu = clock.stop();
    let refolds = pipeline.refolds().await - before;
    let per_10k = refolds * 10_000.0 / applied as f64;
    println!(
        "  {workers} worker(s): {:>8.0} accepted/s  {:>8.0} end to end/s  p50 {:.2} ms  p99 {:.2} ms  re-folds {refolds} ({per_10k:.2} per 10,000)",
        rate(load.accepted, load.elapsed),
        rate(applied, done - started),
        ms(load.p50),
        ms(load.p99),
    );
    let (batch, batch_ms) = pipeline.transactions().await;
    let frame = pipeline.frame_events().await;
    println!(
        "      {frame:.1} events per JetStream message; {batch:.0} events and {batch_ms:.1} ms per transaction; CPU (% of one core): {}",
        cpu.summary()
    );
    let name = |what: &str| format!("{workers} {what}");
    results.push(&name("accepted"), rate(load.accepted, load.elapsed));
    results.push(&name("end to end"), rate(applied, done - started));
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
    let (done, _) = wait_applied(env, &load).await;
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
    let frame = pipeline.frame_events().await;
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

async fn wide(events: usize, keys: usize, settings: &Settings, results: &mut Series) {
    let mut pipeline = Pipeline::start(0).await;
    let load = pipeline.send(&Settings { events, concurrency: 64, keys, ..*settings }, None).await;
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
    let (done, _) = wait_applied(&pipeline.env, &load).await;
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
        generator: if std::env::var("BENCH_CLIENT").as_deref() == Ok("builtin") {
            Generator::Builtin
        } else {
            Generator::Wrk
        },
        seconds: setting("BENCH_WRK_SECONDS", 15),
    };
    let runs = setting("BENCH_RUNS", 3);
    // The scale-out series, in the order measured (BENCH_WORKERS=4,3,2,1 runs it downwards).
    let series: Vec<usize> = std::env::var("BENCH_WORKERS").map_or_else(
        |_| (1..=setting("BENCH_MAX_WORKERS", 4)).collect(),
        |list| list.split(',').map(|n| n.trim().parse().expect("BENCH_WORKERS: worker counts, e.g. 4,3,2,1")).collect(),
    );
    let offered = setting("BENCH_RATE", 15_000) as f64;
    let seconds = setting("BENCH_SECONDS", 20) as u64;
    let closed_loop = match settings.generator {
        Generator::Wrk => format!("wrk for {} s", settings.seconds),
        Generator::Builtin => format!("{} events", settings.events),
    };
    println!(
        "pipeline benchmark ({phases:?}): closed loops {closed_loop}, {} in flight, {} dedup keys, {runs} runs, on {} cores",
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
                    for &workers in &series {
                        scale(&settings, workers, &mut results).await;
                    }
                }
                "steady" => steady(offered, seconds, &settings, &mut results).await,
                "wide" => {
                    let (events, keys) = (setting("BENCH_WIDE_EVENTS", 500_000), setting("BENCH_WIDE_KEYS", 100_000));
                    wide(events, keys, &settings, &mut results).await;
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
