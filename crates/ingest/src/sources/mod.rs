//! One module per alert source: what the source sends in, our events (or why they are refused)
//! out, with no I/O. Routes in `crate::routes` do the HTTP around them (authentication, limits,
//! publishing, the answer in the source's format).
//!
//! `events_api` is strict: a bad event is refused naming the field, so its sender can fix it.
//!
//! `pagerduty` and `alertmanager` are lenient: never lose a page to strictness. Each has one
//! normaliser of the same shape, a [`Normalizer`]: one event as the source sends it in; out, the
//! [`Normalized`] event with the [`Repairs`] made to it (what was cut, removed, flattened or
//! filled in), or a [`Refusal`] listing the structural problems no repair can fix. A normaliser
//! keeps its repairs in the event's `custom_details.opssentinal_repairs` (when it has a payload)
//! and returns them; the route counts them in its source's `{source}_repairs_total{kind}`
//! ([`Repairs::count`]) and answers a refusal in the source's format.
//!
//! They share the limits and NUL and depth helpers of `common::event` and the helpers here.

pub mod alertmanager;
pub mod events_api;
pub mod pagerduty;

use common::ApiError;
use common::event::{AlertPayload, EventAction, Severity};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// The shape every lenient normaliser has: one event as its source sends it (`Input`) in; the
/// event with its repairs, or why it is refused, out.
pub type Normalizer<Input> = fn(Input) -> Result<Normalized, Refusal>;

// Each lenient source's `normalize` has that shape.
const _: Normalizer<Value> = pagerduty::normalize;
const _: Normalizer<alertmanager::Incoming<'static>> = alertmanager::normalize;

/// An event from a lenient source, repaired where it broke our rules.
#[derive(Debug)]
pub struct Normalized {
    /// The routing key the event names its service by, when the event carries one (PagerDuty's);
    /// `None` when the request named the service (Alertmanager's URL).
    pub routing_key: Option<String>,
    /// The event's id when its content decides it, so that a re-sent event is the same event
    /// (Alertmanager's); `None` for a new id.
    pub event_id: Option<Uuid>,
    pub action: EventAction,
    pub dedup_key: Option<String>,
    pub payload: Option<AlertPayload>,
    /// What the normaliser changed; already kept in `payload`'s custom details, when there is a
    /// payload.
    pub repairs: Repairs,
}

/// What a lenient normaliser changed in an event so it could be kept rather than refused, in the
/// order it was done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repairs(Vec<Repair>);

/// One repair: its kind (`summary_truncated`, the label it is counted under) and what was done,
/// for people (`summary cut from 1500 to 1024 characters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub kind: &'static str,
    pub what: String,
}

impl Repairs {
    pub fn record(&mut self, kind: &'static str, what: impl Into<String>) {
        self.0.push(Repair { kind, what: what.into() });
    }

    /// Records that `removed` NUL characters were removed (`common::event::strip_nul`), if any.
    pub fn nul_removed(&mut self, removed: usize) {
        if removed > 0 {
            self.record("nul_removed", format!("{removed} NUL characters removed (PostgreSQL stores none)"));
        }
    }

    /// `value` cut to `max` characters ([`truncate`]), recording the cut as `kind` when there
    /// was one.
    pub fn cut(&mut self, kind: &'static str, field: &str, value: &str, max: usize) -> String {
        let length = value.chars().count();
        if length > max {
            self.record(kind, format!("{field} cut from {length} to {max} characters"));
        }
        truncate(value, max)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Repair> {
        self.0.iter()
    }

    /// Keeps the repairs in an event's custom details, as `opssentinal_repairs` (nothing if none).
    pub fn keep_in(&self, details: &mut Map<String, Value>) {
        if !self.is_empty() {
            let what: Vec<&str> = self.0.iter().map(|repair| repair.what.as_str()).collect();
            details.insert("opssentinal_repairs".into(), json!(what));
        }
    }

    /// Counts each repair in `metric` (its source's `{source}_repairs_total`), labelled by kind.
    pub fn count(&self, metric: &'static str) {
        for repair in &self.0 {
            metrics::counter!(metric, "kind" => repair.kind).increment(1);
        }
    }
}

/// Why a lenient source refuses an event: its structural problems, which no repair can fix
/// (nothing says what to do, or which alert it is about), in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusal(Vec<Problem>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    /// The field as the sender names it (`routing_key`, `alerts[2].status`); `None`: the body.
    field: Option<String>,
    /// What is wrong, to follow the field's name.
    problem: String,
}

impl Refusal {
    /// A refusal for one problem with `field`.
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let mut refusal = Self::default();
        refusal.add(field, problem);
        refusal
    }

    /// A refusal for a problem with the body as a whole (`problem` reads on its own).
    pub fn body(problem: impl Into<String>) -> Self {
        Self(vec![Problem { field: None, problem: problem.into() }])
    }

    /// Adds a problem with `field`.
    pub fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(Problem { field: Some(field.into()), problem: problem.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each problem as a sentence: `'routing_key' is missing or blank` (PagerDuty's `errors`).
    pub fn messages(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| match &p.field {
                Some(field) => format!("'{field}' {}", p.problem),
                None => p.problem.clone(),
            })
            .collect()
    }
}

/// The first problem as our `400 VALIDATION_ERROR`, naming its field (`body` for the body).
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal.0.into_iter().next() {
            Some(Problem { field, problem }) => ApiError::validation(field.as_deref().unwrap_or("body"), problem),
            None => ApiError::validation("body", "is refused"),
        }
    }
}

/// `value` cut to `max` characters, the last one an ellipsis when anything was cut.
pub fn truncate(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        return value.to_owned();
    }
    let mut cut: String = value.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A severity as senders spell it: ours in any case, and the common synonyms (Alertmanager labels,
/// Opsgenie priorities); `None` for anything else.
pub fn severity(text: &str) -> Option<Severity> {
    match text.trim().to_ascii_lowercase().as_str() {
        "critical" | "page" | "fatal" | "emergency" | "p1" => Some(Severity::Critical),
        "error" | "major" | "high" | "p2" => Some(Severity::Error),
        "warning" | "warn" | "minor" | "p3" => Some(Severity::Warning),
        "info" | "informational" | "none" | "low" | "p4" | "p5" => Some(Severity::Info),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_are_kept_in_order_and_only_when_there_are_some() {
        let mut repairs = Repairs::default();
        let mut details = Map::new();
        repairs.nul_removed(0);
        repairs.keep_in(&mut details);
        assert!(repairs.is_empty() && details.is_empty());
        repairs.nul_removed(2);
        repairs.record("summary_missing", "summary missing");
        repairs.keep_in(&mut details);
        assert_eq!(
            details["opssentinal_repairs"],
            json!(["2 NUL characters removed (PostgreSQL stores none)", "summary missing"])
        );
        let kinds: Vec<_> = repairs.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, ["nul_removed", "summary_missing"]);
    }

    #[test]
    fn a_refusal_reads_as_sentences_or_as_our_validation_error() {
        let mut refusal = Refusal::body("the event must be a JSON object");
        refusal.add("routing_key", "is missing or blank");
        assert_eq!(refusal.messages(), ["the event must be a JSON object", "'routing_key' is missing or blank"]);
        let error = ApiError::from(Refusal::field("alerts[0].status", "\"pending\" is neither firing nor resolved"));
        assert_eq!(error.message, "alerts[0].status: \"pending\" is neither firing nor resolved");
        assert_eq!(error.details.unwrap()["field"], "alerts[0].status");
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo!", 5), "héll…");
        assert_eq!(truncate("héllo!", 5).chars().count(), 5);
    }

    #[test]
    fn severities_are_read_in_any_case_with_their_synonyms() {
        assert_eq!(severity(" Warning "), Some(Severity::Warning));
        assert_eq!(severity("PAGE"), Some(Severity::Critical));
        assert_eq!(severity("p2"), Some(Severity::Error));
        assert_eq!(severity("explode"), None);
    }
}
