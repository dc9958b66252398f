//! ingest configuration.

use clap::Parser;
use common::config::{
    DatabaseConfig, LogConfig, NatsConfig, RateLimitConfig, RedisConfig, ShutdownConfig, parse_listen,
};

/// OpsSentinal ingest: accepts events over HTTP and stores them durably in NATS JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "opssentinal-ingest", version)]
pub struct IngestConfig {
    /// Address the HTTP server listens on.
    #[arg(long = "listen", env = "INGEST_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub limits: RateLimitConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl IngestConfig {
    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        parse_listen("INGEST_LISTEN", &self.listen)?;
        self.database.validate()?;
        self.redis.validate()?;
        self.nats.validate()?;
        self.limits.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        IngestConfig::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        IngestConfig::try_parse_from(["opssentinal-ingest"]).unwrap().validate().unwrap();
    }

    #[test]
    fn a_bad_value_is_named() {
        let config = IngestConfig::try_parse_from(["opssentinal-ingest", "--nats-stream", "a.b"]).unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("NATS_STREAM"));
    }
}
