//! `opssentinal oncall SCHEDULE [--at TIME]`: who is on call.

use clap::Args;

use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell};

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  opssentinal oncall sch_0192… --at 2026-12-25T12:00:00Z")]
pub struct OnCallArgs {
    /// Schedule id.
    schedule: String,
    /// The instant (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: OnCallArgs, output: Output) -> anyhow::Result<()> {
    let mut path = format!("/api/schedules/{}/on-call", encode(&args.schedule));
    if let Some(at) = &args.at {
        path.push_str(&format!("?at={}", encode(at)));
    }
    let answer = Client::new(&args.client)?.get(&path).await?;
    let on_call = &answer["onCall"];
    if on_call.is_null() {
        if output == crate::output::Output::Json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            println!("nobody is on call at {}", answer["at"].as_str().unwrap_or("that time"));
        }
        return Ok(());
    }
    output.record(
        &answer,
        &[
            ("on call", cell(&on_call["user"]["name"])),
            ("email", cell(&on_call["user"]["email"])),
            ("from", cell(&on_call["start"])),
            ("until", cell(&on_call["end"])),
            ("override", cell(&on_call["override"])),
        ],
    )
}
