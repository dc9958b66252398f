//! The CLI as a client of the HTTP API (`OPSSENTINAL_URL`, `OPSSENTINAL_API_KEY`).

use anyhow::{Context, anyhow};
use clap::Args;
use reqwest::Method;
use serde_json::Value;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the OpsSentinal HTTP API.
    #[arg(long = "url", env = "OPSSENTINAL_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// API key to authenticate with.
    #[arg(long = "api-key", env = "OPSSENTINAL_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        // reqwest uses rustls; the process has one crypto provider (ring, as async-nats).
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let key = args.api_key.clone().context("an API key is needed: set OPSSENTINAL_API_KEY or pass --api-key")?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("opssentinal-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base: args.url.trim_end_matches('/').to_owned(), key })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, None).await
    }

    pub async fn send(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.request(method, path, Some(body)).await
    }

    async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| {
            anyhow!(
                "cannot reach OpsSentinal at {} ({}); is it running, and is OPSSENTINAL_URL right?",
                self.base,
                root_cause(&err)
            )
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        match (error["code"].as_str(), error["message"].as_str()) {
            (Some(code), Some(message)) => Err(anyhow!("{code}: {message}")),
            _ => Err(anyhow!("HTTP {status} from {url}")),
        }
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Percent-encodes a query-string value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::encode("OPEN,ACKNOWLEDGED"), "OPEN%2CACKNOWLEDGED");
        assert_eq!(super::encode("a b&c"), "a%20b%26c");
    }
}
