//! Where an incident changes. Every change, whoever makes it, goes through here:
//!
//! - [`state`]: the state machine, a pure fold over one key's events (no I/O);
//! - `store` (with the `platform` feature): the per-key lock and the column-wise writers for incidents and the event log;
//! - `change` (with the `platform` feature): what people and upkeep do (open by hand, acknowledge, snooze, reassign, add a
//!   note, reopen ended snoozes, fold the count deltas).
//!
//! Workers apply alert events with `state` and `store`; HTTP routes only parse requests and call
//! `change`.

#[cfg(feature = "platform")]
pub mod change;
pub mod state;
#[cfg(feature = "platform")]
pub mod store;
