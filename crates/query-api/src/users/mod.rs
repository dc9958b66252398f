//! Users (DESIGN §8, §11): created, changed and listed by administrators through the CLI, listed
//! with their contact methods over the API, and the
//! first administrator of a fresh installation.

pub mod body;
pub mod http;
pub mod service;

pub use http::router;
