//! Pipeline benchmark: events over HTTP into the real `opssentinal-ingest` and
//! `opssentinal-worker` release binaries (separate processes), against local PostgreSQL, Redis
//! and NATS, in an isolated database, stream and key prefix.
//!
//! Per run it measures, on a fresh environment:
//! 1. ingest alone (no worker running): accepted events/s and request latency p50/p99;
//! 2. the worker alone draining that backlog: applied events/s;
//! 3. both at once: accepted events/s, and events/s from the first request until the last event
//!    was applied.
//!
//! `scripts/bench.sh` builds the binaries and runs it. Settings (environment): BENCH_EVENTS
//! (default 100000), BENCH_CONCURRENCY (64), BENCH_KEYS (1000), BENCH_RUNS (3).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::bench::{median, ms, quantile, setting, spawn, wait_ready};
use e2e::servers::free_port;
use e2e::{TestEnv, trigger, wait_until};

struct Load {
    accepted: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

/// Sends `events` triggers over `keys` dedup keys with `concurrency` requests in flight.
async fn send(base: &str, key: &str, routing_key: &str, events: usize, concurrency: usize, keys: usize) -> Load {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, next) = (http.clone(), next.clone());
        let (url, key, rk) = (format!("{base}/api/events"), key.to_owned(), routing_key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return latencies;
                }
                let body = trigger(&rk, &format!("bench-{}", i % keys), "benchmark alert");
                let sent = Instant::now();
                let response = http.post(&url).bearer_auth(&key).json(&body).send().await.expect("request");
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
/// consumer rather than counting rows so the measurement costs PostgreSQL nothing; then checks
/// that all `n` events are in the database.
async fn wait_applied(env: &TestEnv, n: usize) -> Instant {
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.expect("nats"));
    wait_until(Duration::from_secs(900), "the workers to drain the stream", || {
        let js = js.clone();
        async move {
            let consumer = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    &env.consumer,
                    &env.nats.stream,
                )
                .await;
            match consumer {
                Ok(mut c) => c.info().await.is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0),
                Err(_) => false,
            }
        }
    })
    .await;
    let done = Instant::now();
    assert_eq!(env.applied_events().await, n as i64, "every accepted event applied");
    done
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[derive(Default)]
struct Results {
    ingest_rate: Vec<f64>,
    ingest_p50: Vec<f64>,
    ingest_p99: Vec<f64>,
    drain_rate: Vec<f64>,
    both_ingest_rate: Vec<f64>,
    both_p50: Vec<f64>,
    both_p99: Vec<f64>,
    end_to_end_rate: Vec<f64>,
}

async fn one_run(events: usize, concurrency: usize, keys: usize, results: &mut Results) {
    // Phase 1 and 2: ingest alone, then a worker alone drains the backlog.
    let env = TestEnv::new().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(100_000_000)).await;
    let service = env.service("bench").await;
    let ingest_port = free_port();
    let _ingest = spawn(&env, "opssentinal-ingest", "INGEST_LISTEN", ingest_port);
    wait_ready(&env.http, ingest_port).await;
    let base = format!("http://127.0.0.1:{ingest_port}");
    let load = send(&base, &key, &service.routing_key, events, concurrency, keys).await;
    println!(
        "  ingest alone:   {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms",
        rate(load.accepted, load.elapsed),
        ms(load.p50),
        ms(load.p99)
    );
    results.ingest_rate.push(rate(load.accepted, load.elapsed));
    results.ingest_p50.push(ms(load.p50));
    results.ingest_p99.push(ms(load.p99));
    let worker_port = free_port();
    let drain_started = Instant::now();
    let worker = spawn(&env, "opssentinal-worker", "WORKER_LISTEN", worker_port);
    let drained = wait_applied(&env, load.accepted).await;
    println!("  worker drain:   {:>8.0} events/s applied", rate(load.accepted, drained - drain_started));
    results.drain_rate.push(rate(load.accepted, drained - drain_started));
    drop(worker);
    env.cleanup().await;

    // Phase 3: both at once.
    let env = TestEnv::new().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(100_000_000)).await;
    let service = env.service("bench").await;
    let ingest_port = free_port();
    let _ingest = spawn(&env, "opssentinal-ingest", "INGEST_LISTEN", ingest_port);
    let worker_port = free_port();
    let _worker = spawn(&env, "opssentinal-worker", "WORKER_LISTEN", worker_port);
    wait_ready(&env.http, ingest_port).await;
    wait_ready(&env.http, worker_port).await;
    let base = format!("http://127.0.0.1:{ingest_port}");
    let started = Instant::now();
    let load = send(&base, &key, &service.routing_key, events, concurrency, keys).await;
    let done = wait_applied(&env, load.accepted).await;
    println!(
        "  both at once:   {:>8.0} events/s accepted  p50 {:.2} ms  p99 {:.2} ms; all applied after {:.1} s ({:.0} events/s end to end)",
        rate(load.accepted, load.elapsed),
        ms(load.p50),
        ms(load.p99),
        (done - started).as_secs_f64(),
        rate(load.accepted, done - started)
    );
    results.both_ingest_rate.push(rate(load.accepted, load.elapsed));
    results.both_p50.push(ms(load.p50));
    results.both_p99.push(ms(load.p99));
    results.end_to_end_rate.push(rate(load.accepted, done - started));
    env.cleanup().await;
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench --list` / `cargo test --benches` probe
    }
    let events = setting("BENCH_EVENTS", 100_000);
    let concurrency = setting("BENCH_CONCURRENCY", 64);
    let keys = setting("BENCH_KEYS", 1000);
    let runs = setting("BENCH_RUNS", 3);
    println!("pipeline benchmark: {events} events, {concurrency} in flight, {keys} dedup keys, {runs} runs");
    let mut results = Results::default();
    for run in 1..=runs {
        println!("run {run}:");
        one_run(events, concurrency, keys, &mut results).await;
    }
    println!("median of {runs} runs:");
    println!(
        "  ingest alone:  {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms",
        median(results.ingest_rate),
        median(results.ingest_p50),
        median(results.ingest_p99)
    );
    println!("  worker drain:  {:.0} events/s applied", median(results.drain_rate));
    println!(
        "  both at once:  {:.0} events/s accepted, p50 {:.2} ms, p99 {:.2} ms, {:.0} events/s end to end",
        median(results.both_ingest_rate),
        median(results.both_p50),
        median(results.both_p99),
        median(results.end_to_end_rate)
    );
}
