//! Users and their contact methods in PostgreSQL: typed input in, users out.

use common::ApiError;
use common::auth::{Role, Scope};

use crate::credentials::{hash_password, random_token};
use common::config::WebhookConfig;
use common::fields::field;
use common::ids::new_id;
use common::incident::store::timestamp;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Row};

use super::body::{
    ContactMethod, ContactMethodList, ContactType, Email, NewContactMethod, NewUser, User, UserChange, UserList,
};
use crate::api_keys::body::{CreatedApiKey, NewApiKey};
use crate::constraint::OnConstraint;
use crate::page::{NewestFirst, PageRequest, newest_first};
use crate::webhooks::body::WebhookUrl;
use crate::webhooks::service::check_destination;

/// Creates a user; `409` when the email is taken.
pub async fn create(pool: &PgPool, new: &NewUser) -> Result<User, ApiError> {
    let hash = hash_password(new.password.as_str()).map_err(ApiError::internal)?;
    sqlx::query_as(
        "insert into users (id, name, email, password_hash, role) values ($1, $2, $3, $4, $5)
         returning id, name, email, role",
    )
    .bind(new_id("usr"))
    .bind(new.name.as_str())
    .bind(new.email.as_str())
    .bind(hash)
    .bind(new.role.as_str())
    .fetch_one(pool)
    .await
    .on_constraint(|name| {
        (name == "users_email_key")
            .then(|| ApiError::conflict(format!("a user with email {} already exists", new.email.as_str())))
    })
}

/// Changes any subset of a user's name, password and role, found by email; `404` when missing.
/// A lower role drops the scopes it no longer allows from the user's keys.
pub async fn update(pool: &PgPool, email: &str, change: &UserChange) -> Result<User, ApiError> {
    let hash = change.password.as_ref().map(|p| hash_password(p.as_str())).transpose().map_err(ApiError::internal)?;
    let mut tx = pool.begin().await?;
    let user: Option<User> = sqlx::query_as(
        "update users set name = coalesce($2, name), password_hash = coalesce($3, password_hash),
                role = coalesce($4, role), updated_at = now()
         where lower(email) = lower($1) returning id, name, email, role",
    )
    .bind(email.trim())
    .bind(change.name.as_ref().map(|n| n.as_str()))
    .bind(hash)
    .bind(change.role.map(Role::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let user = user.ok_or_else(|| ApiError::not_found(format!("user with email {email}")))?;
    if let Some(role) = change.role {
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

/// Every user, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<User>, ApiError> {
    Ok(sqlx::query_as("select id, name, email, role from users order by created_at, id").fetch_all(pool).await?)
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
pub async fn bootstrap_admin(pool: &PgPool, email: &str) -> Result<Option<Bootstrap>, ApiError> {
    let (users,): (i64,) = sqlx::query_as("select count(*) from users").fetch_one(pool).await?;
    if users > 0 {
        return Ok(None);
    }
    let password = random_token(12);
    let admin = NewUser::parse("Administrator", email, &password, Role::Admin)?;
    match create(pool, &admin).await {
        Ok(_) => {}
        Err(err) if err.code == common::ErrorCode::Conflict => return Ok(None),
        Err(err) => return Err(err),
    }
    let key = NewApiKey {
        email: admin.email.as_str().to_owned(),
        name: "bootstrap admin key".parse().map_err(ApiError::internal)?,
        scopes: None,
        rate_limit: None,
    };
    let api_key = crate::api_keys::service::create(pool, &key).await?;
    Ok(Some(Bootstrap { email: email.to_owned(), password, api_key }))
}

/// A page of users, newest first (the API's `GET /api/users`).
pub async fn page(pool: &PgPool, page: &PageRequest<NewestFirst>) -> Result<UserList, ApiError> {
    let select = "select t.id, t.name, t.email, t.role, t.created_at from users t";
    let (rows, total, pagination) = newest_first(pool, page, "users", select, "").await?;
    let users = rows.iter().map(User::from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(UserList { users, total, pagination })
}

fn contact_method_of(row: &PgRow) -> Result<ContactMethod, sqlx::Error> {
    Ok(ContactMethod {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        kind: row.try_get("type")?,
        address: row.try_get("address")?,
        created_at: timestamp(row, "created_at")?.into(),
    })
}

/// A user's contact methods, oldest first; `404` for no such user.
pub async fn contact_methods(pool: &PgPool, user_id: &str) -> Result<ContactMethodList, ApiError> {
    let rows = sqlx::query(
        "select u.id as owner, c.id, c.user_id, c.type, c.address, c.created_at
         from users u left join contact_methods c on c.user_id = u.id where u.id = $1 order by c.created_at, c.id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("user {user_id}")));
    }
    let contact_methods = rows
        .iter()
        .filter(|row| row.try_get::<Option<String>, _>("id").ok().flatten().is_some())
        .map(contact_method_of)
        .collect::<Result<_, _>>()?;
    Ok(ContactMethodList { contact_methods })
}

/// Adds a contact method: an e-mail address, or an http(s) URL that `config` allows (https
/// only, on a public address, unless private addresses are allowed). `404` for no such user,
/// `409` when the user has it already.
pub async fn add_contact_method(
    pool: &PgPool,
    config: &WebhookConfig,
    user_id: &str,
    new: &NewContactMethod,
) -> Result<ContactMethod, ApiError> {
    let address = match new.kind {
        ContactType::Email => field::<Email>("address", new.address.as_str())?.as_str().to_owned(),
        ContactType::Webhook | ContactType::Slack => {
            let url: WebhookUrl = field("address", new.address.as_str())?;
            if url.0.scheme() != "https" && !config.allow_private {
                return Err(ApiError::validation("address", "must be an https URL"));
            }
            check_destination(config, &url, "address")?;
            url.0.to_string()
        }
    };
    let row = sqlx::query(
        "insert into contact_methods (id, user_id, type, address) values ($1, $2, $3, $4)
         returning id, user_id, type, address, created_at",
    )
    .bind(new_id("cm"))
    .bind(user_id)
    .bind(new.kind.as_str())
    .bind(&address)
    .fetch_one(pool)
    .await
    .on_constraint(|name| match name {
        "contact_methods_user_id_fkey" => Some(ApiError::not_found(format!("user {user_id}"))),
        "contact_methods_address_key" => {
            Some(ApiError::conflict(format!("user {user_id} already has this {} contact method", new.kind.as_str())))
        }
        _ => None,
    })?;
    Ok(contact_method_of(&row)?)
}

/// Removes a contact method; notifications not yet sent to it go with it. `404` when missing.
pub async fn delete_contact_method(pool: &PgPool, user_id: &str, id: &str) -> Result<(), ApiError> {
    let deleted = sqlx::query("delete from contact_methods where id = $1 and user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(pool)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("contact method {id} of user {user_id}")));
    }
    Ok(())
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
        let password: super::super::body::Password = "correct horse".parse().unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
