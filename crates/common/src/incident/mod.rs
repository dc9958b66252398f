//! Where an incident changes. Every change, whoever makes it, goes through here:
//!
//! - [`state`]: the state machine, a pure fold over one key's events (no I/O);
//! - [`store`]: the per-key lock and the column-wise writers for incidents and the event log;
//! - [`change`]: what people and upkeep do (open by hand, acknowledge, snooze, reassign, add a
//!   note, reopen ended snoozes, fold the count deltas).
//!
//! Workers apply alert events with `state` and `store`; HTTP routes only parse requests and call
//! `change`.

pub mod change;
pub mod state;
pub mod store;
