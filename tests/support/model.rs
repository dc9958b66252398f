//! DESIGN §4 as a plain sequential model, independent of the worker's code: what a key's events
//! must produce when applied one by one in stream order. Ordering tests compare the database
//! against it.

use std::collections::BTreeMap;

use common::event::{EventAction, EventEnvelope};
use rand::Rng;
use rand::rngs::StdRng;
use sqlx::PgPool;

/// An incident as the sequential model computes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub id: String,
    pub dedup_key: String,
    pub status: String,
    pub alert_count: i32,
    pub created_us: i64,
    pub updated_us: i64,
    pub acknowledged_us: Option<i64>,
    pub resolved_us: Option<i64>,
}

/// DESIGN §4, written as plainly as possible, independent of the worker's code.
pub fn model(key_events: &BTreeMap<String, Vec<EventEnvelope>>) -> Vec<Expected> {
    let mut all = Vec::new();
    for (dedup_key, events) in key_events {
        let mut open: Option<Expected> = None;
        for event in events {
            let at = event.received_at.as_microsecond();
            match (event.action, open.as_mut()) {
                (EventAction::Trigger, Some(incident)) => {
                    incident.alert_count += 1;
                    incident.updated_us = at;
                }
                (EventAction::Trigger, None) => {
                    open = Some(Expected {
                        id: format!("inc_{}", event.event_id.simple()),
                        dedup_key: dedup_key.clone(),
                        status: "OPEN".into(),
                        alert_count: 1,
                        created_us: at,
                        updated_us: at,
                        acknowledged_us: None,
                        resolved_us: None,
                    });
                }
                (EventAction::Acknowledge, Some(incident)) => {
                    incident.status = "ACKNOWLEDGED".into();
                    incident.acknowledged_us = incident.acknowledged_us.or(Some(at));
                    incident.updated_us = at;
                }
                (EventAction::Resolve, Some(incident)) => {
                    incident.status = "RESOLVED".into();
                    incident.resolved_us = Some(at);
                    incident.updated_us = at;
                    all.extend(open.take());
                }
                (_, None) => {}
            }
        }
        all.extend(open);
    }
    all.sort();
    all
}

pub fn random_event(rng: &mut StdRng, service_id: &str, dedup_key: &str) -> EventEnvelope {
    let action = match rng.random_range(0..10) {
        0..5 => EventAction::Trigger,
        5..7 => EventAction::Acknowledge,
        _ => EventAction::Resolve,
    };
    crate::envelope(service_id, dedup_key, action, &format!("{dedup_key} is unhappy"))
}

/// Every incident in the database, in the model's terms, sorted.
pub async fn incidents_as_modelled(pool: &PgPool) -> Vec<Expected> {
    let mut actual: Vec<Expected> =
        sqlx::query_as::<_, (String, String, String, i32, i64, i64, Option<i64>, Option<i64>)>(
            "select id, dedup_key, status, alert_count,
                (extract(epoch from created_at) * 1000000)::int8, (extract(epoch from updated_at) * 1000000)::int8,
                (extract(epoch from acknowledged_at) * 1000000)::int8, (extract(epoch from resolved_at) * 1000000)::int8
             from incidents",
        )
        .fetch_all(pool)
        .await
        .expect("incidents")
        .into_iter()
        .map(|(id, dedup_key, status, alert_count, created_us, updated_us, acknowledged_us, resolved_us)| Expected {
            id,
            dedup_key,
            status,
            alert_count,
            created_us,
            updated_us,
            acknowledged_us,
            resolved_us,
        })
        .collect();
    actual.sort();
    actual
}
