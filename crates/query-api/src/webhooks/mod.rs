//! Outbound webhooks (DESIGN §10): create, list, change and delete them, rotate their secrets,
//! ping them, and read and replay their delivery log. Workers do the delivering.

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
