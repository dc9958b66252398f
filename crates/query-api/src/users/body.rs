//! What creating or changing a user takes.

use std::str::FromStr;

use common::ApiError;
use common::auth::Role;
use common::fields::{Name, field};
use serde::Serialize;

/// An email address: something before an `@` and a dot after it, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let email = value.trim();
        let valid = !email.contains('\0')
            && email.chars().count() <= Self::MAX_CHARS
            && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
        if valid { Ok(Self(email.to_owned())) } else { Err(format!("{email:?} is not an email address")) }
    }
}

common::deserialize_from_str!(Email);

impl utoipa::PartialSchema for Email {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .max_length(Some(Self::MAX_CHARS))
            .into()
    }
}

impl utoipa::ToSchema for Email {}

/// A password: at least 8 characters. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

impl FromStr for Password {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.chars().count() < Self::MIN_CHARS {
            return Err(format!("must be at least {} characters", Self::MIN_CHARS));
        }
        if value.contains('\0') {
            return Err("must not contain NUL characters".into());
        }
        Ok(Self(value.to_owned()))
    }
}

/// A new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: Name,
    pub email: Email,
    pub password: Password,
    pub role: Role,
}

impl NewUser {
    /// A new user from text, naming the field that does not fit.
    pub fn parse(name: &str, email: &str, password: &str, role: Role) -> Result<Self, ApiError> {
        Ok(Self {
            name: field("name", name)?,
            email: field("email", email)?,
            password: field("password", password)?,
            role,
        })
    }
}

/// What changes on a user; absent parts stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub name: Option<Name>,
    pub password: Option<Password>,
    pub role: Option<Role>,
}

/// A user as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<User>,
    pub total: i64,
    pub pagination: crate::page::Pagination,
}

/// How a contact method reaches its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContactType {
    /// E-mail over SMTP; `address` is an e-mail address.
    Email,
    /// A JSON post; `address` is an https URL.
    Webhook,
    /// A Slack incoming webhook (or one that speaks its format); `address` is its https URL.
    Slack,
}

impl ContactType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
            Self::Slack => "slack",
        }
    }
}

common::bounded_text! {
    /// Where a contact method sends: an e-mail address or a URL, at most 2048 characters.
    pub struct Address { min: 1, max: 2048, trim: true }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContactMethod {
    #[serde(rename = "type")]
    pub kind: ContactType,
    pub address: Address,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContactMethod {
    pub id: String,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
    pub created_at: crate::api::Timestamp,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContactMethodBody {
    pub contact_method: ContactMethod,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContactMethodList {
    pub contact_methods: Vec<ContactMethod>,
}
