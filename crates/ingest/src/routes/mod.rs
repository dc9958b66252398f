pub mod alertmanager;
pub mod events;
pub mod pagerduty;
