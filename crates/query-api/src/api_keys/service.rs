//! API keys in PostgreSQL: typed input in, keys out.

use common::ApiError;
use common::auth::{Role, Scope};

use crate::credentials::generate_api_key;
use common::ids::new_id;
use sqlx::PgPool;

use super::body::{ApiKeyListing, CreatedApiKey, NewApiKey};

/// Creates a key for the user with `new.email`: `404` for an unknown user, `400` on `scopes` for
/// a scope the user's role does not allow.
pub async fn create(pool: &PgPool, new: &NewApiKey) -> Result<CreatedApiKey, ApiError> {
    let (user_id, role): (String, String) = sqlx::query_as("select id, role from users where lower(email) = lower($1)")
        .bind(new.email.trim())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user with email {}", new.email)))?;
    let role = Role::parse(&role).ok_or_else(|| ApiError::internal(format!("user has unknown role {role}")))?;
    let scopes: Vec<Scope> = match &new.scopes {
        Some(scopes) => {
            if let Some(denied) = scopes.iter().find(|s| !role.allows(**s)) {
                return Err(ApiError::validation(
                    "scopes",
                    format!("role {} may not hold the scope {}", role.as_str(), denied.as_str()),
                ));
            }
            scopes.clone()
        }
        None => Scope::ALL.into_iter().filter(|s| role.allows(*s)).collect(),
    };
    let key = generate_api_key();
    let id = new_id("key");
    let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let rate_limit = new.rate_limit.map(|r| r.get());
    sqlx::query(
        "insert into api_keys (id, user_id, name, prefix, key_hash, scopes, rate_limit) values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&user_id)
    .bind(new.name.as_str())
    .bind(&key.prefix)
    .bind(key.hash.as_slice())
    .bind(&scope_names)
    .bind(rate_limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
    .execute(pool)
    .await?;
    Ok(CreatedApiKey {
        id,
        key: key.secret,
        name: new.name.as_str().to_owned(),
        prefix: key.prefix,
        user_id,
        scopes,
        rate_limit,
    })
}

/// API keys, newest first, optionally of one user.
pub async fn list(pool: &PgPool, email: Option<&str>) -> Result<Vec<ApiKeyListing>, ApiError> {
    type Row = (String, String, String, String, Vec<String>, Option<i32>, String, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        r#"select k.id, k.name, k.prefix, u.email, k.scopes, k.rate_limit,
                  to_char(k.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                  to_char(k.last_used_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                  to_char(k.revoked_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           from api_keys k join users u on u.id = k.user_id
           where $1::text is null or lower(u.email) = lower($1)
           order by k.created_at desc, k.id desc"#,
    )
    .bind(email)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, prefix, owner, scopes, rate_limit, created_at, last_used_at, revoked_at)| ApiKeyListing {
            id,
            name,
            prefix,
            owner,
            scopes,
            rate_limit,
            created_at,
            last_used_at,
            revoked_at,
        })
        .collect())
}

/// Revokes a key; services stop accepting it within their key cache's lifetime. `404` unless
/// the key exists and is active.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<(), ApiError> {
    let revoked = sqlx::query("update api_keys set revoked_at = now() where id = $1 and revoked_at is null")
        .bind(id)
        .execute(pool)
        .await?;
    if revoked.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("active API key {id}")));
    }
    Ok(())
}
