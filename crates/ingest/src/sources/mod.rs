//! One module per alert source, each a pure `normalize`: the request as the source sends it in,
//! our events (or the reason it is refused) out. Routes in `crate::routes` do the HTTP around
//! them (authentication, limits, publishing): `events_api` (strict: refuses naming the field),
//! `pagerduty` and `alertmanager` (lenient: repair and record). They share the limits and NUL and
//! depth helpers of `common::event` and the text helpers here.

pub mod alertmanager;
pub mod events_api;
pub mod pagerduty;

use common::event::Severity;

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
