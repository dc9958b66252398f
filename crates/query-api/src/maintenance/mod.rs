//! Maintenance windows (DESIGN §12): plan, list, end and delete them. Workers decide what they
//! suppress and open it when they end.

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
