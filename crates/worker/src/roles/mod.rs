//! Background roles every worker runs beside applying events. Each is safe on any number of
//! workers at once; add a new one as a module here and spawn it in [`crate::start`].

pub mod relay;
pub mod retention;
pub mod upkeep;
pub mod webhooks;
