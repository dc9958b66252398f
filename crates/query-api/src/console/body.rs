//! What the session endpoints are sent and answer.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::users::body::Email;

common::bounded_text! {
    /// A password as typed: at most 1024 characters.
    pub struct TypedPassword { min: 1, max: 1024, trim: false }
}

/// A sign-in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub email: Email,
    pub password: TypedPassword,
}

/// Who is signed in, and what the console may do for them.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionUser {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    /// Every scope the user's role allows.
    pub scopes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionBody {
    pub user: SessionUser,
}

/// A console session as the CLI lists it.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct SessionRow {
    pub id: String,
    pub email: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub user_agent: String,
}
