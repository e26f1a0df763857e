//! The embedded coordinator: the peers form their own Raft group (openraft), its vote, log and
//! snapshots on disk in `[raft] data_dir` (sealed copies only, never a key).

mod authorize;
pub mod client;
pub mod group;
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
