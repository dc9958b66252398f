//! Pipeline benchmark: events over HTTP into the real `opssentinal-ingest` and
//! `opssentinal-worker` release binaries (separate processes), against local PostgreSQL, Redis
//! and NATS, each run in a fresh database, stream and key prefix. Phases (all by default, or
//! those named as arguments: `scripts/bench.sh pipeline scale steady`):
//!
//! - `ingest`: ingest alone (no worker): accepted events/s, request latency p50/p99; then one
//!   worker alone drains that backlog: applied events/s.
//! - `scale`: ingest and N = 1..=BENCH_MAX_WORKERS worker processes (or the counts BENCH_WORKERS
//!   lists, in its order, e.g. `4,3,2,1`), the workers started together with the load, closed
//!   loop (BENCH_CONCURRENCY requests in flight): accepted/s, end to end/s (first request until
//!   every event is applied), p50/p99, re-folded keys per 10,000 events, and CPU by process.
//! - `backlog`: BENCH_BACKLOG_EVENTS (300,000) events accepted with no worker running; then one
//!   worker, and BENCH_BACKLOG_JOINING (3) more joining BENCH_JOIN_SECONDS (20) later, while live
//!   senders keep sending BENCH_LIVE_RATE (500) events/s for the same keys: the drain rate before
//!   and after the join, the live senders' accepted rate, re-folds, and a check that every key
//!   ends as the sequential model says (one open incident holding all of its triggers).
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
//! (1000 dedup keys), BENCH_PARTITIONS (12, the default NATS_PARTITIONS), BENCH_FRAME_EVENTS (1024,
//! the default NATS_MAX_FRAME_EVENTS; 1 publishes every event alone), BENCH_WORKER_THREADS and
//! BENCH_INGEST_THREADS (the workers' and ingest's tokio threads, TOKIO_WORKER_THREADS; one per
//! core by default), BENCH_WORKER_CPU (unset: each worker process held to that share of one core
//! by a cgroup of its own, e.g. 0.05, so that workers are the bottleneck), BENCH_PRELOAD_ROWS (0:
//! old events put in the log before each run, to show that rates do not depend on the log's size).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::bench::{CpuCap, CpuClock, READY, median, ms, quantile, setting};
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
/// Stops early, between requests, once `stop` is cancelled.
#[expect(clippy::too_many_arguments, reason = "a load generator's knobs, each a plain number or name")]
async fn send(
    base: &str,
    key: &str,
    routing_key: &str,
    events: usize,
    concurrency: usize,
    keys: usize,
    rate: Option<f64>,
    stop: &tokio_util::sync::CancellationToken,
) -> Load {
    // Bodies and the credential made once, so the load generator spends its CPU on requests.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new((0..keys).map(|k| body(routing_key, k).into()).collect());
    let authorization = format!("Bearer {key}");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let address = base.strip_prefix("http://").expect("an http:// address").to_owned();
    for _ in 0..concurrency {
        let (next, bodies, address, authorization, stop) =
            (next.clone(), bodies.clone(), address.clone(), authorization.clone(), stop.clone());
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
                if i >= events || stop.is_cancelled() {
                    return latencies;
                }
                if let Some(rate) = rate {
                    let at = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = stop.cancelled() => return latencies,
                    }
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
    let applied = applied_count(env).await;
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
    /// The workers' CPU caps (BENCH_WORKER_CPU), removed after the workers stopped.
    caps: Vec<CpuCap>,
}

/// A process's variables with its tokio threads (`TOKIO_WORKER_THREADS`) as `setting` says, if set.
fn threads(mut vars: Vec<(&'static str, String)>, setting: &str) -> Vec<(&'static str, String)> {
    if let Ok(threads) = std::env::var(setting) {
        vars.push(("TOKIO_WORKER_THREADS", threads));
    }
    vars
}

impl Pipeline {
    /// Ingest, ready, and no worker yet.
    async fn start() -> Self {
        let mut env = TestEnv::new().await;
        env.nats.partitions = u32::try_from(setting("BENCH_PARTITIONS", 12)).expect("BENCH_PARTITIONS");
        env.nats.max_frame_events = setting("BENCH_FRAME_EVENTS", 1024);
        let key = env.api_key(common::auth::Role::Admin, None, Some(100_000_000)).await;
        let service = env.service("bench").await;
        preload(&env, &service.id, setting("BENCH_PRELOAD_ROWS", 0)).await;
        let routing_key = service.routing_key;
        let ingest = ServiceProcess::start("opssentinal-ingest", &threads(env.service_env(), "BENCH_INGEST_THREADS"));
        ingest.wait_ready(&env.http, READY).await;
        Self { base: ingest.url(), env, key, routing_key, ingest, workers: Vec::new(), caps: Vec::new() }
    }

    /// Starts a worker process (held to BENCH_WORKER_CPU of a core, if set) without waiting for it.
    fn spawn_worker(&mut self) {
        let vars = threads(self.env.service_env(), "BENCH_WORKER_THREADS");
        let worker = ServiceProcess::start("opssentinal-worker", &vars);
        if let Some(cores) = std::env::var("BENCH_WORKER_CPU").ok().and_then(|c| c.parse::<f64>().ok()) {
            self.caps.push(CpuCap::apply(worker.pid(), cores));
        }
        self.workers.push(worker);
    }

    /// Starts a worker process and waits until it is ready.
    async fn add_worker(&mut self) {
        self.spawn_worker();
        self.workers.last().expect("a worker").wait_ready(&self.env.http, READY).await;
    }

    async fn send(&self, settings: &Settings, rate: Option<f64>) -> Load {
        let never = tokio_util::sync::CancellationToken::new();
        send(
            &self.base,
            &self.key,
            &self.routing_key,
            settings.events,
            settings.concurrency,
            settings.keys,
            rate,
            &never,
        )
        .await
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

    /// The `q` quantile of a histogram over all workers, as the upper bound of its bucket.
    async fn worker_quantile(&self, name: &str, q: f64) -> Option<f64> {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for worker in &self.workers {
            for (le, count) in worker.histogram(&self.env.http, name).await {
                match buckets.iter_mut().find(|(l, _)| *l == le) {
                    Some(bucket) => bucket.1 += count,
                    None => buckets.push((le, count)),
                }
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        buckets.into_iter().find(|(_, count)| *count >= q * total).map(|(le, _)| le)
    }

    /// Waits (at most 60 s) until the relay has published every change the outbox holds, and
    /// reports how long changes took from their transaction to the change stream.
    async fn relay_lag(&self) -> (f64, f64) {
        e2e::wait_until(Duration::from_secs(60), "the outbox to be relayed", || async {
            sqlx::query_scalar::<_, i64>("select count(*) from incident_changes")
                .fetch_one(&self.env.pool)
                .await
                .is_ok_and(|n| n == 0)
        })
        .await;
        let p50 = self.worker_quantile("change_relay_lag_seconds", 0.5).await.unwrap_or(f64::NAN);
        let p99 = self.worker_quantile("change_relay_lag_seconds", 0.99).await.unwrap_or(f64::NAN);
        (p50 * 1000.0, p99 * 1000.0)
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
        self.clock_with(Vec::new())
    }

    /// A CPU clock over ingest, the workers and `more` named processes.
    fn clock_with(&self, more: Vec<(String, u32)>) -> CpuClock {
        let mut named = vec![("ingest".to_owned(), self.ingest.pid())];
        named.extend(self.workers.iter().enumerate().map(|(i, w)| (format!("worker {}", i + 1), w.pid())));
        named.extend(more);
        CpuClock::start(named)
    }

    async fn stop(self) {
        drop(self.workers);
        drop(self.caps);
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
    let mut pipeline = Pipeline::start().await;
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
    let mut pipeline = Pipeline::start().await;
    // The workers start together with the load, as when an operator scales out under it.
    for _ in 0..workers {
        pipeline.spawn_worker();
    }
    let clock = pipeline.clock();
    let started = Instant::now();
    let load = pipeline.closed_loop(settings).await;
    let (done, applied) = wait_applied(&pipeline.env, &load).await;
    let cpu = clock.stop();
    let refolds = pipeline.refolds().await;
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
    let (lag_p50, lag_p99) = pipeline.relay_lag().await;
    let changes = pipeline.worker_metric("changes_relayed_total").await / applied as f64;
    println!(
        "      change outbox to change stream: p50 ≤ {lag_p50:.0} ms, p99 ≤ {lag_p99:.0} ms (histogram bucket bounds); {changes:.2} changes per event"
    );
    let name = |what: &str| format!("{workers} {what}");
    results.push(&name("accepted"), rate(load.accepted, load.elapsed));
    results.push(&name("end to end"), rate(applied, done - started));
    results.push(&name("p50"), ms(load.p50));
    results.push(&name("p99"), ms(load.p99));
    results.push(&name("refolds per 10k"), per_10k);
    results.push(&name("relay lag p99 ms"), lag_p99);
    for (process, percent) in cpu.percent() {
        results.push(&name(&format!("cpu {process}")), *percent);
    }
    pipeline.stop().await;
}

async fn steady(offered: f64, seconds: u64, settings: &Settings, results: &mut Series) {
    let mut pipeline = Pipeline::start().await;
    pipeline.add_worker().await;
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
    let (lag_p50, lag_p99) = pipeline.relay_lag().await;
    println!(
        "      change outbox to change stream: p50 ≤ {lag_p50:.0} ms, p99 ≤ {lag_p99:.0} ms (histogram bucket bounds)"
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
    let mut pipeline = Pipeline::start().await;
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

/// Events of the bench's keys applied so far (a count PostgreSQL answers from the index).
async fn applied_count(env: &TestEnv) -> usize {
    let applied: i64 = sqlx::query_scalar("select count(*) from events where dedup_key like 'bench-%'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    usize::try_from(applied).expect("count")
}

/// A backlog built with no worker running, drained by one worker and then by more joining it,
/// while live events for the same keys keep arriving.
async fn backlog(settings: &Settings, results: &mut Series) {
    let events = setting("BENCH_BACKLOG_EVENTS", 300_000);
    let joining = setting("BENCH_BACKLOG_JOINING", 3);
    let join_after = Duration::from_secs(setting("BENCH_JOIN_SECONDS", 20) as u64);
    let live_rate = setting("BENCH_LIVE_RATE", 500) as f64;
    let mut pipeline = Pipeline::start().await;
    let built = pipeline.send(&Settings { events, ..*settings }, None).await;
    println!("  backlog of {} events built at {:.0}/s", built.accepted, rate(built.accepted, built.elapsed));

    // Live senders: an open loop at BENCH_LIVE_RATE over the same keys, until the backlog is gone.
    let stop_live = tokio_util::sync::CancellationToken::new();
    let live = {
        let (base, key, rk, keys) =
            (pipeline.base.clone(), pipeline.key.clone(), pipeline.routing_key.clone(), settings.keys);
        let (horizon, stop) = ((live_rate * 3600.0) as usize, stop_live.clone());
        tokio::spawn(async move { send(&base, &key, &rk, horizon, 16, keys, Some(live_rate), &stop).await })
    };
    let clock = pipeline.clock();
    let started = Instant::now();
    pipeline.add_worker().await;
    tokio::time::sleep_until((started + join_after).into()).await;
    let before_join = applied_count(&pipeline.env).await;
    let joined = Instant::now();
    for _ in 0..joining {
        pipeline.spawn_worker();
    }
    // Drained: every backlog event applied (the live ones keep coming meanwhile).
    e2e::wait_until(Duration::from_secs(1800), "the backlog to be drained", || async {
        applied_count(&pipeline.env).await >= built.accepted
    })
    .await;
    let drained = Instant::now();
    let after_join = applied_count(&pipeline.env).await;
    stop_live.cancel();
    let live = live.await.expect("live senders");
    // The live events that were accepted before the senders stopped: applied within seconds.
    let tail = Instant::now();
    pipeline.env.wait_until_drained(Duration::from_secs(300)).await;
    let tail = tail.elapsed();
    let cpu = clock.stop();
    let applied = applied_count(&pipeline.env).await;
    assert_eq!(applied, built.accepted + live.accepted, "every accepted event applied");
    let live_accepted_rate = rate(live.accepted, live.elapsed);
    let before = rate(before_join, joined - started);
    let after = rate(after_join - before_join, drained - joined);
    let refolds = pipeline.refolds().await;
    // The sequential model of triggers only: each key one open incident holding all of its events.
    let wrong: i64 = sqlx::query_scalar(
        "select count(*) from (select e.dedup_key, count(*) as n from events e where e.dedup_key like 'bench-%' group by 1) e
         full join (select dedup_key, count(*) as incidents, sum(alert_count) as alerts,
                           bool_and(status = 'OPEN') as open from incidents group by 1) i using (dedup_key)
         where i.incidents is distinct from 1 or i.alerts is distinct from e.n or not i.open",
    )
    .fetch_one(&pipeline.env.pool)
    .await
    .expect("model check");
    println!(
        "  1 worker: {before:>8.0} applied/s; after {joining} joined: {after:>8.0} applied/s ({:.2}x); \
         backlog drained {:.1} s after the first worker started; live {live_accepted_rate:.0} accepted/s \
         (p99 {:.1} ms), all applied {:.2} s after the senders stopped; re-folds {refolds}; keys not as modelled: {wrong}",
        after / before,
        (drained - started).as_secs_f64(),
        ms(live.p99),
        tail.as_secs_f64(),
    );
    println!("      CPU (% of one core): {}", cpu.summary());
    assert_eq!(wrong, 0, "keys whose incidents differ from the sequential model");
    results.push("backlog drain before join", before);
    results.push("backlog drain after join", after);
    results.push("backlog join speed-up", after / before);
    results.push("backlog drained seconds", (drained - started).as_secs_f64());
    results.push("backlog live accepted", live_accepted_rate);
    results.push("backlog refolds per 10k", refolds * 10_000.0 / applied as f64);
    pipeline.stop().await;
}

/// A process's resident memory in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

/// What the stream clients saw: when each follower received each change (by change id), and
/// how many streams are open.
#[derive(Default)]
struct Watched {
    open: AtomicUsize,
    arrivals: std::sync::Mutex<Vec<(String, Instant)>>,
}

/// Follows `GET /api/stream` until the task is aborted; a follower records when each change
/// arrived.
async fn watch(http: reqwest::Client, url: String, key: String, follower: bool, watched: Arc<Watched>) {
    let Ok(mut response) = http.get(&url).bearer_auth(&key).header("accept", "text/event-stream").send().await else {
        return;
    };
    if !response.status().is_success() {
        return;
    }
    watched.open.fetch_add(1, Ordering::Relaxed);
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if follower {
                let arrived = Instant::now();
                let change: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                if let Some(id) = change["id"].as_str() {
                    watched.arrivals.lock().expect("arrivals").push((id.to_owned(), arrived));
                }
            }
        }
    }
}

/// `BENCH_STREAMS` (1,000) Server-Sent Event streams open on one query-api process while the
/// pipeline runs at full speed: `BENCH_STREAM_FOLLOWERS` (10) follow every change of the loaded
/// service, the others watch a service without events (a dashboard per team). Reports the
/// pipeline's throughput, the followers' delivery latency (from the change's arrival at a plain
/// NATS subscriber of the change stream in this process to its arrival at the follower: what
/// query-api's fan-out adds), query-api's memory and CPU, and clients cut off.
async fn streams(settings: &Settings, results: &mut Series) {
    let mut pipeline = Pipeline::start().await;
    pipeline.add_worker().await;
    let query = ServiceProcess::start("opssentinal-query-api", &pipeline.env.service_env());
    query.wait_ready(&pipeline.env.http, READY).await;
    let (total, followers) = (setting("BENCH_STREAMS", 1000), setting("BENCH_STREAM_FOLLOWERS", 10));
    let loaded: String = sqlx::query_scalar("select id from services where routing_key = $1")
        .bind(&pipeline.routing_key)
        .fetch_one(&pipeline.env.pool)
        .await
        .expect("the loaded service");
    let quiet = pipeline.env.service("quiet").await.id;
    // At most 20 streams per API key.
    let mut keys = Vec::new();
    for _ in 0..total.div_ceil(20) {
        keys.push(pipeline.env.api_key(common::auth::Role::User, None, Some(100_000)).await);
    }
    let rss_idle = rss_mib(query.pid());
    // The reference: when each change reaches a plain subscriber of the change stream.
    let published = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, Instant>::new()));
    let nats = async_nats::connect(&pipeline.env.nats.url).await.expect("NATS");
    let mut subscription =
        nats.subscribe(format!("{}.changes.>", pipeline.env.nats.subject_prefix)).await.expect("subscribe");
    let reference = {
        let published = published.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = subscription.next().await {
                let arrived = Instant::now();
                let change: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                if let Some(id) = change["id"].as_str() {
                    published.lock().expect("published").insert(id.to_owned(), arrived);
                }
            }
        })
    };
    let watched = Arc::new(Watched::default());
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..total {
        let service = if i < followers { &loaded } else { &quiet };
        let url = format!("{}/api/stream?topics=incidents&serviceId={service}", query.url());
        clients.spawn(watch(http.clone(), url, keys[i / 20].clone(), i < followers, watched.clone()));
    }
    e2e::wait_until(Duration::from_secs(60), "every stream to open", || async {
        watched.open.load(Ordering::Relaxed) == total
    })
    .await;
    let rss_open = rss_mib(query.pid());
    let peak = Arc::new(std::sync::Mutex::new(rss_open));
    let sampler = {
        let (peak, pid) = (peak.clone(), query.pid());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = rss_mib(pid);
                let mut peak = peak.lock().expect("peak");
                *peak = peak.max(now);
            }
        })
    };
    let clock = pipeline.clock_with(vec![("query-api".to_owned(), query.pid())]);
    let started = Instant::now();
    let load = pipeline.closed_loop(settings).await;
    let (done, applied) = wait_applied(&pipeline.env, &load).await;
    pipeline.relay_lag().await;
    // The last changes reach the followers within a second of the relay publishing them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = clock.stop();
    sampler.abort();
    let open_at_end = watched.open.load(Ordering::Relaxed);
    clients.abort_all();
    reference.abort();
    let published = std::mem::take(&mut *published.lock().expect("published"));
    let arrivals = std::mem::take(&mut *watched.arrivals.lock().expect("arrivals"));
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(id, arrived)| Some(arrived.saturating_duration_since(*published.get(id)?)))
        .collect();
    latencies.sort();
    assert!(!latencies.is_empty(), "the followers received changes");
    let cut_off = query.metric(&pipeline.env.http, "stream_clients_cut_off_total").await;
    let peak = *peak.lock().expect("peak");
    println!(
        "  {total} streams ({followers} following the loaded service): {:>8.0} end to end/s; {} changes to the followers, \
         stream to follower p50 {:.1} ms p99 {:.1} ms; query-api RSS {rss_idle:.0} MiB idle, {rss_open:.0} MiB with the streams open, \
         {peak:.0} MiB at most under load; {cut_off:.0} cut off; CPU (% of one core): {}",
        rate(applied, done - started),
        arrivals.len(),
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        cpu.summary()
    );
    assert_eq!(open_at_end, total, "every stream stayed open");
    results.push("streams end to end", rate(applied, done - started));
    results.push("streams delivery p50 ms", ms(quantile(&latencies, 0.5)));
    results.push("streams delivery p99 ms", ms(quantile(&latencies, 0.99)));
    results.push("streams query-api peak RSS MiB", peak);
    drop(query);
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
                "backlog" => backlog(&settings, &mut results).await,
                "streams" => streams(&settings, &mut results).await,
                other => panic!("unknown phase {other:?}: ingest, scale, backlog, steady, wide or streams"),
            }
        }
    }
    println!("median of {runs} runs:");
    for (name, values) in &results.0 {
        println!("  {name:<40} {:>10.2}   (runs: {values:.0?})", results.median(name));
    }
}
