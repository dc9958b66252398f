use clap::Parser;
use worker::WorkerConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    let _telemetry = common::telemetry::init_tracing(&config.log, "opssentinal-worker")?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let (shutdown, deadline) = (common::shutdown::on_signal(), config.shutdown.timeout());
    common::shutdown::within_deadline(worker::run(config, listener, shutdown.clone()), &shutdown, deadline).await
}
