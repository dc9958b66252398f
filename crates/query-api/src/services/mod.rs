//! Services (DESIGN §6): list and detail with the derived status and open-incident counts;
//! create, returning the routing key; rotate the routing key (CLI).

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
