//! The incident state machine of DESIGN §4, as a pure fold over one `(service, dedup_key)`'s
//! events in stream order.
//!
//! Workers use it to apply a batch (starting from the key's open incident) and to re-apply a
//! key's events when one arrives out of order (starting from "no open incident" after the last
//! resolve that precedes it: a resolve always leaves the key with no open incident, whatever came
//! before). Nothing here touches a database or NATS.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{AlertPayload, EventAction, Urgency};
use crate::ids::incident_id_for_event;

/// An incident's status; read in any case, `TRIGGERED` meaning `OPEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
    Snoozed,
    Suppressed,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Resolved => "RESOLVED",
            Self::Snoozed => "SNOOZED",
            Self::Suppressed => "SUPPRESSED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.to_ascii_uppercase().as_str() {
            "OPEN" | "TRIGGERED" => Self::Open,
            "ACKNOWLEDGED" => Self::Acknowledged,
            "RESOLVED" => Self::Resolved,
            "SNOOZED" => Self::Snoozed,
            "SUPPRESSED" => Self::Suppressed,
            _ => return None,
        })
    }
}

impl std::str::FromStr for IncidentStatus {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value).ok_or("must be OPEN, ACKNOWLEDGED, RESOLVED, SNOOZED or SUPPRESSED")
    }
}

crate::deserialize_from_str!(IncidentStatus);

/// An incident's priority, set by people; read in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
    P5,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P1 => "P1",
            Self::P2 => "P2",
            Self::P3 => "P3",
            Self::P4 => "P4",
            Self::P5 => "P5",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value.to_ascii_uppercase().as_str() {
            "P1" => Self::P1,
            "P2" => Self::P2,
            "P3" => Self::P3,
            "P4" => Self::P4,
            "P5" => Self::P5,
            _ => return Err("must be P1, P2, P3, P4 or P5"),
        })
    }
}

crate::deserialize_from_str!(Priority);

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new incident was opened.
    Created,
    /// The open incident absorbed the alert (alert count +1).
    Absorbed,
    Acknowledged,
    Resolved,
    /// No open incident to acknowledge or resolve: recorded and ignored.
    Ignored,
    Snoozed,
    /// A person took an incident back to `OPEN` (un-acknowledge, un-snooze).
    Reopened,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Absorbed => "absorbed",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
            Self::Ignored => "ignored",
            Self::Snoozed => "snoozed",
            Self::Reopened => "reopened",
        }
    }
}

/// The event-derived fields of an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentState {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub status: IncidentStatus,
    pub urgency: Urgency,
    pub alert_count: i32,
    /// Stream sequence of the event that opened it (`None` for incidents made by hand).
    pub opened_seq: Option<i64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub acknowledged_at: Option<Timestamp>,
    pub resolved_at: Option<Timestamp>,
    pub snoozed_until: Option<Timestamp>,
}

/// A person's status change to one incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualChange {
    Acknowledge,
    Resolve,
    Snooze(Timestamp),
    /// Back to `OPEN`: un-acknowledge, or un-snooze (also done by the system when a snooze ends).
    Reopen,
}

impl ManualChange {
    /// The `events.action` this change is stored under.
    pub fn action(self) -> &'static str {
        match self {
            Self::Acknowledge => "acknowledge",
            Self::Resolve => "resolve",
            Self::Snooze(_) => "snooze",
            Self::Reopen => "reopen",
        }
    }
}

/// What happened, as the fold applies it.
#[derive(Debug, Clone, Copy)]
pub enum FoldAction<'a> {
    /// An alert source's event.
    Event(EventAction, Option<&'a AlertPayload>),
    /// A person's change; ignored unless `incident_id` is the key's open incident.
    Manual { incident_id: &'a str, change: ManualChange },
}

/// One event or manual change as the fold sees it.
#[derive(Debug, Clone, Copy)]
pub struct FoldEvent<'a> {
    pub event_id: Uuid,
    pub seq: i64,
    pub action: FoldAction<'a>,
    pub received_at: Timestamp,
    /// Whether the service was in a maintenance window when the event was accepted: a trigger
    /// that opens an incident then opens it `SUPPRESSED` (DESIGN §12).
    pub in_maintenance: bool,
}

/// The state of one key while its events are applied, and every incident the fold changed.
#[derive(Debug, Default)]
pub struct KeyFold {
    open: Option<IncidentState>,
    closed: Vec<IncidentState>,
}

impl KeyFold {
    /// Starts from the key's open incident (or none).
    pub fn new(open: Option<IncidentState>) -> Self {
        Self { open, closed: Vec::new() }
    }

    /// Applies one event or change. Returns the outcome and the incident it touched, if any.
    pub fn apply(&mut self, event: &FoldEvent<'_>) -> (Outcome, Option<String>) {
        let at = event.received_at;
        let (incident_id, change) = match event.action {
            FoldAction::Event(action, payload) => return self.apply_event(event, action, payload),
            FoldAction::Manual { incident_id, change } => (incident_id, change),
        };
        let Some(open) = self.open.as_mut().filter(|open| open.id == incident_id) else {
            return (Outcome::Ignored, Some(incident_id.to_owned()));
        };
        open.updated_at = at;
        let outcome = match change {
            ManualChange::Acknowledge => {
                open.status = IncidentStatus::Acknowledged;
                open.acknowledged_at.get_or_insert(at);
                open.snoozed_until = None;
                Outcome::Acknowledged
            }
            ManualChange::Resolve => return self.resolve(at),
            ManualChange::Snooze(until) => {
                open.status = IncidentStatus::Snoozed;
                open.snoozed_until = Some(until);
                Outcome::Snoozed
            }
            ManualChange::Reopen => {
                open.status = IncidentStatus::Open;
                open.snoozed_until = None;
                Outcome::Reopened
            }
        };
        (outcome, Some(open.id.clone()))
    }

    fn apply_event(
        &mut self,
        event: &FoldEvent<'_>,
        action: EventAction,
        payload: Option<&AlertPayload>,
    ) -> (Outcome, Option<String>) {
        let at = event.received_at;
        match (action, self.open.as_mut()) {
            (EventAction::Trigger, Some(open)) => {
                open.alert_count += 1;
                open.updated_at = at;
                (Outcome::Absorbed, Some(open.id.clone()))
            }
            (EventAction::Trigger, None) => {
                let incident = IncidentState {
                    id: incident_id_for_event(event.event_id),
                    title: payload.map(|p| p.summary.clone()).unwrap_or_default(),
                    description: payload
                        .and_then(|p| p.custom_details.as_ref())
                        .and_then(|details| serde_json::to_string_pretty(details).ok()),
                    status: if event.in_maintenance { IncidentStatus::Suppressed } else { IncidentStatus::Open },
                    urgency: payload.map_or(Urgency::High, |p| p.severity.into()),
                    alert_count: 1,
                    opened_seq: Some(event.seq),
                    created_at: at,
                    updated_at: at,
                    acknowledged_at: None,
                    resolved_at: None,
                    snoozed_until: None,
                };
                let id = incident.id.clone();
                self.open = Some(incident);
                (Outcome::Created, Some(id))
            }
            (EventAction::Acknowledge, Some(open)) => {
                open.status = IncidentStatus::Acknowledged;
                open.acknowledged_at.get_or_insert(at);
                open.snoozed_until = None;
                open.updated_at = at;
                (Outcome::Acknowledged, Some(open.id.clone()))
            }
            (EventAction::Resolve, Some(_)) => self.resolve(at),
            (EventAction::Acknowledge | EventAction::Resolve, None) => (Outcome::Ignored, None),
        }
    }

    fn resolve(&mut self, at: Timestamp) -> (Outcome, Option<String>) {
        let Some(mut incident) = self.open.take() else {
            return (Outcome::Ignored, None);
        };
        incident.status = IncidentStatus::Resolved;
        incident.resolved_at = Some(at);
        incident.snoozed_until = None;
        incident.updated_at = at;
        let id = incident.id.clone();
        self.closed.push(incident);
        (Outcome::Resolved, Some(id))
    }

    /// The incident `id` as the fold has it now: open, or resolved by it.
    pub fn incident(&self, id: &str) -> Option<&IncidentState> {
        self.open.iter().chain(self.closed.iter().rev()).find(|incident| incident.id == id)
    }

    /// The open incident, if any.
    pub fn open(&self) -> Option<&IncidentState> {
        self.open.as_ref()
    }

    /// Every incident the fold touched: those it resolved, then the one left open (so that
    /// writing them in this order never has two open incidents for the key at once).
    pub fn into_incidents(self) -> Vec<IncidentState> {
        let mut all = self.closed;
        all.extend(self.open);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Severity;

    fn payload(summary: &str) -> AlertPayload {
        AlertPayload {
            summary: summary.into(),
            source: "test".into(),
            severity: Severity::Warning,
            timestamp: None,
            component: None,
            group: None,
            class: None,
            custom_details: Some(serde_json::json!({"host": "web-01"}).as_object().unwrap().clone()),
        }
    }

    fn event(seq: i64, action: EventAction, payload: Option<&AlertPayload>) -> FoldEvent<'_> {
        FoldEvent {
            event_id: Uuid::now_v7(),
            seq,
            action: FoldAction::Event(action, payload),
            received_at: Timestamp::from_second(1_700_000_000 + seq).unwrap(),
            in_maintenance: false,
        }
    }

    fn manual(seq: i64, incident_id: &str, change: ManualChange) -> FoldEvent<'_> {
        FoldEvent {
            event_id: Uuid::now_v7(),
            seq,
            action: FoldAction::Manual { incident_id, change },
            received_at: Timestamp::from_second(1_700_000_100 + seq).unwrap(),
            in_maintenance: false,
        }
    }

    #[test]
    fn manual_changes_apply_to_their_incident_only_while_it_is_open() {
        let p = payload("queue backed up");
        let mut fold = KeyFold::new(None);
        let (_, id) = fold.apply(&event(1, EventAction::Trigger, Some(&p)));
        let id = id.unwrap();
        let until = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(fold.apply(&manual(1, &id, ManualChange::Snooze(until))).0, Outcome::Snoozed);
        assert_eq!(fold.open().unwrap().snoozed_until, Some(until));
        assert_eq!(fold.apply(&event(2, EventAction::Trigger, Some(&p))).0, Outcome::Absorbed);
        assert_eq!(fold.open().unwrap().status, IncidentStatus::Snoozed);
        assert_eq!(fold.apply(&manual(2, &id, ManualChange::Reopen)).0, Outcome::Reopened);
        assert_eq!(fold.apply(&manual(2, "inc_other", ManualChange::Resolve)).0, Outcome::Ignored);
        assert_eq!(fold.apply(&manual(2, &id, ManualChange::Resolve)).0, Outcome::Resolved);
        assert_eq!(fold.apply(&manual(2, &id, ManualChange::Acknowledge)).0, Outcome::Ignored);
        let incidents = fold.into_incidents();
        assert_eq!(incidents[0].status, IncidentStatus::Resolved);
        assert_eq!(incidents[0].alert_count, 2);
        assert_eq!(incidents[0].snoozed_until, None);
    }

    #[test]
    fn trigger_absorb_ack_resolve_then_trigger_opens_a_second_incident() {
        let p = payload("disk full");
        let mut fold = KeyFold::new(None);
        let first = event(1, EventAction::Trigger, Some(&p));
        assert_eq!(fold.apply(&first).0, Outcome::Created);
        assert_eq!(fold.apply(&event(2, EventAction::Trigger, Some(&p))).0, Outcome::Absorbed);
        assert_eq!(fold.apply(&event(3, EventAction::Acknowledge, None)).0, Outcome::Acknowledged);
        assert_eq!(fold.apply(&event(4, EventAction::Acknowledge, None)).0, Outcome::Acknowledged);
        assert_eq!(fold.apply(&event(5, EventAction::Resolve, None)).0, Outcome::Resolved);
        assert_eq!(fold.apply(&event(6, EventAction::Resolve, None)).0, Outcome::Ignored);
        assert_eq!(fold.apply(&event(7, EventAction::Trigger, Some(&p))).0, Outcome::Created);

        let incidents = fold.into_incidents();
        assert_eq!(incidents.len(), 2);
        let resolved = &incidents[0];
        assert_eq!(resolved.id, incident_id_for_event(first.event_id));
        assert_eq!(resolved.status, IncidentStatus::Resolved);
        assert_eq!(resolved.alert_count, 2);
        assert_eq!(resolved.urgency, Urgency::Medium);
        assert_eq!(resolved.acknowledged_at, Some(Timestamp::from_second(1_700_000_003).unwrap()));
        assert_eq!(resolved.resolved_at, Some(Timestamp::from_second(1_700_000_005).unwrap()));
        assert!(resolved.description.as_deref().unwrap().contains("\"host\": \"web-01\""));
        assert_eq!(incidents[1].status, IncidentStatus::Open);
        assert_eq!(incidents[1].opened_seq, Some(7));
    }

    #[test]
    fn a_trigger_in_maintenance_opens_a_suppressed_incident_that_absorbs_and_reopens() {
        let p = payload("disk full");
        let mut fold = KeyFold::new(None);
        let quiet = FoldEvent { in_maintenance: true, ..event(1, EventAction::Trigger, Some(&p)) };
        let (outcome, id) = fold.apply(&quiet);
        assert_eq!(outcome, Outcome::Created);
        assert_eq!(fold.open().unwrap().status, IncidentStatus::Suppressed);
        assert_eq!(fold.apply(&event(2, EventAction::Trigger, Some(&p))).0, Outcome::Absorbed);
        assert_eq!(fold.open().unwrap().status, IncidentStatus::Suppressed, "a later alert does not open it");
        assert_eq!(fold.apply(&manual(3, id.as_deref().unwrap(), ManualChange::Reopen)).0, Outcome::Reopened);
        assert_eq!(fold.open().unwrap().status, IncidentStatus::Open);
    }

    #[test]
    fn acknowledge_or_resolve_without_an_open_incident_is_ignored() {
        let mut fold = KeyFold::new(None);
        assert_eq!(fold.apply(&event(1, EventAction::Acknowledge, None)), (Outcome::Ignored, None));
        assert_eq!(fold.apply(&event(2, EventAction::Resolve, None)), (Outcome::Ignored, None));
        assert!(fold.into_incidents().is_empty());
    }

    #[test]
    fn status_parsing_accepts_triggered_and_any_case() {
        assert_eq!(IncidentStatus::parse("triggered"), Some(IncidentStatus::Open));
        assert_eq!(IncidentStatus::parse("Acknowledged"), Some(IncidentStatus::Acknowledged));
        assert_eq!(IncidentStatus::parse("closed"), None);
    }
}
