//! stek's coordination backends and the choice between them: the embedded Raft group's
//! ([`raft`]) and [`backend::Backend`], which picks etcd's (stek-etcd), the Raft group's or
//! (for tests) the in-memory store from the config.

pub mod backend;
pub mod raft;
