//! `opssentinal webhook create|list|deliveries|redeliver|rotate-secret`: outbound webhooks
//! through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create a webhook; prints its signing secret once.
    #[command(after_help = "Example:\n  opssentinal webhook create https://hooks.example.com/ops \
                            --events incident.triggered,incident.resolved --description \"chat bot\"")]
    Create {
        /// Where deliveries are posted (http or https).
        #[arg(id = "webhook_url", value_name = "URL")]
        url: String,
        /// Comma list of change types (incident.triggered, incident.acknowledged, …); default all.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Comma list of service ids; default all.
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List webhooks, newest first.
    #[command(after_help = "Example:\n  opssentinal webhook list")]
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A webhook's deliveries, newest first, with their attempts.
    #[command(after_help = "Example:\n  opssentinal webhook deliveries whk_0192… --status failed")]
    Deliveries {
        id: String,
        /// pending, succeeded or failed.
        #[arg(long)]
        status: Option<String>,
        /// 1 to 200.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (its nextCursor).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a delivery again, under the same webhook-id.
    #[command(after_help = "Example:\n  opssentinal webhook redeliver whk_0192… msg_0192…")]
    Redeliver {
        id: String,
        delivery: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a webhook a new secret (printed once); the old one keeps signing for 24 hours.
    #[command(name = "rotate-secret", after_help = "Example:\n  opssentinal webhook rotate-secret whk_0192…")]
    RotateSecret {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: WebhookCommand, output: Output) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Create { url, events, services, description, client } => {
            let mut body = json!({"url": url});
            for (field, value) in [("events", events.map(Value::from)), ("serviceIds", services.map(Value::from))] {
                if let Some(value) = value {
                    body[field] = value;
                }
            }
            if let Some(description) = description {
                body["description"] = description.into();
            }
            let created = Client::new(&client)?.send(Method::POST, "/api/webhooks", &body).await?;
            show_with_secret(output, &created)
        }
        WebhookCommand::List { client } => {
            let client = Client::new(&client)?;
            let (mut webhooks, mut cursor) = (Vec::new(), None::<String>);
            loop {
                let after = cursor.as_deref().map(|c| format!("&cursor={}", encode(c))).unwrap_or_default();
                let page = client.get(&format!("/api/webhooks?limit=200{after}")).await?;
                webhooks.extend(page["webhooks"].as_array().cloned().unwrap_or_default());
                match page["pagination"]["nextCursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            let rows = webhooks
                .iter()
                .map(|w| {
                    vec![cell(&w["id"]), enabled(w), events(&w["events"]), cell(&w["failingSince"]), cell(&w["url"])]
                })
                .collect();
            output.list(&webhooks, &["ID", "ENABLED", "EVENTS", "FAILING SINCE", "URL"], rows)
        }
        WebhookCommand::Deliveries { id, status, limit, cursor, client } => {
            let mut query = vec![format!("limit={limit}")];
            for (name, value) in [("status", status), ("cursor", cursor)] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            let path = format!("/api/webhooks/{}/deliveries?{}", encode(&id), query.join("&"));
            let page = Client::new(&client)?.get(&path).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(());
            }
            let deliveries = page["deliveries"].as_array().cloned().unwrap_or_default();
            let rows = deliveries
                .iter()
                .map(|d| {
                    let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
                    let last = attempts.last().map_or_else(
                        || "-".to_owned(),
                        |a| a["httpStatus"].as_i64().map_or_else(|| cell(&a["error"]), |s| s.to_string()),
                    );
                    vec![
                        cell(&d["id"]),
                        cell(&d["type"]),
                        cell(&d["status"]),
                        attempts.len().to_string(),
                        last,
                        cell(&d["nextAttemptAt"]),
                        cell(&d["incidentId"]),
                    ]
                })
                .collect();
            output.list(&deliveries, &["ID", "TYPE", "STATUS", "ATTEMPTS", "LAST", "NEXT", "INCIDENT"], rows)?;
            if let Some(next) = page["pagination"]["nextCursor"].as_str() {
                println!("more: --cursor {next}");
            }
            Ok(())
        }
        WebhookCommand::Redeliver { id, delivery, client } => {
            let path = format!("/api/webhooks/{}/deliveries/{}/redeliver", encode(&id), encode(&delivery));
            let queued = Client::new(&client)?.send(Method::POST, &path, &json!({})).await?;
            let delivery = &queued["delivery"];
            output.record(
                delivery,
                &[
                    ("delivery", cell(&delivery["id"])),
                    ("status", cell(&delivery["status"])),
                    ("attempts so far", delivery["attempts"].as_array().map_or(0, Vec::len).to_string()),
                ],
            )
        }
        WebhookCommand::RotateSecret { id, client } => {
            let path = format!("/api/webhooks/{}/rotate-secret", encode(&id));
            let rotated = Client::new(&client)?.send(Method::POST, &path, &json!({})).await?;
            show_with_secret(output, &rotated)
        }
    }
}

fn enabled(webhook: &Value) -> String {
    match (webhook["enabled"].as_bool(), webhook["disabledReason"].as_str()) {
        (Some(true), _) => "yes".into(),
        (_, Some(reason)) => format!("no ({reason})"),
        _ => "no".into(),
    }
}

fn events(events: &Value) -> String {
    events
        .as_array()
        .map_or_else(|| "all".to_owned(), |list| list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
}

fn show_with_secret(output: Output, answer: &Value) -> anyhow::Result<()> {
    let webhook = &answer["webhook"];
    output.record(
        answer,
        &[
            ("id", cell(&webhook["id"])),
            ("url", cell(&webhook["url"])),
            ("events", events(&webhook["events"])),
            ("secret", cell(&answer["secret"])),
            ("old secret signs until", cell(&webhook["previousSecretUntil"])),
            ("", "The secret is shown once: verify deliveries' signatures with it (Standard Webhooks).".into()),
        ],
    )
}
