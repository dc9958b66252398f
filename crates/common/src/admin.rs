//! Administration against PostgreSQL: users, API keys and services. Used by the CLI, by the
//! one-process server's first start, and by the HTTP API where it creates services.

use serde::Serialize;
use sqlx::PgPool;

use crate::auth::{Role, Scope, generate_api_key, hash_password, random_token};
use crate::ids::new_id;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
}

/// Creates a user; `409`-style conflict when the email is taken.
pub async fn create_user(
    pool: &PgPool,
    name: &str,
    email: &str,
    password: &str,
    role: Role,
) -> Result<User, AdminError> {
    validate_user_fields(Some(name), Some(email), Some(password))?;
    let hash = hash_password(password)?;
    sqlx::query_as(
        "insert into users (id, name, email, password_hash, role) values ($1, $2, $3, $4, $5)
         on conflict do nothing returning id, name, email, role",
    )
    .bind(new_id("usr"))
    .bind(name.trim())
    .bind(email.trim())
    .bind(hash)
    .bind(role.as_str())
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| AdminError::Conflict(format!("a user with email {email} already exists")))
}

/// Changes any subset of a user's name, password and role, found by email.
pub async fn update_user(
    pool: &PgPool,
    email: &str,
    name: Option<&str>,
    password: Option<&str>,
    role: Option<Role>,
) -> Result<User, AdminError> {
    validate_user_fields(name, None, password)?;
    let hash = password.map(hash_password).transpose()?;
    let mut tx = pool.begin().await?;
    let user: Option<User> = sqlx::query_as(
        "update users set name = coalesce($2, name), password_hash = coalesce($3, password_hash),
                role = coalesce($4, role), updated_at = now()
         where lower(email) = lower($1) returning id, name, email, role",
    )
    .bind(email.trim())
    .bind(name.map(str::trim))
    .bind(hash)
    .bind(role.map(Role::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let user = user.ok_or_else(|| AdminError::NotFound(format!("no user with email {email}")))?;
    if let Some(role) = role {
        // A lower role caps what the user's keys may do: drop the scopes it no longer allows.
        let allowed: Vec<&str> = Scope::ALL.iter().filter(|s| role.allows(**s)).map(|s| s.as_str()).collect();
        sqlx::query(
            "update api_keys set scopes = array(select unnest(scopes) intersect select unnest($2::text[]))
             where user_id = $1",
        )
        .bind(&user.id)
        .bind(&allowed)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(user)
}

pub async fn list_users(pool: &PgPool) -> Result<Vec<User>, AdminError> {
    Ok(sqlx::query_as("select id, name, email, role from users order by created_at, id").fetch_all(pool).await?)
}

fn validate_user_fields(name: Option<&str>, email: Option<&str>, password: Option<&str>) -> Result<(), AdminError> {
    if name.is_some_and(|n| n.trim().is_empty() || n.chars().count() > 255) {
        return Err(AdminError::Invalid("name must be 1 to 255 characters".into()));
    }
    if let Some(email) = email {
        let email = email.trim();
        let valid = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
        if !valid {
            return Err(AdminError::Invalid(format!("{email:?} is not an email address")));
        }
    }
    if password.is_some_and(|p| p.chars().count() < 8) {
        return Err(AdminError::Invalid("password must be at least 8 characters".into()));
    }
    Ok(())
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

/// Creates an API key for the user with `email`. Without `scopes`, the key gets every scope the
/// user's role allows; asking for a scope the role does not allow is an error.
pub async fn create_api_key(
    pool: &PgPool,
    email: &str,
    name: &str,
    scopes: Option<&[Scope]>,
    rate_limit: Option<u32>,
) -> Result<CreatedApiKey, AdminError> {
    let (user_id, role): (String, String) = sqlx::query_as("select id, role from users where lower(email) = lower($1)")
        .bind(email.trim())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no user with email {email}")))?;
    let role = Role::parse(&role).ok_or_else(|| AdminError::Invalid(format!("user has unknown role {role}")))?;
    let scopes: Vec<Scope> = match scopes {
        Some(scopes) => {
            if let Some(denied) = scopes.iter().find(|s| !role.allows(**s)) {
                return Err(AdminError::Invalid(format!(
                    "role {} may not hold the scope {}",
                    role.as_str(),
                    denied.as_str()
                )));
            }
            scopes.to_vec()
        }
        None => Scope::ALL.into_iter().filter(|s| role.allows(*s)).collect(),
    };
    if name.trim().is_empty() {
        return Err(AdminError::Invalid("key name must not be empty".into()));
    }
    if rate_limit == Some(0) {
        return Err(AdminError::Invalid("rate limit must be at least 1".into()));
    }
    let key = generate_api_key();
    let id = new_id("key");
    let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query(
        "insert into api_keys (id, user_id, name, prefix, key_hash, scopes, rate_limit) values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&user_id)
    .bind(name.trim())
    .bind(&key.prefix)
    .bind(key.hash.as_slice())
    .bind(&scope_names)
    .bind(rate_limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
    .execute(pool)
    .await?;
    Ok(CreatedApiKey {
        id,
        key: key.secret,
        name: name.trim().to_owned(),
        prefix: key.prefix,
        user_id,
        scopes,
        rate_limit,
    })
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedService {
    pub id: String,
    pub name: String,
    pub description: String,
    pub routing_key: String,
    pub rate_limit: Option<u32>,
}

/// The routing key authenticates `/v2/enqueue`: not in `Debug` output.
impl std::fmt::Debug for CreatedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedService").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

/// Creates a service with a fresh routing (integration) key: 32 hex characters, like PagerDuty's.
pub async fn create_service(
    pool: &PgPool,
    name: &str,
    description: &str,
    rate_limit: Option<u32>,
) -> Result<CreatedService, AdminError> {
    if name.trim().is_empty() || name.chars().count() > 255 {
        return Err(AdminError::Invalid("name must be 1 to 255 characters".into()));
    }
    if description.chars().count() > 4096 {
        return Err(AdminError::Invalid("description must be at most 4096 characters".into()));
    }
    if rate_limit == Some(0) {
        return Err(AdminError::Invalid("rate limit must be at least 1".into()));
    }
    let service = CreatedService {
        id: new_id("svc"),
        name: name.trim().to_owned(),
        description: description.to_owned(),
        routing_key: random_token(16),
        rate_limit,
    };
    sqlx::query("insert into services (id, name, description, routing_key, rate_limit) values ($1, $2, $3, $4, $5)")
        .bind(&service.id)
        .bind(&service.name)
        .bind(&service.description)
        .bind(&service.routing_key)
        .bind(rate_limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
        .execute(pool)
        .await?;
    Ok(service)
}

/// What the first start of a fresh installation created.
#[derive(Clone)]
pub struct Bootstrap {
    pub email: String,
    pub password: String,
    pub api_key: CreatedApiKey,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap").field("email", &self.email).field("api_key", &self.api_key).finish_non_exhaustive()
    }
}

/// On a database with no users, creates an admin user with a random password and an admin API
/// key. Returns `None` when users already exist (or another process bootstrapped first).
pub async fn bootstrap_admin(pool: &PgPool, email: &str) -> Result<Option<Bootstrap>, AdminError> {
    let (users,): (i64,) = sqlx::query_as("select count(*) from users").fetch_one(pool).await?;
    if users > 0 {
        return Ok(None);
    }
    let password = random_token(12);
    match create_user(pool, "Administrator", email, &password, Role::Admin).await {
        Ok(_) => {}
        Err(AdminError::Conflict(_)) => return Ok(None),
        Err(err) => return Err(err),
    }
    let api_key = create_api_key(pool, email, "bootstrap admin key", None, None).await?;
    Ok(Some(Bootstrap { email: email.to_owned(), password, api_key }))
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

/// API keys, newest first, optionally of one user.
pub async fn list_api_keys(pool: &PgPool, email: Option<&str>) -> Result<Vec<ApiKeyListing>, AdminError> {
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

/// Revokes a key; services stop accepting it within their key cache's lifetime.
pub async fn revoke_api_key(pool: &PgPool, id: &str) -> Result<(), AdminError> {
    let revoked = sqlx::query("update api_keys set revoked_at = now() where id = $1 and revoked_at is null")
        .bind(id)
        .execute(pool)
        .await?;
    if revoked.rows_affected() == 0 {
        return Err(AdminError::NotFound(format!("no active API key {id}")));
    }
    Ok(())
}

/// Services, newest first, with their routing keys.
pub async fn list_services(pool: &PgPool) -> Result<Vec<CreatedService>, AdminError> {
    let rows: Vec<(String, String, String, String, Option<i32>)> = sqlx::query_as(
        "select id, name, description, routing_key, rate_limit from services order by created_at desc, id desc",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, description, routing_key, rate_limit)| CreatedService {
            id,
            name,
            description,
            routing_key,
            rate_limit: rate_limit.map(i32::unsigned_abs),
        })
        .collect())
}

/// Gives a service a new routing key; the old one stops working.
pub async fn rotate_routing_key(pool: &PgPool, id: &str) -> Result<CreatedService, AdminError> {
    let row: Option<(String, String, String, String, Option<i32>)> = sqlx::query_as(
        "update services set routing_key = $2, updated_at = now() where id = $1
         returning id, name, description, routing_key, rate_limit",
    )
    .bind(id)
    .bind(random_token(16))
    .fetch_optional(pool)
    .await?;
    let (id, name, description, routing_key, rate_limit) =
        row.ok_or_else(|| AdminError::NotFound(format!("no service {id}")))?;
    Ok(CreatedService { id, name, description, routing_key, rate_limit: rate_limit.map(i32::unsigned_abs) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let api_key = CreatedApiKey {
            id: "key_1".into(),
            key: "osk_secret".into(),
            name: "n".into(),
            prefix: "osk_sec".into(),
            user_id: "usr_1".into(),
            scopes: vec![],
            rate_limit: None,
        };
        let bootstrap = Bootstrap { email: "a@b.c".into(), password: "hunter2".into(), api_key };
        let shown = format!("{bootstrap:?}");
        assert!(!shown.contains("osk_secret") && !shown.contains("hunter2"), "{shown}");
        let service = CreatedService {
            id: "svc_1".into(),
            name: "n".into(),
            description: String::new(),
            routing_key: "rk_secret".into(),
            rate_limit: None,
        };
        assert!(!format!("{service:?}").contains("rk_secret"));
    }
}
