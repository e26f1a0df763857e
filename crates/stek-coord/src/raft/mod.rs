//! The embedded coordinator: the peers form their own Raft group (openraft), with the log and
//! state machine in memory only.

pub mod client;
pub mod net;
pub mod peer;
pub mod store;
pub mod tls;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// stek's Raft types.
    pub TypeConfig:
        D = store::Command,
        R = store::Applied,
);
