//! `opssentinal maintenance create|list|end`: maintenance windows through the API.

use clap::{ArgGroup, Subcommand};
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Plan a maintenance window: while it is ongoing, triggers for its services open SUPPRESSED
    /// incidents, which page nobody; when it ends, those still suppressed open and escalate.
    #[command(
        after_help = "Examples:\n  opssentinal maintenance create --service svc_0192… --duration 2h --description \"DB upgrade\"\n  \
                      opssentinal maintenance create --service svc_a --service svc_b \\\n    \
                      --start 2026-12-08T22:00:00Z --end 2026-12-09T00:00:00Z",
        group(ArgGroup::new("until").args(["end", "duration"]).required(true))
    )]
    Create {
        /// A service the window covers; repeat the flag for more.
        #[arg(long = "service", value_name = "SERVICE_ID", required = true)]
        services: Vec<String>,
        /// When it starts (RFC 3339, e.g. 2026-12-08T22:00:00Z); default now.
        #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
        start: Option<Timestamp>,
        /// When it ends (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
        end: Option<Timestamp>,
        /// How long it lasts from its start: 30m, 2h, 1h30m, 1d, …
        #[arg(long, value_parser = parse_duration)]
        duration: Option<SignedDuration>,
        /// Why (shown with the window).
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List maintenance windows, newest first.
    #[command(after_help = "Example:\n  opssentinal maintenance list --state ongoing")]
    List {
        /// Only windows in this state.
        #[arg(long, value_parser = ["ongoing", "future", "past"])]
        state: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End an ongoing window now (what it suppressed opens and escalates), or delete a future or
    /// past one.
    #[command(after_help = "Example:\n  opssentinal maintenance end mw_0192…")]
    End {
        #[arg(value_name = "WINDOW_ID")]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_instant(text: &str) -> Result<Timestamp, String> {
    text.trim().parse().map_err(|e| format!("not an RFC 3339 instant like 2026-12-08T22:00:00Z ({e})"))
}

/// A positive length of time in the friendly format (`2h`, `1h30m`, `90m`, `1d`) or ISO 8601
/// (`PT2H`); days are 24 hours.
fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let span: Span = text.trim().parse().map_err(|e| format!("not a duration like 2h, 30m or 1h30m ({e})"))?;
    let length = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("give it in weeks, days, hours, minutes or seconds ({e})"))?;
    if !length.is_positive() {
        return Err("must be longer than zero".into());
    }
    Ok(length)
}

pub async fn run(command: MaintenanceCommand, output: Output) -> anyhow::Result<()> {
    match command {
        MaintenanceCommand::Create { services, start, end, duration, description, client } => {
            let start = start.unwrap_or_else(Timestamp::now);
            let end = match (end, duration) {
                (Some(end), _) => end,
                (None, Some(length)) => start
                    .checked_add(length)
                    .map_err(|e| anyhow::anyhow!("--duration: the window would end too far away ({e})"))?,
                (None, None) => anyhow::bail!("give --end or --duration"),
            };
            let mut body = json!({"serviceIds": services, "start": start.to_string(), "end": end.to_string()});
            if let Some(description) = description {
                body["description"] = description.into();
            }
            let created = Client::new(&client)?.send(Method::POST, "/api/maintenance-windows", &body).await?;
            show(output, &created["maintenanceWindow"])
        }
        MaintenanceCommand::List { state, client } => {
            let filter = state.map(|s| format!("&state={}", encode(&s))).unwrap_or_default();
            let path = format!("/api/maintenance-windows?limit=200{filter}");
            let windows = super::all_pages(&Client::new(&client)?, &path, "maintenanceWindows").await?;
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
            let path = format!("/api/maintenance-windows/{}", encode(&id));
            let answer = Client::new(&client)?.send(Method::DELETE, &path, &Value::Null).await?;
            // 204, no body: a future or past window, deleted. 200: an ongoing one, ended now.
            if answer.is_null() {
                let note = "deleted (it was not ongoing: nothing it suppressed to open)";
                return output.record(&json!({"id": id, "deleted": true}), &[("id", id.clone()), ("", note.into())]);
            }
            let window = &answer["maintenanceWindow"];
            if output == Output::Table {
                println!("ended now: incidents it suppressed open and escalate");
            }
            show(output, window)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_in_the_friendly_format() {
        for (text, minutes) in [("2h", 120), ("30m", 30), ("1h30m", 90), ("1h 30m", 90), ("1d", 1440), ("PT2H", 120)] {
            assert_eq!(parse_duration(text), Ok(SignedDuration::from_mins(minutes)), "{text}");
        }
        for bad in ["soon", "0m", "-1h", "1mo"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instants_are_rfc_3339() {
        assert_eq!(parse_instant("2026-12-08T22:00:00Z").unwrap().to_string(), "2026-12-08T22:00:00Z");
        assert!(parse_instant("2026-12-08 22:00").unwrap_err().contains("RFC 3339"));
    }
}
