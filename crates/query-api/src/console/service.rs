//! Console sessions in PostgreSQL: sign in (argon2id, as the CLI stores passwords), look up,
//! sign out, list and revoke. The HTTP handlers and the CLI both call these.

use common::ApiError;
use common::auth::{Role, Scope, hash_key};

use crate::credentials::{hash_password, random_token, verify_password};
use common::ids::new_id;
use sqlx::PgPool;

use super::body::{SessionRow, SessionUser, SignIn};

/// How long a session lasts after signing in.
pub const SESSION_HOURS: i64 = 12;

/// A hash of a random password, verified against when the e-mail is unknown, so a wrong e-mail
/// takes as long to refuse as a wrong password.
static NO_SUCH_USER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&random_token(16)).unwrap_or_default());

fn user_of(id: String, name: String, email: String, role: String) -> SessionUser {
    let scopes = Role::parse(&role)
        .map(|role| Scope::ALL.into_iter().filter(|s| role.allows(*s)).map(|s| s.as_str().to_owned()).collect())
        .unwrap_or_default();
    SessionUser { id, name, email, role, scopes }
}

/// Checks the e-mail and password; on success opens a session and returns its token (for the
/// cookie) and the user. `None` when they do not match.
pub async fn sign_in(
    pool: &PgPool,
    sign_in: &SignIn,
    user_agent: &str,
) -> Result<Option<(String, SessionUser)>, ApiError> {
    let row: Option<(String, String, String, String, String)> =
        sqlx::query_as("select id, name, email, role, password_hash from users where lower(email) = lower($1)")
            .bind(sign_in.email.as_str())
            .fetch_optional(pool)
            .await?;
    let hash = row.as_ref().map_or_else(|| NO_SUCH_USER.clone(), |r| r.4.clone());
    let password = sign_in.password.as_str().to_owned();
    let matches =
        tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.map_err(ApiError::internal)?;
    let Some((id, name, email, role, _)) = row.filter(|_| matches) else { return Ok(None) };
    let token = random_token(32);
    sqlx::query(&format!(
        "insert into console_sessions (id, user_id, token_hash, expires_at, user_agent)
         values ($1, $2, $3, now() + interval '{SESSION_HOURS} hours', $4)"
    ))
    .bind(new_id("ses"))
    .bind(&id)
    .bind(hash_key(&token).as_slice())
    .bind(user_agent.chars().take(255).collect::<String>())
    .execute(pool)
    .await?;
    Ok(Some((token, user_of(id, name, email, role))))
}

/// The signed-in user `user_id`, as the console shows it.
pub async fn user(pool: &PgPool, user_id: &str) -> Result<SessionUser, ApiError> {
    let row: Option<(String, String, String, String)> =
        sqlx::query_as("select id, name, email, role from users where id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    let (id, name, email, role) = row.ok_or_else(|| ApiError::not_found(format!("user {user_id}")))?;
    Ok(user_of(id, name, email, role))
}

/// Ends the session whose token this is.
pub async fn sign_out(pool: &PgPool, token: &str) -> Result<(), ApiError> {
    sqlx::query("update console_sessions set revoked_at = now() where token_hash = $1 and revoked_at is null")
        .bind(hash_key(token).as_slice())
        .execute(pool)
        .await?;
    Ok(())
}

/// The live sessions of the user with `email` (every user's when `None`), newest first.
pub async fn list(pool: &PgPool, email: Option<&str>) -> Result<Vec<SessionRow>, ApiError> {
    Ok(sqlx::query_as(
        "select s.id, u.email, s.created_at::text, s.last_seen_at::text, s.expires_at::text, s.user_agent
         from console_sessions s join users u on u.id = s.user_id
         where s.revoked_at is null and s.expires_at > now() and ($1::text is null or lower(u.email) = lower($1))
         order by s.created_at desc",
    )
    .bind(email)
    .fetch_all(pool)
    .await?)
}

/// Revokes every live session of the user with `email`; returns how many. The next request of a
/// revoked session is a `401`.
pub async fn revoke(pool: &PgPool, email: &str) -> Result<u64, ApiError> {
    Ok(sqlx::query(
        "update console_sessions s set revoked_at = now() from users u
         where u.id = s.user_id and lower(u.email) = lower($1) and s.revoked_at is null and s.expires_at > now()",
    )
    .bind(email)
    .execute(pool)
    .await?
    .rows_affected())
}
