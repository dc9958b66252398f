//! DESIGN §1.3, scale out: real worker processes join, leave (SIGTERM) and die (SIGKILL) while
//! events flow; each partition is owned by exactly one worker again within seconds, and every
//! key ends as the sequential model says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::partition_of;
use e2e::TestEnv;
use e2e::model::{incidents_as_modelled, model, random_event};
use e2e::servers::ServiceProcess;
use ingest::publisher::{Company, Publisher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
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
    let recorded = Arc::new(Mutex::new(BTreeMap::new()));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (publisher, stop, recorded, service_id) =
            (publisher.clone(), stop.clone(), recorded.clone(), service.id.clone());
        producers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(p));
            let keys: Vec<String> = (0..KEYS_PER_PRODUCER).map(|k| format!("key-{p}-{k}")).collect();
            let mut events: BTreeMap<String, Vec<_>> = BTreeMap::new();
            while !stop.is_cancelled() {
                let key = &keys[rng.random_range(0..keys.len())];
                let event = random_event(&mut rng, &service_id, key);
                publisher.publish(&event, Company::Shared).await.expect("accepted");
                events.entry(key.clone()).or_default().push(event);
            }
            recorded.lock().await.extend(events);
        }));
    }

    wait_for_more_applied(&env, 1000).await;
    workers.push(start_worker(&env));
    let joined = wait_for_even_ownership(&env, 4, "a fourth worker to take its share").await;

    wait_for_more_applied(&env, 1000).await;
    let mut leaving = workers.remove(0);
    leaving.signal("-TERM");
    let left = wait_for_even_ownership(&env, 3, "the others to take the share of a worker stopped by SIGTERM").await;
    assert!(
        leaving.exited_within(Duration::from_secs(15)).await.is_some(),
        "the worker did not exit within 15 s of SIGTERM"
    );

    wait_for_more_applied(&env, 1000).await;
    let mut refolded: u64 = 0;
    let dying = workers.remove(0);
    refolded += refolds(&dying, &env).await;
    dying.signal("-KILL");
    let killed_at = Instant::now();
    let died = wait_for_even_ownership(&env, 2, "the others to take the share of a worker killed by SIGKILL").await;
    drop(dying);

    wait_for_more_applied(&env, 1000).await;
    stop.cancel();
    for producer in producers {
        producer.await.unwrap();
    }
    env.wait_until_drained(Duration::from_secs(120)).await;
    let caught_up = killed_at.elapsed();

    let expected = model(&*recorded.lock().await);
    let total: usize = recorded.lock().await.values().map(Vec::len).sum();
    assert_eq!(env.applied_events().await, total as i64, "each event stored once, seed {seed}");
    assert_eq!(incidents_as_modelled(&env.pool).await, expected, "seed {seed}");
    for worker in &workers {
        refolded += refolds(worker, &env).await;
        // What the benchmark waits for before it loads the workers.
        e2e::wait_until(Duration::from_secs(10), "each worker to report its ownership settled", || async {
            worker.metric(&env.http, "worker_members").await == 2.0
                && worker.metric(&env.http, "worker_settled").await == 1.0
        })
        .await;
    }
    // Stopped workers leave no consumers behind for nats-server to keep up to date.
    for mut worker in workers {
        worker.signal("-TERM");
        assert!(worker.exited_within(Duration::from_secs(15)).await.is_some(), "a worker did not exit after SIGTERM");
    }
    assert_eq!(env.block_consumers().await, Vec::new(), "consumers left after every worker stopped");
    println!(
        "{total} events; hand-over after join {joined:?}, SIGTERM {left:?}, SIGKILL {died:?}; \
         drained {caught_up:?} after the kill; re-folded keys in the surviving and killed workers: {refolded}"
    );
}

/// Three workers of 32 partitions own aligned shares of two blocks each; each has both of its
/// blocks framed on its first, so ingest sends the load on three subjects, one per worker; and a
/// lone worker has each of its blocks framed apart (one per lane).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_several_workers_has_its_share_framed_on_one_block() {
    let mut env = TestEnv::new().await;
    env.nats.partitions = 32;
    let mut workers: Vec<ServiceProcess> = (0..3).map(|_| start_worker(&env)).collect();
    wait_for_even_ownership(&env, 3, "three workers to share the partitions").await;
    for worker in &workers {
        e2e::wait_until(Duration::from_secs(10), "each worker to settle", || async {
            worker.metric(&env.http, "worker_settled").await == 1.0
        })
        .await;
    }
    // Settled workers have their consumers; one deleted late by a previous owner's timed-out
    // delete is re-created within a rebalance.
    let read = std::sync::Mutex::new(Vec::new());
    e2e::wait_until(Duration::from_secs(10), "two block consumers per worker", || async {
        let framings = env.block_framings().await;
        let six = framings.len() == 6;
        *read.lock().unwrap() = framings;
        six
    })
    .await;
    let framings = read.into_inner().unwrap();
    assert_eq!(framings.len(), 6, "{framings:?}");
    let mut workers_seen: Vec<&str> =
        framings.iter().filter_map(|(_, f)| f.as_ref()).map(|f| f.worker.as_str()).collect();
    workers_seen.sort_unstable();
    workers_seen.dedup();
    assert_eq!(workers_seen.len(), 3, "{framings:?}");
    let routes = common::nats::Framing::routes(32, &framings);
    let mut targets = routes.clone();
    targets.dedup();
    assert_eq!(targets.len(), 3, "one subject per worker: {routes:?} from {framings:?}");
    for (block, framing) in &framings {
        let framing = framing.as_ref().expect("every block consumer describes its framing");
        let first = framings.iter().filter(|(_, f)| f.as_ref() == Some(framing)).map(|(b, _)| b.start).min();
        assert_eq!(Some(framing.target), first, "{block:?} framed on its worker's first block: {framings:?}");
    }

    for worker in workers.drain(1..) {
        drop(worker);
    }
    wait_for_even_ownership(&env, 1, "one worker to own every partition").await;
    e2e::wait_until(Duration::from_secs(10), "a lone worker's blocks framed apart", || async {
        let framings = env.block_framings().await;
        framings.len() == 2 && framings.iter().all(|(b, f)| f.as_ref().is_some_and(|f| f.target == b.start))
    })
    .await;
}

/// A block consumer deleted from under its worker (by hand, or by a delete a previous owner sent
/// before timing out) is re-created by that worker, and the events on its partitions are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_consumer_deleted_from_under_its_worker_is_re_created() {
    let env = TestEnv::new().await;
    let service = env.service("API").await;
    let worker = start_worker(&env);
    wait_for_even_ownership(&env, 1, "the worker to own every partition").await;
    e2e::wait_until(Duration::from_secs(10), "the worker to settle", || async {
        worker.metric(&env.http, "worker_settled").await == 1.0
    })
    .await;
    let consumers = env.block_consumers().await;
    assert_eq!(consumers.len(), common::nats::Block::lone_worker(env.nats.partitions).len(), "{consumers:?}");
    let (deleted, block) = consumers[0].clone();

    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = common::nats::jetstream(client.clone(), Duration::from_secs(5));
    js.get_stream(&env.nats.stream).await.unwrap().delete_consumer(&deleted).await.unwrap();
    let publisher = Publisher::new(client, js, &env.nats);
    // Keys on every partition, so some are on the block whose consumer went.
    const EVENTS: i64 = 200;
    for k in 0..EVENTS {
        let event = e2e::envelope(&service.id, &format!("key-{k}"), common::event::EventAction::Trigger, "down");
        publisher.publish(&event, Company::Shared).await.expect("accepted");
    }
    let on_block = (0..EVENTS)
        .filter(|k| block.partitions().contains(&partition_of(&service.id, &format!("key-{k}"), env.nats.partitions)))
        .count();
    assert!(on_block > 0, "no key fell on {block:?}");
    env.wait_for_applied(EVENTS, Duration::from_secs(30)).await;
    assert!(env.block_consumers().await.iter().any(|(name, _)| *name == deleted), "{deleted} was not re-created");
}
