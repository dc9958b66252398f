//! The one place a service module turns a named constraint's violation into an API error.

use common::ApiError;

/// Turns the violation of a named constraint into the API error it means (a `409` for a taken
/// unique value, a `400` naming the field for a missing reference), so invariants are checked by
/// the schema, not by selects before writes. `map` gets the constraint's name and returns the
/// error, or `None` for a constraint it does not expect (then a `500`, as any other failure).
pub trait OnConstraint<T> {
    fn on_constraint(self, map: impl FnOnce(&str) -> Option<ApiError>) -> Result<T, ApiError>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, map: impl FnOnce(&str) -> Option<ApiError>) -> Result<T, ApiError> {
        self.map_err(|err| match &err {
            sqlx::Error::Database(db) => db.constraint().and_then(map).unwrap_or_else(|| err.into()),
            _ => err.into(),
        })
    }
}
