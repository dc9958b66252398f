//! Background roles: outbound webhooks (DESIGN §10). `fanout` follows the change stream (one
//! worker at a time) and turns each change into a delivery per webhook that wants it; `send`
//! (every worker) posts due deliveries, signed as Standard Webhooks asks, and records each
//! attempt. Delivery state lives in PostgreSQL, so any number of workers share the sending and a
//! killed one loses nothing: its claimed deliveries fall due again under the same id.

pub mod fanout;
pub mod send;
pub mod sign;
