//! query-api configuration.

use clap::Parser;
use common::config::{
    DatabaseConfig, LogConfig, NatsConfig, RateLimitConfig, RedisConfig, ShutdownConfig, WebhookConfig, parse_listen,
};

/// OpsSentinal query API: incidents, services, schedules and on-call.
#[derive(Debug, Clone, Parser)]
#[command(name = "opssentinal-query-api", version)]
pub struct QueryApiConfig {
    /// Address the HTTP server listens on.
    #[arg(long = "listen", env = "QUERY_API_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    /// The change stream `GET /api/stream` serves.
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub limits: RateLimitConfig,
    #[command(flatten)]
    pub webhooks: WebhookConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl QueryApiConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        parse_listen("QUERY_API_LISTEN", &self.listen)?;
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
        QueryApiConfig::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        QueryApiConfig::try_parse_from(["opssentinal-query-api"]).unwrap().validate().unwrap();
    }
}
