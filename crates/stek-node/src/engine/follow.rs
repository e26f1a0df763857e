//! Every member's own decisions on a pass, pure: whether to apply the ring it opened (and when
//! to try again after a failed apply), and whether the store needs its record again, in the
//! order a pass takes them ([`next`]).

use std::time::{Duration, Instant};

use stek_core::RingDigest;
use stek_store::{LeaseId, Member, MemberRecord};

/// The shortest and the longest wait before a failed apply is tried again.
pub const APPLY_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// See [`APPLY_BACKOFF_MIN`].
pub const APPLY_BACKOFF_MAX: Duration = Duration::from_secs(15);

/// When a failed apply is tried again: after a wait that doubles with every failure, from
/// [`APPLY_BACKOFF_MIN`] to [`APPLY_BACKOFF_MAX`], and starts again after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyRetry {
    /// When the next attempt is due (None: now).
    pub at: Option<Instant>,
    /// The wait after the next failure.
    pub backoff: Duration,
}

impl Default for ApplyRetry {
    fn default() -> Self {
        ApplyRetry {
            at: None,
            backoff: APPLY_BACKOFF_MIN,
        }
    }
}

impl ApplyRetry {
    /// Whether an apply may be tried at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.at.is_none_or(|t| now >= t)
    }

    /// An apply failed at `now`: the wait before the next one.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff;
        self.at = Some(now + wait);
        self.backoff = (wait * 2).min(APPLY_BACKOFF_MAX);
        wait
    }

    /// An apply succeeded.
    pub fn succeeded(&mut self) {
        *self = ApplyRetry::default();
    }
}

/// What a member's part of a pass has done so far: each step at most once a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    /// It tried to open its copy.
    pub open: bool,
    /// It tried to apply the ring.
    pub apply: bool,
    /// It wrote its record.
    pub record: bool,
}

/// A member's next step on a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Open its copy of the stored ring.
    Open,
    /// Apply the ring it opened to every target.
    Apply,
    /// Write its record.
    Record(OwnWrite),
}

/// What a member knows when it picks its next step. `C` is a sealed copy.
#[derive(Debug)]
pub struct Facts<'a, C> {
    /// The stored ring, if valid: its digest and this member's copy of it.
    pub stored: Option<(RingDigest, Option<&'a C>)>,
    /// The ring it opened last.
    pub opened: Option<RingDigest>,
    /// The ring it applied last.
    pub applied: Option<RingDigest>,
    /// The ring and the copy that did not open last.
    pub failed: Option<(RingDigest, Option<&'a C>)>,
    /// Whether a failed apply's wait is over.
    pub retry_due: bool,
    /// Its record as the store shows it.
    pub mine: Option<&'a Member>,
    /// Its record as it would write it now.
    pub want: &'a MemberRecord,
    /// Its liveness lease.
    pub lease: Option<LeaseId>,
    /// What the pass has done.
    pub done: Done,
}

/// A member's next step on a pass, in order: open its copy of a ring it has not opened
/// ([`should_open`]), apply the ring it opened ([`should_apply`]), then write its record if
/// the store needs it ([`own_record`]), each at most once a pass; `None`: nothing (more) to do.
/// A record is written after the apply, so that it acknowledges what the pass applied.
pub fn next<C: PartialEq>(f: &Facts<'_, C>) -> Option<Step> {
    if let Some((stored, copy)) = f.stored {
        if !f.done.open && should_open(f.opened, f.failed, stored, copy) {
            return Some(Step::Open);
        }
        if !f.done.apply && should_apply(f.opened, f.applied, stored, f.retry_due) {
            return Some(Step::Apply);
        }
    }
    if f.done.record {
        return None;
    }
    own_record(f.mine, f.want, f.lease).map(Step::Record)
}

/// Whether to apply the stored ring (`stored`, by its digest) now: this node opened that very
/// ring, has not applied it (a ring is known by its digest: another ring of the generation
/// applied, after a store rollback or a lost write, is applied too), and a failed apply's wait
/// is over.
pub fn should_apply(
    opened: Option<RingDigest>,
    applied: Option<RingDigest>,
    stored: RingDigest,
    retry_due: bool,
) -> bool {
    opened == Some(stored) && applied != Some(stored) && retry_due
}

/// Whether to try opening this node's copy of the stored ring (`stored`, with `copy`, the
/// copy the store holds for it): not when it opened that ring already, nor when the same copy
/// of it failed before (`failed`: the digest and the copy of the last failure). A new copy (the
/// leader sealed one for a member that joined, or replaced one that did not open) is tried.
pub fn should_open<C: PartialEq>(
    opened: Option<RingDigest>,
    failed: Option<(RingDigest, Option<&C>)>,
    stored: RingDigest,
    copy: Option<&C>,
) -> bool {
    opened != Some(stored) && failed != Some((stored, copy))
}

/// What `/readyz` says, from what this node applied and why it could not: ready once the
/// stored ring (`stored`: its generation and digest) is applied with no apply error; else why
/// not, the copy that did not open first.
pub fn readiness(
    applied: Option<(u64, RingDigest)>,
    stored: (u64, RingDigest),
    cannot_open: Option<String>,
    apply_error: Option<&str>,
) -> Result<String, String> {
    let applied_generation = applied.map_or(0, |(g, _)| g);
    if applied.map(|(_, d)| d) == Some(stored.1) && apply_error.is_none() {
        Ok(format!("applied generation {applied_generation}"))
    } else if let Some(why) = cannot_open {
        Err(why)
    } else if let Some(e) = apply_error {
        Err(format!("generation {} not applied: {e}", stored.0))
    } else {
        Err(format!(
            "applying generation {} (applied {applied_generation})",
            stored.0
        ))
    }
}

/// How the store gets this node's record again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnWrite {
    /// Registered again under its lease: the store shows it not live (or not at all).
    Register(LeaseId),
    /// Written as an acknowledgement.
    Ack,
}

/// Whether the store needs this node's record `want` written again, and how: when it holds
/// none, another one (its time stamp aside: that changes every pass), or shows it not live.
/// A member the store shows not live registers under its lease when it holds one.
pub fn own_record(
    stored: Option<&Member>,
    want: &MemberRecord,
    lease: Option<LeaseId>,
) -> Option<OwnWrite> {
    let stale = stored.is_none_or(|m| {
        let mut record = m.record.clone();
        record.updated_at_ms = want.updated_at_ms;
        record != *want || !m.live
    });
    if !stale {
        return None;
    }
    Some(match (stored.is_some_and(|m| m.live), lease) {
        (false, Some(lease)) => OwnWrite::Register(lease),
        _ => OwnWrite::Ack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};

    fn digests() -> (RingDigest, RingDigest) {
        let policy = Policy {
            interval: Duration::from_secs(3600),
            retain: 1,
        };
        let ring = || {
            KeyRing::bootstrap(
                std::time::SystemTime::now(),
                &policy,
                &mut OsKeySource,
                &KeyHistory::new(),
            )
            .unwrap()
            .digest()
        };
        (ring(), ring())
    }

    #[test]
    fn a_ring_is_applied_once_opened_not_yet_applied_and_not_waiting() {
        let (a, b) = digests();
        let rows = [
            ("opened, nothing applied", Some(a), None, true, true),
            ("opened, another ring applied", Some(a), Some(b), true, true),
            ("opened and applied already", Some(a), Some(a), true, false),
            ("not opened (no copy yet)", None, None, true, false),
            ("another ring opened", Some(b), None, true, false),
            (
                "a failed apply's wait is not over",
                Some(a),
                Some(b),
                false,
                false,
            ),
        ];
        for (what, opened, applied, due, want) in rows {
            assert_eq!(should_apply(opened, applied, a, due), want, "{what}");
        }
    }

    /// The member's steps on a pass, one row per situation: what comes next, in the order
    /// open, apply, record, each at most once a pass.
    #[test]
    fn a_pass_opens_then_applies_then_acknowledges_each_once() {
        let (a, b) = digests();
        let lease = LeaseId(7);
        let want = record(5, 2000);
        let live = Member {
            record: record(5, 1000),
            live: true,
        };
        let behind = Member {
            record: record(4, 1000),
            live: true,
        };
        let copy = 1u8;
        let new_copy = 2u8;
        let facts = |opened, applied, failed, mine, done| Facts {
            stored: Some((a, Some(&copy))),
            opened,
            applied,
            failed,
            retry_due: true,
            mine,
            want: &want,
            lease: Some(lease),
            done,
        };
        let none = Done::default();
        let opened = Done { open: true, ..none };
        let applied = Done {
            apply: true,
            ..opened
        };
        let recorded = Done {
            record: true,
            ..applied
        };
        let rows = [
            (
                "a new ring: open it",
                facts(Some(b), Some(b), None, Some(&live), none),
                Some(Step::Open),
            ),
            (
                "opened: apply it",
                facts(Some(a), Some(b), None, Some(&live), opened),
                Some(Step::Apply),
            ),
            (
                "applied, the store behind: acknowledge",
                facts(Some(a), Some(a), None, Some(&behind), applied),
                Some(Step::Record(OwnWrite::Ack)),
            ),
            (
                "acknowledged: done",
                facts(Some(a), Some(a), None, Some(&behind), recorded),
                None,
            ),
            (
                "its copy failed, the same copy: not again; the store needs nothing",
                facts(Some(b), Some(b), Some((a, Some(&copy))), Some(&live), none),
                None,
            ),
            (
                "its copy failed, a new copy came: open it",
                facts(
                    Some(b),
                    Some(b),
                    Some((a, Some(&new_copy))),
                    Some(&live),
                    none,
                ),
                Some(Step::Open),
            ),
            (
                "an open tried this pass is not tried again",
                facts(Some(b), Some(b), None, Some(&live), opened),
                None,
            ),
            (
                "an apply tried this pass is not tried again",
                facts(Some(a), Some(b), None, Some(&live), applied),
                None,
            ),
            (
                "nothing stored, not registered: register",
                Facts {
                    stored: None,
                    ..facts(None, None, None, None, none)
                },
                Some(Step::Record(OwnWrite::Register(lease))),
            ),
        ];
        for (what, f, expected) in rows {
            assert_eq!(next(&f), expected, "{what}");
        }
        let waiting = Facts {
            retry_due: false,
            ..facts(Some(a), Some(b), None, Some(&live), opened)
        };
        assert_eq!(next(&waiting), None, "a failed apply's wait is not over");
    }

    #[test]
    fn a_failed_apply_waits_twice_as_long_each_time_up_to_the_bound() {
        let t0 = Instant::now();
        let mut r = ApplyRetry::default();
        assert!(r.due(t0));
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(r.failed(t0).as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert!(!r.due(t0 + Duration::from_millis(14_999)));
        assert!(r.due(t0 + APPLY_BACKOFF_MAX));
        r.succeeded();
        assert_eq!(r, ApplyRetry::default());
        assert!(r.due(t0));
    }

    #[test]
    fn a_copy_is_opened_once_and_a_failed_one_not_again() {
        let (a, b) = digests();
        let (copy1, copy2) = ("copy 1", "copy 2");
        let rows = [
            ("nothing opened or failed", None, None, Some(&copy1), true),
            ("this ring opened", Some(a), None, Some(&copy1), false),
            ("another ring opened", Some(b), None, Some(&copy1), true),
            (
                "this copy failed",
                None,
                Some((a, Some(&copy1))),
                Some(&copy1),
                false,
            ),
            (
                "another copy of this ring failed",
                None,
                Some((a, Some(&copy2))),
                Some(&copy1),
                true,
            ),
            (
                "no copy, and no copy failed",
                None,
                Some((a, None)),
                None,
                false,
            ),
            (
                "a copy came after none",
                None,
                Some((a, None)),
                Some(&copy1),
                true,
            ),
            (
                "another ring failed",
                None,
                Some((b, Some(&copy1))),
                Some(&copy1),
                true,
            ),
        ];
        for (what, opened, failed, copy, want) in rows {
            assert_eq!(should_open(opened, failed, a, copy), want, "{what}");
        }
    }

    #[test]
    fn ready_once_the_stored_ring_is_applied_and_why_not_otherwise() {
        let (a, b) = digests();
        // (what, applied, why its copy does not open, apply error, readiness)
        type Row<'a> = (
            &'a str,
            Option<(u64, RingDigest)>,
            Option<&'a str>,
            Option<&'a str>,
            Result<&'a str, &'a str>,
        );
        let rows: [Row<'_>; 6] = [
            (
                "applied",
                Some((5, a)),
                None,
                None,
                Ok("applied generation 5"),
            ),
            (
                "applied, but an apply error since",
                Some((5, a)),
                None,
                Some("nginx -s reload failed"),
                Err("generation 5 not applied: nginx -s reload failed"),
            ),
            (
                "its copy does not open",
                Some((4, b)),
                Some("cannot open its copy"),
                Some("x"),
                Err("cannot open its copy"),
            ),
            (
                "an older ring applied, an error",
                Some((4, b)),
                None,
                Some("disk full"),
                Err("generation 5 not applied: disk full"),
            ),
            (
                "an older ring applied",
                Some((4, b)),
                None,
                None,
                Err("applying generation 5 (applied 4)"),
            ),
            (
                "nothing applied",
                None,
                None,
                None,
                Err("applying generation 5 (applied 0)"),
            ),
        ];
        for (what, applied, cannot_open, error, want) in rows {
            let got = readiness(applied, (5, a), cannot_open.map(str::to_owned), error);
            assert_eq!(got.as_deref().map_err(String::as_str), want, "{what}");
        }
    }

    fn record(generation: u64, at: u64) -> MemberRecord {
        MemberRecord {
            node_id: "n1".into(),
            applied_generation: generation,
            updated_at_ms: at,
            ..MemberRecord::default()
        }
    }

    #[test]
    fn the_record_is_written_again_only_when_the_store_lacks_it_or_shows_it_dead() {
        let lease = LeaseId(7);
        let want = record(5, 2000);
        let stored = |generation, live| Member {
            record: record(generation, 1000),
            live,
        };
        let rows = [
            (
                "none stored, a lease",
                None,
                Some(lease),
                Some(OwnWrite::Register(lease)),
            ),
            ("none stored, no lease", None, None, Some(OwnWrite::Ack)),
            (
                "the same, live (the time stamp aside)",
                Some(stored(5, true)),
                Some(lease),
                None,
            ),
            (
                "an older acknowledgement, live",
                Some(stored(4, true)),
                Some(lease),
                Some(OwnWrite::Ack),
            ),
            (
                "the same, not live",
                Some(stored(5, false)),
                Some(lease),
                Some(OwnWrite::Register(lease)),
            ),
            (
                "the same, not live, no lease",
                Some(stored(5, false)),
                None,
                Some(OwnWrite::Ack),
            ),
        ];
        for (what, stored, lease, write) in rows {
            assert_eq!(own_record(stored.as_ref(), &want, lease), write, "{what}");
        }
    }
}
