//! API keys, scopes, roles and password hashing.
//!
//! Keys are `osk_` followed by 48 hex characters (192 random bits). Only their SHA-256 is stored:
//! with that much entropy a fast hash is enough, and it lets every request be checked with one
//! indexed lookup. Passwords, which people choose, get argon2id.

use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::cache::LookupCache;

/// The prefix every API key starts with, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "osk_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "incidents:read")]
    IncidentsRead,
    #[serde(rename = "incidents:write")]
    IncidentsWrite,
    #[serde(rename = "services:read")]
    ServicesRead,
    #[serde(rename = "services:write")]
    ServicesWrite,
    #[serde(rename = "schedules:read")]
    SchedulesRead,
    #[serde(rename = "schedules:write")]
    SchedulesWrite,
    #[serde(rename = "webhooks:read")]
    WebhooksRead,
    #[serde(rename = "webhooks:write")]
    WebhooksWrite,
    #[serde(rename = "escalations:read")]
    EscalationsRead,
    #[serde(rename = "escalations:write")]
    EscalationsWrite,
    #[serde(rename = "users:read")]
    UsersRead,
    #[serde(rename = "users:write")]
    UsersWrite,
}

impl Scope {
    pub const ALL: [Scope; 13] = [
        Scope::EventsWrite,
        Scope::IncidentsRead,
        Scope::IncidentsWrite,
        Scope::ServicesRead,
        Scope::ServicesWrite,
        Scope::SchedulesRead,
        Scope::SchedulesWrite,
        Scope::WebhooksRead,
        Scope::WebhooksWrite,
        Scope::EscalationsRead,
        Scope::EscalationsWrite,
        Scope::UsersRead,
        Scope::UsersWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventsWrite => "events:write",
            Self::IncidentsRead => "incidents:read",
            Self::IncidentsWrite => "incidents:write",
            Self::ServicesRead => "services:read",
            Self::ServicesWrite => "services:write",
            Self::SchedulesRead => "schedules:read",
            Self::SchedulesWrite => "schedules:write",
            Self::WebhooksRead => "webhooks:read",
            Self::WebhooksWrite => "webhooks:write",
            Self::EscalationsRead => "escalations:read",
            Self::EscalationsWrite => "escalations:write",
            Self::UsersRead => "users:read",
            Self::UsersWrite => "users:write",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value.trim())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Responder,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Responder => "responder",
            Self::User => "user",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "admin" => Some(Self::Admin),
            "responder" => Some(Self::Responder),
            "user" => Some(Self::User),
            _ => None,
        }
    }

    /// Whether keys of a user with this role may hold `scope` (DESIGN §3).
    pub fn allows(self, scope: Scope) -> bool {
        match self {
            Self::Admin => true,
            Self::Responder => !matches!(
                scope,
                Scope::ServicesWrite
                    | Scope::SchedulesWrite
                    | Scope::WebhooksWrite
                    | Scope::EscalationsWrite
                    | Scope::UsersWrite
            ),
            Self::User => matches!(
                scope,
                Scope::IncidentsRead
                    | Scope::ServicesRead
                    | Scope::SchedulesRead
                    | Scope::WebhooksRead
                    | Scope::EscalationsRead
                    | Scope::UsersRead
            ),
        }
    }
}

/// What an API key's secret is stored as, and looked up by.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The API key a request carries: `Authorization: Bearer KEY`, `Authorization: Api-Key KEY`
/// (also PagerDuty's `Token token=KEY`), or `X-API-Key: KEY`.
pub fn key_from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim()).filter(|v| !v.is_empty());
    }
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let key = match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "api-key" => rest.trim(),
        "token" => rest.trim().strip_prefix("token=").unwrap_or(rest.trim()),
        _ => return None,
    };
    Some(key).filter(|k| !k.is_empty())
}

/// Who is calling: a valid, unrevoked API key and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub user_id: String,
    pub role: Role,
    /// The key's scopes, capped by the user's role.
    pub scopes: Vec<Scope>,
    /// The key's own requests-per-minute limit, if it has one.
    pub rate_limit: Option<u32>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// `403 FORBIDDEN` naming the scope unless the key holds it.
    pub fn require(&self, scope: Scope) -> Result<(), crate::ApiError> {
        if self.has(scope) { Ok(()) } else { Err(crate::ApiError::forbidden_scope(scope.as_str())) }
    }
}

/// The cookie a signed-in console holds its session token in.
pub const SESSION_COOKIE: &str = "opssentinal_session";

/// The header the console sends with every write: a cross-site page cannot set it without the
/// CORS preflight no OpsSentinal service answers, so a write carrying a session cookie without it
/// is refused (with `SameSite=Strict` on the cookie, two locks on the door).
pub const CSRF_HEADER: &str = "x-opssentinal-csrf";

/// The console session token a request's `Cookie` header carries, if any.
pub fn session_from_headers(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The principal of an unexpired, unrevoked console session: its user, with every scope the
/// user's role allows (a session is the person, not a key). Marks the session seen.
pub(crate) async fn session_principal(pool: &PgPool, token: &str) -> Result<Option<Principal>, sqlx::Error> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "update console_sessions s set last_seen_at = now()
         from users u
         where u.id = s.user_id and s.token_hash = $1 and s.revoked_at is null and s.expires_at > now()
         returning s.id, s.user_id, u.role",
    )
    .bind(hash_key(token).as_slice())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(id, user_id, role)| {
        let role = Role::parse(&role)?;
        let scopes = Scope::ALL.into_iter().filter(|s| role.allows(*s)).collect();
        Some(Principal { key_id: format!("session:{id}"), user_id, role, scopes, rate_limit: None })
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyLookupError {
    #[error("cannot verify API keys now: {0}")]
    Unavailable(#[from] sqlx::Error),
}

/// `(key id, user id, role, scopes, rate limit)` as stored.
type KeyRow = (String, String, String, Vec<String>, Option<i32>);

/// Resolves API keys to principals. Postgres is the source of truth; answers are kept in
/// process for `ttl` (so revocation takes effect within `ttl`), and a stale answer is used while
/// Postgres is unreachable so events keep flowing for known keys.
pub struct KeyStore {
    pool: PgPool,
    cache: LookupCache<[u8; 32], Principal>,
}

impl KeyStore {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, cache: LookupCache::new(ttl, 100_000, "auth_stale_cache_used_total") }
    }

    /// The cached answer for `secret` while it is fresh (`Some(None)`: a known-unknown key).
    pub fn cached(&self, secret: &str) -> Option<Option<Principal>> {
        self.cache.fresh(&hash_key(secret))
    }

    pub async fn lookup(&self, secret: &str) -> Result<Option<Principal>, KeyLookupError> {
        let hash = hash_key(secret);
        Ok(self.cache.get_or_fetch(hash, self.fetch(&hash)).await?)
    }

    async fn fetch(&self, hash: &[u8; 32]) -> Result<Option<Principal>, sqlx::Error> {
        let row: Option<KeyRow> = sqlx::query_as(
            "update api_keys k set last_used_at = now()
             from users u
             where u.id = k.user_id and k.key_hash = $1 and k.revoked_at is null
             returning k.id, k.user_id, u.role, k.scopes, k.rate_limit",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(key_id, user_id, role, scopes, rate_limit)| {
            let role = Role::parse(&role)?;
            let scopes = scopes.iter().filter_map(|s| Scope::parse(s)).filter(|s| role.allows(*s)).collect();
            Some(Principal { key_id, user_id, role, scopes, rate_limit: rate_limit.map(|n| n.unsigned_abs()) })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn all_three_header_styles_carry_the_key() {
        for (name, value) in [
            ("authorization", "Bearer osk_abc"),
            ("authorization", "Api-Key osk_abc"),
            ("authorization", "Token token=osk_abc"),
            ("x-api-key", "osk_abc"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            assert_eq!(key_from_headers(&headers), Some("osk_abc"), "{name}: {value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Basic Zm9vOmJhcg=="));
        assert_eq!(key_from_headers(&headers), None);
    }

    #[test]
    fn roles_cap_scopes() {
        assert!(Scope::ALL.iter().all(|s| Role::Admin.allows(*s)));
        assert!(!Role::Responder.allows(Scope::ServicesWrite));
        assert!(!Role::Responder.allows(Scope::SchedulesWrite));
        assert!(Role::Responder.allows(Scope::IncidentsWrite));
        assert!(Role::User.allows(Scope::IncidentsRead));
        assert!(!Role::User.allows(Scope::EventsWrite));
    }
}
