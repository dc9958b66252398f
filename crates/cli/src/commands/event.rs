//! `opssentinal event trigger|ack|resolve`: send events through the Events API.

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Trigger an alert (opens an incident, or adds to the open one with the same dedup key).
    #[command(
        after_help = "Example:\n  opssentinal event trigger --routing-key $RK --dedup-key disk-web-01 \\\n    --summary \"Disk 95% full\" --source web-01 --severity warning --detail host=web-01 --detail mount=/var"
    )]
    Trigger {
        #[command(flatten)]
        target: Target,
        /// Dedup key; generated (and printed) if omitted.
        #[arg(long)]
        dedup_key: Option<String>,
        #[arg(long)]
        summary: String,
        #[arg(long, default_value = "opssentinal-cli")]
        source: String,
        #[arg(long, value_enum, default_value_t = Severity::Error)]
        severity: Severity,
        /// A custom detail as key=value (repeatable).
        #[arg(long = "detail", value_name = "KEY=VALUE")]
        details: Vec<String>,
        /// Custom details as a JSON object (merged with --detail).
        #[arg(long = "details-json", value_name = "JSON")]
        details_json: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Acknowledge the open incident with this dedup key.
    #[command(after_help = "Example:\n  opssentinal event ack --routing-key $RK --dedup-key disk-web-01")]
    Ack(KeyedEvent),
    /// Resolve the open incident with this dedup key.
    #[command(after_help = "Example:\n  opssentinal event resolve --routing-key $RK --dedup-key disk-web-01")]
    Resolve(KeyedEvent),
}

/// An event about an existing alert: which service, which dedup key.
#[derive(Debug, Args)]
pub struct KeyedEvent {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    dedup_key: String,
    #[command(flatten)]
    client: ClientArgs,
}

impl KeyedEvent {
    fn into_request(self, action: &str) -> (ClientArgs, Value) {
        (
            self.client,
            json!({"routing_key": self.target.routing_key, "event_action": action, "dedup_key": self.dedup_key}),
        )
    }
}

#[derive(Debug, Args)]
pub struct Target {
    /// The service's routing (integration) key.
    #[arg(long)]
    routing_key: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

fn custom_details(pairs: &[String], json_text: Option<&str>) -> anyhow::Result<Option<Map<String, Value>>> {
    let mut details = match json_text {
        Some(text) => match serde_json::from_str(text).context("--details-json is not JSON")? {
            Value::Object(map) => map,
            _ => bail!("--details-json must be a JSON object"),
        },
        None => Map::new(),
    };
    for pair in pairs {
        let (key, value) = pair.split_once('=').with_context(|| format!("--detail {pair:?} must be KEY=VALUE"))?;
        details.insert(key.trim().to_owned(), Value::String(value.to_owned()));
    }
    Ok((!details.is_empty()).then_some(details))
}

pub async fn run(command: EventCommand, output: Output) -> anyhow::Result<()> {
    let (client, body) = match command {
        EventCommand::Trigger { target, dedup_key, summary, source, severity, details, details_json, client } => {
            let mut payload =
                json!({"summary": summary, "source": source, "severity": format!("{severity:?}").to_lowercase()});
            if let Some(details) = custom_details(&details, details_json.as_deref())? {
                payload["custom_details"] = Value::Object(details);
            }
            let mut body = json!({"routing_key": target.routing_key, "event_action": "trigger", "payload": payload});
            if let Some(key) = dedup_key {
                body["dedup_key"] = json!(key);
            }
            (client, body)
        }
        EventCommand::Ack(event) => event.into_request("acknowledge"),
        EventCommand::Resolve(event) => event.into_request("resolve"),
    };
    let accepted = Client::new(&client)?.send(Method::POST, "/api/events", &body).await?;
    let field = |name: &str| accepted[name].as_str().unwrap_or_default().to_owned();
    output.record(
        &accepted,
        &[("status", field("status")), ("dedup key", field("dedup_key")), ("event id", field("event_id"))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_merge_pairs_over_json() {
        let details =
            custom_details(&["host=web-01".into()], Some(r#"{"region": "eu", "host": "x"}"#)).unwrap().unwrap();
        assert_eq!(Value::Object(details), json!({"region": "eu", "host": "web-01"}));
        assert!(custom_details(&["novalue".into()], None).is_err());
        assert!(custom_details(&[], Some("[1]")).is_err());
        assert!(custom_details(&[], None).unwrap().is_none());
    }
}
