//! How the worker's threads are scheduled. A worker is throughput work: it gathers events for a
//! transaction for up to `WORKER_BATCH_LINGER_MS`, so a millisecond's wait for a core costs it
//! nothing, while ingest, NATS and PostgreSQL answer requests that wait on each other. Under
//! Linux's `SCHED_BATCH` a thread keeps its nice value and its fair share of the CPU, but waking
//! up does not preempt the thread on the core; it runs when that thread's slice ends or it
//! blocks. On a host shared with the rest of the pipeline, workers then take their CPU without
//! interrupting the requests in flight, however many of them there are (docs/benchmarks.md).
//!
//! For the same reason a worker runs its tasks on one runtime thread unless
//! `TOKIO_WORKER_THREADS` says otherwise: most of a transaction's time is PostgreSQL's, one
//! thread drains about 30,000 events/s, and a second one mostly hands wake-ups across cores.
//! More throughput comes from more workers (more partitions applied at once).

/// The worker's runtime threads unless `TOKIO_WORKER_THREADS` is set.
pub const RUNTIME_THREADS: usize = 1;

/// Runs the calling thread, and every thread it starts afterwards, under `SCHED_BATCH`.
#[cfg(target_os = "linux")]
#[expect(unsafe_code, reason = "sched_setscheduler has no safe binding in std, libc, rustix or nix")]
pub fn run_as_batch_work() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the calling thread.
    let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
    if done == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// `SCHED_BATCH` is Linux's: elsewhere the worker is scheduled as any process.
#[cfg(not(target_os = "linux"))]
pub fn run_as_batch_work() -> std::io::Result<()> {
    Ok(())
}
