//! Query benchmark: 1,000,000 incidents over 100 services (with ~2,000,000 event rows and
//! 50,000 timeline notes), the release `opssentinal-query-api` binary as its own process, and
//! the common dashboard queries at 16 requests in flight:
//! 1. open + acknowledged, newest first, limit 50;
//! 2. one service's incidents, newest first, limit 50 (a random service per request);
//! 3. cursor paging: walking 10 pages of 50 of the full listing.
//!
//! Every answer carries the exact `total`. `scripts/bench.sh query` builds and runs it; settings:
//! BENCH_INCIDENTS (1000000), BENCH_REQUESTS (2000 per query and run), BENCH_CONCURRENCY (16),
//! BENCH_RUNS (3).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::TestEnv;
use e2e::bench::{READY, median, ms, quantile, setting};
use e2e::servers::ServiceProcess;

async fn load(env: &TestEnv, incidents: usize) {
    let started = Instant::now();
    let statements = [
        "insert into services (id, name, routing_key)
         select 'svc_bench_' || lpad(g::text, 3, '0'), 'Service ' || g, md5(g::text) from generate_series(1, 100) g",
        // Most incidents are old and resolved; the newest ~4% are open or acknowledged, plus a
        // few forgotten old ones.
        "insert into incidents (id, service_id, dedup_key, title, status, urgency, alert_count, opened_seq,
                                created_at, updated_at, acknowledged_at, resolved_at)
         select 'inc_bench_' || lpad(g::text, 9, '0'), 'svc_bench_' || lpad((1 + g % 100)::text, 3, '0'), 'key-' || g,
                'Incident ' || g, s.status, (array['HIGH', 'MEDIUM', 'LOW'])[1 + g % 3], 1 + g % 3, g, c.at, c.at + interval '5 minutes',
                case when s.status <> 'OPEN' then c.at + interval '2 minutes' end,
                case when s.status = 'RESOLVED' then c.at + interval '5 minutes' end
         from generate_series(1, $1) g
         cross join lateral (select now() - (($1 - g) * interval '8 seconds') as at) c
         cross join lateral (select case
                when g > $1 * 0.96 and g % 3 = 0 then 'OPEN'
                when g > $1 * 0.96 and g % 3 = 1 then 'ACKNOWLEDGED'
                when g % 997 = 0 then 'OPEN'
                else 'RESOLVED' end as status) s",
        // One trigger per alert, and the resolve of resolved incidents.
        "insert into events (event_id, seq, service_id, dedup_key, action, payload, received_at, outcome, incident_id)
         select gen_random_uuid(), i.opened_seq * 4 + n, i.service_id, i.dedup_key, 'trigger',
                jsonb_build_object('summary', i.title, 'source', 'bench', 'severity', 'critical'),
                i.created_at + n * interval '1 second', case when n = 0 then 'created' else 'absorbed' end, i.id
         from incidents i cross join lateral generate_series(0, i.alert_count - 2) n",
        "insert into events (event_id, seq, service_id, dedup_key, action, received_at, outcome, incident_id)
         select gen_random_uuid(), i.opened_seq * 4 + 3, i.service_id, i.dedup_key, 'resolve', i.resolved_at, 'resolved', i.id
         from incidents i where i.status = 'RESOLVED'",
        "insert into incident_timeline (incident_id, at, kind, message)
         select id, created_at + interval '1 minute', 'note', 'looking into it' from incidents where opened_seq % 20 = 0",
    ];
    for sql in statements {
        let query = sqlx::query(sql);
        let query = if sql.contains("$1") { query.bind(incidents as i64) } else { query };
        query.execute(&env.pool).await.expect("load");
    }
    // Fold the counts the bulk load produced (a running worker does this every second), then
    // vacuum, as a long-running database would be.
    worker::roles::upkeep::fold_count_deltas(&env.pool).await.expect("fold counts");
    sqlx::query("vacuum analyze").execute(&env.pool).await.expect("vacuum");
    let (events, timeline): (i64, i64) =
        sqlx::query_as("select (select count(*) from events), (select count(*) from incident_timeline)")
            .fetch_one(&env.pool)
            .await
            .expect("counts");
    println!(
        "loaded {incidents} incidents over 100 services, {events} events, {timeline} timeline notes in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// What one benchmark request is.
#[derive(Clone, Copy)]
enum Query {
    OpenNewest,
    ByService,
    /// A walk of 10 pages; every page counts as one request.
    CursorWalk,
}

async fn run(base: &str, key: &str, query: Query, requests: usize, concurrency: usize) -> (f64, Duration, Duration) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, next, base, key) = (http.clone(), next.clone(), base.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let get = |url: String| {
                let (http, key) = (&http, &key);
                async move {
                    let sent = Instant::now();
                    let response = http.get(url).bearer_auth(key).send().await.expect("request");
                    assert_eq!(response.status(), 200);
                    let body: serde_json::Value = response.json().await.expect("json");
                    assert!(body["total"].as_i64().is_some_and(|t| t > 0), "exact total");
                    (sent.elapsed(), body)
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match query {
                    Query::OpenNewest | Query::ByService if i >= requests => return latencies,
                    Query::CursorWalk if i >= requests / 10 => return latencies,
                    Query::OpenNewest => {
                        latencies.push(get(format!("{base}/api/incidents?status=OPEN,ACKNOWLEDGED&limit=50")).await.0);
                    }
                    Query::ByService => {
                        let service = format!("svc_bench_{:03}", 1 + (i * 37) % 100);
                        latencies.push(get(format!("{base}/api/incidents?serviceId={service}&limit=50")).await.0);
                    }
                    Query::CursorWalk => {
                        let mut url = format!("{base}/api/incidents?limit=50");
                        for _ in 0..10 {
                            let (latency, body) = get(url.clone()).await;
                            latencies.push(latency);
                            let cursor = body["pagination"]["nextCursor"].as_str().expect("more pages").to_owned();
                            url = format!("{base}/api/incidents?limit=50&cursor={cursor}");
                        }
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    (latencies.len() as f64 / elapsed.as_secs_f64(), quantile(&latencies, 0.5), quantile(&latencies, 0.99))
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let incidents = setting("BENCH_INCIDENTS", 1_000_000);
    let requests = setting("BENCH_REQUESTS", 2000);
    let concurrency = setting("BENCH_CONCURRENCY", 16);
    let runs = setting("BENCH_RUNS", 3);
    let env = TestEnv::new().await;
    let key = env.api_key(common::auth::Role::Admin, None, Some(100_000_000)).await;
    load(&env, incidents).await;
    let query_api = ServiceProcess::start("opssentinal-query-api", &env.service_env());
    query_api.wait_ready(&env.http, READY).await;
    let base = query_api.url();
    println!("{requests} requests per query and run, {concurrency} in flight, {runs} runs");
    for (name, query) in [
        ("open+acknowledged, newest first", Query::OpenNewest),
        ("one service, newest first", Query::ByService),
        ("cursor paging, 10 pages deep", Query::CursorWalk),
    ] {
        run(&base, &key, query, requests / 4, concurrency).await; // warm-up
        let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (rate, p50, p99) = run(&base, &key, query, requests, concurrency).await;
            println!("  {name}: {rate:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", ms(p50), ms(p99));
            rates.push(rate);
            p50s.push(ms(p50));
            p99s.push(ms(p99));
        }
        println!("median {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", median(rates), median(p50s), median(p99s));
    }
}
