//! `opssentinal escalation-policy create|list|show`: who is paged, step by step, through the API.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Usage;
use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell, table};

#[derive(Debug, Subcommand)]
pub enum EscalationPolicyCommand {
    /// Create an escalation policy from its steps, in order.
    #[command(after_help = "Example:\n  opssentinal escalation-policy create --name Checkout --repeat 1 \\\n    \
                            --step 10:schedule:sch_0192… --step 15:user:usr_a,user:usr_b")]
    Create {
        #[arg(long)]
        name: String,
        /// How many times the steps start over after the last one (0 to 9).
        #[arg(long, default_value_t = 0)]
        repeat: u32,
        /// A step: minutes to wait for an acknowledgement, then its targets (`user:<id>` or
        /// `schedule:<id>`, comma-separated): `10:schedule:sch_1,user:usr_2`. Repeat for each step.
        #[arg(long = "step", value_name = "MINUTES:TARGET[,TARGET…]", required = true)]
        steps: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List escalation policies.
    #[command(after_help = "Example:\n  opssentinal escalation-policy list")]
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a policy with its steps.
    #[command(after_help = "Example:\n  opssentinal escalation-policy show esc_0192…")]
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// One `--step` as the API takes it.
fn step(text: &str) -> Result<Value, Usage> {
    let bad = |why: &str| Usage(format!("--step {text:?}: {why}; write MINUTES:TARGET[,TARGET…], e.g. 10:user:usr_1"));
    let (minutes, targets) = text.split_once(':').ok_or_else(|| bad("no minutes"))?;
    let minutes: u32 = minutes.trim().parse().map_err(|_| bad("the minutes are not a number"))?;
    let targets = targets
        .split(',')
        .map(|target| match target.trim().split_once(':') {
            Some((kind @ ("user" | "schedule"), id)) if !id.is_empty() => Ok(json!({"type": kind, "id": id})),
            _ => Err(bad(&format!("{target:?} is not user:<id> or schedule:<id>"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"escalateAfterMinutes": minutes, "targets": targets}))
}

fn targets(step: &Value) -> String {
    let targets = step["targets"].as_array().cloned().unwrap_or_default();
    targets.iter().map(|t| format!("{}:{}", cell(&t["type"]), cell(&t["id"]))).collect::<Vec<_>>().join(", ")
}

pub async fn run(command: EscalationPolicyCommand, output: Output) -> anyhow::Result<()> {
    match command {
        EscalationPolicyCommand::Create { name, repeat, steps, client } => {
            let steps = steps.iter().map(|s| step(s)).collect::<Result<Vec<_>, _>>()?;
            let body = json!({"name": name, "repeat": repeat, "steps": steps});
            let created = Client::new(&client)?.send(Method::POST, "/api/escalation-policies", &body).await?;
            show(output, &created["escalationPolicy"])
        }
        EscalationPolicyCommand::List { client } => {
            let page = Client::new(&client)?.get("/api/escalation-policies?limit=200").await?;
            let policies = page["escalationPolicies"].as_array().cloned().unwrap_or_default();
            let rows = policies
                .iter()
                .map(|p| {
                    let steps = p["steps"].as_array().map_or(0, Vec::len);
                    let services = p["serviceIds"].as_array().map_or(0, Vec::len);
                    vec![cell(&p["id"]), cell(&p["name"]), cell(&p["version"]), steps.to_string(), services.to_string()]
                })
                .collect();
            output.list(&policies, &["ID", "NAME", "VERSION", "STEPS", "SERVICES"], rows)
        }
        EscalationPolicyCommand::Show { id, client } => {
            let found = Client::new(&client)?.get(&format!("/api/escalation-policies/{}", encode(&id))).await?;
            show(output, &found["escalationPolicy"])
        }
    }
}

fn show(output: Output, policy: &Value) -> anyhow::Result<()> {
    if output == Output::Json {
        return output.record(policy, &[]);
    }
    output.record(
        policy,
        &[
            ("id", cell(&policy["id"])),
            ("name", cell(&policy["name"])),
            ("version", cell(&policy["version"])),
            ("repeat", cell(&policy["repeat"])),
        ],
    )?;
    let steps = policy["steps"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| vec![(i + 1).to_string(), format!("{} min", cell(&s["escalateAfterMinutes"])), targets(s)])
        .collect();
    print!("{}", table(&["STEP", "THEN WAIT", "NOTIFIES"], &rows));
    Ok(())
}
