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
    /// List services with their routing keys.
    #[command(after_help = "Example:\n  opssentinal service list --output json")]
    List {
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Give a service a new routing key; the old one stops working (within ingest's 30 s cache).
    #[command(after_help = "Example:\n  opssentinal service rotate-key svc_0192…")]
    RotateKey {
        id: String,
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
        ServiceCommand::List { database } => {
            let pool = super::connect(&database).await?;
            let services = admin::list_services(&pool).await?;
            let rows = services.iter().map(|s| vec![s.id.clone(), s.name.clone(), s.routing_key.clone()]).collect();
            output.list(&services, &["ID", "NAME", "ROUTING KEY"], rows)
        }
        ServiceCommand::RotateKey { id, database } => {
            let pool = super::connect(&database).await?;
            let service = admin::rotate_routing_key(&pool, &id).await?;
            output.record(
                &json!({"id": service.id, "name": service.name, "routingKey": service.routing_key}),
                &[("id", service.id.clone()), ("routing key", service.routing_key.clone())],
            )
        }
    }
}
