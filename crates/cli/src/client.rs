//! The CLI as a client of the HTTP API (`OPSSENTINAL_URL`, `OPSSENTINAL_API_KEY`).

use anyhow::{Context, anyhow};
use clap::Args;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
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
    /// `Bearer <key>`, checked once, before anything is sent.
    authorization: HeaderValue,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        // reqwest uses rustls; the process has one crypto provider (ring, as async-nats).
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let key = args.api_key.as_deref().context("an API key is needed: set OPSSENTINAL_API_KEY or pass --api-key")?;
        let authorization = authorization(key)?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("opssentinal-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base: args.url.trim_end_matches('/').to_owned(), authorization })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request(Method::GET, path, None).await
    }

    pub async fn send(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.request(method, path, Some(body)).await
    }

    /// Opens a Server-Sent Events stream at `path`, resuming after `last_event_id`. It has no
    /// overall timeout; a stream silent for longer than three keepalives (45 s) is given up.
    pub async fn stream(&self, path: &str, last_event_id: Option<u64>) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(45))
            .user_agent(concat!("opssentinal-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut request = http
            .get(&url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        Err(refusal(status, &url, &response.json().await.unwrap_or(Value::Null)))
    }

    fn unreachable(&self, err: &reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach OpsSentinal at {} ({}); is it running, and is OPSSENTINAL_URL right?",
            self.base,
            root_cause(err)
        )
    }

    async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).header(AUTHORIZATION, self.authorization.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(refusal(status, &url, &body))
    }
}

/// The API's error envelope as an error: `CODE: message`.
fn refusal(status: reqwest::StatusCode, url: &str, body: &Value) -> anyhow::Error {
    let error = &body["error"];
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => anyhow!("{code}: {message}"),
        _ => anyhow!("HTTP {status} from {url}"),
    }
}

/// The `Authorization` header for `key`. Whitespace around the key (a pasted newline) is dropped;
/// a key that is empty or holds anything but printable ASCII (a control character, a space, a
/// non-ASCII character) is refused here, naming where it came from and never echoing it, rather
/// than failing as an unsendable request.
fn authorization(key: &str) -> anyhow::Result<HeaderValue> {
    const SOURCE: &str = "the API key (OPSSENTINAL_API_KEY or --api-key)";
    let key = key.trim();
    if key.is_empty() {
        return Err(anyhow!("{SOURCE} is empty"));
    }
    if let Some((at, bad)) = key.chars().enumerate().find(|(_, c)| !c.is_ascii_graphic()) {
        let what = match bad {
            ' ' => "a space".to_owned(),
            c if c.is_control() => format!("a control character (U+{:04X})", c as u32),
            c => format!("the non-ASCII character U+{:04X}", c as u32),
        };
        return Err(anyhow!(
            "{SOURCE} is not valid: character {} of it is {what}; keys are printable ASCII \
             (osk_ and 48 hex digits), so copy it again",
            at + 1
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| anyhow!("{SOURCE} cannot be sent in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
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

    #[test]
    fn a_key_is_trimmed_and_anything_unsendable_in_it_refused() {
        let key = format!("osk_{}", "0a".repeat(24));
        for pasted in [key.clone(), format!("{key}\n"), format!("  {key}\r\n"), format!("\t{key} ")] {
            assert_eq!(super::authorization(&pasted).unwrap(), format!("Bearer {key}").as_str(), "{pasted:?}");
        }
        for (bad, says) in [
            (format!("{key}\u{1}"), "character 53 of it is a control character (U+0001)"),
            (format!("osk_\n{key}"), "character 5 of it is a control character (U+000A)"),
            (format!("osk_ {key}"), "character 5 of it is a space"),
            (format!("{key}\u{200b}"), "non-ASCII character U+200B"),
        ] {
            let err = super::authorization(&bad).unwrap_err().to_string();
            assert!(err.contains("OPSSENTINAL_API_KEY or --api-key") && err.contains(says), "{bad:?}: {err}");
            assert!(!err.contains(&key), "the key is not echoed: {err}");
        }
        assert!(super::authorization(" \n").unwrap_err().to_string().contains("is empty"));
    }
}
