pub mod apikey;
pub mod dlq;
pub mod escalation_policy;
pub mod event;
pub mod heartbeat;
pub mod incident;
pub mod maintenance;
pub mod migrate;
pub mod oncall;
pub mod schedule;
pub mod serve;
pub mod service;
pub mod user;
pub mod webhook;

use clap::Args;
use common::config::DatabaseConfig;

use crate::client::ClientArgs;

/// A pool for an administration command, after checking the URL.
pub async fn connect(database: &DatabaseConfig) -> anyhow::Result<sqlx::PgPool> {
    database.validate()?;
    let pool = common::db::pool(database)?;
    sqlx::query("select 1")
        .execute(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the database at DATABASE_URL ({e}); is PostgreSQL running?"))?;
    Ok(pool)
}

/// Where a `list` reads from: PostgreSQL, or with `--api` the HTTP API.
#[derive(Debug, Args)]
pub struct ListSource {
    /// Read through the HTTP API (OPSSENTINAL_URL, OPSSENTINAL_API_KEY) instead of the database.
    #[arg(long)]
    pub api: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub database: DatabaseConfig,
}
