//! What the escalation policy endpoints are sent and answer.

use common::fields::{Id, List, Name};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::Timestamp;
use crate::page::Pagination;

common::bounded_integer! {
    /// How many times the steps start over after the last one.
    pub struct Repeat(i32) { min: 0, max: 9, default: 0 }
}

common::bounded_integer! {
    /// Minutes a step waits for an acknowledgement before the next one fires.
    pub struct EscalateAfter(i32) { min: 1, max: 1440 }
}

/// Who a step notifies: a user, or whoever a schedule has on call when the step fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    User,
    Schedule,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: TargetType,
    pub id: Id,
}

/// A step's targets, notified together: 1 to 10.
pub type Targets = List<Target, 1, 10>;

/// A policy's steps, in order: 1 to 20.
pub type Steps = List<Step, 1, 20>;

/// A step: its targets and how long it waits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    pub escalate_after_minutes: EscalateAfter,
    #[schema(inline)]
    pub targets: Targets,
}

/// A policy as created or replaced (`PUT` takes the whole policy).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPolicy {
    pub name: Name,
    #[serde(default)]
    pub repeat: Repeat,
    /// 1 to 20 steps, in order.
    #[schema(inline)]
    pub steps: Steps,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub id: String,
    pub name: String,
    /// Rises by one on every `PUT`.
    pub version: i32,
    pub repeat: i32,
    #[schema(inline)]
    pub steps: Steps,
    /// The services that use it.
    pub service_ids: Vec<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBody {
    pub escalation_policy: Policy,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyList {
    pub escalation_policies: Vec<Policy>,
    pub total: i64,
    pub pagination: Pagination,
}
