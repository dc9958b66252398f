//! One module per alert source, each a pure `normalize`: the request as the source sends it in,
//! our events (or the reason it is refused) out. Routes in `crate::routes` do the HTTP around
//! them (authentication, limits, publishing). The Events API's own body is checked in
//! `common::event` (`EventRequest::validate`); Alertmanager's is still in its route module.

pub mod pagerduty;
