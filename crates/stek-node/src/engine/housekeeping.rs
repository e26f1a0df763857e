//! The leader's housekeeping, pure: which dead members' records to remove, when to compact the
//! store's history after a write, and what a refused write means for the leadership.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stek_core::KeyRing;
use stek_store::{CoordError, Snapshot};

/// The members to forget now: seen dead (no liveness lease; refused members included) for
/// `after` without a break, by this leader. `dead_since` is this leadership's memory of since
/// when each member has been dead: a member seen live again, or gone from the store, leaves
/// it; a newly dead one enters it at `now`. The store removes a record only while no liveness
/// lease holds for it, so a member that comes back between this decision and the removal
/// keeps its record.
pub fn dead_to_forget(
    dead_since: &mut BTreeMap<String, Instant>,
    snap: &Snapshot,
    now: Instant,
    after: Duration,
) -> Vec<String> {
    let dead: Vec<&str> = snap
        .members
        .iter()
        .filter(|m| !m.live)
        .map(|m| m.record.node_id.as_str())
        .chain(
            snap.refused
                .iter()
                .filter(|r| !r.live)
                .map(|r| r.node_id.as_str()),
        )
        .collect();
    dead_since.retain(|id, _| dead.contains(&id.as_str()));
    let mut due = Vec::new();
    for id in dead {
        let since = *dead_since.entry(id.to_owned()).or_insert(now);
        if now.saturating_duration_since(since) >= after && !due.iter().any(|d| d == id) {
            due.push(id.to_owned());
        }
    }
    due
}

/// The epochs a write of `after` over `before` dropped, when the store's history must be
/// compacted up to that write (at `revision`) so that no old revision still holds their
/// sealed copies: with `compact_history`, after a write that dropped keys, or a re-key (new
/// keys with nothing before them, over a ring nobody could open). None: nothing to compact.
pub fn purge_after(
    before: Option<&KeyRing>,
    after: &KeyRing,
    compact_history: bool,
    revision: i64,
) -> Option<Vec<u64>> {
    let dropped: Vec<u64> = before
        .map(|b| {
            b.keys()
                .iter()
                .map(|k| k.epoch)
                .filter(|e| !after.keys().iter().any(|k| k.epoch == *e))
                .collect()
        })
        .unwrap_or_default();
    let rekeyed = before.is_none() && after.generation() > 1;
    (compact_history && (!dropped.is_empty() || rekeyed) && revision > 0).then_some(dropped)
}

/// What a leader's refused write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The store fenced the term: the leadership is gone.
    pub leadership_lost: bool,
    /// The next decision is made on a real read, not on what the watch carried.
    pub read_fresh: bool,
}

/// What a refused or failed leader write means ([`Refusal`]): every failure makes the next
/// decision read the store for real (the write may have landed, or the ring changed under
/// it); only a fence ends the leadership (a conflict is decided again on that fresh read).
pub fn after_failed_write(e: &CoordError) -> Refusal {
    Refusal {
        leadership_lost: matches!(e, CoordError::Fenced(_)),
        read_fresh: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use stek_core::{KeyHistory, OsKeySource, Policy};
    use stek_store::{Member, MemberRecord, Refused, Term};

    fn member(id: &str, live: bool) -> Member {
        Member {
            record: MemberRecord {
                node_id: id.into(),
                ..MemberRecord::default()
            },
            live,
        }
    }

    fn snap(members: &[(&str, bool)], refused: &[(&str, bool)]) -> Snapshot {
        Snapshot {
            revision: 1,
            leader: None,
            ring: stek_store::RingSlot::Absent,
            ring_revision: 0,
            members: members.iter().map(|(id, live)| member(id, *live)).collect(),
            requests: Vec::new(),
            unreadable_requests: Vec::new(),
            requested_by: Vec::new(),
            request_records: Vec::new(),
            rejected: Vec::new(),
            partial: false,
            refused: refused
                .iter()
                .map(|(id, live)| Refused {
                    node_id: (*id).into(),
                    live: *live,
                    reason: "its certificate does not verify".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_member_is_forgotten_after_being_dead_for_the_whole_interval_without_a_break() {
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let s = Duration::from_secs;
        let mut dead = BTreeMap::new();
        // (what, members, refused, at, forgotten); (id, live) per member.
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, bool)],
            &'a [(&'a str, bool)],
            Duration,
            &'a [&'a str],
        );
        let rows: &[Row<'_>] = &[
            (
                "first seen dead: remembered, not forgotten",
                &[("a", true), ("b", false)],
                &[("r", false)],
                s(0),
                &[],
            ),
            (
                "still dead, not long enough",
                &[("a", true), ("b", false)],
                &[("r", false)],
                s(59),
                &[],
            ),
            (
                "b came back: its clock restarts",
                &[("a", true), ("b", true)],
                &[("r", false)],
                s(60),
                &["r"],
            ),
            (
                "b dead again, counted from here",
                &[("a", true), ("b", false)],
                &[],
                s(61),
                &[],
            ),
            (
                "59 s later: not yet",
                &[("a", true), ("b", false)],
                &[],
                s(120),
                &[],
            ),
            (
                "60 s later: forgotten",
                &[("a", true), ("b", false)],
                &[],
                s(121),
                &["b"],
            ),
            (
                "a live member is never forgotten",
                &[("a", true)],
                &[],
                s(1000),
                &[],
            ),
        ];
        for (what, members, refused, at, want) in rows {
            let got = dead_to_forget(&mut dead, &snap(members, refused), t0 + *at, after);
            assert_eq!(got, *want, "{what}");
        }
        // The refused member r was forgotten at 60 s, but stays remembered until it is gone from
        // the store (the runtime removes an id once the store confirms or says it is gone).
        assert!(!dead.contains_key("a"));
    }

    #[test]
    fn a_member_dead_and_refused_at_once_is_forgotten_once() {
        let t0 = Instant::now();
        let mut dead = BTreeMap::new();
        let s = snap(&[("x", false)], &[("x", false)]);
        assert!(dead_to_forget(&mut dead, &s, t0, Duration::ZERO) == vec!["x".to_owned()]);
    }

    /// Three rings, each rotated from the one before (retain 1: the third drops the first's
    /// active key).
    fn rings() -> [KeyRing; 3] {
        let policy = Policy {
            interval: Duration::from_secs(3600),
            retain: 1,
        };
        let at = |h: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + h * 3600);
        let history = KeyHistory::new();
        let r1 = KeyRing::bootstrap(at(0), &policy, &mut OsKeySource, &history).unwrap();
        let r2 = r1
            .rotated(at(1), &policy, &mut OsKeySource, &history)
            .unwrap();
        let r3 = r2
            .rotated(at(2), &policy, &mut OsKeySource, &history)
            .unwrap();
        [r1, r2, r3]
    }

    #[test]
    fn the_history_is_compacted_after_a_key_drop_or_a_rekey_only() {
        let [r1, r2, r3] = rings();
        assert!(r1.generation() == 1 && r3.generation() > 1);
        // (what, before, after, compact_history, revision, compacts)
        type Row<'a> = (&'a str, Option<&'a KeyRing>, &'a KeyRing, bool, i64, bool);
        let rows: Vec<Row<'_>> = vec![
            (
                "a rotation that dropped a key",
                Some(&r2),
                &r3,
                true,
                7,
                true,
            ),
            ("the same keys (a reseal)", Some(&r3), &r3, true, 7, false),
            ("a bootstrap", None, &r1, true, 7, false),
            (
                "a re-key: new keys over a ring nobody opened",
                None,
                &r3,
                true,
                7,
                true,
            ),
            (
                "compaction off in the config",
                Some(&r2),
                &r3,
                false,
                7,
                false,
            ),
            ("a backend with no revision", Some(&r2), &r3, true, 0, false),
        ];
        for (what, before, after, compact, revision, want) in rows {
            assert_eq!(
                purge_after(before, after, compact, revision).is_some(),
                want,
                "{what}"
            );
        }
        let epochs = purge_after(Some(&r2), &r3, true, 7).unwrap();
        assert!(!epochs.is_empty());
        assert!(epochs
            .iter()
            .all(|e| r2.keys().iter().any(|k| k.epoch == *e)
                && !r3.keys().iter().any(|k| k.epoch == *e)));
    }

    #[test]
    fn only_a_fence_ends_the_leadership_and_every_failure_reads_fresh() {
        let rows = [
            (CoordError::Fenced(Term(3)), true),
            (CoordError::Conflict, false),
            (
                CoordError::Unreachable {
                    endpoints: "127.0.0.1:2379".into(),
                    reason: "connection refused".into(),
                },
                false,
            ),
        ];
        for (e, lost) in rows {
            let r = after_failed_write(&e);
            assert_eq!(r.leadership_lost, lost, "{e}");
            assert!(r.read_fresh, "{e}");
        }
    }
}
