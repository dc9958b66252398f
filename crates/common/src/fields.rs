//! The one way a strict endpoint checks what it is sent: every field is a type that can only hold
//! an accepted value. Bounded texts ([`bounded_text!`]) carry their limits as constants that both
//! the runtime check and the OpenAPI schema read; keywords (urgency, priority, status) are enums
//! read case-insensitively. All of them parse through `FromStr`, whose error message is the
//! field's problem, and deserialize through it ([`deserialize_from_str!`]), so a failure inside a
//! body or a query string is reported at the field's path by construction
//! (`common::http::parse_value`, `ApiQuery`). Rules between fields (an end after its start) are
//! checked after parsing, naming their field with `ApiError::validation`.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Implements `Deserialize` for types that parse from a string through `FromStr`: the parse
/// error's message becomes the field's problem.
#[macro_export]
macro_rules! deserialize_from_str {
    ($($ty:ty),+ $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

/// Defines a text newtype of `min ..= max` characters without NUL characters (PostgreSQL
/// stores none). With `min` of 1 or more the text must hold a non-space character. With
/// `trim: true` it is kept trimmed (names), otherwise as sent (keys). The schema states the same
/// limits.
#[macro_export]
macro_rules! bounded_text {
    ($(#[$doc:meta])* $vis:vis struct $name:ident { min: $min:expr, max: $max:expr, trim: $trim:expr $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(transparent)]
        $vis struct $name(String);

        impl $name {
            /// Fewest characters (after trimming, when more than 0).
            pub const MIN_CHARS: usize = $min;
            /// Most characters.
            pub const MAX_CHARS: usize = $max;
            /// Whether surrounding white space is dropped.
            pub const TRIMMED: bool = $trim;

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(value: &str) -> Result<Self, String> {
                $crate::fields::check_text(value, Self::MIN_CHARS, Self::MAX_CHARS, Self::TRIMMED).map(Self)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(value: String) -> Result<Self, String> {
                value.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        $crate::deserialize_from_str!($name);

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::fields::text_schema(Self::MIN_CHARS, Self::MAX_CHARS)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// Defines an integer newtype of `min ..= max` (and its `default`, if it has one), read from a JSON number or,
/// in a query string, from text. The schema states the same bounds.
#[macro_export]
macro_rules! bounded_integer {
    ($(#[$doc:meta])* $vis:vis struct $name:ident($int:ty) { min: $min:expr, max: $max:expr, default: $default:expr $(,)? }) => {
        $crate::bounded_integer!($(#[$doc])* $vis struct $name($int) { min: $min, max: $max });

        impl Default for $name {
            fn default() -> Self {
                Self($default)
            }
        }
    };
    ($(#[$doc:meta])* $vis:vis struct $name:ident($int:ty) { min: $min:expr, max: $max:expr $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(transparent)]
        $vis struct $name($int);

        impl $name {
            pub const MIN: $int = $min;
            pub const MAX: $int = $max;

            pub fn get(self) -> $int {
                self.0
            }

            fn checked(value: i128) -> Result<Self, String> {
                if (i128::from(Self::MIN)..=i128::from(Self::MAX)).contains(&value) {
                    Ok(Self(value as $int))
                } else {
                    Err(format!("must be an integer from {} to {}", Self::MIN, Self::MAX))
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(value: &str) -> Result<Self, String> {
                value.trim().parse::<i128>().map_err(|_| String::new()).and_then(Self::checked).map_err(|_| {
                    format!("must be an integer from {} to {}", Self::MIN, Self::MAX)
                })
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <i128 as serde::Deserialize>::deserialize(deserializer)?;
                Self::checked(value).map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::fields::integer_schema(i128::from(Self::MIN), i128::from(Self::MAX), std::mem::size_of::<$int>())
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// `value` (trimmed if `trim`) if it has `min ..= max` characters, a non-space one when
/// `min > 0`, and no NUL.
pub fn check_text(value: &str, min: usize, max: usize, trim: bool) -> Result<String, String> {
    if value.contains('\0') {
        return Err("must not contain NUL characters (\\u0000)".into());
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    let kept = if trim { value.trim() } else { value };
    if min > 0 && value.trim().is_empty() {
        return Err("is required".into());
    }
    if kept.chars().count() < min {
        return Err(format!("must be at least {min} characters"));
    }
    Ok(kept.to_owned())
}

/// The schema of a bounded text: a string of `min ..= max` characters, holding a non-space
/// character when `min > 0`.
pub fn text_schema(min: usize, max: usize) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let mut schema = ObjectBuilder::new().schema_type(Type::String).max_length(Some(max));
    if min > 0 {
        schema = schema.min_length(Some(min)).pattern(Some("\\S"));
    }
    schema.into()
}

/// The schema of a bounded integer of `bytes` bytes (`int64` for 8, else `int32`).
pub fn integer_schema(min: i128, max: i128, bytes: usize) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let format = if bytes == 8 { KnownFormat::Int64 } else { KnownFormat::Int32 };
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(format)))
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .into()
}

/// Parses `value` as field `field`'s type, naming the field when it does not fit (for input
/// that does not arrive as JSON, such as command-line flags).
pub fn field<T: FromStr<Err: std::fmt::Display>>(field: &str, value: &str) -> Result<T, crate::ApiError> {
    value.parse().map_err(|problem| crate::ApiError::validation(field, problem))
}

/// A field that may be set to null (`Some(None)`), as opposed to left out (`None`): use with
/// `#[serde(default, deserialize_with = "common::fields::nullable")]`.
pub fn nullable<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// For optional query parameters: absent or blank is `None`, anything else must parse.
pub fn blank_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: std::fmt::Display>,
{
    let text = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(value) => value.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A comma-separated list of keywords (`OPEN,ACKNOWLEDGED`); empty items are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommaList<T>(pub Vec<T>);

impl<T: FromStr> FromStr for CommaList<T> {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().map_err(|_| format!("unknown value {v:?}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// A list of `MIN ..= MAX` items: the one pair of bounds both the check and the schema read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct List<T, const MIN: usize, const MAX: usize>(Vec<T>);

impl<T, const MIN: usize, const MAX: usize> List<T, MIN, MAX> {
    pub fn new(items: Vec<T>) -> Result<Self, String> {
        if (MIN..=MAX).contains(&items.len()) {
            Ok(Self(items))
        } else {
            Err(format!("must have {MIN} to {MAX} items"))
        }
    }
}

impl<T, const MIN: usize, const MAX: usize> std::ops::Deref for List<T, MIN, MAX> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>, const MIN: usize, const MAX: usize> Deserialize<'de> for List<T, MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(Vec::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl<T: utoipa::ToSchema, const MIN: usize, const MAX: usize> utoipa::PartialSchema for List<T, MIN, MAX> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, Ref};
        ArrayBuilder::new().items(Ref::from_schema_name(T::name())).min_items(Some(MIN)).max_items(Some(MAX)).into()
    }
}

/// Named after its items and bounds (`StepList1To20`), so lists of different bounds never share a
/// component; fields inline it (`#[schema(inline)]`) to state the array where it is used.
impl<T: utoipa::ToSchema, const MIN: usize, const MAX: usize> utoipa::ToSchema for List<T, MIN, MAX> {
    fn name() -> std::borrow::Cow<'static, str> {
        format!("{}List{MIN}To{MAX}", T::name()).into()
    }

    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(schemas);
    }
}

/// An instant as sent: RFC 3339 (`2026-12-01T08:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(pub jiff::Timestamp);

impl FromStr for Instant {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        value.trim().parse().map(Self).map_err(|_| "must be an RFC 3339 timestamp")
    }
}

deserialize_from_str!(Instant);

impl utoipa::PartialSchema for Instant {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Instant {}

bounded_text! {
    /// An identifier as sent (`svc_…`, `usr_…`): up to 64 characters.
    pub struct Id { min: 1, max: 64, trim: false }
}

bounded_text! {
    /// A name: 1 to 255 characters, not blank.
    pub struct Name { min: 1, max: 255, trim: true }
}

bounded_text! {
    /// A short optional text: at most 255 characters.
    pub struct ShortText { min: 0, max: 255, trim: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_texts_count_characters_refuse_nul_and_trim_only_names() {
        assert_eq!("  Checkout ".parse::<Name>().unwrap().as_str(), "Checkout");
        assert_eq!(" usr_a".parse::<Id>().unwrap().as_str(), " usr_a");
        assert_eq!("é".repeat(255).parse::<Name>().unwrap().as_str().chars().count(), 255);
        assert_eq!("é".repeat(256).parse::<Name>().unwrap_err(), "must be at most 255 characters");
        assert_eq!("   ".parse::<Name>().unwrap_err(), "is required");
        assert!("a\u{0}b".parse::<Id>().unwrap_err().contains("NUL"));
        assert_eq!(" kept ".parse::<ShortText>().unwrap().as_str(), " kept ");
    }

    #[test]
    fn a_bad_field_inside_a_body_is_reported_at_its_path() {
        #[derive(Deserialize, Debug)]
        struct Body {
            #[expect(dead_code, reason = "only its parse is tested")]
            items: Vec<Name>,
        }
        let value = serde_json::json!({"items": ["ok", " "]});
        let err = serde_path_to_error::deserialize::<_, Body>(value).unwrap_err();
        assert_eq!((err.path().to_string(), err.inner().to_string()), ("items[1]".into(), "is required".into()));
    }

    #[test]
    fn blank_query_values_are_absent_and_lists_name_the_unknown_value() {
        #[derive(Deserialize)]
        struct Query {
            #[serde(default, deserialize_with = "blank_as_none")]
            names: Option<CommaList<i32>>,
        }
        let parse = |q: &str| serde_urlencoded::from_str::<Query>(q).map(|q| q.names);
        assert_eq!(parse("names=%20").unwrap(), None);
        assert_eq!(parse("names=1,,2").unwrap(), Some(CommaList(vec![1, 2])));
        assert_eq!(parse("names=1,x").err().unwrap().to_string(), "unknown value \"x\"");
    }
}
