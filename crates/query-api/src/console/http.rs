//! The session endpoints and the console's files.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use common::ApiError;
use common::auth::{CSRF_HEADER, Principal, SESSION_COOKIE, session_from_headers};
use common::http::{ApiJson, parse_value};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{SessionBody, SignIn};
use super::{assets, service};
use crate::api::{ErrorBody, Refusals};
use crate::state::AppState;

/// `GET` and `DELETE /api/session`, behind the authentication layer.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(current, sign_out))
}

/// `POST /api/session`: signing in needs no key.
pub fn session_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(sign_in))
}

/// The console's page at `/` and its files at `/console/{file}` (not part of the API document).
pub fn assets_router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", axum::routing::get(assets::index))
        .route("/console/{file}", axum::routing::get(assets::asset))
}

/// The session cookie: HttpOnly, SameSite=Strict, Secure when the request came over TLS (a
/// proxy's `X-Forwarded-Proto: https`); `max_age` 0 clears it.
fn cookie(headers: &HeaderMap, token: &str, max_age: i64) -> HeaderValue {
    let tls = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if tls { "; Secure" } else { "" };
    let value = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("opssentinal_session=; Max-Age=0"))
}

/// Sign in to the console with e-mail and password: the session is in the `Set-Cookie` answer
/// (HttpOnly, SameSite=Strict). A wrong e-mail or password is a `401`, counted like a bad API key
/// (`429` past `RATE_LIMIT_AUTH_FAILURES_PER_MINUTE` per client address, for a right password too). The request must carry
/// `X-OpsSentinal-CSRF: 1`.
#[utoipa::path(post, path = "/api/session", tag = "console", request_body = SignIn,
    responses((status = 200, description = "Signed in; the session cookie is set", body = SessionBody),
              (status = 400, description = "A bad field, named in the error", body = ErrorBody),
              (status = 401, description = "Wrong e-mail or password", body = ErrorBody),
              (status = 403, description = "Without the X-OpsSentinal-CSRF header", body = ErrorBody),
              (status = 413, description = "Body over 512 KiB", body = ErrorBody), (status = 415, description = "Not JSON", body = ErrorBody),
              (status = 429, description = "Too many failed sign-ins from this address", body = ErrorBody)))]
async fn sign_in(
    State(state): State<Arc<AppState>>,
    connection: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if headers.get(CSRF_HEADER).is_none_or(|v| v != "1") {
        return Err(ApiError::new(common::ErrorCode::Forbidden, format!("signing in takes the {CSRF_HEADER} header")));
    }
    let body: SignIn = parse_value(body)?;
    let peer = connection.map(|Extension(ConnectInfo(addr))| addr.ip());
    let client = state.gate.client_address(peer, &headers);
    if let Some(refused) = state.gate.locked_out(client).await {
        return Err(refused);
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some((token, user)) = service::sign_in(&state.pool, &body, agent).await? else {
        return Err(state.gate.failed_auth(client, "wrong e-mail or password").await);
    };
    let mut response = Json(SessionBody { user }).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie(&headers, &token, service::SESSION_HOURS * 3600));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Who is signed in (or whose API key this is), with the scopes the console may use.
#[utoipa::path(get, path = "/api/session", tag = "console",
    responses((status = 200, description = "The signed-in user", body = SessionBody), Refusals),
    security(("api_key" = [])))]
async fn current(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<SessionBody>, ApiError> {
    let mut user = service::user(&state.pool, &principal.user_id).await?;
    user.scopes = principal.scopes.iter().map(|s| s.as_str().to_owned()).collect();
    Ok(Json(SessionBody { user }))
}

/// Sign out: the session ends and its cookie is cleared.
#[utoipa::path(delete, path = "/api/session", tag = "console",
    responses((status = 204, description = "Signed out"), Refusals),
    security(("api_key" = [])))]
async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = session_from_headers(&headers) {
        service::sign_out(&state.pool, token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie(&headers, "", 0));
    Ok(response)
}
