//! What query-api's handlers share.

use std::sync::Arc;

use common::http::Gate;
use sqlx::PgPool;

pub struct AppState {
    pub pool: PgPool,
    pub gate: Arc<Gate>,
}
