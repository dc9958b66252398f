//! API keys (DESIGN §3): created, listed and revoked by administrators through the CLI. The key
//! itself is shown once and stored only as its hash.

pub mod body;
pub mod service;
