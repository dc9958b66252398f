//! `opssentinal service create`

use clap::Subcommand;
use common::admin;
use common::config::DatabaseConfig;
use serde_json::json;

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service; prints its routing (integration) key.
    #[command(
        after_help = "Example:\n  opssentinal service create --name \"API Gateway\" --description \"public edge\" --output json"
    )]
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Events per minute through this service's routing key, instead of the default.
        #[arg(long)]
        rate_limit: Option<u32>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

pub async fn run(command: ServiceCommand, output: Output) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Create { name, description, rate_limit, database } => {
            let pool = super::connect(&database).await?;
            let service = admin::create_service(&pool, &name, &description, rate_limit).await?;
            output.record(
                &json!({"id": service.id, "name": service.name, "routingKey": service.routing_key}),
                &[
                    ("id", service.id.clone()),
                    ("name", service.name.clone()),
                    ("routing key", service.routing_key.clone()),
                ],
            )
        }
    }
}
