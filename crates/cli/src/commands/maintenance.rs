//! `opssentinal maintenance create|list|end`: maintenance windows through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Usage;
use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Start a maintenance window: triggers for its services open SUPPRESSED incidents, which
    /// page nobody, until it ends.
    #[command(
        after_help = "Examples:\n  opssentinal maintenance create --service svc_0192… --duration 2h --description \"DB upgrade\"\n  \
                            opssentinal maintenance create --service svc_a --service svc_b \\\n    \
                            --start 2026-12-08T22:00:00Z --end 2026-12-09T00:00:00Z"
    )]
    Create {
        /// A service the window covers; repeat for more.
        #[arg(long = "service", value_name = "SERVICE_ID", required = true)]
        services: Vec<String>,
        /// When it starts (RFC 3339); default now.
        #[arg(long)]
        start: Option<String>,
        /// When it ends (RFC 3339).
        #[arg(long, conflicts_with = "duration", required_unless_present = "duration")]
        end: Option<String>,
        /// How long it lasts from its start: 30m, 2h, 1h30m, …
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List maintenance windows, newest first.
    #[command(after_help = "Example:\n  opssentinal maintenance list --state ongoing")]
    List {
        /// ongoing, future or past.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a window now (an ongoing one; what it suppressed opens and escalates), or delete a
    /// future one.
    #[command(after_help = "Example:\n  opssentinal maintenance end mw_0192…")]
    End {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The window's end: `end` as given, or `start` (default now) plus `duration`.
fn end_of(start: Option<&str>, end: Option<String>, duration: Option<&str>) -> Result<(String, String), Usage> {
    let start_at: jiff::Timestamp = match start {
        Some(start) => {
            start.parse().map_err(|e| Usage(format!("--start {start:?} is not an RFC 3339 instant: {e}")))?
        }
        None => jiff::Timestamp::now(),
    };
    let end = match (end, duration) {
        (Some(end), _) => end,
        (None, Some(duration)) => {
            let span: jiff::Span = duration
                .parse()
                .map_err(|e| Usage(format!("--duration {duration:?} is not a duration like 2h: {e}")))?;
            let length = jiff::SignedDuration::try_from(span)
                .map_err(|e| Usage(format!("--duration {duration:?} must be in hours, minutes or seconds: {e}")))?;
            start_at
                .checked_add(length)
                .map_err(|e| Usage(format!("--duration {duration:?} is too long: {e}")))?
                .to_string()
        }
        (None, None) => return Err(Usage("give --end or --duration".into())),
    };
    Ok((start_at.to_string(), end))
}

pub async fn run(command: MaintenanceCommand, output: Output) -> anyhow::Result<()> {
    match command {
        MaintenanceCommand::Create { services, start, end, duration, description, client } => {
            let (start, end) = end_of(start.as_deref(), end, duration.as_deref())?;
            let body = json!({"serviceIds": services, "start": start, "end": end, "description": description.unwrap_or_default()});
            let created = Client::new(&client)?.send(Method::POST, "/api/maintenance-windows", &body).await?;
            show(output, &created["maintenanceWindow"])
        }
        MaintenanceCommand::List { state, client } => {
            let filter = state.map(|s| format!("&state={}", encode(&s))).unwrap_or_default();
            let page = Client::new(&client)?.get(&format!("/api/maintenance-windows?limit=200{filter}")).await?;
            let windows = page["maintenanceWindows"].as_array().cloned().unwrap_or_default();
            let rows = windows
                .iter()
                .map(|w| {
                    vec![
                        cell(&w["id"]),
                        cell(&w["state"]),
                        cell(&w["start"]),
                        cell(&w["end"]),
                        services(w),
                        cell(&w["description"]),
                    ]
                })
                .collect();
            output.list(&windows, &["ID", "STATE", "START", "END", "SERVICES", "DESCRIPTION"], rows)
        }
        MaintenanceCommand::End { id, client } => {
            let ended = Client::new(&client)?
                .send(Method::DELETE, &format!("/api/maintenance-windows/{}", encode(&id)), &Value::Null)
                .await?;
            if ended.is_null() {
                return output.record(&json!({"id": id, "deleted": true}), &[("deleted", id.clone())]);
            }
            show(output, &ended["maintenanceWindow"])
        }
    }
}

fn services(window: &Value) -> String {
    window["serviceIds"].as_array().map(|ids| ids.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

fn show(output: Output, window: &Value) -> anyhow::Result<()> {
    output.record(
        window,
        &[
            ("id", cell(&window["id"])),
            ("state", cell(&window["state"])),
            ("start", cell(&window["start"])),
            ("end", cell(&window["end"])),
            ("services", services(window)),
            ("description", cell(&window["description"])),
        ],
    )
}
