//! `opssentinal service create`

use clap::Subcommand;
use common::config::DatabaseConfig;
use common::fields::field;
use query_api::services::body::NewService;
use query_api::services::service;
use serde_json::json;

use crate::client::Client;

use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service; prints its routing (integration) key.
    #[command(
        after_help = "Example:\n  opssentinal service create --name \"API Gateway\" --description \"public edge\" --output json"
    )]
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Events per minute through this service's routing key, instead of the default.
        #[arg(long)]
        rate_limit: Option<String>,
        /// The escalation policy its new incidents start (an `esc_…` id).
        #[arg(long)]
        escalation_policy: Option<String>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// List services: from PostgreSQL with their routing keys, or with `--api` through the HTTP
    /// API (OPSSENTINAL_URL, OPSSENTINAL_API_KEY) with their status and open incidents.
    #[command(after_help = "Examples:\n  opssentinal service list --output json\n  opssentinal service list --api")]
    List {
        #[command(flatten)]
        source: super::ListSource,
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
        ServiceCommand::Create { name, description, rate_limit, escalation_policy, database } => {
            let pool = super::connect(&database).await?;
            let new = NewService {
                name: field("name", &name)?,
                description: description.map(|d| field("description", &d)).transpose()?,
                rate_limit: rate_limit.map(|r| field("rateLimit", &r)).transpose()?,
                escalation_policy_id: escalation_policy.map(|p| field("escalationPolicyId", &p)).transpose()?,
            };
            let service = service::create(&pool, &new).await?;
            output.record(
                &json!({"id": service.id, "name": service.name, "routingKey": service.routing_key}),
                &[
                    ("id", service.id.clone()),
                    ("name", service.name.clone()),
                    ("routing key", service.routing_key.clone()),
                ],
            )
        }
        ServiceCommand::List { source } if source.api => {
            let page = Client::new(&source.client)?.get("/api/services?limit=200").await?;
            let services = page["services"].as_array().cloned().unwrap_or_default();
            let rows = services
                .iter()
                .map(|s| {
                    let open = &s["openIncidents"];
                    vec![
                        cell(&s["id"]),
                        cell(&s["name"]),
                        cell(&s["status"]),
                        format!("{}/{}/{}", open["HIGH"], open["MEDIUM"], open["LOW"]),
                    ]
                })
                .collect();
            output.list(&services, &["ID", "NAME", "STATUS", "OPEN H/M/L"], rows)
        }
        ServiceCommand::List { source } => {
            let pool = super::connect(&source.database).await?;
            let services = service::list_with_keys(&pool).await?;
            let rows = services.iter().map(|s| vec![s.id.clone(), s.name.clone(), s.routing_key.clone()]).collect();
            output.list(&services, &["ID", "NAME", "ROUTING KEY"], rows)
        }
        ServiceCommand::RotateKey { id, database } => {
            let pool = super::connect(&database).await?;
            let service = service::rotate_routing_key(&pool, &id).await?;
            output.record(
                &json!({"id": service.id, "name": service.name, "routingKey": service.routing_key}),
                &[("id", service.id.clone()), ("routing key", service.routing_key.clone())],
            )
        }
    }
}
