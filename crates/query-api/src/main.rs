use clap::Parser;
use query_api::QueryApiConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = QueryApiConfig::parse();
    let _telemetry = common::telemetry::init_tracing(&config.log, "opssentinal-query-api")?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let (shutdown, deadline) = (common::shutdown::on_signal(), config.shutdown.timeout());
    common::shutdown::within_deadline(query_api::run(config, listener, shutdown.clone()), &shutdown, deadline).await
}
