pub mod apikey;
pub mod dlq;
pub mod event;
pub mod incident;
pub mod migrate;
pub mod oncall;
pub mod schedule;
pub mod serve;
pub mod service;
pub mod user;

use common::config::DatabaseConfig;

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
