pub mod incidents;
pub mod schedules;
pub mod services;

/// The refusals any authenticated route may answer, documented once for every operation.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// Missing, unknown or revoked API key.
    #[response(status = 401, description = "Missing, unknown or revoked API key")]
    Unauthorized,
    /// The key lacks the route's scope.
    #[response(status = 403, description = "The key lacks the scope")]
    Forbidden,
    /// Over the key's rate limit.
    #[response(status = 429, description = "Rate limited")]
    RateLimited,
}
