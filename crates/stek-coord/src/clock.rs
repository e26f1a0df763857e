//! Clock sanity. The ring carries its writer's wall-clock stamps (when its schedule started,
//! when each key was made); every member's acknowledgement carries its own. Nothing here
//! reads a clock: callers pass `now`.
//!
//! - [`ring_ahead`]: how far a ring's stamps are in the future of `now`. A ring is written in
//!   the past, so anything above zero is how far at least its writer's clock is ahead of this
//!   one.
//! - [`writer_ahead_of_members`]: how far the writer's clock is ahead of the members that
//!   acknowledged its ring, from their acknowledgements' stamps (each made after the ring was
//!   written): the median, so one member's bad clock does not decide.
//!
//! A leader whose clock is measured more than [`CLOCK_BOUND`] ahead of its members stops
//! leading for [`CLOCK_COOLDOWN`]; the rotation decision never schedules further than two
//! intervals ahead ([`stek_core::Decision::Reschedule`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Member, StoredRing};

/// How far ahead of its members a leader's clock may be before it stops leading.
pub const CLOCK_BOUND: Duration = Duration::from_secs(60);

/// How long a leader measured too far ahead does not campaign.
pub const CLOCK_COOLDOWN: Duration = Duration::from_secs(600);

/// When the ring's schedule started (its last rotation, or its bootstrap), by its writer's
/// clock.
fn schedule_start(stored: &StoredRing) -> SystemTime {
    let next = stored.ring.next_rotation_at();
    next.checked_sub(stored.policy.interval).unwrap_or(next)
}

/// How far the ring's newest stamp (its schedule's start, its newest key) is in the future of
/// `now`; zero when none is.
pub fn ring_ahead(stored: &StoredRing, now: SystemTime) -> Duration {
    let newest_key = stored.ring.keys().iter().map(|k| k.created_at).max();
    [Some(schedule_start(stored)), newest_key]
        .into_iter()
        .flatten()
        .filter_map(|t| t.duration_since(now).ok())
        .max()
        .unwrap_or_default()
}

/// How far the ring's writer's clock is ahead of the live members (other than the writer)
/// that acknowledged exactly this ring, as the median of (schedule start - acknowledgement
/// stamp); `None` without such an acknowledgement, zero when the writer is not ahead.
pub fn writer_ahead_of_members(stored: &StoredRing, members: &[Member]) -> Option<Duration> {
    let start = schedule_start(stored);
    let mut ahead: Vec<Duration> = members
        .iter()
        .filter(|m| m.live && m.record.node_id != stored.written_by)
        .filter(|m| m.record.acknowledges(&stored.ring))
        .map(|m| {
            let acked = UNIX_EPOCH + Duration::from_millis(m.record.updated_at_ms);
            start.duration_since(acked).unwrap_or_default()
        })
        .collect();
    if ahead.is_empty() {
        return None;
    }
    ahead.sort();
    Some(ahead[(ahead.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemberRecord;
    use stek_core::{KeyRing, OsKeySource, Policy};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn acked(id: &str, stored: &StoredRing, when: SystemTime) -> Member {
        let ms = when.duration_since(UNIX_EPOCH).unwrap().as_millis();
        Member {
            record: MemberRecord {
                node_id: id.into(),
                version: String::new(),
                targets: Vec::new(),
                applied_generation: stored.ring.generation(),
                last_error: None,
                updated_at_ms: u64::try_from(ms).unwrap(),
                public_key: None,
                unsealable_generation: None,
                certificate: None,
                key_signature: None,
                applied_digest: Some(stored.ring.digest().to_string()),
            },
            live: true,
        }
    }

    fn written_at(t: SystemTime) -> StoredRing {
        let p = Policy {
            interval: Duration::from_secs(3600),
            retain: 1,
        };
        StoredRing::seal(
            "c",
            &KeyRing::bootstrap(t, &p, &mut OsKeySource),
            &p,
            "lead",
            &[],
        )
        .0
    }

    #[test]
    fn a_ring_from_a_fast_clock_is_ahead_of_this_one() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let fast = written_at(at(0) + year);
        assert_eq!(ring_ahead(&fast, at(0)), year);
        let sane = written_at(at(0));
        assert_eq!(ring_ahead(&sane, at(5)), Duration::ZERO);
    }

    #[test]
    fn a_writer_ahead_of_its_members_is_measured_by_the_median_ack() {
        let stored = written_at(at(1000));
        // Members acknowledged 1 s after the write by their clocks, except one whose clock is
        // far behind: the median is not moved by it.
        let members = vec![
            acked("a", &stored, at(1)),
            acked("b", &stored, at(2)),
            acked("c", &stored, at(0) - Duration::from_secs(50_000)),
        ];
        assert_eq!(
            writer_ahead_of_members(&stored, &members),
            Some(Duration::from_secs(999))
        );
        let in_step = vec![acked("a", &stored, at(1001)), acked("b", &stored, at(1002))];
        assert_eq!(
            writer_ahead_of_members(&stored, &in_step),
            Some(Duration::ZERO)
        );
        // The writer's own ack, dead members and acks of another ring do not count.
        let mut others = vec![acked("lead", &stored, at(0))];
        let mut dead = acked("d", &stored, at(0));
        dead.live = false;
        others.push(dead);
        let mut stale = acked("e", &stored, at(0));
        stale.record.applied_digest = Some(written_at(at(0)).ring.digest().to_string());
        others.push(stale);
        assert_eq!(writer_ahead_of_members(&stored, &others), None);
    }
}
