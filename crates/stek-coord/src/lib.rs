//! stek's choice of coordination store: [`backend::Backend`], one type over etcd's backend
//! (stek-etcd), the embedded Raft group's client (stek-raft) and, for tests, the in-memory
//! store (stek-store's `memory`), picked from the config so that the CLI and the node connect
//! one way.

pub mod backend;
