//! The rollback floor, pure: which stored ring a node may accept, given the newest ring it
//! accepted before (kept in its state directory across restarts of the process, gone with a
//! reboot) and who leads now.
//!
//! A replayed or restored older ring carries a valid signature, so signatures alone do not
//! stop it: the floor does. And a signed ring says which member wrote it and in which
//! leadership term; a ring is accepted only from the member that held the leadership in that
//! term, as far as the node can tell (the current leadership, and the term and writer of the
//! ring it accepted last). What the node cannot tell (a term that began and ended while it was
//! away) it takes on the ring's signature alone.

use stek_core::RingDigest;
use stek_store::seal::MemberKeyId;
use stek_store::{Leader, RecordError, StoredRing};

/// The largest step a ring's generation may take above the newest one this node accepted: a
/// signed ring numbered near u64::MAX (a compromised member's) would stop every later write.
pub const MAX_GENERATION_STEP: u64 = 1_000_000;

/// The newest ring a node accepted: written to its state directory before the ring is
/// applied, read before the first store read after a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The ring's generation.
    pub generation: u64,
    /// The ring's digest: another ring of the same generation is refused.
    pub digest: RingDigest,
    /// The leadership term the ring was written in.
    pub term: i64,
    /// The member that wrote it.
    pub writer: String,
    /// The ring's last epoch: new keys made after a store restore number their epochs above it.
    pub last_epoch: u64,
    /// The sealing key that opened this node's copy of it (the ratchet's `current`).
    pub key: MemberKeyId,
    /// The key `current` was before this floor was set, to be erased: written with the floor
    /// so that a start after a kill between the two erases it, never announces it again.
    pub retire: Option<MemberKeyId>,
}

impl Floor {
    /// The floor a stored ring sets once this node opened it with `key`.
    pub fn of(stored: &StoredRing, key: MemberKeyId) -> Self {
        Self {
            generation: stored.ring.generation(),
            digest: stored.ring.digest(),
            term: stored.term,
            writer: stored.written_by.clone(),
            last_epoch: stored.ring.last_epoch(),
            key,
            retire: None,
        }
    }

    /// Whether `stored` is the ring this floor was set by.
    pub fn is(&self, stored: &StoredRing) -> bool {
        self.generation == stored.ring.generation() && self.digest == stored.ring.digest()
    }
}

/// Whether this node may accept `stored`, with `seen` the newest generation it saw valid since
/// it started (an unopened ring included), `floor` the newest ring it accepted (kept across
/// restarts) and `leader` the leadership the same read shows. Pure.
///
/// Refused: a ring below either (a replay or a restored backup: I10); another ring of the
/// floor's generation (I11); a generation that jumps more than [`MAX_GENERATION_STEP`]; a
/// ring signed for the current term by another member than its leader, or for a term after
/// it; and, unless the current leader wrote it in its own term, a ring from a term older than
/// the floor's, or from the floor's term by another writer. The floor's own ring (read again
/// after a restart, or put back by a leader) passes whatever the terms; so does any ring once
/// the current leadership's term is below the floor's: a store restored from a backup numbers
/// its revisions, and so its terms, again, and terms then tell nothing.
pub fn admit(
    seen: u64,
    floor: Option<&Floor>,
    leader: Option<&Leader>,
    stored: &StoredRing,
) -> Result<(), RecordError> {
    let generation = stored.ring.generation();
    let newest = seen.max(floor.map_or(0, |f| f.generation));
    if generation < newest {
        return Err(RecordError::Rollback {
            got: generation,
            seen: newest,
        });
    }
    if newest > 0 && generation - newest > MAX_GENERATION_STEP {
        return Err(RecordError::Policy(format!(
            "generation {generation} jumps more than {MAX_GENERATION_STEP} above generation {newest}, the newest this node has seen; never applied"
        )));
    }
    if let Some(f) = floor.filter(|f| f.generation == generation && !f.is(stored)) {
        return Err(RecordError::Aliased {
            generation,
            accepted: f.digest.to_string(),
        });
    }
    if floor.is_some_and(|f| f.is(stored)) {
        return Ok(());
    }
    let (term, writer) = (stored.term, stored.written_by.as_str());
    if let Some(l) = leader {
        if l.term.0 == term {
            // The current leader, in its own term: whatever the floor says of older terms.
            return if l.node_id == writer {
                Ok(())
            } else {
                Err(RecordError::NotTheLeader {
                    writer: writer.to_owned(),
                    term,
                    leader: l.node_id.clone(),
                })
            };
        }
        if floor.is_some_and(|f| f.term > l.term.0) {
            // Terms were numbered again (a restored store): they tell nothing any more.
            return Ok(());
        }
        if term > l.term.0 {
            return Err(RecordError::FutureTerm {
                term,
                leader_term: l.term.0,
            });
        }
    }
    match floor {
        Some(f) if term < f.term => Err(RecordError::StaleTerm {
            term,
            floor: f.term,
        }),
        Some(f) if term == f.term && writer != f.writer => Err(RecordError::NotTheLeader {
            writer: writer.to_owned(),
            term,
            leader: f.writer.clone(),
        }),
        _ => Ok(()),
    }
}

/// A sealed ring of `generation` (a fresh bootstrap, renumbered), written by `writer` in
/// `term`, with no copy: for the engine's and the state directory's tests.
#[cfg(test)]
pub(crate) fn test_ring(generation: u64, term: i64, writer: &str) -> StoredRing {
    let p = stek_core::Policy {
        interval: std::time::Duration::from_secs(60),
        retain: 1,
    };
    let ring = stek_core::KeyRing::bootstrap(
        std::time::SystemTime::UNIX_EPOCH,
        &p,
        &mut stek_core::OsKeySource,
        &stek_core::KeyHistory::new(),
    )
    .expect("the OS random source gives keys")
    .renumbered(generation);
    let mut s = StoredRing::seal("c", &ring, &p, writer, &[]).0;
    s.term = term;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_store::{LeaseId, Term};

    fn stored(generation: u64, term: i64, writer: &str) -> StoredRing {
        test_ring(generation, term, writer)
    }

    fn leader(id: &str, term: i64) -> Leader {
        Leader {
            node_id: id.into(),
            term: Term(term),
            lease: LeaseId(1),
        }
    }

    fn key() -> MemberKeyId {
        stek_store::seal::Identity::generate().public().id()
    }

    /// One row per rule: what the node saw, its floor, the leadership, the ring; accepted or
    /// the refusal expected.
    #[test]
    fn each_rule_of_the_floor_admits_or_refuses_as_it_says() {
        let floor_ring = stored(10, 100, "n1");
        let floor = Floor::of(&floor_ring, key());
        let other_of_10 = stored(10, 100, "n1");
        type Expect = fn(&Result<(), RecordError>) -> bool;
        let ok: Expect = |r| r.is_ok();
        type Row<'a> = (
            &'a str,
            u64,
            Option<&'a Floor>,
            Option<Leader>,
            StoredRing,
            Expect,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "no floor, no leader: a valid ring",
                0,
                None,
                None,
                stored(3, 5, "n2"),
                ok,
            ),
            (
                "the floor's own ring again (a restart)",
                0,
                Some(&floor),
                None,
                floor_ring.clone(),
                ok,
            ),
            (
                "a newer ring by the current leader in its term",
                0,
                Some(&floor),
                Some(leader("n2", 200)),
                stored(11, 200, "n2"),
                ok,
            ),
            (
                "a newer ring of an earlier leader, now gone",
                0,
                Some(&floor),
                Some(leader("n3", 300)),
                stored(11, 200, "n2"),
                ok,
            ),
            (
                "the floor's writer, same term, newer",
                0,
                Some(&floor),
                None,
                stored(11, 100, "n1"),
                ok,
            ),
            (
                "a restored store: terms numbered again, the leader's own ring",
                0,
                Some(&floor),
                Some(leader("n2", 7)),
                stored(12, 7, "n2"),
                ok,
            ),
            (
                "below the floor (a replay, a restore)",
                0,
                Some(&floor),
                None,
                stored(9, 100, "n1"),
                |r| matches!(r, Err(RecordError::Rollback { got: 9, seen: 10 })),
            ),
            (
                "below a ring seen since start",
                12,
                Some(&floor),
                None,
                stored(11, 100, "n1"),
                |r| matches!(r, Err(RecordError::Rollback { got: 11, seen: 12 })),
            ),
            (
                "another ring of the floor's generation",
                0,
                Some(&floor),
                None,
                other_of_10,
                |r| matches!(r, Err(RecordError::Aliased { generation: 10, .. })),
            ),
            (
                "a jump past the bound",
                10,
                None,
                None,
                stored(10 + MAX_GENERATION_STEP + 1, 100, "n1"),
                |r| matches!(r, Err(RecordError::Policy(_))),
            ),
            (
                "signed for the current term by a member that does not lead",
                0,
                Some(&floor),
                Some(leader("n2", 200)),
                stored(11, 200, "n3"),
                |r| matches!(r, Err(RecordError::NotTheLeader { .. })),
            ),
            (
                "signed for a term after the current leadership's",
                0,
                Some(&floor),
                Some(leader("n2", 200)),
                stored(11, 900, "n3"),
                |r| {
                    matches!(
                        r,
                        Err(RecordError::FutureTerm {
                            term: 900,
                            leader_term: 200
                        })
                    )
                },
            ),
            (
                "a term older than the floor's",
                0,
                Some(&floor),
                None,
                stored(11, 50, "n1"),
                |r| {
                    matches!(
                        r,
                        Err(RecordError::StaleTerm {
                            term: 50,
                            floor: 100
                        })
                    )
                },
            ),
            (
                "the floor's term, another writer",
                0,
                Some(&floor),
                None,
                stored(11, 100, "n3"),
                |r| matches!(r, Err(RecordError::NotTheLeader { .. })),
            ),
            (
                "an older term with a leader of another term shown",
                0,
                Some(&floor),
                Some(leader("n2", 200)),
                stored(11, 50, "n1"),
                |r| matches!(r, Err(RecordError::StaleTerm { .. })),
            ),
            (
                "the floor's ring put back under a leader of a lower term (a restored store)",
                0,
                Some(&floor),
                Some(leader("n2", 7)),
                floor_ring.clone(),
                ok,
            ),
            (
                "terms numbered again: a leader's term below the floor's says so",
                0,
                Some(&floor),
                Some(leader("n2", 7)),
                stored(12, 5, "n3"),
                ok,
            ),
        ];
        for (what, seen, floor, leader, ring, expect) in rows {
            let got = admit(seen, floor, leader.as_ref(), &ring);
            assert!(expect(&got), "{what}: {got:?}");
        }
    }

    #[test]
    fn a_floor_is_its_own_ring_only() {
        let a = stored(4, 1, "n1");
        let f = Floor::of(&a, key());
        assert!(f.is(&a));
        assert!(!f.is(&stored(4, 1, "n1")), "same generation, other keys");
        assert_eq!(f.last_epoch, a.ring.last_epoch());
    }
}
