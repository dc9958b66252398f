pub mod alertmanager;
pub mod events;
pub mod heartbeats;
pub mod pagerduty;
