//! `opssentinal incident list|get|ack|escalate|resolve|assign|note|watch`: work incidents through the API.

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
    /// Fire the incident's next escalation step now, instead of when it is due (409 unless it is
    /// escalating: its service has a policy and it is OPEN).
    #[command(after_help = "Example:\n  opssentinal incident escalate inc_0192…")]
    Escalate {
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
    /// Follow incident changes as they happen, one line per change, until interrupted; resumes
    /// where it left off after a dropped connection.
    #[command(after_help = "Example:\n  opssentinal incident watch --service svc_0192… --status triggered")]
    Watch {
        /// Only this service's incidents.
        #[arg(long)]
        service: Option<String>,
        /// Only changes leaving incidents in these statuses (comma list).
        #[arg(long)]
        status: Option<String>,
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
        IncidentCommand::Escalate { id, client } => {
            let path = format!("/api/incidents/{}/escalate", encode(&id));
            let escalated = Client::new(&client)?.send(Method::POST, &path, &json!({})).await?;
            let incident = &escalated["incident"];
            let escalation = &incident["escalation"];
            let firing = match escalation["loop"].as_i64() {
                Some(repeat) if repeat > 0 => format!("step {} (repeat {repeat})", cell(&escalation["step"])),
                _ => format!("step {}", cell(&escalation["step"])),
            };
            output.record(
                incident,
                &[
                    ("id", cell(&incident["id"])),
                    ("firing now", firing),
                    ("policy", format!("{} v{}", cell(&escalation["policyId"]), cell(&escalation["policyVersion"]))),
                ],
            )
        }
        IncidentCommand::Assign { id, user, client, .. } => {
            patch(&client, &id, json!({"assigneeId": user.unwrap_or_default()}), output).await
        }
        IncidentCommand::Note { id, text, client } => patch(&client, &id, json!({"note": text}), output).await,
        IncidentCommand::Watch { service, status, client } => watch(&client, service, status, output).await,
    }
}

/// One Server-Sent Event.
#[derive(Default)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: String,
}

/// The complete events at the front of `buffer`, removed from it (comments and `retry` skipped).
fn take_events(buffer: &mut String) -> Vec<Sse> {
    let mut events = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut event = Sse::default();
        for line in block.lines() {
            let (field, value) =
                line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "id" => event.id = value.parse().ok(),
                "event" => event.event = value.to_owned(),
                "data" if event.data.is_empty() => event.data = value.to_owned(),
                "data" => event.data = format!("{}\n{value}", event.data),
                _ => {}
            }
        }
        if !event.event.is_empty() || !event.data.is_empty() {
            events.push(event);
        }
    }
    events
}

/// Follows `GET /api/stream` (topic incidents), printing each change; reconnects with
/// `Last-Event-ID` when the connection drops, and says so when the server could not resume.
async fn watch(
    args: &ClientArgs,
    service: Option<String>,
    status: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let mut query = vec!["topics=incidents".to_owned()];
    for (name, value) in [("serviceId", service), ("status", status)] {
        if let Some(value) = value {
            query.push(format!("{name}={}", encode(&value)));
        }
    }
    let path = format!("/api/stream?{}", query.join("&"));
    let (mut last, mut connected_once) = (None, false);
    loop {
        let mut response = match client.stream(&path, last).await {
            Ok(response) => response,
            // A refusal or an unreachable server at the start is the user's to fix.
            Err(err) if !connected_once => return Err(err),
            Err(err) => {
                eprintln!("{err:#}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        if !connected_once {
            eprintln!("watching incident changes (Ctrl-C to stop)");
            connected_once = true;
        }
        let mut buffer = String::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(err) => {
                    eprintln!("the stream was interrupted ({err}); resuming");
                    break;
                }
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for event in take_events(&mut buffer) {
                if event.event == "reset" {
                    eprintln!(
                        "the stream could not resume ({}); changes may have been missed: list incidents to catch up",
                        event.data
                    );
                    last = None;
                    continue;
                }
                last = event.id.or(last);
                print_change(&event, output);
            }
        }
    }
}

fn print_change(event: &Sse, output: Output) {
    if output == Output::Json {
        println!("{}", event.data);
        return;
    }
    let change: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let incident = &change["incident"];
    println!(
        "{}  {}  {:<16}  {:<12}  v{}  {}",
        cell(&change["at"]),
        cell(&change["incidentId"]),
        event.event,
        cell(&incident["status"]),
        cell(&change["version"]),
        cell(&incident["title"]),
    );
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
