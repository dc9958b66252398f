//! What every resource's HTTP handlers share: the refusals any authenticated route may answer
//! and the instant type of response bodies.

pub use common::ErrorBody;
use serde::Serialize;
use utoipa::ToSchema;

/// The refusals any authenticated route may answer, documented once for every operation.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// Missing, unknown or revoked API key.
    #[response(status = 401, description = "Missing, unknown or revoked API key")]
    Unauthorized(ErrorBody),
    /// The key lacks the route's scope.
    #[response(status = 403, description = "The key lacks the scope")]
    Forbidden(ErrorBody),
    /// Over the key's rate limit.
    #[response(status = 429, description = "Rate limited; retry after Retry-After")]
    RateLimited(ErrorBody),
    /// PostgreSQL cannot be reached.
    #[response(status = 503, description = "A dependency is unavailable; retry after Retry-After")]
    Unavailable(ErrorBody),
}

/// An instant, RFC 3339 in UTC.
#[derive(Serialize, ToSchema, Clone)]
#[schema(value_type = String, format = DateTime)]
pub struct Timestamp(String);

impl From<jiff::Timestamp> for Timestamp {
    fn from(at: jiff::Timestamp) -> Self {
        Self(at.to_string())
    }
}
