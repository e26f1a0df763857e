//! Clock sanity. The ring carries its writer's wall-clock stamps (when its schedule started,
//! when each key was made); every member's acknowledgement carries its own. Nothing here
//! reads a clock: callers pass `now`.
//!
//! - [`ring_ahead`]: how far a ring's newest key's stamp is in the future of `now`. A ring is
//!   written in the past, so anything above zero is how far at least its writer's clock is
//!   ahead of this one.
//! - [`writer_ahead_of_members`]: how far the writer's clock is ahead of the members, once
//!   every live member acknowledged its ring, from their acknowledgements' stamps (each made
//!   after the ring was written): the smallest offset, so a slow or lying member cannot make
//!   a healthy writer look ahead.
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

/// When the ring's newest key was made, by its writer's clock: the ring's own stamp. (Not the
/// schedule's start, `next_rotation_at - interval`: a shorter interval in a later policy would
/// put that in the future with every clock right.)
fn newest_stamp(stored: &StoredRing) -> Option<SystemTime> {
    stored.ring.keys().iter().map(|k| k.created_at).max()
}

/// How far the ring's newest key's stamp is in the future of `now`; zero when it is not.
pub fn ring_ahead(stored: &StoredRing, now: SystemTime) -> Duration {
    newest_stamp(stored)
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or_default()
}

/// How far the ring's writer's clock is ahead of the live members other than the writer, once
/// every one of them acknowledged exactly this ring: the smallest (newest key's stamp -
/// acknowledgement stamp) among them. `None` until then (or with no other live member).
///
/// The smallest: a writer whose clock is fast is ahead of every member, while a member can
/// only make its own figure larger (a slow clock, or a forged stamp: acknowledgements are
/// unsigned), so one member cannot make a healthy leader step down.
pub fn writer_ahead_of_members(stored: &StoredRing, members: &[Member]) -> Option<Duration> {
    let stamp = newest_stamp(stored)?;
    let others: Vec<&Member> = members
        .iter()
        .filter(|m| m.live && m.record.node_id != stored.written_by)
        .collect();
    if others.is_empty() || !others.iter().all(|m| m.record.acknowledges(&stored.ring)) {
        return None;
    }
    others
        .iter()
        .map(|m| {
            let acked = UNIX_EPOCH + Duration::from_millis(m.record.updated_at_ms);
            stamp.duration_since(acked).unwrap_or_default()
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemberRecord;
    use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};

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
                floor_generation: None,
                instance: None,
                floor_digest: None,
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
            &KeyRing::bootstrap(t, &p, &mut OsKeySource, &KeyHistory::new()).unwrap(),
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
    fn a_writer_ahead_of_every_member_is_measured_by_the_smallest_offset() {
        let stored = written_at(at(1000));
        // Members acknowledged by their clocks at 1 s, 2 s and (a slow clock, or a liar) far
        // earlier: the writer is at least 998 s ahead of all of them.
        let members = vec![
            acked("a", &stored, at(1)),
            acked("b", &stored, at(2)),
            acked("c", &stored, at(0) - Duration::from_secs(50_000)),
        ];
        assert_eq!(
            writer_ahead_of_members(&stored, &members),
            Some(Duration::from_secs(998))
        );
        // One lying (or slow) member cannot make a healthy writer look ahead.
        let healthy = written_at(at(0));
        let liar = vec![
            acked("a", &healthy, at(1)),
            acked("c", &healthy, at(0) - Duration::from_secs(50_000)),
        ];
        assert_eq!(
            writer_ahead_of_members(&healthy, &liar),
            Some(Duration::ZERO)
        );
        // Not judged until every live member acknowledged this ring.
        let mut waiting = members.clone();
        waiting[2].record.applied_digest = None;
        assert_eq!(writer_ahead_of_members(&stored, &waiting), None);
        // The writer's own ack and dead members do not count.
        let mut others = vec![acked("lead", &stored, at(0))];
        let mut dead = acked("d", &stored, at(0));
        dead.live = false;
        others.push(dead);
        assert_eq!(writer_ahead_of_members(&stored, &others), None);
    }
}
