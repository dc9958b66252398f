//! Users (DESIGN §8): created, changed and listed by administrators through the CLI, and the
//! first administrator of a fresh installation.

pub mod body;
pub mod service;
