//! `opssentinal incident list|get|ack|resolve|assign|note`: work incidents through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// List incidents, newest first.
    #[command(after_help = "Example:\n  opssentinal incident list --status triggered,acknowledged --urgency high")]
    List {
        /// Comma list: triggered|open, acknowledged, resolved, snoozed, suppressed.
        #[arg(long)]
        status: Option<String>,
        /// Comma list: high, medium, low.
        #[arg(long)]
        urgency: Option<String>,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only this assignee.
        #[arg(long)]
        assignee: Option<String>,
        /// created_at, updated_at, urgency or status.
        #[arg(long)]
        sort: Option<String>,
        /// 1 to 200.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (its nextCursor).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one incident with its timeline and alerts.
    #[command(after_help = "Example:\n  opssentinal incident get inc_0192… --output json")]
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Acknowledge an incident.
    #[command(after_help = "Example:\n  opssentinal incident ack inc_0192…")]
    Ack {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resolve an incident.
    #[command(after_help = "Example:\n  opssentinal incident resolve inc_0192…")]
    Resolve {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Assign an incident to a user (or `--unassign`).
    #[command(after_help = "Example:\n  opssentinal incident assign inc_0192… usr_0192…")]
    Assign {
        id: String,
        #[arg(required_unless_present = "unassign")]
        user: Option<String>,
        #[arg(long, conflicts_with = "user")]
        unassign: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a note to an incident's timeline.
    #[command(after_help = "Example:\n  opssentinal incident note inc_0192… \"rolled back the deploy\"")]
    Note {
        id: String,
        text: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: IncidentCommand, output: Output) -> anyhow::Result<()> {
    match command {
        IncidentCommand::List { status, urgency, service, assignee, sort, limit, cursor, client } => {
            let mut query = vec![format!("limit={limit}")];
            for (name, value) in [
                ("status", status),
                ("urgency", urgency),
                ("serviceId", service),
                ("assigneeId", assignee),
                ("sort", sort),
                ("cursor", cursor),
            ] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            let page = Client::new(&client)?.get(&format!("/api/incidents?{}", query.join("&"))).await?;
            let incidents = page["incidents"].as_array().cloned().unwrap_or_default();
            let rows = incidents
                .iter()
                .map(|i| {
                    vec![
                        cell(&i["id"]),
                        cell(&i["status"]),
                        cell(&i["urgency"]),
                        cell(&i["service"]["name"]),
                        cell(&i["alertCount"]),
                        cell(&i["createdAt"]),
                        cell(&i["title"]),
                    ]
                })
                .collect();
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(());
            }
            output.list(&incidents, &["ID", "STATUS", "URGENCY", "SERVICE", "ALERTS", "CREATED", "TITLE"], rows)?;
            println!("{} of {} shown", incidents.len(), cell(&page["total"]));
            if let Some(next) = page["pagination"]["nextCursor"].as_str() {
                println!("more: --cursor {next}");
            }
            Ok(())
        }
        IncidentCommand::Get { id, client } => {
            let incident = Client::new(&client)?.get(&format!("/api/incidents/{}", encode(&id))).await?;
            show(output, &incident["incident"])
        }
        IncidentCommand::Ack { id, client } => patch(&client, &id, json!({"status": "ACKNOWLEDGED"}), output).await,
        IncidentCommand::Resolve { id, client } => patch(&client, &id, json!({"status": "RESOLVED"}), output).await,
        IncidentCommand::Assign { id, user, client, .. } => {
            patch(&client, &id, json!({"assigneeId": user.unwrap_or_default()}), output).await
        }
        IncidentCommand::Note { id, text, client } => patch(&client, &id, json!({"note": text}), output).await,
    }
}

async fn patch(client: &ClientArgs, id: &str, body: Value, output: Output) -> anyhow::Result<()> {
    let updated = Client::new(client)?.send(Method::PATCH, &format!("/api/incidents/{}", encode(id)), &body).await?;
    show(output, &updated["incident"])
}

fn show(output: Output, incident: &Value) -> anyhow::Result<()> {
    output.record(
        incident,
        &[
            ("id", cell(&incident["id"])),
            ("title", cell(&incident["title"])),
            ("status", cell(&incident["status"])),
            ("urgency", cell(&incident["urgency"])),
            ("priority", cell(&incident["priority"])),
            ("service", cell(&incident["service"]["name"])),
            ("assignee", cell(&incident["assignee"]["name"])),
            ("alerts", cell(&incident["alertCount"])),
            ("created", cell(&incident["createdAt"])),
            ("acknowledged", cell(&incident["acknowledgedAt"])),
            ("resolved", cell(&incident["resolvedAt"])),
        ],
    )
}
