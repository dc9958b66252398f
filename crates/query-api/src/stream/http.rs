//! The stream endpoints. `GET /api/stream` authenticates itself, since a browser's
//! `EventSource` cannot send a key: an API key in the headers, a stream token as `?token=`, or the
//! console's session cookie.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::ApiError;
use common::auth::{Principal, Scope};
use common::http::{ApiQuery, Bucket};
use futures_util::Stream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::body::{StreamEventData, StreamQuery, StreamToken, StreamTokenBody};
use super::service::{self, Filter, HEARTBEAT, Item, TOKEN_TTL};
use crate::api::{ErrorBody, Refusals};
use crate::state::AppState;

/// `POST /api/stream/tokens`, behind the authentication layer.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(issue_token))
}

/// `GET /api/stream`, which authenticates itself.
pub fn open_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// A single-use token for `GET /api/stream?token=`, valid for 60 seconds: API keys never go in URLs.
#[utoipa::path(post, path = "/api/stream/tokens", tag = "stream",
    responses((status = 201, description = "The token", body = StreamTokenBody), Refusals),
    security(("api_key" = ["incidents:read"])))]
async fn issue_token(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<(StatusCode, Json<StreamTokenBody>), ApiError> {
    principal.require(Scope::IncidentsRead)?;
    let token = state.streams.issue(&principal).await?;
    Ok((StatusCode::CREATED, Json(StreamTokenBody { stream: StreamToken { token, expires_in: TOKEN_TTL.as_secs() } })))
}

/// Incident changes as Server-Sent Events: `id` is the change stream's position, `event` the
/// change's type, `data` the change. Send `Last-Event-ID` to resume after a position; past what
/// the stream keeps (24 h) the answer is one `reset` event, and the client refetches. A comment
/// every 15 s keeps proxies from closing the stream. A client more than 1 MiB behind gets `reset`
/// and is closed; at most 20 streams per API key.
#[utoipa::path(get, path = "/api/stream", tag = "stream",
    params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position")),
    responses((status = 200, description = "The stream (text/event-stream)", content_type = "text/event-stream", body = StreamEventData),
              (status = 400, description = "A bad parameter, named in the error", body = ErrorBody), Refusals),
    security(("api_key" = ["incidents:read"]), ()))]
async fn stream(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    query: ApiQuery,
) -> Response {
    match open(&state, peer.map(|Extension(ConnectInfo(addr))| addr.ip()), &headers, &query).await {
        Ok(sse) => sse.into_response(),
        Err(err) => err.into_response(),
    }
}

async fn open(
    state: &AppState,
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    query: &ApiQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    let query = query.parse::<StreamQuery>();
    // Who is asking comes first: a bad query is answered only to a known caller.
    // A stream token, an API key, or (the console's `EventSource`, same origin) a session cookie.
    let client = state.gate.client_address(peer, headers);
    let session =
        common::auth::key_from_headers(headers).is_none().then(|| common::auth::session_from_headers(headers));
    let principal = match (query.as_ref().ok().and_then(|q| q.token.as_deref()), session.flatten()) {
        (Some(token), _) => state.streams.redeem(token).await?,
        (None, Some(session)) => state.gate.authenticate_session(session, client).await?,
        (None, None) => state.gate.authenticate(headers, client).await?,
    };
    if let Some(decision) = state.gate.limit(&principal, Bucket::Api, 1).await
        && !decision.allowed
    {
        return Err(ApiError::rate_limited(decision.retry_after));
    }
    principal.require(Scope::IncidentsRead)?;
    let query = query?;
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str().map(str::trim)) {
        None => None,
        Some(Ok("")) => None,
        Some(Ok(v)) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::validation("Last-Event-ID", "must be a position from this stream"))?,
        ),
        Some(Err(_)) => return Err(ApiError::validation("Last-Event-ID", "must be a position from this stream")),
    };
    let slot = state.streams.claim(&principal.key_id).await?;
    let outbox = service::open(state.feed.clone(), Filter::of(&query), last_event_id, slot);
    let open = Open::new();
    let retry = futures_util::stream::once(async {
        Ok(Event::default().retry(std::time::Duration::from_secs(3)).comment("connected"))
    });
    let unread = outbox.unread.clone();
    let items = futures_util::stream::unfold((Some(outbox.items), open), move |(items, open)| {
        let unread = unread.clone();
        async move {
            let mut items = items?;
            let (event, next) = match items.recv().await? {
                Item::Change(change) => {
                    unread.fetch_sub(change.data.len(), Ordering::AcqRel);
                    (Event::default().id(change.seq.to_string()).event(&change.kind).data(&*change.data), Some(items))
                }
                Item::Reset(why) => {
                    (Event::default().event("reset").data(serde_json::json!({ "reason": why }).to_string()), None)
                }
            };
            Some((Ok(event), (next, open)))
        }
    });
    Ok(Sse::new(futures_util::StreamExt::chain(retry, items)).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

/// Counts an open stream in `stream_clients` while it lives.
struct Open;

impl Open {
    fn new() -> Self {
        metrics::gauge!("stream_clients").increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("stream_clients").decrement(1.0);
    }
}
