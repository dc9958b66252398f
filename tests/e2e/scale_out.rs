//! DESIGN §1.3, scale out: real worker processes join, leave (SIGTERM) and die (SIGKILL) while
//! events flow, also onto a backlog; each partition is owned by exactly one worker again within
//! seconds, a clean join or leave applies nothing out of order (no re-fold), and every key ends
//! as the sequential model says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::config::partition_of;
use common::event::EventEnvelope;
use e2e::TestEnv;
use e2e::model::{incidents_as_modelled, model, random_event};
use e2e::servers::ServiceProcess;
use ingest::publisher::{Company, Publisher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// A worker binary with its metrics endpoint on its own port.
fn start_worker(env: &TestEnv) -> ServiceProcess {
    let mut vars = env.service_env();
    vars.push(("WORKER_BATCH_SIZE", "100".into()));
    ServiceProcess::start("opssentinal-worker", &vars)
}

/// This process's `worker_refolds_total` (0 before its first re-fold).
async fn refolds(worker: &ServiceProcess, env: &TestEnv) -> u64 {
    worker.metric(&env.http, "worker_refolds_total").await as u64
}

/// Waits until `members` workers share every partition, each owned once; returns how long it took.
async fn wait_for_even_ownership(env: &TestEnv, members: i64, what: &str) -> Duration {
    let started = Instant::now();
    env.wait_for_even_ownership(members, what).await;
    started.elapsed()
}

/// A producer of random trigger/acknowledge/resolve events over `keys`, one at a time (so each
/// key's record is its stream order), pausing `pause` between events, until `stop`; returns what
/// it sent, by key.
fn produce(
    publisher: &Publisher,
    service_id: &str,
    keys: Vec<String>,
    seed: u64,
    pause: Duration,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<BTreeMap<String, Vec<EventEnvelope>>> {
    let (publisher, service_id, stop) = (publisher.clone(), service_id.to_owned(), stop.clone());
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sent: BTreeMap<String, Vec<_>> = BTreeMap::new();
        while !stop.is_cancelled() {
            let key = &keys[rng.random_range(0..keys.len())];
            let event = random_event(&mut rng, &service_id, key);
            publisher.publish(&event, Company::Shared).await.expect("accepted");
            sent.entry(key.clone()).or_default().push(event);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        sent
    })
}

async fn wait_for_more_applied(env: &TestEnv, more: i64) {
    let target = env.applied_events().await + more;
    env.wait_for_applied(target, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_leaving_and_dying_mid_stream_keep_every_key_in_order() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");

    let mut workers: Vec<ServiceProcess> = (0..3).map(|_| start_worker(&env)).collect();
    wait_for_even_ownership(&env, 3, "three workers to share the partitions").await;

    // Producers: each owns some keys and publishes their random events one at a time, so each
    // key's stream order is the order recorded here.
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    let publisher = Publisher::new(client, js, &env.nats);
    const PRODUCERS: u64 = 16;
    const KEYS_PER_PRODUCER: usize = 12;
    let stop = CancellationToken::new();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let keys: Vec<String> = (0..KEYS_PER_PRODUCER).map(|k| format!("key-{p}-{k}")).collect();
            produce(&publisher, &service.id, keys, seed.wrapping_add(p), Duration::ZERO, &stop)
        })
        .collect();

    wait_for_more_applied(&env, 1000).await;
    workers.push(start_worker(&env));
    let joined = wait_for_even_ownership(&env, 4, "a fourth worker to take its share").await;

    wait_for_more_applied(&env, 1000).await;
    let mut leaving = workers.remove(0);
    let mut clean_refolds = refolds(&leaving, &env).await;
    leaving.signal("-TERM");
    let left = wait_for_even_ownership(&env, 3, "the others to take the share of a worker stopped by SIGTERM").await;
    assert!(
        leaving.exited_within(Duration::from_secs(15)).await.is_some(),
        "the worker did not exit within 15 s of SIGTERM"
    );

    wait_for_more_applied(&env, 1000).await;
    for worker in &workers {
        clean_refolds += refolds(worker, &env).await;
    }
    assert_eq!(clean_refolds, 0, "a clean join and leave re-folded keys, seed {seed}");
    let mut refolded: u64 = 0;
    let dying = workers.remove(0);
    dying.signal("-KILL");
    let killed_at = Instant::now();
    let died = wait_for_even_ownership(&env, 2, "the others to take the share of a worker killed by SIGKILL").await;
    drop(dying);

    wait_for_more_applied(&env, 1000).await;
    stop.cancel();
    let mut recorded = BTreeMap::new();
    for producer in producers {
        recorded.extend(producer.await.unwrap());
    }
    env.wait_until_drained(Duration::from_secs(120)).await;
    let caught_up = killed_at.elapsed();

    let expected = model(&recorded);
    let total: usize = recorded.values().map(Vec::len).sum();
    assert_eq!(env.applied_events().await, total as i64, "each event stored once, seed {seed}");
    assert_eq!(incidents_as_modelled(&env.pool).await, expected, "seed {seed}");
    for worker in &workers {
        refolded += refolds(worker, &env).await;
    }
    println!(
        "{total} events; hand-over after join {joined:?}, SIGTERM {left:?}, SIGKILL {died:?}; \
         drained {caught_up:?} after the kill; re-folded keys after the kill: {refolded}"
    );
}

/// A backlog built while no worker runs, drained by one worker and then by four while live events
/// for the same keys keep arriving: every hand-over is clean (no re-fold anywhere), the live
/// events keep being applied, and every key ends as the sequential model says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_joining_a_backlog_under_live_load_apply_nothing_out_of_order() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    common::nats::ensure_streams(&js, &env.nats).await.unwrap();
    let publisher = Publisher::new(client, js, &env.nats);
    let keys: Vec<String> = (0..64).map(|k| format!("key-{k}")).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut recorded: BTreeMap<String, Vec<_>> = BTreeMap::new();
    const BACKLOG: usize = 20_000;
    for _ in 0..BACKLOG {
        let key = &keys[rng.random_range(0..keys.len())];
        let event = random_event(&mut rng, &service.id, key);
        publisher.publish(&event, Company::Shared).await.expect("accepted");
        recorded.entry(key.clone()).or_default().push(event);
    }

    // Live senders for the same keys, one per group of keys, each publishing one event at a time.
    let stop = CancellationToken::new();
    let senders: Vec<_> = (0..8u64)
        .map(|group| {
            let keys: Vec<String> = keys.iter().skip(group as usize).step_by(8).cloned().collect();
            produce(&publisher, &service.id, keys, seed.wrapping_add(group + 1), Duration::from_millis(2), &stop)
        })
        .collect();

    let mut workers = vec![start_worker(&env)];
    wait_for_even_ownership(&env, 1, "one worker to own every partition").await;
    wait_for_more_applied(&env, 1000).await;
    let backlog_at_join = env.backlog().await.unwrap_or(0);
    workers.extend((0..3).map(|_| start_worker(&env)));
    wait_for_even_ownership(&env, 4, "four workers to share the partitions").await;
    wait_for_more_applied(&env, 2000).await;
    stop.cancel();
    for sender in senders {
        for (key, events) in sender.await.unwrap() {
            recorded.entry(key).or_default().extend(events);
        }
    }
    env.wait_until_drained(Duration::from_secs(120)).await;

    let total: usize = recorded.values().map(Vec::len).sum();
    assert!(total > BACKLOG, "no live event was sent");
    assert!(backlog_at_join > 0, "the backlog was gone before the others joined");
    assert_eq!(env.applied_events().await, total as i64, "each event stored once, seed {seed}");
    assert_eq!(incidents_as_modelled(&env.pool).await, model(&recorded), "seed {seed}");
    let mut refolded = 0;
    for worker in &workers {
        refolded += refolds(worker, &env).await;
    }
    assert_eq!(refolded, 0, "workers joining a backlog re-folded keys, seed {seed}");
}

/// A partition's consumer deleted from under its worker (by hand, say) is re-created by that
/// worker, and the events on its partition are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_consumer_deleted_from_under_its_worker_is_re_created() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let _worker = start_worker(&env);
    wait_for_even_ownership(&env, 1, "the worker to own every partition").await;
    let all: Vec<u32> = (0..env.nats.partitions).collect();
    e2e::wait_until(Duration::from_secs(10), "a consumer for every partition", || async {
        env.partition_consumers().await == all
    })
    .await;
    let deleted = common::nats::consumer_name(&env.consumer, 0);

    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    js.get_stream(&env.nats.stream).await.unwrap().delete_consumer(&deleted).await.unwrap();
    let publisher = Publisher::new(client, js, &env.nats);
    // Keys on every partition, so some are on the partition whose consumer went.
    const EVENTS: i64 = 200;
    for k in 0..EVENTS {
        let event = e2e::envelope(&service.id, &format!("key-{k}"), common::event::EventAction::Trigger, "down");
        publisher.publish(&event, Company::Shared).await.expect("accepted");
    }
    let on_partition =
        (0..EVENTS).filter(|k| partition_of(&service.id, &format!("key-{k}"), env.nats.partitions) == 0).count();
    assert!(on_partition > 0, "no key fell on partition 0");
    env.wait_for_applied(EVENTS, Duration::from_secs(30)).await;
    assert!(env.partition_consumers().await.contains(&0), "{deleted} was not re-created");
}
