//! `opssentinal schedule create|list`, `schedule layer add`, `schedule override add`:
//! administration against PostgreSQL. The flags become the HTTP API's body, read by the same
//! typed parser, so a bad value is refused naming the same field as the API would.

use clap::Subcommand;
use common::config::DatabaseConfig;
use common::http::parse_value;
use query_api::page::PageRequest;
use query_api::schedules::body::{NewLayer, NewOverride, NewSchedule, RotationKind};
use query_api::schedules::service;
use serde_json::json;

use crate::client::Client;
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule in an IANA time zone.
    #[command(after_help = "Example:\n  opssentinal schedule create --name Primary --time-zone Europe/Berlin")]
    Create {
        #[arg(long)]
        name: String,
        /// An IANA time zone, e.g. Europe/Berlin.
        #[arg(long)]
        time_zone: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
    /// List schedules, from PostgreSQL or with `--api` through the HTTP API.
    #[command(after_help = "Examples:\n  opssentinal schedule list --output json\n  opssentinal schedule list --api")]
    List {
        #[command(flatten)]
        source: super::ListSource,
    },
    /// Layers of a schedule.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Overrides of a schedule.
    #[command(subcommand)]
    Override(OverrideCommand),
}

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Add a rotation layer above the existing ones.
    #[command(
        after_help = "Example:\n  opssentinal schedule layer add sch_0192… --start 2026-12-01T08:00:00Z --rotation weekly \\\n    --handoff 09:00 --users usr_a,usr_b"
    )]
    Add {
        schedule: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: Option<String>,
        /// daily, weekly or hours.
        #[arg(long)]
        rotation: RotationKind,
        /// With --rotation hours: the shift length (1 to 720).
        #[arg(long)]
        rotation_hours: Option<i64>,
        /// Local hand-off time, HH:MM.
        #[arg(long, default_value = "09:00")]
        handoff: String,
        /// Comma-separated user ids, in rotation order.
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

#[derive(Debug, Subcommand)]
pub enum OverrideCommand {
    /// Put a user on call for an interval, over all layers.
    #[command(
        after_help = "Example:\n  opssentinal schedule override add sch_0192… --user usr_c --start 2026-12-24T00:00:00Z --end 2026-12-27T00:00:00Z"
    )]
    Add {
        schedule: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

pub async fn run(command: ScheduleCommand, output: Output) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Create { name, time_zone, database } => {
            let pool = super::connect(&database).await?;
            let body: NewSchedule = parse_value(json!({"name": name, "timeZone": time_zone}))?;
            let schedule = serde_json::to_value(service::create(&pool, &body).await?)?;
            output.record(
                &schedule,
                &[
                    ("id", cell(&schedule["id"])),
                    ("name", cell(&schedule["name"])),
                    ("time zone", cell(&schedule["timeZone"])),
                ],
            )
        }
        ScheduleCommand::List { source } => {
            let page = if source.api {
                Client::new(&source.client)?.get("/api/schedules?limit=200").await?
            } else {
                let pool = super::connect(&source.database).await?;
                let first = PageRequest::first_longest();
                serde_json::to_value(service::list(&pool, &first).await?)?
            };
            let schedules = page["schedules"].as_array().cloned().unwrap_or_default();
            let rows = schedules.iter().map(|s| vec![cell(&s["id"]), cell(&s["name"]), cell(&s["timeZone"])]).collect();
            output.list(&schedules, &["ID", "NAME", "TIME ZONE"], rows)
        }
        ScheduleCommand::Layer(LayerCommand::Add {
            schedule,
            start,
            end,
            rotation,
            rotation_hours,
            handoff,
            users,
            name,
            database,
        }) => {
            let pool = super::connect(&database).await?;
            let body: NewLayer = parse_value(json!({
                "name": name, "start": start, "end": end, "rotation": rotation.as_str(),
                "rotationHours": rotation_hours, "handoffTime": handoff, "users": users,
            }))?;
            let layer = serde_json::to_value(service::add_layer(&pool, &schedule, &body).await?)?;
            output.record(&layer, &[("layer", cell(&layer["id"])), ("position", cell(&layer["position"]))])
        }
        ScheduleCommand::Override(OverrideCommand::Add { schedule, user, start, end, database }) => {
            let pool = super::connect(&database).await?;
            let body: NewOverride = parse_value(json!({"userId": user, "start": start, "end": end}))?;
            let created = serde_json::to_value(service::add_override(&pool, &schedule, &body).await?)?;
            output.record(
                &created,
                &[
                    ("override", cell(&created["id"])),
                    ("from", cell(&created["start"])),
                    ("until", cell(&created["end"])),
                ],
            )
        }
    }
}
