//! Shared building blocks of the OpsSentinal services, in two parts.
//!
//! The pure domain, always built: events and their limits ([`event`]), the incident state
//! machine ([`incident::state`]), on-call rendering ([`schedule::oncall`]), ids ([`ids`]), the typed fields strict endpoints parse
//! ([`fields`]) and the JSON error type ([`error`]). It does no
//! I/O and depends on no server, client or runtime crate.
//!
//! The platform, with the default `platform` feature: configuration, PostgreSQL (the incident
//! write path's [`incident::store`] and [`incident::change`]), authentication and
//! rate limiting in Redis, NATS streams, HTTP middleware and extractors, shutdown and telemetry:
//! what every service sets up the same way.

pub mod error;
pub mod event;
pub mod fields;
pub mod ids;
pub mod incident;
pub mod schedule;

#[cfg(feature = "platform")]
pub mod auth;
#[cfg(feature = "platform")]
pub mod cache;
#[cfg(feature = "platform")]
pub mod config;
#[cfg(feature = "platform")]
pub mod db;
#[cfg(feature = "platform")]
pub mod http;
#[cfg(feature = "platform")]
pub mod nats;
#[cfg(feature = "platform")]
pub mod ratelimit;
#[cfg(feature = "platform")]
pub mod shutdown;
#[cfg(feature = "platform")]
pub mod telemetry;

pub use error::{ApiError, ErrorBody, ErrorCode};
