//! Schedules and on-call (DESIGN §7): create schedules, layers and overrides; list and read
//! them; ask who is on call at an instant; render the final shifts of a window.

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
