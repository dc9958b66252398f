//! HTTP pieces shared by ingest and query-api: the authentication and rate-limit layer, a JSON
//! body extractor whose rejections use our error format, fallbacks, and health endpoints.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::auth::{KeyStore, Principal, key_from_headers};
use crate::config::RateLimitConfig;
use crate::error::{ApiError, ErrorCode};
use crate::ratelimit::RateLimiter;

/// Which per-key limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// `POST /api/events` and the other ingestion endpoints.
    Events,
    /// Everything else.
    Api,
}

/// Authentication and rate limiting, shared by every authenticated route of a process.
pub struct Gate {
    pub keys: KeyStore,
    pub limiter: Arc<RateLimiter>,
    pub limits: RateLimitConfig,
    pool: PgPool,
}

impl Gate {
    pub fn new(pool: PgPool, limiter: Arc<RateLimiter>, limits: RateLimitConfig) -> Self {
        let keys = KeyStore::new(pool.clone(), Duration::from_secs(limits.auth_cache_ttl_secs));
        Self { keys, limiter, limits, pool }
    }

    fn default_limit(&self, bucket: Bucket) -> u32 {
        match bucket {
            Bucket::Events => self.limits.events_per_minute,
            Bucket::Api => self.limits.api_per_minute,
        }
    }

    /// Authenticates the request's API key. Every key is looked up (a cached answer, or one
    /// indexed query), so a valid key is never refused for what other clients did; only failures
    /// count against the client's failed-authentication bucket, and past it they are answered `429`.
    pub async fn authenticate(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Result<Principal, ApiError> {
        let Some(secret) = key_from_headers(headers) else {
            return Err(self.failed_auth(client, "missing API key").await);
        };
        let found = match self.keys.cached(secret) {
            Some(found) => found,
            None => self.keys.lookup(secret).await.map_err(|err| {
                tracing::warn!(error = %err, "API key lookup failed");
                ApiError::unavailable("cannot verify API keys right now, retry later", 5)
            })?,
        };
        match found {
            Some(principal) => Ok(principal),
            None => Err(self.failed_auth(client, "unknown or revoked API key").await),
        }
    }

    /// Counts `cost` requests of `principal` against its limit for `bucket`, all or none.
    /// `None` when Redis is unreachable (the limiter fails open).
    pub async fn limit(
        &self,
        principal: &Principal,
        bucket: Bucket,
        cost: usize,
    ) -> Option<crate::ratelimit::Decision> {
        let limit = principal.rate_limit.unwrap_or_else(|| self.default_limit(bucket));
        let kind = match bucket {
            Bucket::Events => "events",
            Bucket::Api => "api",
        };
        self.limiter.check_all_or_fail_open(&format!("{kind}:{}", principal.key_id), limit, cost).await
    }

    /// The principal of a console session token; `401` (counted against the client's failed
    /// authentications) when it is unknown, expired or revoked.
    pub async fn authenticate_session(&self, token: &str, client: Option<IpAddr>) -> Result<Principal, ApiError> {
        match crate::auth::session_principal(&self.pool, token).await {
            Ok(Some(principal)) => Ok(principal),
            Ok(None) => Err(self.failed_auth(client, "the session expired or was signed out; sign in again").await),
            Err(err) => {
                tracing::warn!(error = %err, "session lookup failed");
                Err(ApiError::unavailable("cannot verify sessions right now, retry later", 5))
            }
        }
    }

    /// `429` when `client` is over its failed-authentication limit: a sign-in from it is then not
    /// even checked, so a guessed password cannot be told from a wrong one. (Redis down: none.)
    pub async fn locked_out(&self, client: Option<IpAddr>) -> Option<ApiError> {
        let decision = self
            .limiter
            .peek(&format!("authfail:{}", client?), self.limits.auth_failures_per_minute)
            .await
            .inspect_err(|err| self.limiter.fail_open(err))
            .ok()?;
        (!decision.allowed).then(|| ApiError::rate_limited(decision.retry_after))
    }

    /// A failed authentication (a wrong password too): `401 message`, or `429` once `client`
    /// failed more than `RATE_LIMIT_AUTH_FAILURES_PER_MINUTE` times in a minute.
    pub async fn failed_auth(&self, client: Option<IpAddr>, message: &str) -> ApiError {
        metrics::counter!("auth_failures_total").increment(1);
        if let Some(client) = client
            && let Some(decision) = self
                .limiter
                .check_or_fail_open(&format!("authfail:{client}"), self.limits.auth_failures_per_minute)
                .await
            && !decision.allowed
        {
            return ApiError::rate_limited(decision.retry_after);
        }
        ApiError::unauthorized(message)
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.limits.is_trusted_proxy(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
        let hops: Vec<&str> = hops.flat_map(|v| v.split(',')).map(str::trim).collect();
        for hop in hops.iter().rev() {
            let Ok(address) = hop.parse::<IpAddr>() else { break };
            client = address;
            if !self.limits.is_trusted_proxy(address) {
                break;
            }
        }
        Some(client)
    }
}

/// State of the [`authenticate`] middleware.
#[derive(Clone)]
pub struct GateLayer {
    pub gate: Arc<Gate>,
    pub bucket: Bucket,
    /// Whether a console session cookie authenticates too (query-api), besides API keys.
    pub sessions: bool,
}

/// Middleware: authenticates, rate-limits, puts the [`Principal`] in the request extensions and
/// writes the `X-RateLimit-*` headers on whatever the handler answers.
pub async fn authenticate(State(layer): State<GateLayer>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let client = layer.gate.client_address(peer, request.headers());
    let session = (layer.sessions && crate::auth::key_from_headers(request.headers()).is_none())
        .then(|| crate::auth::session_from_headers(request.headers()))
        .flatten();
    let authenticated = match session {
        Some(token) => layer.gate.authenticate_session(token, client).await,
        None => layer.gate.authenticate(request.headers(), client).await,
    };
    let principal = match authenticated {
        Ok(principal) => principal,
        Err(err) => return err.into_response(),
    };
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if session.is_some() && !safe && request.headers().get(crate::auth::CSRF_HEADER).is_none_or(|v| v != "1") {
        return ApiError::new(
            crate::ErrorCode::Forbidden,
            format!(
                "a write with a session cookie must carry the {} header (cross-site requests are refused)",
                crate::auth::CSRF_HEADER
            ),
        )
        .into_response();
    }
    let decision = layer.gate.limit(&principal, layer.bucket, 1).await;
    if let Some(decision) = decision
        && !decision.allowed
    {
        metrics::counter!("rate_limited_total", "bucket" => format!("{:?}", layer.bucket)).increment(1);
        let mut response = ApiError::rate_limited(decision.retry_after).into_response();
        decision.write_headers(response.headers_mut());
        return response;
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        decision.write_headers(response.headers_mut());
    }
    response
}

/// Middleware: records `http_request_duration_seconds{service, route, method, status}` (the
/// route as registered, e.g. `/api/incidents/{id}`, so the labels stay few).
pub async fn record_request(State(service): State<&'static str>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("http.request", service, http.route = %route, http.method = %method);
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    metrics::histogram!("http_request_duration_seconds", "service" => service, "route" => route, "method" => method,
        "status" => response.status().as_u16().to_string())
    .record(started.elapsed().as_secs_f64());
    response
}

/// A JSON request body: `415` unless the content type is JSON, `413` past the body limit, `400`
/// naming the field for malformed JSON or wrong types.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_content_type(request.headers())?;
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A path parameter: a bad one (not UTF-8, a NUL character, the wrong type) is a `400` in our
/// format naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.path().contains("%00") {
            return Err(ApiError::validation("path", "must not contain NUL characters"));
        }
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                let field = match err.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "path".to_owned(),
                };
                Err(ApiError::validation(&field, err.body_text()))
            }
            Err(rejection) => Err(ApiError::validation("path", rejection.body_text())),
        }
    }
}

/// The query string, read when the handler asks (after its scope check, as a body is):
/// [`ApiQuery::parse`] deserializes it into a typed query.
pub struct ApiQuery(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ApiQuery {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.uri.query().map(str::to_owned)))
    }
}

impl ApiQuery {
    /// The query as `T` (unknown parameters ignored): a malformed query, a NUL character, a
    /// parameter given twice (which of two credentials or filters was meant?) or a value that
    /// does not parse is a `400` in our format naming the parameter.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let query = self.0.as_deref().unwrap_or_default();
        // A NUL can only arrive percent-encoded; only then are the pairs read to name it.
        if query.contains("%00") {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
                .map_err(|_| ApiError::validation("query", "malformed query string"))?;
            if let Some((name, _)) = pairs.iter().find(|(k, v)| k.contains('\0') || v.contains('\0')) {
                return Err(ApiError::validation(name, "must not contain NUL characters"));
            }
        }
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().to_string();
            // serde names a parameter given twice between backticks ("duplicate field `limit`").
            let field = match message.split('`').nth(1) {
                _ if path != "." => path,
                Some(name) => name.to_owned(),
                None => "query".to_owned(),
            };
            ApiError::validation(&field, message)
        })
    }
}

/// `415 UNSUPPORTED_MEDIA_TYPE` unless the request says its body is JSON.
pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::UnsupportedMediaType, "Content-Type must be application/json"))
    }
}

/// Reads the whole body, mapping the body limit to `413`.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::validation("body", "could not read the request body")
        }
    })
}

/// Parses JSON, naming the field where it went wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(json_error)
}

/// Converts parsed JSON to `T`, naming the field where it does not fit.
pub fn parse_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(json_error)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::validation("body", format!("malformed JSON: {inner}"))
        }
        _ => {
            // serde appends " at line X column Y"; the field name says more.
            let message = inner.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message);
            // A missing field is reported at its parent (an unknown one sometimes too): name the field.
            let named = |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split('`').next());
            let (field, message) = match (named("missing field `"), named("unknown field `")) {
                (Some(name), _) => (child(&path, name), "is required".to_owned()),
                (_, Some(name)) if path.rsplit('.').next() == Some(name) => (path, "is not a known field".to_owned()),
                (_, Some(name)) => (child(&path, name), "is not a known field".to_owned()),
                _ => (if path == "." { "body".to_owned() } else { path }, message.to_owned()),
            };
            ApiError::validation(&field, message)
        }
    }
}

/// `parent.name`, or `name` at the top level (`.`).
fn child(parent: &str, name: &str) -> String {
    if parent == "." { name.to_owned() } else { format!("{parent}.{name}") }
}

/// `404` in our format for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// `405` in our format for known paths with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}

/// A dependency a service needs to be ready.
#[derive(Clone)]
pub enum Dependency {
    Postgres(PgPool),
    Redis(deadpool_redis::Pool),
    Nats(async_nats::Client),
    /// Set-up that waits for dependencies (schema, streams, consumers), done once the flag is set.
    SetUp(&'static str, Arc<std::sync::atomic::AtomicBool>),
}

impl Dependency {
    fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Nats(_) => "nats",
            Self::SetUp(name, _) => name,
        }
    }

    async fn check(&self) -> bool {
        let probe = async {
            match self {
                Self::Postgres(pool) => sqlx::query("select 1").execute(pool).await.is_ok(),
                Self::Redis(pool) => match pool.get().await {
                    Ok(mut conn) => deadpool_redis::redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
                    Err(_) => false,
                },
                Self::Nats(client) => client.connection_state() == async_nats::connection::State::Connected,
                Self::SetUp(_, done) => done.load(std::sync::atomic::Ordering::Acquire),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), probe).await.unwrap_or(false)
    }
}

/// What `/readyz` checks: `required` must be up for a 200; `optional` are reported only
/// (e.g. Redis, without which the service degrades but keeps working).
#[derive(Clone, Default)]
pub struct Readiness {
    pub required: Vec<Dependency>,
    pub optional: Vec<Dependency>,
}

/// `/healthz`, `/readyz` and `/metrics`, unauthenticated.
pub fn health_router(readiness: Readiness) -> axum::Router {
    let readiness = Arc::new(readiness);
    let handle = crate::telemetry::metrics_handle();
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let readiness = readiness.clone();
                async move { ready(&readiness).await }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
            }),
        )
}

async fn ready(readiness: &Readiness) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    for dep in &readiness.required {
        let up = dep.check().await;
        metrics::gauge!("service_dependency_up", "dependency" => dep.name()).set(f64::from(u8::from(up)));
        ok &= up;
        checks.insert(dep.name().into(), serde_json::json!(if up { "up" } else { "down" }));
    }
    for dep in &readiness.optional {
        let up = dep.check().await;
        metrics::gauge!("service_dependency_up", "dependency" => dep.name()).set(f64::from(u8::from(up)));
        checks.insert(dep.name().into(), serde_json::json!(if up { "up" } else { "degraded" }));
    }
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({"status": if ok { "ready" } else { "not ready" }, "checks": checks});
    (status, axum::Json(body)).into_response()
}

/// A Redis pool whose waits are bounded, so an unreachable Redis costs little per request.
pub fn redis_pool(url: &str, timeout: Duration) -> anyhow::Result<deadpool_redis::Pool> {
    let mut config = deadpool_redis::Config::from_url(url);
    let mut pool_config = deadpool_redis::PoolConfig::new(64);
    pool_config.timeouts.wait = Some(timeout);
    pool_config.timeouts.create = Some(timeout);
    pool_config.timeouts.recycle = Some(timeout);
    config.pool = Some(pool_config);
    config.create_pool(Some(deadpool_redis::Runtime::Tokio1)).map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::{ApiQuery, parse_value};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
        limit: Option<u32>,
    }

    fn field_of(error: &crate::ApiError) -> String {
        error.body()["error"]["details"]["field"].as_str().unwrap_or_default().to_owned()
    }

    /// serde reports a missing, unknown or repeated field only in its message, at the parent's
    /// path: these pin the one place that message is read, so a serde release that words it
    /// differently fails here rather than naming the wrong field.
    #[test]
    fn missing_unknown_and_repeated_fields_are_named_at_their_own_path() {
        let read = parse_value::<Outer>(json!({"inner": {"name": "a"}, "limit": 3})).unwrap();
        assert_eq!((read.inner.name.as_str(), read.limit), ("a", Some(3)));
        let missing = parse_value::<Outer>(json!({"inner": {}})).unwrap_err();
        assert_eq!(field_of(&missing), "inner.name");
        let unknown = parse_value::<Outer>(json!({"inner": {"name": "a", "nmae": "b"}})).unwrap_err();
        assert_eq!(field_of(&unknown), "inner.nmae");
        let top = parse_value::<Outer>(json!({"inner": {"name": "a"}, "extra": 1})).unwrap_err();
        assert_eq!(field_of(&top), "extra");
        let wrong_type = parse_value::<Outer>(json!({"inner": {"name": 7}})).unwrap_err();
        assert_eq!(field_of(&wrong_type), "inner.name");
        let twice = ApiQuery(Some("limit=1&limit=2".into())).parse::<QueryOnly>().unwrap_err();
        assert_eq!(field_of(&twice), "limit");
        assert_eq!(ApiQuery(Some("limit=5".into())).parse::<QueryOnly>().unwrap().limit, Some(5));
    }

    #[derive(Debug, Deserialize)]
    struct QueryOnly {
        limit: Option<u32>,
    }
}
