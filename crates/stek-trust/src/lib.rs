//! stek's cluster trust: who a node or an operator is ([`identity`]: the cluster's own CA, the
//! certificates it issues, and [`identity::Trust`], which checks them), and the connection
//! guard every listener of a node shares ([`slots`]).
//!
//! Depends on no other crate of stek: the store, its backends and the node runtime build on it.

pub mod identity;
pub mod slots;
