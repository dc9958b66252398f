pub mod incidents;
pub mod schedules;
pub mod services;
