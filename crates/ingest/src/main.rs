use clap::Parser;
use ingest::IngestConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IngestConfig::parse();
    common::telemetry::init_tracing(&config.log)?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    ingest::run(config, listener, common::shutdown::on_signal()).await
}
