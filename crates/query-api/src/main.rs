use clap::Parser;
use query_api::QueryApiConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = QueryApiConfig::parse();
    common::telemetry::init_tracing(&config.log)?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    query_api::run(config, listener, common::shutdown::on_signal()).await
}
