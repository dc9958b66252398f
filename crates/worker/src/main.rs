use clap::Parser;
use worker::WorkerConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Before any thread starts: every thread of the process inherits the policy.
    let batch = worker::scheduling::run_as_batch_work();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(worker::scheduling::RUNTIME_THREADS);
    }
    runtime.enable_all().build()?.block_on(async {
        let config = WorkerConfig::parse();
        let _telemetry = common::telemetry::init_tracing(&config.log, "opssentinal-worker")?;
        if let Err(err) = batch {
            tracing::warn!(error = %err, "cannot run under SCHED_BATCH; the worker's wake-ups may preempt the host's other processes");
        }
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(&config.listen).await?;
        let (shutdown, deadline) = (common::shutdown::on_signal(), config.shutdown.timeout());
        common::shutdown::within_deadline(worker::run(config, listener, shutdown.clone()), &shutdown, deadline).await
    })
}
