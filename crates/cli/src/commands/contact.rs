//! `opssentinal user contact add|list`: a user's contact methods, through the API (unlike the
//! rest of `user`, which talks to PostgreSQL).

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell};

#[derive(Debug, Subcommand)]
pub enum ContactCommand {
    /// Add a contact method: an e-mail address, a webhook URL or a Slack incoming-webhook URL.
    #[command(
        after_help = "Examples:\n  opssentinal user contact add usr_0192… --type email --address jane@example.com\n  \
                      opssentinal user contact add usr_0192… --type slack --address https://hooks.slack.com/services/T0/B0/XXXX"
    )]
    Add {
        #[arg(value_name = "USER_ID")]
        user: String,
        /// How it reaches the user.
        #[arg(long = "type", value_name = "TYPE", value_parser = ["email", "webhook", "slack"])]
        kind: String,
        /// The e-mail address, or the https URL of the webhook or Slack incoming webhook.
        #[arg(long)]
        address: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a user's contact methods.
    #[command(after_help = "Example:\n  opssentinal user contact list usr_0192… --output json")]
    List {
        #[arg(value_name = "USER_ID")]
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: ContactCommand, output: Output) -> anyhow::Result<()> {
    match command {
        ContactCommand::Add { user, kind, address, client } => {
            let path = format!("/api/users/{}/contact-methods", encode(&user));
            let body = json!({"type": kind, "address": address});
            let created = Client::new(&client)?.send(Method::POST, &path, &body).await?;
            let method = &created["contactMethod"];
            output.record(
                method,
                &[
                    ("id", cell(&method["id"])),
                    ("user", cell(&method["userId"])),
                    ("type", cell(&method["type"])),
                    ("address", cell(&method["address"])),
                ],
            )
        }
        ContactCommand::List { user, client } => {
            let page = Client::new(&client)?.get(&format!("/api/users/{}/contact-methods", encode(&user))).await?;
            let methods = page["contactMethods"].as_array().cloned().unwrap_or_default();
            output.list(&methods, &["ID", "TYPE", "ADDRESS", "CREATED"], methods.iter().map(row).collect())
        }
    }
}

fn row(method: &Value) -> Vec<String> {
    vec![cell(&method["id"]), cell(&method["type"]), cell(&method["address"]), cell(&method["createdAt"])]
}
