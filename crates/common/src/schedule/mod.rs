//! Schedules (DESIGN §7): who is on call when ([`oncall`], pure), and reading a schedule from
//! PostgreSQL to ask it (`store`, with the `platform` feature). query-api answers with these;
//! workers resolve an escalation step's schedule targets with them.

pub mod oncall;
#[cfg(feature = "platform")]
pub mod store;
