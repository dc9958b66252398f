//! The change stream for dashboards (DESIGN §9): `GET /api/stream` as Server-Sent Events, with
//! `Last-Event-ID` resume, single-use stream tokens for `EventSource`, and one consumer of the
//! change stream per process fanned out to its clients.

pub mod body;
pub mod feed;
pub mod http;
pub mod service;

pub use http::router;
