//! Incidents (DESIGN §5): list with filters, sort and paging; detail with timeline and alerts;
//! create; and manual changes, which take the same per-key lock as workers applying events.

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
