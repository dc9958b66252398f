//! `opssentinal migrate`

use clap::Args;
use common::config::DatabaseConfig;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  DATABASE_URL=postgres://postgres@127.0.0.1/opssentinal opssentinal migrate")]
pub struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseConfig,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = super::connect(&args.database).await?;
    common::db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
