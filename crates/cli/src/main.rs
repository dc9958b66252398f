//! `opssentinal`: administration (against PostgreSQL) and the one-process server.

mod client;
mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use common::config::DatabaseConfig;

use crate::output::Output;

/// OpsSentinal: incident management for alert sources, responders and dashboards.
#[derive(Debug, Parser)]
#[command(name = "opssentinal", version, after_help = commands::user::LEGACY_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    legacy: commands::user::LegacyUserArgs,
    #[command(flatten)]
    database: DatabaseConfig,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending database migrations.
    Migrate(commands::migrate::MigrateArgs),
    /// Manage users.
    #[command(subcommand)]
    User(commands::user::UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(commands::apikey::ApiKeyCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(commands::service::ServiceCommand),
    /// Manage schedules, their layers and overrides.
    #[command(subcommand)]
    Schedule(commands::schedule::ScheduleCommand),
    /// Dead-lettered events: list them, replay them.
    #[command(subcommand)]
    Dlq(commands::dlq::DlqCommand),
    /// Send events through the Events API (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    #[command(subcommand)]
    Event(commands::event::EventCommand),
    /// List and work incidents (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    #[command(subcommand)]
    Incident(commands::incident::IncidentCommand),
    /// Who is on call for a schedule (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    Oncall(commands::oncall::OnCallArgs),
    /// Outbound webhooks and their deliveries (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    #[command(subcommand)]
    Webhook(commands::webhook::WebhookCommand),
    /// Escalation policies: who is paged, step by step (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    #[command(subcommand, name = "escalation-policy")]
    EscalationPolicy(commands::escalation_policy::EscalationPolicyCommand),
    /// Maintenance windows: planned work that pages nobody (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    #[command(subcommand)]
    Maintenance(commands::maintenance::MaintenanceCommand),
    /// Heartbeats: an incident when a job stops pinging (client: OPSSENTINAL_URL, OPSSENTINAL_API_KEY).
    #[command(subcommand)]
    Heartbeat(commands::heartbeat::HeartbeatCommand),
    /// Run ingest, a worker and the query API in one process on one port.
    Serve(Box<commands::serve::ServeArgs>),
}

/// A command line that cannot work (missing required input): exit code 2, like clap's own
/// usage errors, found before anything is connected to.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `Err(Usage)` with `message` unless `value` is given.
pub fn required<T>(value: Option<T>, message: &str) -> Result<T, Usage> {
    value.ok_or_else(|| Usage(message.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<Usage>().is_some() => {
            eprintln!("error: {err}\n\nFor more information, try '--help'.");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output;
    if !matches!(cli.command, Some(Command::Serve(_))) {
        // A failure's cause (a database error behind "internal error") is logged where it is
        // met: show it on standard error. `serve` sets up its own logging.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .without_time()
            .init();
    }
    match cli.command {
        Some(Command::Migrate(args)) => commands::migrate::run(args).await,
        Some(Command::User(command)) => commands::user::run(command, output).await,
        Some(Command::Apikey(command)) => commands::apikey::run(command, output).await,
        Some(Command::Service(command)) => commands::service::run(command, output).await,
        Some(Command::Serve(args)) => commands::serve::run(*args).await,
        Some(Command::Schedule(command)) => commands::schedule::run(command, output).await,
        Some(Command::Dlq(command)) => commands::dlq::run(command, output).await,
        Some(Command::Event(command)) => commands::event::run(command, output).await,
        Some(Command::Incident(command)) => commands::incident::run(command, output).await,
        Some(Command::Oncall(args)) => commands::oncall::run(args, output).await,
        Some(Command::Webhook(command)) => commands::webhook::run(command, output).await,
        Some(Command::EscalationPolicy(command)) => commands::escalation_policy::run(command, output).await,
        Some(Command::Maintenance(command)) => commands::maintenance::run(command, output).await,
        Some(Command::Heartbeat(command)) => commands::heartbeat::run(command, output).await,
        None => commands::user::run_legacy(cli.legacy, &cli.database, output).await,
    }
}

#[cfg(test)]
mod tests {

    #[global_allocator]
    static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
