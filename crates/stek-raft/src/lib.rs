//! The embedded coordinator: the peers form their own Raft group (openraft), its vote, log and
//! snapshots on disk in `[raft] data_dir` (sealed copies only, never a key).

mod authorize;
pub mod client;
pub mod listener;
pub mod network;
pub mod peer;
pub mod store;
pub mod tls;
pub mod wire;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// stek's Raft types.
    pub TypeConfig:
        D = store::Command,
        R = store::Outcome,
);

/// The Raft id of a peer name: the first 8 bytes of its SHA-256. It depends on the name only,
/// so it stays the same whatever the `peers` tables hold as boxes are added and removed, and a
/// certificate's member name says which Raft id its holder speaks for.
pub fn raft_id(name: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b).max(1)
}
