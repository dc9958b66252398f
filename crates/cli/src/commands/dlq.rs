//! `opssentinal dlq list|replay`: events a worker could not apply, moved to the dead-letter
//! stream with the reason.

use anyhow::{Context, bail};
use async_nats::jetstream;
use clap::Subcommand;
use common::config::{DatabaseConfig, NatsConfig};
use serde_json::{Value, json};

use crate::output::{Output, cell};

/// Most dead letters listed or replayed at once.
const MAX_LETTERS: u64 = 1000;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered events with why they failed.
    #[command(after_help = "Example:\n  opssentinal dlq list --output json")]
    List {
        #[command(flatten)]
        nats: NatsConfig,
    },
    /// Send dead-lettered events through the pipeline again (after fixing the cause), and remove
    /// them from the dead-letter stream once the event stream stored them. Each starts with its
    /// failed attempts counted afresh; one whose cause is not fixed yet comes back to the
    /// dead-letter stream.
    #[command(after_help = "Example:\n  opssentinal dlq replay 3 4\n  opssentinal dlq replay --all")]
    Replay {
        /// Sequence numbers in the dead-letter stream (see `dlq list`).
        #[arg(required_unless_present = "all")]
        seqs: Vec<u64>,
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
        #[command(flatten)]
        nats: NatsConfig,
        #[command(flatten)]
        database: DatabaseConfig,
    },
}

struct Letter {
    seq: u64,
    message: async_nats::jetstream::message::StreamMessage,
}

async fn letters(nats: &NatsConfig) -> anyhow::Result<(jetstream::Context, jetstream::stream::Stream, Vec<Letter>)> {
    nats.validate()?;
    let client = common::nats::options(nats)
        .await?
        .connection_timeout(std::time::Duration::from_secs(3))
        .connect(nats.servers()?)
        .await
        .with_context(|| format!("cannot reach NATS at {}", nats.url))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(nats.dlq_stream())
        .await
        .with_context(|| format!("no dead-letter stream {}", nats.dlq_stream()))?;
    let info = stream.info().await?.state.clone();
    let mut letters = Vec::new();
    if info.messages > 0 {
        for seq in info.first_sequence..=info.last_sequence.min(info.first_sequence + MAX_LETTERS - 1) {
            if let Ok(message) = stream.get_raw_message(seq).await {
                letters.push(Letter { seq, message });
            }
        }
    }
    Ok((js, stream, letters))
}

fn header(letter: &Letter, name: &str) -> String {
    letter.message.headers.get(name).map(|v| v.to_string()).unwrap_or_default()
}

pub async fn run(command: DlqCommand, output: Output) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { nats } => {
            let (_, _, letters) = letters(&nats).await?;
            let listed: Vec<Value> = letters
                .iter()
                .map(|l| {
                    let event: Value = serde_json::from_slice(&l.message.payload).unwrap_or(Value::Null);
                    json!({"seq": l.seq, "reason": header(l, "OpsSentinal-Reason"), "failedAt": header(l, "OpsSentinal-Failed-At"),
                           "deliveries": header(l, "OpsSentinal-Deliveries"), "streamSeq": header(l, "OpsSentinal-Stream-Seq"),
                           "eventId": event["event_id"], "serviceId": event["service_id"], "dedupKey": event["dedup_key"]})
                })
                .collect();
            let rows = listed
                .iter()
                .map(|l| {
                    vec![
                        cell(&l["seq"]),
                        cell(&l["failedAt"]),
                        cell(&l["serviceId"]),
                        cell(&l["dedupKey"]),
                        cell(&l["reason"]),
                    ]
                })
                .collect();
            output.list(&listed, &["SEQ", "FAILED AT", "SERVICE", "DEDUP KEY", "REASON"], rows)
        }
        DlqCommand::Replay { seqs, all, nats, database } => {
            let (js, stream, letters) = letters(&nats).await?;
            let pool = super::connect(&database).await?;
            let chosen: Vec<&Letter> = letters.iter().filter(|l| all || seqs.contains(&l.seq)).collect();
            if let Some(missing) = seqs.iter().find(|s| !letters.iter().any(|l| l.seq == **s)) {
                bail!("no dead letter with sequence {missing}");
            }
            for letter in &chosen {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("replay-{}-{}", nats.dlq_stream(), letter.seq).as_str());
                // Applied where it was first accepted, not after what came since.
                if let Some(original) =
                    letter.message.headers.get("OpsSentinal-Stream-Seq").filter(|s| s.as_str() != "0")
                {
                    headers.insert(common::nats::ORIGINAL_SEQ_HEADER, original.as_str());
                }
                // An undecodable letter goes to partition 0, where a worker dead-letters it again.
                let event = serde_json::from_slice::<common::event::EventEnvelope>(&letter.message.payload).ok();
                let subject = event
                    .as_ref()
                    .map_or_else(|| nats.partition_subject(0), |e| nats.event_subject(&e.service_id, &e.dedup_key));
                if let Some(event) = &event {
                    // Its failed attempts are counted afresh.
                    sqlx::query("delete from apply_failures where event_id = $1")
                        .bind(event.event_id)
                        .execute(&pool)
                        .await
                        .with_context(|| format!("resetting the attempts of dead letter {}", letter.seq))?;
                }
                js.publish_with_headers(subject, headers, letter.message.payload.clone())
                    .await?
                    .await
                    .with_context(|| format!("replaying dead letter {}", letter.seq))?;
                stream
                    .delete_message(letter.seq)
                    .await
                    .with_context(|| format!("removing dead letter {}", letter.seq))?;
            }
            let replayed: Vec<u64> = chosen.iter().map(|l| l.seq).collect();
            output.record(&json!({"replayed": replayed}), &[("replayed", format!("{} event(s)", replayed.len()))])
        }
    }
}
