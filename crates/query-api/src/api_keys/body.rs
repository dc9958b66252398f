//! What creating an API key takes and answers.

use common::auth::Scope;
use common::fields::Name;
use serde::Serialize;

common::bounded_integer! {
    /// Requests per minute for one key.
    pub struct RequestsPerMinute(u32) { min: 1, max: u32::MAX }
}

/// A new key for the user with `email`. Without `scopes`, the key gets every scope the user's
/// role allows.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub email: String,
    pub name: Name,
    pub scopes: Option<Vec<Scope>>,
    pub rate_limit: Option<RequestsPerMinute>,
}

/// A created API key; `key` is the secret, shown this once.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub id: String,
    pub key: String,
    pub name: String,
    pub prefix: String,
    pub user_id: String,
    pub scopes: Vec<Scope>,
    pub rate_limit: Option<u32>,
}

/// Shown only once, to whoever created it: never in logs or `Debug` output.
impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("user_id", &self.user_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// An API key as listed: never the key itself.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyListing {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub rate_limit: Option<i32>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}
