//! End-to-end tests: the real services against real PostgreSQL, Redis and NATS.

mod api_contract;
mod bad_input;
mod changes;
mod cli;
mod cluster;
mod delivery;
mod deploy;
mod escalation;
mod fault_matrix;
mod faults;
mod ingest_api;
mod lifecycle;
mod openapi;
mod ordering;
mod pagerduty;
mod query_api;
mod real_clients;
mod retention;
mod safe_input;
mod scale_out;
mod schedules;
mod stream;
mod streams;
mod tls;
mod traces;
mod webhooks;
