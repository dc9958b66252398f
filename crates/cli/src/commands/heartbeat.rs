//! `opssentinal heartbeat create|list`: dead-man's switches through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum HeartbeatCommand {
    /// Create a heartbeat: no ping for interval + grace seconds opens an incident. Prints the
    /// ping URL, once.
    #[command(after_help = "Example:\n  opssentinal heartbeat create --service svc_0192… --name \"Nightly backup\" \
                            --interval 86400 --grace 3600")]
    Create {
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service: String,
        #[arg(long)]
        name: String,
        /// Seconds between pings (5 to 604800).
        #[arg(long)]
        interval: u32,
        /// Seconds a ping may be late (0 to 86400); default 60.
        #[arg(long)]
        grace: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List heartbeats with their state and last ping.
    #[command(after_help = "Example:\n  opssentinal heartbeat list")]
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: HeartbeatCommand, output: Output) -> anyhow::Result<()> {
    match command {
        HeartbeatCommand::Create { service, name, interval, grace, client } => {
            let mut body = json!({"serviceId": service, "name": name, "intervalSeconds": interval});
            if let Some(grace) = grace {
                body["graceSeconds"] = grace.into();
            }
            let created = Client::new(&client)?.send(Method::POST, "/api/heartbeats", &body).await?;
            let heartbeat = &created["heartbeat"];
            output.record(
                heartbeat,
                &[
                    ("id", cell(&heartbeat["id"])),
                    ("name", cell(&heartbeat["name"])),
                    ("due", cell(&heartbeat["dueAt"])),
                    ("ping URL", cell(&heartbeat["pingUrl"])),
                ],
            )?;
            if output == Output::Table {
                eprintln!("The ping URL holds its secret and is shown only now: GET or POST it from the job.");
            }
            Ok(())
        }
        HeartbeatCommand::List { client } => {
            let page = Client::new(&client)?.get("/api/heartbeats?limit=200").await?;
            let heartbeats = page["heartbeats"].as_array().cloned().unwrap_or_default();
            let rows = heartbeats.iter().map(row).collect();
            output.list(&heartbeats, &["ID", "NAME", "STATE", "EVERY", "LAST PING", "DUE"], rows)
        }
    }
}

fn row(h: &Value) -> Vec<String> {
    let every = format!("{} s (+{} s)", cell(&h["intervalSeconds"]), cell(&h["graceSeconds"]));
    vec![cell(&h["id"]), cell(&h["name"]), cell(&h["state"]), every, cell(&h["lastPingAt"]), cell(&h["dueAt"])]
}
