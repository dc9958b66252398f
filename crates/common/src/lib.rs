//! Shared building blocks of the OpsSentinal services: domain types, the incident state
//! machine, configuration, the JSON error type, authentication and rate limiting, and the
//! database and NATS plumbing every service sets up the same way.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod event;
pub mod http;
pub mod ids;
pub mod incident;
pub mod nats;
pub mod ratelimit;
pub mod shutdown;
pub mod telemetry;

pub use error::{ApiError, ErrorBody, ErrorCode};
