//! Escalation policies (DESIGN §11): who is notified, step by step, until someone acknowledges.
//! A policy's steps are versioned: `PUT` writes a new version, and an incident's running
//! escalation keeps the version it started with (workers fire the steps:
//! `worker::roles::escalation`).

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
