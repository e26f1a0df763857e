//! The group's numbers, which every peer must compute alike: a peer's Raft id from its name, the
//! founding voters of a `peers` table, and the digest of a voter set that fresh peers compare
//! before forming a group. Pure functions of names and tables, kept together because they are
//! an agreement between peers: a peer (of another stek version, say) that computed one of them
//! otherwise would not recognise the others' certificates as the same peers, or their proposal
//! as the same group.
//!
//! Not here: running the group, forming or joining it, or changing its membership
//! ([`peer`](crate::peer)).

use std::collections::BTreeMap;

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
