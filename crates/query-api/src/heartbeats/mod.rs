//! Heartbeats (DESIGN §12): create, list and delete them. Ingest records their pings; workers
//! trigger an incident for each one missed.

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
