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
    /// Ingest's address as monitored jobs reach it: heartbeats' ping URLs are
    /// `{INGEST_PUBLIC_URL}/api/heartbeats/ping/{token}`.
    #[arg(long = "ingest-public-url", env = "INGEST_PUBLIC_URL", default_value = "http://localhost:8081")]
    pub ingest_public_url: String,
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
        check_public_url("INGEST_PUBLIC_URL", &self.ingest_public_url)?;
        self.limits.validate()
    }
}

/// An absolute `http` or `https` URL with a host and no query or fragment: a base other URLs are
/// built on.
pub fn check_public_url(name: &str, value: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(value).map_err(|err| anyhow::anyhow!("{name} must be a URL, got {value:?}: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        anyhow::bail!("{name} must be an http or https URL with a host, got {value:?}");
    }
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!("{name} must have no query or fragment, got {value:?}");
    }
    Ok(())
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

    #[test]
    fn the_ingest_public_url_must_be_a_base_url() {
        for good in ["http://localhost:8081", "https://pager.example.com/", "https://example.com/ops"] {
            check_public_url("INGEST_PUBLIC_URL", good).unwrap();
        }
        for bad in ["localhost:8081", "ftp://example.com", "https://example.com/?a=1", "not a url"] {
            let err = check_public_url("INGEST_PUBLIC_URL", bad).unwrap_err().to_string();
            assert!(err.contains("INGEST_PUBLIC_URL"), "{bad}: {err}");
        }
    }
}
