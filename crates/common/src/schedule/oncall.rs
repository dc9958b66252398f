//! Who is on call: rotation layers handing off at local wall-clock time in the schedule's zone,
//! higher layers over lower ones, overrides over everything (DESIGN §7). Pure functions over
//! `jiff` time zones; the routes load schedules and call these.
//!
//! A layer's turns are anchored at its start's local date at the hand-off time: hand-off `k` is
//! that civil date-time plus `k` periods (1 day, 7 days, or `n` hours) of *civil* time, placed in
//! the zone (a hand-off inside a spring-forward gap is read with the offset before the gap, as
//! RFC 5545 and Temporal's "compatible" do: 02:30 on a day that skips 02:00–03:00 hands off at
//! 03:30; in a fall-back fold it takes the earlier instant). So a daily 09:00 hand-off stays at 09:00
//! local across daylight-saving changes, and that day's shift is 23 or 25 hours long. Turn `k`
//! belongs to user `k mod n` (turn -1 being a partial first shift when the layer starts before
//! its first hand-off).

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Daily,
    Weekly,
    /// A fixed number of hours (1 to 720).
    Hours(i64),
}

impl Rotation {
    /// The rotation as `schedule_layers` stores it: `daily`, `weekly`, or `hours` with a length.
    pub fn stored(kind: &str, hours: Option<i32>) -> Self {
        match kind {
            "daily" => Self::Daily,
            "weekly" => Self::Weekly,
            _ => Self::Hours(i64::from(hours.unwrap_or(24))),
        }
    }

    fn span(self, periods: i64) -> Span {
        match self {
            Self::Daily => Span::new().days(periods),
            Self::Weekly => Span::new().days(periods * 7),
            Self::Hours(n) => Span::new().hours(periods * n),
        }
    }

    fn seconds(self) -> i64 {
        match self {
            Self::Daily => 86_400,
            Self::Weekly => 7 * 86_400,
            Self::Hours(n) => n * 3600,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub id: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub rotation: Rotation,
    pub handoff: Time,
    pub users: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Override {
    pub id: String,
    pub user: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// A schedule ready to evaluate: layers in ascending precedence (last wins), overrides in
/// creation order (last wins where they overlap).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub zone: TimeZone,
    pub layers: Vec<Layer>,
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Layer(usize),
    Override(usize),
}

/// A final rendered shift: `user` is on call for `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub start: Timestamp,
    pub end: Timestamp,
    pub user: String,
    pub source: Source,
}

impl Layer {
    fn anchor(&self, zone: &TimeZone) -> DateTime {
        self.start.to_zoned(zone.clone()).date().to_datetime(self.handoff)
    }

    /// The instant of hand-off `k`.
    fn handoff_at(&self, zone: &TimeZone, anchor: DateTime, k: i64) -> Timestamp {
        anchor
            .checked_add(self.rotation.span(k))
            .and_then(|civil| civil.to_zoned(zone.clone()))
            .map(|zoned| zoned.timestamp())
            .unwrap_or(if k < 0 { Timestamp::MIN } else { Timestamp::MAX })
    }

    /// The turn in progress at `t`: the largest `k` with hand-off `k` at or before `t`.
    fn turn_at(&self, zone: &TimeZone, anchor: DateTime, t: Timestamp) -> i64 {
        let local = t.to_zoned(zone.clone()).datetime();
        let elapsed: SignedDuration = local.duration_since(anchor);
        let mut k = elapsed.as_secs().div_euclid(self.rotation.seconds());
        while self.handoff_at(zone, anchor, k + 1) <= t {
            k += 1;
        }
        while self.handoff_at(zone, anchor, k) > t {
            k -= 1;
        }
        k
    }

    fn user_of_turn(&self, k: i64) -> Option<&str> {
        let n = i64::try_from(self.users.len()).ok().filter(|n| *n > 0)?;
        self.users.get(usize::try_from(k.rem_euclid(n)).ok()?).map(String::as_str)
    }

    fn active_at(&self, t: Timestamp) -> bool {
        self.start <= t && self.end.is_none_or(|end| t < end)
    }

    /// Who this layer has on call at `t`, if anyone.
    pub fn user_at(&self, zone: &TimeZone, t: Timestamp) -> Option<&str> {
        if !self.active_at(t) {
            return None;
        }
        self.user_of_turn(self.turn_at(zone, self.anchor(zone), t))
    }

    /// Every instant in `(from, to)` at which this layer's on-call user may change.
    fn boundaries(&self, zone: &TimeZone, from: Timestamp, to: Timestamp, out: &mut Vec<Timestamp>) {
        let lo = from.max(self.start);
        let hi = self.end.map_or(to, |end| end.min(to));
        out.extend([self.start, self.end.unwrap_or(to)].into_iter().filter(|t| from < *t && *t < to));
        if lo >= hi {
            return;
        }
        let anchor = self.anchor(zone);
        let mut k = self.turn_at(zone, anchor, lo) + 1;
        loop {
            let at = self.handoff_at(zone, anchor, k);
            if at >= hi {
                break;
            }
            out.push(at);
            k += 1;
        }
    }
}

impl Schedule {
    /// Who is on call at `t` and why.
    pub fn who_at(&self, t: Timestamp) -> Option<(&str, Source)> {
        if let Some((i, o)) = self.overrides.iter().enumerate().rev().find(|(_, o)| o.start <= t && t < o.end) {
            return Some((o.user.as_str(), Source::Override(i)));
        }
        self.layers
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, layer)| layer.user_at(&self.zone, t).map(|user| (user, Source::Layer(i))))
    }

    /// The final shifts in `[from, to)`: contiguous where anyone is on call, never overlapping,
    /// adjacent intervals of the same person from the same source merged.
    pub fn shifts(&self, from: Timestamp, to: Timestamp) -> Vec<Shift> {
        let mut cuts = vec![from, to];
        for layer in &self.layers {
            layer.boundaries(&self.zone, from, to, &mut cuts);
        }
        for o in &self.overrides {
            cuts.extend([o.start, o.end].into_iter().filter(|t| from < *t && *t < to));
        }
        cuts.sort();
        cuts.dedup();
        let mut shifts: Vec<Shift> = Vec::new();
        for pair in cuts.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            let Some((user, source)) = self.who_at(start) else {
                continue;
            };
            match shifts.last_mut() {
                Some(last) if last.end == start && last.user == user && last.source == source => last.end = end,
                _ => shifts.push(Shift { start, end, user: user.to_owned(), source }),
            }
        }
        shifts
    }

    /// The shift in progress at `t`, looking `horizon` either side for its start and end.
    pub fn shift_at(&self, t: Timestamp, horizon: SignedDuration) -> Option<Shift> {
        let from = t.checked_sub(horizon).unwrap_or(Timestamp::MIN);
        let to = t.checked_add(horizon).unwrap_or(Timestamp::MAX);
        self.shifts(from, to).into_iter().find(|s| s.start <= t && t < s.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn layer(start: &str, rotation: Rotation, handoff: &str, users: &[&str]) -> Layer {
        Layer {
            id: "lay".into(),
            start: ts(start),
            end: None,
            rotation,
            handoff: handoff.parse().unwrap(),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    fn new_york(layers: Vec<Layer>) -> Schedule {
        Schedule { zone: TimeZone::get("America/New_York").unwrap(), layers, overrides: vec![] }
    }

    #[test]
    fn a_daily_handoff_stays_at_9am_local_across_spring_forward() {
        // 2026-03-08 02:00 EST becomes 03:00 EDT.
        let schedule = new_york(vec![layer("2026-03-01T14:00:00Z", Rotation::Daily, "09:00", &["ann", "bob"])]);
        let shifts = schedule.shifts(ts("2026-03-07T14:00:00Z"), ts("2026-03-09T13:00:00Z"));
        let spans: Vec<(String, String)> = shifts.iter().map(|s| (s.start.to_string(), s.end.to_string())).collect();
        assert_eq!(
            spans,
            [
                ("2026-03-07T14:00:00Z".into(), "2026-03-08T13:00:00Z".into()), // 09:00 EST → 09:00 EDT: 23 h
                ("2026-03-08T13:00:00Z".into(), "2026-03-09T13:00:00Z".into()),
            ]
        );
        assert_ne!(shifts[0].user, shifts[1].user);
    }

    #[test]
    fn a_daily_handoff_stays_at_9am_local_across_fall_back() {
        // 2026-11-01 02:00 EDT becomes 01:00 EST.
        let schedule = new_york(vec![layer("2026-10-01T13:00:00Z", Rotation::Daily, "09:00", &["ann", "bob"])]);
        let shifts = schedule.shifts(ts("2026-10-31T13:00:00Z"), ts("2026-11-02T14:00:00Z"));
        assert_eq!(shifts.len(), 2);
        assert_eq!((shifts[0].start, shifts[0].end), (ts("2026-10-31T13:00:00Z"), ts("2026-11-01T14:00:00Z"))); // 25 h
        assert_eq!((shifts[1].start, shifts[1].end), (ts("2026-11-01T14:00:00Z"), ts("2026-11-02T14:00:00Z")));
    }

    #[test]
    fn a_handoff_inside_the_spring_forward_gap_moves_past_it() {
        let schedule = new_york(vec![layer("2026-03-01T12:00:00Z", Rotation::Daily, "02:30", &["ann", "bob"])]);
        let boundaries: Vec<Timestamp> =
            schedule.shifts(ts("2026-03-07T12:00:00Z"), ts("2026-03-09T12:00:00Z")).iter().map(|s| s.start).collect();
        // 02:30 does not exist on 2026-03-08; the hand-off happens at 03:30 EDT (07:30Z).
        assert!(boundaries.contains(&ts("2026-03-08T07:30:00Z")), "{boundaries:?}");
    }

    #[test]
    fn higher_layers_and_overrides_win() {
        let mut schedule = new_york(vec![
            layer("2026-01-01T00:00:00Z", Rotation::Weekly, "09:00", &["base"]),
            Layer {
                end: Some(ts("2026-01-10T00:00:00Z")),
                ..layer("2026-01-09T00:00:00Z", Rotation::Hours(12), "00:00", &["night"])
            },
        ]);
        schedule.overrides.push(Override {
            id: "ovr".into(),
            user: "sub".into(),
            start: ts("2026-01-09T06:00:00Z"),
            end: ts("2026-01-09T07:00:00Z"),
        });
        assert_eq!(schedule.who_at(ts("2026-01-08T12:00:00Z")).unwrap().0, "base");
        assert_eq!(schedule.who_at(ts("2026-01-09T05:00:00Z")), Some(("night", Source::Layer(1))));
        assert_eq!(schedule.who_at(ts("2026-01-09T06:30:00Z")), Some(("sub", Source::Override(0))));
        assert_eq!(schedule.who_at(ts("2026-01-10T01:00:00Z")).unwrap().0, "base");
    }

    const ZONES: [&str; 5] = ["America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata", "UTC"];

    fn random_schedule(rng: &mut StdRng) -> Schedule {
        let base = ts("2026-01-01T00:00:00Z").as_second();
        let zone = TimeZone::get(ZONES[rng.random_range(0..ZONES.len())]).unwrap();
        let layers = (0..rng.random_range(1..4))
            .map(|i| {
                let start = Timestamp::from_second(base + rng.random_range(0..200 * 86_400)).unwrap();
                let end = rng
                    .random_bool(0.4)
                    .then(|| start.checked_add(SignedDuration::from_hours(rng.random_range(1..2000))).unwrap());
                let rotation = match rng.random_range(0..3) {
                    0 => Rotation::Daily,
                    1 => Rotation::Weekly,
                    _ => Rotation::Hours(rng.random_range(1..100)),
                };
                let handoff = Time::new(rng.random_range(0..24), [0, 15, 30][rng.random_range(0..3)], 0, 0).unwrap();
                let users = (0..rng.random_range(1..5)).map(|u| format!("u{i}{u}")).collect();
                Layer { id: format!("lay{i}"), start, end, rotation, handoff, users }
            })
            .collect();
        let overrides = (0..rng.random_range(0..4))
            .map(|i| {
                let start = Timestamp::from_second(base + rng.random_range(0..220 * 86_400)).unwrap();
                let end = start.checked_add(SignedDuration::from_hours(rng.random_range(1..72))).unwrap();
                Override { id: format!("ovr{i}"), user: format!("sub{i}"), start, end }
            })
            .collect();
        Schedule { zone, layers, overrides }
    }

    #[test]
    fn random_schedules_render_consistent_shifts() {
        let mut rng = StdRng::seed_from_u64(0x0c_a11);
        for case in 0..300 {
            let schedule = random_schedule(&mut rng);
            let from =
                Timestamp::from_second(ts("2026-01-01T00:00:00Z").as_second() + rng.random_range(0..230 * 86_400))
                    .unwrap();
            let to = from.checked_add(SignedDuration::from_hours(rng.random_range(1..24 * 40))).unwrap();
            let shifts = schedule.shifts(from, to);
            for pair in shifts.windows(2) {
                assert!(pair[0].end <= pair[1].start, "case {case}: overlapping shifts {pair:?}");
                if pair[0].end < pair[1].start {
                    // A gap: nobody is on call anywhere inside it.
                    let mid =
                        Timestamp::from_second((pair[0].end.as_second() + pair[1].start.as_second()) / 2).unwrap();
                    assert!(
                        schedule.who_at(pair[0].end).is_none(),
                        "case {case}: gap at {} but someone covers",
                        pair[0].end
                    );
                    assert!(schedule.who_at(mid).is_none(), "case {case}: gap at {mid} but someone covers");
                }
            }
            for shift in &shifts {
                assert!(shift.start < shift.end && from <= shift.start && shift.end <= to, "case {case}: {shift:?}");
                let at_start = schedule.who_at(shift.start).map(|(u, s)| (u.to_owned(), s));
                assert_eq!(
                    at_start,
                    Some((shift.user.clone(), shift.source)),
                    "case {case}: on-call at {} disagrees",
                    shift.start
                );
                let horizon = SignedDuration::from_hours(24 * 45);
                let containing = schedule.shift_at(shift.start, horizon).unwrap();
                assert_eq!(containing.user, shift.user, "case {case}");
            }
            for _ in 0..50 {
                let span = to.as_second() - from.as_second();
                let t = Timestamp::from_second(from.as_second() + rng.random_range(0..span)).unwrap();
                let rendered = shifts.iter().find(|s| s.start <= t && t < s.end).map(|s| s.user.as_str());
                assert_eq!(
                    rendered,
                    schedule.who_at(t).map(|(u, _)| u),
                    "case {case}: rendered shifts disagree at {t}"
                );
            }
            if let Some(first) = shifts.first() {
                assert!(first.start == from || schedule.who_at(from).is_none(), "case {case}: uncovered start");
            }
        }
    }
}
