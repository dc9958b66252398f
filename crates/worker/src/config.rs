//! Worker configuration.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser};
use common::config::{DatabaseConfig, LogConfig, NatsConfig, ShutdownConfig, WebhookConfig, parse_listen};

/// How a worker consumes the event stream.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Base name of the durable JetStream consumers all workers share (one per partition,
    /// `<name>-p<partition>`); also names the ownership locks.
    #[arg(long = "worker-consumer", env = "WORKER_CONSUMER", default_value = "workers")]
    pub consumer: String,
    /// Most events applied in one transaction.
    #[arg(long = "worker-batch-size", env = "WORKER_BATCH_SIZE", default_value_t = 2000)]
    pub batch_size: usize,
    /// Spacing of a lane's transactions while its batches are not full, in milliseconds: a batch
    /// under WORKER_BATCH_SIZE starts no sooner than this after the lane's previous one started,
    /// and gathers events meanwhile (every lane of every worker commits on its own clock, so
    /// this is what keeps transactions large as workers are added).
    #[arg(long = "worker-batch-linger-ms", env = "WORKER_BATCH_LINGER_MS", default_value_t = 500)]
    pub batch_linger_ms: u64,
    /// A lingering batch starts once nothing arrived at its lane for this many milliseconds:
    /// under load a lane's frames come a few milliseconds apart (ingest publishes every
    /// partition's frame of a round at once), so the linger still gathers them, and when a burst
    /// ends its last events do not wait out the linger. Not much shorter: a worker sharing a
    /// loaded machine is off its core for tens of milliseconds at times (20 ms cut four workers'
    /// transactions on one box by a quarter).
    #[arg(long = "worker-batch-quiet-ms", env = "WORKER_BATCH_QUIET_MS", default_value_t = 100)]
    pub batch_quiet_ms: u64,
    /// Transactions one worker process runs at once (lanes; the partitions it owns feed them in
    /// turn, each partition always the same one). Two use both cores of a small machine on a
    /// backlog.
    #[arg(long = "worker-concurrency", env = "WORKER_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// Seconds JetStream waits for an acknowledgement before redelivering a message.
    #[arg(long = "worker-ack-wait-secs", env = "WORKER_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Failed attempts to apply an event before it goes to the dead-letter stream (redeliveries
    /// after a database outage or an expired ack wait are not attempts).
    #[arg(long = "worker-max-deliveries", env = "WORKER_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
    /// Days of raw events the log keeps; older days are dropped whole (incidents keep their state
    /// and a summary of the dropped events in their timeline).
    #[arg(long = "event-retention-days", env = "EVENT_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,
    /// Most bytes of fetched messages a worker holds for its lanes (queued or being applied);
    /// a fetch waits for room, keeping its message alive meanwhile. Besides this, each owned
    /// partition pulls at most 4 MiB ahead.
    #[arg(long = "worker-max-buffered-bytes", env = "WORKER_MAX_BUFFERED_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_buffered_bytes: u32,
    /// Most messages of one partition's consumer delivered and not yet acknowledged.
    #[arg(long = "worker-max-ack-pending", env = "WORKER_MAX_ACK_PENDING", default_value_t = 5_000)]
    pub max_ack_pending: i64,
    /// Where webhook deliveries may be sent.
    #[command(flatten)]
    pub webhooks: WebhookConfig,
    #[command(flatten)]
    pub notify: NotifyConfig,
}

/// How people are notified (DESIGN §11).
#[derive(Debug, Clone, Args)]
pub struct NotifyConfig {
    /// SMTP server e-mail notifications go through: `smtp://host:port` (plain),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS), with `user:password@`
    /// to authenticate. Unset: e-mail notifications fail, and are recorded as failed.
    #[arg(long = "smtp-url", env = "SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The `From` of e-mail notifications.
    #[arg(long = "smtp-from", env = "SMTP_FROM", default_value = "OpsSentinal <opssentinal@localhost>")]
    pub smtp_from: String,
}

impl NotifyConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.smtp_url {
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
                .map_err(|err| anyhow::anyhow!("SMTP_URL is not a usable SMTP URL: {err}"))?;
        }
        self.smtp_from
            .parse::<lettre::message::Mailbox>()
            .map_err(|err| anyhow::anyhow!("SMTP_FROM is not an e-mail address: {err}"))?;
        Ok(())
    }
}

impl WorkerSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.consumer.is_empty() || !self.consumer.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("WORKER_CONSUMER must be letters, digits, '_' or '-'");
        }
        if !(1..=10_000).contains(&self.batch_size) {
            bail!("WORKER_BATCH_SIZE must be between 1 and 10000");
        }
        if !(1..=64).contains(&self.concurrency) {
            bail!("WORKER_CONCURRENCY must be between 1 and 64");
        }
        if !(1..=3650).contains(&self.retention_days) {
            bail!("EVENT_RETENTION_DAYS must be between 1 and 3650");
        }
        if self.batch_linger_ms > 1000 {
            bail!("WORKER_BATCH_LINGER_MS must be at most 1000");
        }
        if !(1..=1000).contains(&self.batch_quiet_ms) {
            bail!("WORKER_BATCH_QUIET_MS must be between 1 and 1000");
        }
        if self.ack_wait_secs == 0 {
            bail!("WORKER_ACK_WAIT_SECS must be at least 1");
        }
        if self.max_deliveries == 0 {
            bail!("WORKER_MAX_DELIVERIES must be at least 1");
        }
        if self.max_buffered_bytes < 1024 * 1024 {
            bail!("WORKER_MAX_BUFFERED_BYTES must be at least 1048576 (1 MiB, NATS's largest message)");
        }
        if self.max_ack_pending < self.batch_size as i64 {
            bail!("WORKER_MAX_ACK_PENDING must be at least WORKER_BATCH_SIZE");
        }
        self.notify.validate()
    }

    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    pub fn batch_quiet(&self) -> Duration {
        Duration::from_millis(self.batch_quiet_ms)
    }

    /// The start (UTC midnight) of the oldest day the event log keeps: older days are dropped
    /// whole by the retention role.
    pub fn oldest_kept(&self) -> jiff::Timestamp {
        let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
        let oldest = today.checked_sub(jiff::Span::new().days(i64::from(self.retention_days))).unwrap_or(today);
        oldest.to_zoned(jiff::tz::TimeZone::UTC).map_or(jiff::Timestamp::UNIX_EPOCH, |day| day.timestamp())
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }
}

/// OpsSentinal worker: applies events from NATS JetStream to PostgreSQL. Run as many as you like.
#[derive(Debug, Clone, Parser)]
#[command(name = "opssentinal-worker", version)]
pub struct WorkerConfig {
    /// Address of the health and metrics endpoint.
    #[arg(long = "listen", env = "WORKER_LISTEN", default_value = "0.0.0.0:8083")]
    pub listen: String,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl WorkerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        parse_listen("WORKER_LISTEN", &self.listen)?;
        self.worker.validate()?;
        self.database.validate()?;
        self.nats.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        WorkerConfig::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        WorkerConfig::try_parse_from(["opssentinal-worker"]).unwrap().validate().unwrap();
    }

    #[test]
    fn a_zero_batch_is_refused_by_name() {
        let config = WorkerConfig::try_parse_from(["opssentinal-worker", "--worker-batch-size", "0"]).unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("WORKER_BATCH_SIZE"));
    }
}
