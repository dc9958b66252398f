pub mod apikey;
pub mod contact;
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
use serde_json::Value;

use crate::client::{Client, ClientArgs, encode};

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

/// Every row of a paged listing: `path` (its query holding at least `limit=`) and the pages after
/// it, following `pagination.nextCursor`; `field` names the array in each page.
pub async fn all_pages(client: &Client, path: &str, field: &str) -> anyhow::Result<Vec<Value>> {
    let (mut rows, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let after = cursor.as_deref().map(|c| format!("&cursor={}", encode(c))).unwrap_or_default();
        let page = client.get(&format!("{path}{after}")).await?;
        rows.extend(page[field].as_array().cloned().unwrap_or_default());
        match page["pagination"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(rows),
        }
    }
}
