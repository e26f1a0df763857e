//! The leader's rate limits, pure: what it remembers of its own recent writes (on the runtime's
//! monotonic clock, passed in), and whether each kind of write may be made again.
//!
//! - a reseal (a member lacks a copy) or one more sealed copy: at most one a second, so that a
//!   member whose copy keeps failing cannot make the leader write in a loop;
//! - new keys because a member's floor is ahead of the stored ring: at most one a minute;
//! - a rotation for a request: at most one per `min_request_interval`, so that a flood of
//!   requests cannot burn through keys (they wait and are served together; the schedule is not
//!   affected).

use std::time::{Duration, Instant, SystemTime};

use stek_core::rotation::RotateReason;
use stek_core::Decision;

use super::{Step, Why};

/// At most one reseal (or batch of sealed copies) this often.
pub const RESEAL_REST: Duration = Duration::from_secs(1);
/// At most one re-key this often because a member's floor is ahead of the stored ring.
pub const REKEY_REST: Duration = Duration::from_secs(60);

/// When this leader last made each rate-limited kind of write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    /// Its last reseal or batch of sealed copies.
    pub last_reseal: Option<Instant>,
    /// Its last re-key for a member's floor.
    pub last_rekey: Option<Instant>,
    /// Its last rotation for a request.
    pub last_requested_rotation: Option<Instant>,
}

impl Pace {
    /// Whether a reseal may be written at `now`.
    pub fn reseal_rested(&self, now: Instant) -> bool {
        rested(self.last_reseal, now, RESEAL_REST)
    }

    /// Whether new keys may be made at `now` for a member's floor.
    pub fn rekey_rested(&self, now: Instant) -> bool {
        rested(self.last_rekey, now, REKEY_REST)
    }

    /// When pending requests may rotate, on the wall clock (`wall` is the wall clock at `now`).
    pub fn requests_due(
        &self,
        wall: SystemTime,
        now: Instant,
        min_interval: Duration,
    ) -> SystemTime {
        match self.last_requested_rotation {
            Some(t) => wall + min_interval.saturating_sub(now.saturating_duration_since(t)),
            None => wall,
        }
    }

    /// The runtime is about to perform `step` at `now`: a reseal or a re-key counts from its
    /// attempt, landed or not (a write that keeps failing is not retried faster).
    pub fn performing(&mut self, step: &Step, now: Instant) {
        match step {
            Step::SealCopies { .. }
            | Step::Write {
                why: Why::Reseal(_),
                ..
            } => self.last_reseal = Some(now),
            Step::Write {
                why: Why::Rekey, ..
            } => self.last_rekey = Some(now),
            _ => {}
        }
    }

    /// A write for `why` landed at `now`: a rotation for a request counts from there.
    pub fn written(&mut self, why: &Why, now: Instant) {
        if matches!(
            why,
            Why::Decision(Decision::Rotate(RotateReason::Requested))
        ) {
            self.last_requested_rotation = Some(now);
        }
    }
}

fn rested(last: Option<Instant>, now: Instant, rest: Duration) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_core::KeyRing;

    fn ring() -> KeyRing {
        let policy = stek_core::Policy {
            interval: Duration::from_secs(3600),
            retain: 1,
        };
        KeyRing::bootstrap(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            &policy,
            &mut stek_core::OsKeySource,
            &stek_core::KeyHistory::new(),
        )
        .unwrap()
    }

    fn write(why: Why) -> Step {
        Step::Write {
            ring: ring(),
            served: Vec::new(),
            why,
            before: None,
        }
    }

    #[test]
    fn each_step_counts_for_its_own_limit_only() {
        let t0 = Instant::now();
        let rows: Vec<(&str, Step, Pace)> = vec![
            (
                "sealed copies",
                Step::SealCopies {
                    members: vec!["n2".into()],
                },
                Pace {
                    last_reseal: Some(t0),
                    ..Pace::default()
                },
            ),
            (
                "a reseal",
                write(Why::Reseal(vec!["n2".into()])),
                Pace {
                    last_reseal: Some(t0),
                    ..Pace::default()
                },
            ),
            (
                "a re-key",
                write(Why::Rekey),
                Pace {
                    last_rekey: Some(t0),
                    ..Pace::default()
                },
            ),
            (
                "a scheduled rotation",
                write(Why::Decision(Decision::Rotate(RotateReason::Scheduled))),
                Pace::default(),
            ),
            (
                "a write-back",
                write(Why::WriteBack("the ring record is missing".into())),
                Pace::default(),
            ),
            (
                "a hand-over",
                Step::HandOver {
                    to: "n2".into(),
                    why: "n2 holds keys".into(),
                },
                Pace::default(),
            ),
        ];
        for (what, step, want) in rows {
            let mut p = Pace::default();
            p.performing(&step, t0);
            assert_eq!(p, want, "{what}");
        }
    }

    #[test]
    fn only_a_rotation_for_a_request_that_landed_starts_the_request_interval() {
        let t0 = Instant::now();
        let rows = [
            (
                Why::Decision(Decision::Rotate(RotateReason::Requested)),
                true,
            ),
            (
                Why::Decision(Decision::Rotate(RotateReason::Scheduled)),
                false,
            ),
            (Why::Decision(Decision::Bootstrap), false),
            (Why::Rekey, false),
        ];
        for (why, counts) in rows {
            let mut p = Pace::default();
            p.written(&why, t0);
            assert_eq!(p.last_requested_rotation.is_some(), counts, "{why:?}");
        }
    }

    #[test]
    fn limits_rest_for_their_interval_from_the_last_attempt() {
        let t0 = Instant::now();
        let p = Pace {
            last_reseal: Some(t0),
            last_rekey: Some(t0),
            last_requested_rotation: Some(t0),
        };
        let rows = [
            (Duration::ZERO, false, false),
            (Duration::from_millis(999), false, false),
            (RESEAL_REST, true, false),
            (Duration::from_secs(59), true, false),
            (REKEY_REST, true, true),
        ];
        for (after, reseal, rekey) in rows {
            assert_eq!(
                p.reseal_rested(t0 + after),
                reseal,
                "reseal after {after:?}"
            );
            assert_eq!(p.rekey_rested(t0 + after), rekey, "rekey after {after:?}");
        }
        assert!(Pace::default().reseal_rested(t0) && Pace::default().rekey_rested(t0));
    }

    #[test]
    fn requests_wait_out_the_rest_of_the_interval_on_the_wall_clock() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let min = Duration::from_secs(60);
        assert_eq!(
            Pace::default().requests_due(wall, t0, min),
            wall,
            "none yet"
        );
        let p = Pace {
            last_requested_rotation: Some(t0),
            ..Pace::default()
        };
        let s = Duration::from_secs;
        assert_eq!(p.requests_due(wall, t0 + s(10), min), wall + s(50));
        assert_eq!(p.requests_due(wall, t0 + s(60), min), wall);
        assert_eq!(p.requests_due(wall, t0 + s(600), min), wall);
        assert_eq!(p.requests_due(wall, t0, Duration::ZERO), wall);
    }
}
