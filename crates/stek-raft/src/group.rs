//! The group's numbers, which every peer must compute alike: a peer's Raft id from its name, the
//! founding voters of a `peers` table, and the digest of a voter set that fresh peers compare
//! before forming a group. Pure functions of names and tables, kept together because they are
//! an agreement between peers: a peer (of another stek version, say) that computed one of them
//! otherwise would not recognise the others' certificates as the same peers, or their proposal
//! as the same group.
//!
//! Also here, pure so that every branch is tested: the voter floor, which decides whether a
//! peer may be removed ([`may_remove`]).
//!
//! Not here: running the group, forming or joining it, or changing its membership
//! ([`peer`](crate::peer)).

use std::collections::{BTreeMap, BTreeSet};

use openraft::BasicNode;

/// The Raft id of a peer name: the first 8 bytes of its SHA-256. It depends on the name only,
/// so it stays the same whatever the `peers` tables hold as boxes are added and removed, and a
/// certificate's member name says which Raft id its holder speaks for.
pub fn raft_id(name: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b).max(1)
}

/// Raft ids for peer names (see [`raft_id`]).
pub fn raft_ids(peers: &BTreeMap<String, String>) -> BTreeMap<String, u64> {
    peers.keys().map(|n| (n.clone(), raft_id(n))).collect()
}

/// The most voters a group keeps; further peers join as non-voting learners.
pub const MAX_VOTERS: usize = 5;

/// The voters a fresh group of `peers` starts with: the first [`MAX_VOTERS`] by name.
pub(crate) fn founding_voters(peers: &BTreeMap<String, String>) -> BTreeMap<u64, BasicNode> {
    peers
        .iter()
        .take(MAX_VOTERS)
        .map(|(n, addr)| (raft_id(n), BasicNode { addr: addr.clone() }))
        .collect()
}

/// A digest of a voter set, to tell whether two peers propose (or run) the same group.
pub(crate) fn digest_of(voters: impl IntoIterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = voters.into_iter().collect();
    ids.sort_unstable();
    let text: Vec<String> = ids.iter().map(u64::to_string).collect();
    raft_id(&text.join(","))
}

/// The fewest voters a removal may leave without the operator's explicit say-so: three, or the
/// group's founding voters if it had fewer. A group of fewer than three voters loses its
/// majority with one box down; a group founded with one or two boxes was never stronger, and
/// keeps its own size.
pub const VOTER_FLOOR: usize = 3;

/// The voter floor of a group whose founding voters number `founders` (see [`VOTER_FLOOR`]);
/// never below one, the group's last voter.
pub fn voter_floor(founders: usize) -> usize {
    founders.clamp(1, VOTER_FLOOR)
}

/// What removing a peer does to the voters, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A learner: the voters stay as they are.
    Learner,
    /// A voter: these become the voters (the others, and a learner promoted in its place if
    /// there is one).
    Voter {
        /// The voters after the removal.
        next: BTreeSet<u64>,
    },
}

/// Why a peer is not removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovalRefused {
    /// It is neither a voter nor a learner.
    #[error("{name} is not a peer of the group")]
    NotAPeer {
        /// The peer named.
        name: String,
    },
    /// It is the only voter: the group would have none (no flag allows it).
    #[error("{name} is the group's last voter")]
    LastVoter {
        /// The peer named.
        name: String,
    },
    /// The voters left would be fewer than the floor, and the operator did not say otherwise.
    #[error(
        "removing voter {name} would leave {left} voter(s), below the group's floor of {floor} \
         (3, or its founding voters if fewer): with fewer than three voters one box down stops \
         the group. Add a peer first (stek peers add), or pass --below-voter-floor to remove \
         it anyway (an operator certificate)"
    )]
    BelowFloor {
        /// The peer named.
        name: String,
        /// The voters the removal would leave.
        left: usize,
        /// The floor ([`voter_floor`]).
        floor: usize,
    },
}

/// Whether the peer `removing` may be removed from a group of `voters` and `learners`, founded
/// with `founders` voters, and what the voters become: a removed voter is replaced by the first
/// learner if there is one; the last voter is never removed; a removal that leaves fewer voters
/// than [`voter_floor`] is refused unless `below_floor` (the operator's explicit flag).
pub fn may_remove(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    removing: &str,
    founders: usize,
    below_floor: bool,
) -> Result<Removal, RemovalRefused> {
    let id = raft_id(removing);
    let name = removing.to_owned();
    if learners.contains(&id) && !voters.contains(&id) {
        return Ok(Removal::Learner);
    }
    if !voters.contains(&id) {
        return Err(RemovalRefused::NotAPeer { name });
    }
    if voters.len() == 1 {
        return Err(RemovalRefused::LastVoter { name });
    }
    let mut next: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
    if let Some(l) = learners.iter().next() {
        next.insert(*l);
    }
    let floor = voter_floor(founders);
    if next.len() < floor && !below_floor {
        return Err(RemovalRefused::BelowFloor {
            name,
            left: next.len(),
            floor,
        });
    }
    Ok(Removal::Voter { next })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> BTreeSet<u64> {
        names.iter().map(|n| raft_id(n)).collect()
    }

    #[test]
    fn the_voter_floor_is_three_or_the_founders_if_fewer() {
        for (founders, floor) in [(0, 1), (1, 1), (2, 2), (3, 3), (4, 3), (5, 3), (9, 3)] {
            assert_eq!(voter_floor(founders), floor, "{founders} founders");
        }
    }

    /// Voters, learners, the peer removed, founders, the flag, and what comes of it.
    type Row = (
        &'static [&'static str],
        &'static [&'static str],
        &'static str,
        usize,
        bool,
        Result<Removal, RemovalRefused>,
    );

    /// Every branch of [`may_remove`]: (voters, learners, removing, founders, flag) and what
    /// comes of it.
    #[test]
    fn a_removal_keeps_the_voter_floor_unless_the_operator_says_otherwise() {
        use RemovalRefused::*;
        let voter = |next: &[&str]| Ok(Removal::Voter { next: ids(next) });
        let below = |name: &str, left, floor| {
            Err(BelowFloor {
                name: name.into(),
                left,
                floor,
            })
        };
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // A learner goes whatever the voters, flag or not.
            (&["a", "b", "c"], &["d"], "d", 3, false, Ok(Removal::Learner)),
            (&["a", "b"], &["d"], "d", 3, false, Ok(Removal::Learner)),
            // Not a peer; the last voter: refused, flag or not.
            (&["a", "b", "c"], &[], "x", 3, false, Err(NotAPeer { name: "x".into() })),
            (&["a", "b", "c"], &[], "x", 3, true, Err(NotAPeer { name: "x".into() })),
            (&["a"], &[], "a", 1, false, Err(LastVoter { name: "a".into() })),
            (&["a"], &[], "a", 1, true, Err(LastVoter { name: "a".into() })),
            (&["a"], &["d"], "a", 1, true, Err(LastVoter { name: "a".into() })),
            // Above the floor: 5 -> 4, 4 -> 3.
            (&["a", "b", "c", "d", "e"], &[], "a", 5, false, voter(&["b", "c", "d", "e"])),
            (&["a", "b", "c", "d"], &[], "a", 3, false, voter(&["b", "c", "d"])),
            // 3 -> 2 with 3 (or more) founders: refused, named; the flag lets it through.
            (&["a", "b", "c"], &[], "a", 3, false, below("a", 2, 3)),
            (&["a", "b", "c"], &[], "a", 5, false, below("a", 2, 3)),
            (&["a", "b", "c"], &[], "a", 3, true, voter(&["b", "c"])),
            (&["b", "c"], &[], "b", 3, false, below("b", 1, 3)),
            (&["b", "c"], &[], "b", 3, true, voter(&["c"])),
            // A learner promoted in the removed voter's place counts: 3 stay 3.
            (&["a", "b", "c"], &["d", "e"], "a", 3, false, voter(&["b", "c", "d"])),
            (&["a", "b"], &["d"], "a", 3, false, below("a", 2, 3)),
            // A group founded with two keeps two; with one, only the last-voter rule.
            (&["a", "b"], &[], "a", 2, false, below("a", 1, 2)),
            (&["a", "b"], &[], "a", 2, true, voter(&["b"])),
            (&["a", "b", "c"], &[], "a", 2, false, voter(&["b", "c"])),
            (&["a", "b"], &[], "a", 1, false, voter(&["b"])),
        ];
        for (voters, learners, removing, founders, flag, want) in table {
            let got = may_remove(&ids(voters), &ids(learners), removing, founders, flag);
            assert_eq!(
                got, want,
                "voters {voters:?}, learners {learners:?}, removing {removing}, {founders} founders, flag {flag}"
            );
        }
    }

    #[test]
    fn the_refusal_names_the_floor_the_voters_left_and_the_flag() {
        let e = may_remove(&ids(&["a", "b", "c"]), &ids(&[]), "a", 3, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "removing voter a would leave 2 voter(s), below the group's floor of 3 (3, or its \
             founding voters if fewer): with fewer than three voters one box down stops the \
             group. Add a peer first (stek peers add), or pass --below-voter-floor to remove it \
             anyway (an operator certificate)"
        );
    }
}
