//! Prefixed, time-sortable identifiers (`inc_…`, `svc_…`, `usr_…`, `key_…`, `sch_…`).
//!
//! The part after the prefix is a UUIDv7 in lowercase hex, so ids sort by creation time.

use uuid::Uuid;

/// A fresh id with the given prefix, e.g. `new_id("svc")` → `svc_0192…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

/// The id of the incident opened by the event `event_id`.
///
/// Deterministic, so that re-applying a key's events in stream order (see `fold`) gives every
/// incident the same id it had before.
pub fn incident_id_for_event(event_id: Uuid) -> String {
    format!("inc_{}", event_id.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = new_id("svc");
        let b = new_id("svc");
        assert!(a.starts_with("svc_") && a.len() == 36, "{a}");
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn incident_id_is_derived_from_the_opening_event() {
        let event = Uuid::now_v7();
        assert_eq!(incident_id_for_event(event), incident_id_for_event(event));
        assert_eq!(incident_id_for_event(event), format!("inc_{}", event.simple()));
    }
}
