//! Configuration shared by the services, from environment variables (or the same-named flags).
//! Every field has a default that works on a developer machine with local services, and every
//! service validates its configuration at start, naming what is wrong.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// PostgreSQL connection.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/opssentinal"
    )]
    pub url: String,
    /// Largest number of pooled connections per process.
    #[arg(
        id = "database_max_connections",
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        sqlx::postgres::PgConnectOptions::from_str(&self.url).context("DATABASE_URL is not a valid PostgreSQL URL")?;
        if self.max_connections == 0 {
            bail!("DATABASE_MAX_CONNECTIONS must be at least 1");
        }
        Ok(())
    }
}

/// Redis, used for rate limits.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis URL.
    #[arg(id = "redis_url", long = "redis-url", env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Prefix of every Redis key this deployment writes.
    #[arg(
        id = "redis_key_prefix",
        long = "redis-key-prefix",
        env = "REDIS_KEY_PREFIX",
        default_value = "opssentinal:"
    )]
    pub key_prefix: String,
    /// How long a rate-limit check may wait for Redis before failing open, in milliseconds.
    #[arg(id = "redis_timeout_ms", long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub timeout_ms: u64,
}

impl RedisConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        deadpool_redis::redis::parse_redis_url(&self.url).context("REDIS_URL is not a valid Redis URL")?;
        if self.timeout_ms == 0 {
            bail!("REDIS_TIMEOUT_MS must be at least 1");
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// NATS JetStream: the event stream and its dead-letter stream.
#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS server URLs, comma-separated: the seeds of a cluster (any reachable one will do; the
    /// client learns the others). `nats://user:password@host` or `nats://token@host` carry
    /// credentials; `tls://` requires TLS.
    #[arg(id = "nats_url", long = "nats-url", env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// A NATS `.creds` file (user JWT and NKey seed) to authenticate with.
    #[arg(id = "nats_creds", long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to verify the NATS servers with; setting it requires TLS.
    #[arg(id = "nats_tls_ca", long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that verify clients; with `NATS_TLS_KEY`.
    #[arg(id = "nats_tls_cert", long = "nats-tls-cert", env = "NATS_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(id = "nats_tls_key", long = "nats-tls-key", env = "NATS_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Name of the JetStream stream holding accepted events (its dead letters go to `<name>_DLQ`).
    #[arg(id = "nats_stream", long = "nats-stream", env = "NATS_STREAM", default_value = "OPSSENTINAL_EVENTS")]
    pub stream: String,
    /// Subject prefix: events are published to `<prefix>.events.<partition>`, dead letters to `<prefix>.dlq`.
    #[arg(
        id = "nats_subject_prefix",
        long = "nats-subject-prefix",
        env = "NATS_SUBJECT_PREFIX",
        default_value = "opssentinal"
    )]
    pub subject_prefix: String,
    /// Stream replicas (3 in production, on a 3-node cluster).
    #[arg(
        id = "nats_stream_replicas",
        long = "nats-stream-replicas",
        env = "NATS_STREAM_REPLICAS",
        default_value_t = 1
    )]
    pub replicas: usize,
    /// Largest size of the event stream in bytes (-1: unlimited): past it, JetStream refuses new
    /// events and ingest answers 503 until workers catch up; nothing stored is dropped.
    #[arg(id = "nats_stream_max_bytes", long = "nats-stream-max-bytes", env = "NATS_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub max_bytes: i64,
    /// How long ingest waits for JetStream's publish acknowledgement before answering 503, in milliseconds.
    #[arg(
        id = "nats_publish_timeout_ms",
        long = "nats-publish-timeout-ms",
        env = "NATS_PUBLISH_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub publish_timeout_ms: u64,
    /// Partitions of the event stream: a key's events all go to the partition a hash of
    /// `(service, dedup_key)` names; a partition is one subject, one durable consumer and one
    /// ownership lock, applied by one worker at a time. So it is the most workers that can share
    /// the load, and workers share it evenly when their count divides it: choose at least the most
    /// workers you will run, and a number most worker counts divide (12 serves 1, 2, 3, 4 and 6
    /// evenly; 24 up to 8, 12). Fewer partitions make larger frames under the same load. Fixed for
    /// a stream's lifetime: ingest, workers and the CLI must agree (a stream made with another
    /// count is refused, naming both).
    #[arg(id = "nats_partitions", long = "nats-partitions", env = "NATS_PARTITIONS", default_value_t = 12)]
    pub partitions: u32,
    /// How long JetStream remembers an event id to drop a re-published copy, in seconds: a
    /// re-sent Alertmanager notification within it is not counted twice.
    #[arg(
        id = "nats_duplicate_window_secs",
        long = "nats-duplicate-window-secs",
        env = "NATS_DUPLICATE_WINDOW_SECS",
        default_value_t = 120
    )]
    pub duplicate_window_secs: u64,
    /// Most events ingest puts in one JetStream message (a frame of one partition's events that
    /// arrived together); 1 publishes every event alone, directly (as many in flight as requests).
    #[arg(
        id = "nats_max_frame_events",
        long = "nats-max-frame-events",
        env = "NATS_MAX_FRAME_EVENTS",
        default_value_t = 1024
    )]
    pub max_frame_events: usize,
}

impl NatsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.servers()?;
        for (name, path) in [
            ("NATS_CREDS", &self.creds),
            ("NATS_TLS_CA", &self.tls_ca),
            ("NATS_TLS_CERT", &self.tls_cert),
            ("NATS_TLS_KEY", &self.tls_key),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                bail!("{name}: {} is not a readable file", path.display());
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("NATS_TLS_CERT and NATS_TLS_KEY go together");
        }
        let token_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !token_ok(&self.stream) {
            bail!("NATS_STREAM must be letters, digits, '_' or '-'");
        }
        if !self.subject_prefix.split('.').all(token_ok) {
            bail!("NATS_SUBJECT_PREFIX must be dot-separated tokens of letters, digits, '_' or '-'");
        }
        if self.replicas == 0 || self.replicas > 5 {
            bail!("NATS_STREAM_REPLICAS must be between 1 and 5");
        }
        if self.publish_timeout_ms == 0 {
            bail!("NATS_PUBLISH_TIMEOUT_MS must be at least 1");
        }
        if self.duplicate_window_secs == 0 {
            bail!("NATS_DUPLICATE_WINDOW_SECS must be at least 1");
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            bail!("NATS_PARTITIONS must be between 1 and {MAX_PARTITIONS}");
        }
        if !(1..=MAX_FRAME_EVENTS).contains(&self.max_frame_events) {
            bail!("NATS_MAX_FRAME_EVENTS must be between 1 and {MAX_FRAME_EVENTS}");
        }
        Ok(())
    }

    /// The servers `NATS_URL` names (comma-separated seeds).
    pub fn servers(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                async_nats::ServerAddr::from_str(s).with_context(|| format!("NATS_URL: {s:?} is not a valid NATS URL"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .and_then(|servers| if servers.is_empty() { bail!("NATS_URL names no server") } else { Ok(servers) })
    }

    /// The subjects the event stream holds: `<prefix>.events.<partition>`.
    pub fn events_subjects(&self) -> String {
        format!("{}.events.*", self.subject_prefix)
    }

    /// The subject of one partition: `<prefix>.events.<partition>` (partition 5 is
    /// `<prefix>.events.5`). A partition is the one unit of subject, consumer and ownership.
    pub fn partition_subject(&self, partition: u32) -> String {
        format!("{}.events.{partition}", self.subject_prefix)
    }

    /// The partition a subject of the event stream names, if it names one.
    pub fn subject_partition(&self, subject: &str) -> Option<u32> {
        let digits = subject.strip_prefix(self.subject_prefix.as_str())?.strip_prefix(".events.")?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        digits.parse().ok().filter(|p| canonical && *p < self.partitions)
    }

    /// The subject an event for `(service_id, dedup_key)` is published to.
    pub fn event_subject(&self, service_id: &str, dedup_key: &str) -> String {
        self.partition_subject(partition_of(service_id, dedup_key, self.partitions))
    }

    pub fn dlq_subject(&self) -> String {
        format!("{}.dlq", self.subject_prefix)
    }

    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.stream)
    }

    /// The stream of incident changes (DESIGN §9): `<NATS_STREAM>_CHANGES`.
    pub fn changes_stream(&self) -> String {
        format!("{}_CHANGES", self.stream)
    }

    /// The subject of a service's changes: `<prefix>.changes.<service_id>`.
    pub fn changes_subject(&self, service_id: &str) -> String {
        format!("{}.changes.{service_id}", self.subject_prefix)
    }

    /// Every subject of the change stream.
    pub fn changes_subjects(&self) -> String {
        format!("{}.changes.>", self.subject_prefix)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
}

/// Most partitions a stream may have.
pub(crate) const MAX_PARTITIONS: u32 = 1024;

/// Largest `NATS_MAX_FRAME_EVENTS`: a frame's events must fit the positions its stream sequence
/// spans (`common::nats::FRAME_SLOTS`, which `nats` checks at compile time).
pub const MAX_FRAME_EVENTS: usize = 1024;

/// The partition of a `(service, dedup_key)`: the first 8 bytes of a SHA-256 of both, modulo
/// `partitions`. Stable across processes, versions and machines, as ingest and workers must agree.
pub fn partition_of(service_id: &str, dedup_key: &str, partitions: u32) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(service_id).chain_update([0]).chain_update(dedup_key).finalize();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u32::try_from(u64::from_be_bytes(prefix) % u64::from(partitions.max(1))).unwrap_or(0)
}

/// Default rate limits, per API key and minute.
#[derive(Debug, Clone, Args)]
pub struct RateLimitConfig {
    /// Events per minute per API key (or per routing key) unless the key or service has its own limit.
    #[arg(
        id = "rate_limit_events",
        long = "rate-limit-events",
        env = "RATE_LIMIT_EVENTS_PER_MINUTE",
        default_value_t = 100
    )]
    pub events_per_minute: u32,
    /// Requests per minute per API key on every other endpoint.
    #[arg(id = "rate_limit_api", long = "rate-limit-api", env = "RATE_LIMIT_API_PER_MINUTE", default_value_t = 300)]
    pub api_per_minute: u32,
    /// Failed authentications per minute per client address before answering 429.
    #[arg(
        id = "rate_limit_auth_failures",
        long = "rate-limit-auth-failures",
        env = "RATE_LIMIT_AUTH_FAILURES_PER_MINUTE",
        default_value_t = 30
    )]
    pub auth_failures_per_minute: u32,
    /// How long an API key lookup is cached in process, in seconds (revocation takes effect within it).
    #[arg(id = "auth_cache_ttl_secs", long = "auth-cache-ttl-secs", env = "AUTH_CACHE_TTL_SECS", default_value_t = 10)]
    pub auth_cache_ttl_secs: u64,
    /// Reverse proxies (comma-separated addresses or CIDRs) whose `X-Forwarded-For` names the
    /// client. Empty: the TCP peer is the client, and `X-Forwarded-For` is ignored.
    #[arg(
        id = "trusted_proxies",
        long = "trusted-proxies",
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_proxy,
        default_value = ""
    )]
    pub trusted_proxies: Vec<Option<ipnet::IpNet>>,
}

/// One `TRUSTED_PROXIES` entry: an address (a /32 or /128) or a CIDR; blank entries are skipped.
fn parse_proxy(value: &str) -> Result<Option<ipnet::IpNet>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(Some)
        .map_err(|_| format!("TRUSTED_PROXIES: {value:?} is neither an IP address nor a CIDR"))
}

impl RateLimitConfig {
    /// Whether requests from `peer` may name their client in `X-Forwarded-For`.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().flatten().any(|net| net.contains(&peer))
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.events_per_minute == 0 || self.api_per_minute == 0 || self.auth_failures_per_minute == 0 {
            bail!("RATE_LIMIT_* values must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// `json` (one object per line, for log shippers) or `pretty` (for people).
    #[arg(id = "log_format", long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info` or `info,worker=debug`.
    #[arg(id = "log_level", long = "log-level", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
}

/// How long a service may take to stop once asked (SIGTERM): in-flight work it cannot finish in
/// that time is abandoned (and redelivered). Kubernetes' termination grace period should exceed it.
#[derive(Debug, Clone, Args)]
pub struct ShutdownConfig {
    /// Seconds a service may take to stop after SIGTERM, whatever is unreachable.
    #[arg(
        id = "shutdown_timeout_secs",
        long = "shutdown-timeout-secs",
        env = "SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub timeout_secs: u64,
}

impl ShutdownConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Parses a listen address, naming the variable on failure.
pub fn parse_listen(name: &str, value: &str) -> anyhow::Result<std::net::SocketAddr> {
    value.parse().with_context(|| format!("{name} must be host:port, got {value:?}"))
}

/// Outbound webhooks: where they may be sent.
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Allow webhook URLs on loopback, private, link-local and other non-public addresses
    /// (refused by default, when creating a webhook and on every connection).
    #[arg(
        id = "webhook_allow_private",
        long = "webhook-allow-private",
        env = "WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_private: bool,
}

impl WebhookConfig {
    /// Whether a webhook may connect to `ip`.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared (CGNAT),
/// benchmarking, IETF protocol, unspecified, broadcast, multicast, documentation or reserved,
/// nor an IPv6 address that carries an IPv4 address of those kinds (mapped, compatible, NAT64,
/// 6to4) or is site-local.
pub(crate) fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| IpAddr::V4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            match segments {
                // IPv4-compatible (deprecated), and NAT64's well-known prefix.
                [0, 0, 0, 0, 0, 0, high, low] if high != 0 => is_public(embedded(high, low)),
                [0x64, 0xff9b, 0, 0, 0, 0, high, low] => is_public(embedded(high, low)),
                // 6to4 carries the IPv4 address after its prefix.
                [0x2002, high, low, ..] => is_public(embedded(high, low)),
                _ => {
                    !(v6.is_loopback()
                        || v6.is_unspecified()
                        || v6.is_multicast()
                        || v6.is_unique_local()
                        || v6.is_unicast_link_local()
                        || (segments[0] & 0xffc0) == 0xfec0
                        || (segments[0] == 0x2001 && segments[1] == 0x0db8))
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for public in
            ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "2002:5db8:d822::1", "64:ff9b::808:808"]
        {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "198.18.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        // Fixed values (SHA-256 of "svc_a\0disk-full"): ingest and workers built at different
        // times, by different compilers, must agree.
        assert_eq!(partition_of("svc_a", "disk-full", 32), 28);
        assert_eq!(partition_of("svc_a", "disk-full", 1024), 60);
        assert_ne!(partition_of("svc_a", "b", 1024), partition_of("svc_ab", "", 1024));
        assert_eq!(partition_of("svc_a", "disk-full", 1), 0);
    }

    #[test]
    fn nats_url_takes_comma_separated_seeds() {
        let mut config = nats_config(32);
        config.url = "nats://n1:4222, nats://u:p@n2:4223,tls://n3:4224".into();
        assert_eq!(config.servers().unwrap().len(), 3);
        config.validate().unwrap();
        config.url = "nats://n1:4222,nats://n2:port".into();
        assert!(config.validate().unwrap_err().to_string().contains("n2:port"));
        config.url = " , ".into();
        assert!(config.validate().is_err());
        config.url = "nats://n1:4222".into();
        for (frame, valid) in [(0, false), (1, true), (1024, true), (1025, false)] {
            config.max_frame_events = frame;
            let result = config.validate();
            assert_eq!(result.is_ok(), valid, "{frame}: {result:?}");
            if let Err(err) = result {
                assert!(err.to_string().contains("NATS_MAX_FRAME_EVENTS"), "{err}");
            }
        }
    }

    /// The defaults, with `partitions`.
    pub(crate) fn nats_config(partitions: u32) -> NatsConfig {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            nats: NatsConfig,
        }
        let mut config = <Wrap as clap::Parser>::try_parse_from(["x"]).unwrap().nats;
        config.partitions = partitions;
        config
    }

    #[test]
    fn partitions_are_named_by_their_number() {
        for (partitions, valid) in [(0, false), (1, true), (3, true), (12, true), (1024, true), (1025, false)] {
            let result = nats_config(partitions).validate();
            assert_eq!(result.is_ok(), valid, "{partitions}: {result:?}");
        }
        let config = nats_config(12);
        assert_eq!(config.partition_subject(5), "opssentinal.events.5");
        assert_eq!(config.partition_subject(11), "opssentinal.events.11");
        for p in 0..12 {
            assert_eq!(config.subject_partition(&config.partition_subject(p)), Some(p));
        }
        for other in [
            "opssentinal.events.12",
            "opssentinal.events.05",
            "opssentinal.events.",
            "opssentinal.events.1.0",
            "opssentinal.dlq",
            "x.events.0",
            "opssentinal.events.-1",
        ] {
            assert_eq!(config.subject_partition(other), None, "{other}");
        }
    }

    #[test]
    fn keys_spread_over_all_partitions() {
        let mut seen = [0u32; 32];
        for i in 0..32_000 {
            seen[partition_of("svc_bench", &format!("key-{i}"), 32) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "uneven spread: {seen:?}");
    }
}
