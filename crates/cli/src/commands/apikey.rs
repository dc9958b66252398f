//! `opssentinal apikey create`

use clap::Subcommand;
use common::auth::Scope;
use common::config::DatabaseConfig;
use common::fields::field;
use query_api::api_keys::body::NewApiKey;
use query_api::api_keys::service;
use serde_json::json;

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a user. The key is printed once and never stored.
    #[command(
        after_help = "Example:\n  opssentinal apikey create --email jane@example.com --name prometheus --scopes events:write --output json"
    )]
    Create {
        /// Email of the key's owner.
        #[arg(long)]
        email: String,
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes; default: all the owner's role allows.
        #[arg(long, value_delimiter = ',', value_parser = parse_scope)]
        scopes: Option<Vec<Scope>>,
        /// Requests per minute for this key, instead of the defaults.
        #[arg(long)]
        rate_limit: Option<String>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// List API keys (prefix, scopes, last use; never the key).
    #[command(after_help = "Example:\n  opssentinal apikey list --email jane@example.com")]
    List {
        /// Only this user's keys.
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// Revoke an API key.
    #[command(after_help = "Example:\n  opssentinal apikey revoke key_0192…")]
    Revoke {
        id: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

fn parse_scope(value: &str) -> Result<Scope, String> {
    Scope::parse(value).ok_or_else(|| {
        let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown scope {value:?}; scopes are {}", all.join(", "))
    })
}

pub async fn run(command: ApiKeyCommand, output: Output) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create { email, name, scopes, rate_limit, database } => {
            if scopes.as_ref().is_some_and(Vec::is_empty) {
                return Err(crate::Usage("--scopes must name at least one scope".into()).into());
            }
            let pool = super::connect(&database).await?;
            let new = NewApiKey {
                email,
                name: field("name", &name)?,
                scopes,
                rate_limit: rate_limit.map(|r| field("rateLimit", &r)).transpose()?,
            };
            let key = service::create(&pool, &new).await?;
            let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
            if output == Output::Table {
                println!("API key created. Store it now: it is not shown again.");
            }
            output.record(
                &json!({"id": key.id, "key": key.key, "name": key.name, "scopes": scopes, "rateLimit": key.rate_limit}),
                &[("id", key.id.clone()), ("key", key.key.clone()), ("scopes", scopes.join(","))],
            )
        }
        ApiKeyCommand::List { email, database } => {
            let pool = super::connect(&database).await?;
            let keys = service::list(&pool, email.as_deref()).await?;
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let rows = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.prefix.clone() + "…",
                        k.name.clone(),
                        k.owner.clone(),
                        k.scopes.join(","),
                        dash(&k.last_used_at),
                        dash(&k.revoked_at),
                    ]
                })
                .collect();
            output.list(&keys, &["ID", "PREFIX", "NAME", "OWNER", "SCOPES", "LAST USED", "REVOKED"], rows)
        }
        ApiKeyCommand::Revoke { id, database } => {
            let pool = super::connect(&database).await?;
            service::revoke(&pool, &id).await?;
            output.record(&json!({"id": id, "revoked": true}), &[("revoked", id.clone())])
        }
    }
}
