//! Query-string parsing that names the offending parameter in a `400`.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use common::ApiError;
use common::http::ApiQuery;
use jiff::Timestamp;

/// The query string as name → value; a malformed one, or a NUL character, is a `400` in our format.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        ApiQuery::<HashMap<String, String>>::from_request_parts(parts, state).await.map(|ApiQuery(map)| Params(map))
    }
}

impl Params {
    /// The first of `names` present (aliases such as `serviceId` / `service_id`), if non-empty.
    pub fn get<'a>(&'a self, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
        names.iter().find_map(|n| self.0.get(*n).map(|v| (*n, v.trim()))).filter(|(_, v)| !v.is_empty())
    }

    pub fn timestamp(&self, name: &'static str) -> Result<Option<Timestamp>, ApiError> {
        self.get(&[name])
            .map(|(n, v)| v.parse().map_err(|_| ApiError::validation(n, "must be an RFC 3339 timestamp")))
            .transpose()
    }

    /// An integer in `min..=max`, or `default`.
    pub fn integer(&self, name: &'static str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        match self.get(&[name]) {
            None => Ok(default),
            Some((n, v)) => v
                .parse::<i64>()
                .ok()
                .filter(|x| (min..=max).contains(x))
                .ok_or_else(|| ApiError::validation(n, format!("must be an integer from {min} to {max}"))),
        }
    }
}
