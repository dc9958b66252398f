pub mod incidents;
pub mod services;
