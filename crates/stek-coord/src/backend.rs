//! One type for whichever store a config names: the CLI and the node connect once, through
//! [`Backend`], instead of writing the same wiring for each backend.

use std::time::Duration;

use stek_etcd::{Etcd, EtcdWatch};
use stek_raft::client::{RaftClient, RaftWatch};
#[cfg(feature = "testing")]
use stek_store::memory::{Memory, MemoryWatch};
use stek_store::{
    Change, ChangeStream, CoordError, Coordinator, KeepAlive, LeaseId, MemberRecord, Snapshot,
    StoredRing, Term,
};

/// A coordination store of any kind.
#[derive(Debug, Clone)]
pub enum Backend {
    /// An etcd cluster (its client is large: boxed).
    Etcd(Box<Etcd>),
    /// The embedded Raft group (as a client of its peers).
    Raft(RaftClient),
    /// One process's memory (tests: feature `testing`).
    #[cfg(feature = "testing")]
    Memory(Memory),
}

/// A watch on a [`Backend`].
pub enum BackendWatch {
    /// etcd's.
    Etcd(Box<EtcdWatch>),
    /// The Raft group's.
    Raft(RaftWatch),
    /// The in-memory store's.
    #[cfg(feature = "testing")]
    Memory(MemoryWatch),
}

impl std::fmt::Debug for BackendWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Etcd(_) => "BackendWatch::Etcd",
            Self::Raft(_) => "BackendWatch::Raft",
            #[cfg(feature = "testing")]
            Self::Memory(_) => "BackendWatch::Memory",
        })
    }
}

impl ChangeStream for BackendWatch {
    fn snapshot(&self) -> Option<Snapshot> {
        match self {
            Self::Etcd(w) => w.snapshot(),
            Self::Raft(w) => w.snapshot(),
            #[cfg(feature = "testing")]
            Self::Memory(w) => w.snapshot(),
        }
    }

    async fn changed(&mut self) -> Result<Change, CoordError> {
        match self {
            Self::Etcd(w) => w.changed().await,
            Self::Raft(w) => w.changed().await,
            #[cfg(feature = "testing")]
            Self::Memory(w) => w.changed().await,
        }
    }

    async fn queued(&mut self) -> Option<Result<Change, CoordError>> {
        match self {
            Self::Etcd(w) => w.queued().await,
            Self::Raft(w) => w.queued().await,
            #[cfg(feature = "testing")]
            Self::Memory(w) => w.queued().await,
        }
    }
}

/// Calls `$call` on whichever store `$self` holds.
macro_rules! each {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Backend::Etcd($s) => $call,
            Backend::Raft($s) => $call,
            #[cfg(feature = "testing")]
            Backend::Memory($s) => $call,
        }
    };
}

impl Coordinator for Backend {
    type Watch = BackendWatch;

    async fn snapshot(&self) -> Result<Snapshot, CoordError> {
        each!(self, s => s.snapshot().await)
    }

    async fn snapshot_of_member(&self, node_id: &str) -> Result<Snapshot, CoordError> {
        each!(self, s => s.snapshot_of_member(node_id).await)
    }

    async fn member_counts(&self) -> Result<Option<stek_store::MemberCounts>, CoordError> {
        each!(self, s => s.member_counts().await)
    }

    async fn member_count(&self) -> Result<Option<usize>, CoordError> {
        each!(self, s => s.member_count().await)
    }

    async fn watch(&self, revision: i64) -> Result<BackendWatch, CoordError> {
        Ok(match self {
            Self::Etcd(s) => BackendWatch::Etcd(Box::new(s.watch(revision).await?)),
            Self::Raft(s) => BackendWatch::Raft(s.watch(revision).await?),
            #[cfg(feature = "testing")]
            Self::Memory(s) => BackendWatch::Memory(s.watch(revision).await?),
        })
    }

    async fn watch_member(&self, revision: i64, node_id: &str) -> Result<BackendWatch, CoordError> {
        Ok(match self {
            Self::Etcd(s) => BackendWatch::Etcd(Box::new(s.watch_member(revision, node_id).await?)),
            Self::Raft(s) => BackendWatch::Raft(s.watch_member(revision, node_id).await?),
            #[cfg(feature = "testing")]
            Self::Memory(s) => BackendWatch::Memory(s.watch_member(revision, node_id).await?),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        each!(self, s => s.grant_lease(ttl).await)
    }

    async fn keep_alive(&self, lease: LeaseId, ttl: Duration) -> Result<KeepAlive, CoordError> {
        each!(self, s => s.keep_alive(lease, ttl).await)
    }

    async fn register(&self, lease: LeaseId, member: &MemberRecord) -> Result<(), CoordError> {
        each!(self, s => s.register(lease, member).await)
    }

    async fn ack(&self, member: &MemberRecord) -> Result<(), CoordError> {
        each!(self, s => s.ack(member).await)
    }

    async fn campaign(&self, lease: LeaseId, node_id: &str) -> Result<Option<Term>, CoordError> {
        each!(self, s => s.campaign(lease, node_id).await)
    }

    async fn write_ring(
        &self,
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> Result<i64, CoordError> {
        each!(self, s => s.write_ring(term, ring_revision, ring, served_requests).await)
    }

    async fn write_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        each!(self, s => s.write_copies(term, ring_revision, copies).await)
    }

    async fn forget_member(&self, term: Term, node_id: &str) -> Result<bool, CoordError> {
        each!(self, s => s.forget_member(term, node_id).await)
    }

    async fn purge_history(&self, revision: i64) -> Result<bool, CoordError> {
        each!(self, s => s.purge_history(revision).await)
    }

    async fn resign(&self, term: Term) -> Result<(), CoordError> {
        each!(self, s => s.resign(term).await)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        each!(self, s => s.revoke(lease).await)
    }

    async fn request_rotation(
        &self,
        by: &str,
        signer: Option<&stek_trust::identity::Credentials>,
    ) -> Result<String, CoordError> {
        each!(self, s => s.request_rotation(by, signer).await)
    }
}
