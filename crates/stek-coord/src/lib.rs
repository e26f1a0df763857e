//! stek's coordination backends and the choice between them: etcd's ([`etcd`]), the embedded
//! Raft group's ([`raft`]), and [`backend::Backend`], which picks one from the config.

pub mod backend;
pub mod etcd;
pub mod raft;
