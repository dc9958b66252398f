pub mod events;
pub mod pagerduty;
