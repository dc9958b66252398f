//! Accepting one event for a known service: the step every ingestion endpoint ends with.

use common::ApiError;
use common::event::{AlertPayload, EventAction, EventEnvelope};
use common::ratelimit::Decision;
use uuid::Uuid;

use crate::publisher::Company;
use crate::services::ServiceTarget;
use crate::sources::Normalized;
use crate::state::AppState;

/// The envelope of a new event: a fresh id and receive time (a retried request replaces both with
/// its first acceptance's), and a generated dedup key for a trigger without one.
pub fn envelope(
    service: &ServiceTarget,
    action: EventAction,
    dedup_key: Option<String>,
    payload: Option<AlertPayload>,
    api_key_id: Option<String>,
) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7(),
        service_id: service.id.clone(),
        dedup_key: dedup_key.unwrap_or_else(|| Uuid::new_v4().simple().to_string()),
        action,
        payload,
        received_at: received_now(),
        api_key_id,
    }
}

/// The envelope of a lenient source's event: as [`envelope`], under the event's own id when its
/// content decides it.
pub fn normalized_envelope(service: &ServiceTarget, event: Normalized, api_key_id: Option<String>) -> EventEnvelope {
    let mut envelope = envelope(service, event.action, event.dedup_key, event.payload, api_key_id);
    if let Some(id) = event.event_id {
        envelope.event_id = id;
    }
    envelope
}

/// Publishes `envelope`; `Ok` only once JetStream stored it.
pub async fn publish(state: &AppState, envelope: &EventEnvelope, company: Company) -> Result<(), ApiError> {
    state.publisher.publish(envelope, company).await?;
    metrics::counter!("events_accepted_total", "action" => envelope.action.as_str()).increment(1);
    tracing::debug!(event.id = %envelope.event_id, service.id = %envelope.service_id, "event accepted");
    Ok(())
}

/// Counts `cost` events (all or none) against the service's routing-key limit (its own, or the
/// default events limit). `None` when Redis is unreachable (the limiter fails open).
pub async fn check_routing_key_limit(state: &AppState, service: &ServiceTarget, cost: usize) -> Option<Decision> {
    let limit = service.rate_limit.unwrap_or(state.gate.limits.events_per_minute);
    state.gate.limiter.check_all_or_fail_open(&format!("events:service:{}", service.id), limit, cost).await
}

/// Now, to the microsecond PostgreSQL stores, so the envelope and the database agree exactly.
pub fn received_now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Microsecond).unwrap_or(now)
}
