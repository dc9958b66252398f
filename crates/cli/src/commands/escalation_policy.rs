//! `opssentinal escalation-policy create|list|show`: who is paged, step by step, through the API.

use clap::Subcommand;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Client, ClientArgs, encode};
use crate::output::{Output, cell, table};

#[derive(Debug, Subcommand)]
pub enum EscalationPolicyCommand {
    /// Create an escalation policy from its steps, in order; prints its id.
    #[command(after_help = "Example:\n  opssentinal escalation-policy create --name Checkout --repeat 1 \\\n    \
                            --step 10:schedule:sch_0192… --step 15:user:usr_a,user:usr_b")]
    Create {
        #[arg(long)]
        name: String,
        /// How many times the steps start over after the last one (0 to 9).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
        repeat: u8,
        /// A step: the minutes to wait for an acknowledgement before the next step, then whom it
        /// notifies (`user:<id>` or `schedule:<id>`, comma-separated), e.g.
        /// `10:schedule:sch_1,user:usr_2`. Repeat the flag for each step, in order.
        #[arg(long = "step", value_name = "MINUTES:TARGET[,TARGET…]", required = true, value_parser = parse_step)]
        steps: Vec<Step>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List escalation policies.
    #[command(after_help = "Example:\n  opssentinal escalation-policy list")]
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a policy with its steps: each one's delay and whom it notifies.
    #[command(after_help = "Example:\n  opssentinal escalation-policy show esc_0192…")]
    Show {
        #[arg(value_name = "POLICY_ID")]
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// One `--step`, as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    escalate_after_minutes: u32,
    targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
}

/// `MINUTES:TARGET[,TARGET…]`; clap names the flag in front of the error.
fn parse_step(text: &str) -> Result<Step, String> {
    let bad = |why: String| format!("{why}; write MINUTES:TARGET[,TARGET…], e.g. 10:user:usr_1,schedule:sch_2");
    let (minutes, targets) = text.split_once(':').ok_or_else(|| bad("no targets after the minutes".into()))?;
    let escalate_after_minutes =
        minutes.trim().parse().map_err(|_| bad(format!("the minutes {:?} are not a whole number", minutes.trim())))?;
    if targets.trim().is_empty() {
        return Err(bad("no targets after the minutes".into()));
    }
    let targets = targets
        .split(',')
        .map(|target| {
            let (kind, id) = target.trim().split_once(':').unwrap_or((target.trim(), ""));
            let kind = match kind {
                "user" => "user",
                "schedule" => "schedule",
                _ => return Err(bad(format!("the target {:?} is not user:<id> or schedule:<id>", target.trim()))),
            };
            match id.trim() {
                "" => Err(bad(format!("the target {:?} has no id", target.trim()))),
                id => Ok(Target { kind, id: id.to_owned() }),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Step { escalate_after_minutes, targets })
}

pub async fn run(command: EscalationPolicyCommand, output: Output) -> anyhow::Result<()> {
    match command {
        EscalationPolicyCommand::Create { name, repeat, steps, client } => {
            let body = json!({"name": name, "repeat": repeat, "steps": steps});
            let created = Client::new(&client)?.send(Method::POST, "/api/escalation-policies", &body).await?;
            show(output, &created["escalationPolicy"])
        }
        EscalationPolicyCommand::List { client } => {
            let client = Client::new(&client)?;
            let policies =
                super::all_pages(&client, "/api/escalation-policies?limit=200", "escalationPolicies").await?;
            let rows = policies
                .iter()
                .map(|p| {
                    let steps = p["steps"].as_array().map_or(0, Vec::len);
                    vec![cell(&p["id"]), cell(&p["name"]), cell(&p["version"]), steps.to_string(), services(p)]
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

fn services(policy: &Value) -> String {
    match policy["serviceIds"].as_array() {
        Some(ids) if !ids.is_empty() => ids.iter().map(cell).collect::<Vec<_>>().join(","),
        _ => "-".into(),
    }
}

fn targets(step: &Value) -> String {
    let targets = step["targets"].as_array().cloned().unwrap_or_default();
    targets.iter().map(|t| format!("{}:{}", cell(&t["type"]), cell(&t["id"]))).collect::<Vec<_>>().join(", ")
}

/// The policy: JSON as the API answers it, or its fields and then one line per step.
fn show(output: Output, policy: &Value) -> anyhow::Result<()> {
    output.record(
        policy,
        &[
            ("id", cell(&policy["id"])),
            ("name", cell(&policy["name"])),
            ("version", cell(&policy["version"])),
            ("repeat", cell(&policy["repeat"])),
            ("services", services(policy)),
        ],
    )?;
    if output == Output::Table {
        let steps = policy["steps"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| vec![(i + 1).to_string(), targets(s), format!("{} min", cell(&s["escalateAfterMinutes"]))])
            .collect();
        println!();
        print!("{}", table(&["STEP", "NOTIFIES", "ESCALATES AFTER"], &rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_minutes_then_its_targets() {
        let step = parse_step("5:user:usr_1, schedule:sch_2").unwrap();
        assert_eq!(
            serde_json::to_value(step).unwrap(),
            json!({"escalateAfterMinutes": 5, "targets": [{"type": "user", "id": "usr_1"}, {"type": "schedule", "id": "sch_2"}]})
        );
    }

    #[test]
    fn a_malformed_step_says_what_is_wrong() {
        for (bad, says) in [
            ("soon:user:usr_1", "the minutes \"soon\" are not a whole number"),
            ("5", "no targets"),
            ("5:", "no targets"),
            ("5:team:t_1", "\"team:t_1\" is not user:<id> or schedule:<id>"),
            ("5:user:", "\"user:\" has no id"),
            ("5:user:usr_1,", "\"\" is not user:<id>"),
        ] {
            let err = parse_step(bad).unwrap_err();
            assert!(err.contains(says) && err.contains("MINUTES:TARGET"), "{bad:?}: {err}");
        }
    }
}
