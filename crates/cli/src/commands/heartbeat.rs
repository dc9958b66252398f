//! `opssentinal heartbeat create|list`: dead-man's switches through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum HeartbeatCommand {
    /// Create a heartbeat: no ping for interval + grace seconds triggers an incident on the
    /// service, the next ping resolves it. Prints the ping URL, once.
    #[command(after_help = "Example:\n  opssentinal heartbeat create --service svc_0192… --name \"Nightly backup\" \
                            --interval 86400 --grace 3600\n  \
                            # then, at the end of the job: curl -fsS -X POST <ping URL>")]
    Create {
        /// The service its incident opens on.
        #[arg(long = "service", value_name = "SERVICE_ID")]
        service: String,
        #[arg(long)]
        name: String,
        /// Seconds between pings (5 to 604800).
        #[arg(long, value_name = "SECONDS")]
        interval: u32,
        /// Seconds a ping may be late (0 to 86400); default 60.
        #[arg(long, value_name = "SECONDS")]
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
                    ("service", cell(&heartbeat["serviceId"])),
                    ("every", every(heartbeat)),
                    ("due", cell(&heartbeat["dueAt"])),
                    ("ping URL", cell(&heartbeat["pingUrl"])),
                    ("", "The ping URL holds its secret and is shown once: GET or POST it from the job.".into()),
                ],
            )
        }
        HeartbeatCommand::List { client } => {
            let client = Client::new(&client)?;
            let heartbeats = super::all_pages(&client, "/api/heartbeats?limit=200", "heartbeats").await?;
            let rows = heartbeats
                .iter()
                .map(|h| {
                    vec![
                        cell(&h["id"]),
                        cell(&h["name"]),
                        cell(&h["state"]),
                        every(h),
                        cell(&h["lastPingAt"]),
                        cell(&h["dueAt"]),
                        cell(&h["serviceId"]),
                    ]
                })
                .collect();
            output.list(&heartbeats, &["ID", "NAME", "STATE", "EVERY", "LAST PING", "DUE", "SERVICE"], rows)
        }
    }
}

fn every(heartbeat: &Value) -> String {
    format!("{} s (+{} s grace)", cell(&heartbeat["intervalSeconds"]), cell(&heartbeat["graceSeconds"]))
}
