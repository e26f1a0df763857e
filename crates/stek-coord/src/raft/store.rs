//! The embedded coordinator's replicated state and its in-memory Raft storage (log, vote,
//! state machine, snapshots). Nothing here touches a disk: key bytes live only in memory, and a
//! peer that restarts comes back empty and catches up from the others.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogState, RaftLogReader, RaftSnapshotBuilder, RaftStorage, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use super::TypeConfig;

/// A change to the replicated state. These reproduce the etcd backend's semantics (leases,
/// lease-bound liveness and leadership, writes fenced on the leader's term) on the Raft log.
#[derive(Clone, Serialize, Deserialize)]
pub enum Command {
    /// Creates a lease.
    Grant {
        /// Its id (chosen by the client).
        lease: i64,
        /// Its time to live.
        ttl_ms: u64,
    },
    /// Ends a lease: its member is no longer live, and a leadership under it ends.
    Revoke {
        /// The lease.
        lease: i64,
    },
    /// Marks `node_id` live under `lease` and stores its record.
    Register {
        /// The lease.
        lease: i64,
        /// The node.
        node_id: String,
        /// Its encoded record.
        value: Vec<u8>,
    },
    /// A member's record (its acknowledgement).
    PutMember {
        /// The node id.
        node_id: String,
        /// The encoded member record.
        value: Vec<u8>,
    },
    /// Takes the leadership if nobody holds it.
    Campaign {
        /// The lease it is bound to.
        lease: i64,
        /// The node.
        node_id: String,
    },
    /// Gives up the leadership held in `term`.
    Resign {
        /// The term.
        term: u64,
    },
    /// The leader's ring write, fenced on its term; a ring must also be newer than the one it
    /// replaces, so two decisions from the same state can never both land.
    WriteRing {
        /// The writer's term.
        term: u64,
        /// The encoded ring record.
        value: Vec<u8>,
        /// Rotation requests the write serves (deleted with it).
        served: Vec<String>,
    },
    /// A rotation request.
    PutRequest {
        /// The request's key.
        key: String,
        /// The encoded request record.
        value: Vec<u8>,
    },
}

impl Debug for Command {
    // The ring value holds key bytes: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::WriteRing { term, served, .. } => {
                write!(f, "WriteRing {{ term: {term}, served: {} }}", served.len())
            }
            Command::Grant { lease, ttl_ms } => write!(f, "Grant {{ {lease}, {ttl_ms} ms }}"),
            Command::Revoke { lease } => write!(f, "Revoke {{ {lease} }}"),
            Command::Register { lease, node_id, .. } => {
                write!(f, "Register {{ {node_id}, {lease} }}")
            }
            Command::PutMember { node_id, .. } => write!(f, "PutMember {{ {node_id} }}"),
            Command::Campaign { lease, node_id } => write!(f, "Campaign {{ {node_id}, {lease} }}"),
            Command::Resign { term } => write!(f, "Resign {{ {term} }}"),
            Command::PutRequest { key, .. } => write!(f, "PutRequest {{ {key} }}"),
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Done.
    #[default]
    Ok,
    /// Elected, in this term.
    Elected(u64),
    /// Someone else leads.
    NotElected,
    /// Refused: the writer no longer holds the leadership term.
    Fenced,
    /// Refused: the ring is not newer than the stored one.
    Stale,
    /// Refused: the lease does not exist (expired or revoked).
    NoLease,
}

/// The leader slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderSlot {
    /// Who.
    pub node_id: String,
    /// Under which lease.
    pub lease: i64,
    /// The revision at which it was elected: its term.
    pub term: u64,
}

/// The longest lease TTL the group keeps (a day); a longer one is shortened to it.
pub const MAX_LEASE_TTL_MS: u64 = 24 * 3600 * 1000;

/// The replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Data {
    /// Grows with every applied change.
    pub revision: u64,
    /// Leases and their TTLs.
    pub leases: BTreeMap<i64, u64>,
    /// Live members: node id to lease.
    pub alive: BTreeMap<String, i64>,
    /// The leadership.
    pub leader: Option<LeaderSlot>,
    /// The ring record.
    pub ring: Option<Vec<u8>>,
    /// The generation of `ring`.
    pub ring_generation: Option<u64>,
    /// Member records by node id.
    pub members: BTreeMap<String, Vec<u8>>,
    /// Rotation requests by key.
    pub requests: BTreeMap<String, Vec<u8>>,
}

impl Data {
    /// Applies a command; the revision grows only when something changed.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        let next = self.revision + 1;
        let result = match cmd {
            Command::Grant { lease, ttl_ms } => {
                // A lease id is granted once (a client may not take over another's), and its
                // TTL is bounded so that no deadline arithmetic can overflow.
                if self.leases.contains_key(lease) {
                    return Applied::Ok;
                }
                self.leases.insert(*lease, (*ttl_ms).min(MAX_LEASE_TTL_MS));
                Applied::Ok
            }
            Command::Revoke { lease } => {
                if self.leases.remove(lease).is_none() {
                    return Applied::NoLease;
                }
                self.alive.retain(|_, l| l != lease);
                if self.leader.as_ref().is_some_and(|s| s.lease == *lease) {
                    self.leader = None;
                }
                Applied::Ok
            }
            Command::Register {
                lease,
                node_id,
                value,
            } => {
                if !self.leases.contains_key(lease) {
                    return Applied::NoLease;
                }
                self.alive.insert(node_id.clone(), *lease);
                self.members.insert(node_id.clone(), value.clone());
                Applied::Ok
            }
            Command::PutMember { node_id, value } => {
                self.members.insert(node_id.clone(), value.clone());
                Applied::Ok
            }
            Command::Campaign { lease, node_id } => {
                if self.leader.is_some() {
                    return Applied::NotElected;
                }
                if !self.leases.contains_key(lease) {
                    return Applied::NoLease;
                }
                self.leader = Some(LeaderSlot {
                    node_id: node_id.clone(),
                    lease: *lease,
                    term: next,
                });
                Applied::Elected(next)
            }
            Command::Resign { term } => {
                if self.leader.as_ref().is_some_and(|s| s.term == *term) {
                    self.leader = None;
                }
                Applied::Ok
            }
            Command::WriteRing {
                term,
                value,
                served,
            } => {
                if self.leader.as_ref().map(|s| s.term) != Some(*term) {
                    return Applied::Fenced;
                }
                let generation = crate::records::decode_ring(value)
                    .ok()
                    .map(|r| r.ring.generation());
                if generation.is_none() || generation <= self.ring_generation {
                    return Applied::Stale;
                }
                self.ring_generation = generation;
                self.ring = Some(value.clone());
                for k in served {
                    self.requests.remove(k);
                }
                Applied::Ok
            }
            Command::PutRequest { key, value } => {
                self.requests.insert(key.clone(), value.clone());
                Applied::Ok
            }
        };
        self.revision = next;
        result
    }
}

#[derive(Debug, Default)]
struct Inner {
    vote: Option<Vote<u64>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<u64>>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    data: Data,
    snapshot: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    data: Data,
}

/// The in-memory Raft store, shared between openraft and the coordinator (which reads the
/// state machine and waits on its revision).
#[derive(Debug, Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    revision: watch::Sender<u64>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            revision: watch::channel(0).0,
        }
    }
}

impl MemStore {
    /// A copy of the applied state.
    pub async fn data(&self) -> Data {
        self.inner.lock().await.data.clone()
    }

    /// Follows the applied revision.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

fn io_err<E: std::error::Error + 'static>(e: &E) -> StorageError<u64> {
    StorageIOError::read_state_machine(e).into()
}

impl RaftLogReader<TypeConfig> for MemStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok(inner.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        let body = serde_json::to_vec(&SnapshotBody {
            data: inner.data.clone(),
        })
        .map_err(|e| io_err(&e))?;
        inner.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                inner.last_applied.map_or(0, |l| l.index),
                inner.snapshot_seq
            ),
        };
        inner.snapshot = Some((meta.clone(), body.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

impl RaftStorage<TypeConfig> for MemStore {
    type LogReader = Self;
    type SnapshotBuilder = Self;

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.inner.lock().await.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().await.vote)
    }

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        let last = inner.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn append_to_log<I>(&mut self, entries: I) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        for e in entries {
            inner.log.insert(e.log_id.index, e);
        }
        Ok(())
    }

    async fn delete_conflict_logs_since(
        &mut self,
        log_id: LogId<u64>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        inner.log.retain(|i, _| *i < log_id.index);
        Ok(())
    }

    async fn purge_logs_upto(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        inner.log.retain(|i, _| *i > log_id.index);
        inner.last_purged = Some(log_id);
        Ok(())
    }

    async fn last_applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply_to_state_machine(
        &mut self,
        entries: &[Entry<TypeConfig>],
    ) -> Result<Vec<Applied>, StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            inner.last_applied = Some(e.log_id);
            match &e.payload {
                EntryPayload::Blank => out.push(Applied::Ok),
                EntryPayload::Normal(cmd) => out.push(inner.data.apply(cmd)),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    out.push(Applied::Ok);
                }
            }
        }
        let rev = inner.data.revision;
        drop(inner);
        self.revision.send_replace(rev);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&bytes).map_err(|e| io_err(&e))?;
        let mut inner = self.inner.lock().await;
        inner.data = body.data;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), bytes));
        let rev = inner.data.revision;
        drop(inner);
        self.revision.send_replace(rev);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|(meta, body)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(body.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_storage_suite_passes() {
        openraft::testing::Suite::test_all(|| async { MemStore::default() })
            .expect("openraft's storage suite");
    }

    #[test]
    fn leadership_is_lease_bound_and_ring_writes_are_fenced_on_its_term() {
        use stek_core::{KeyRing, OsKeySource, Policy};
        let p = Policy {
            interval: std::time::Duration::from_secs(60),
            retain: 1,
        };
        let r1 = KeyRing::bootstrap(std::time::SystemTime::now(), &p, &mut OsKeySource);
        let r2 = r1
            .rotated(std::time::SystemTime::now(), &p, &mut OsKeySource)
            .unwrap();
        let enc = |r: &KeyRing| {
            crate::records::encode_ring(&crate::StoredRing::seal("c", r, &p, "a", &[]).0)
        };
        let mut d = Data::default();
        assert_eq!(
            d.apply(&Command::Campaign {
                lease: 1,
                node_id: "a".into()
            }),
            Applied::NoLease
        );
        d.apply(&Command::Grant {
            lease: 1,
            ttl_ms: 3000,
        });
        d.apply(&Command::Grant {
            lease: 2,
            ttl_ms: 3000,
        });
        let Applied::Elected(t1) = d.apply(&Command::Campaign {
            lease: 1,
            node_id: "a".into(),
        }) else {
            panic!("a is elected")
        };
        assert_eq!(
            d.apply(&Command::Campaign {
                lease: 2,
                node_id: "b".into()
            }),
            Applied::NotElected
        );
        let write = |term, r: &KeyRing| Command::WriteRing {
            term,
            value: enc(r),
            served: vec![],
        };
        assert_eq!(d.apply(&write(t1, &r1)), Applied::Ok);
        assert_eq!(d.apply(&write(t1, &r1)), Applied::Stale, "not newer");
        d.apply(&Command::Revoke { lease: 1 });
        assert!(d.leader.is_none(), "revoking the lease ends the leadership");
        let Applied::Elected(t2) = d.apply(&Command::Campaign {
            lease: 2,
            node_id: "b".into(),
        }) else {
            panic!("b is elected")
        };
        assert!(t2 > t1);
        assert_eq!(
            d.apply(&write(t1, &r2)),
            Applied::Fenced,
            "the deposed leader is fenced"
        );
        assert_eq!(d.apply(&write(t2, &r2)), Applied::Ok);
        assert_eq!(d.ring_generation, Some(2));
    }

    #[test]
    fn command_debug_never_shows_the_ring_value() {
        let c = Command::WriteRing {
            term: 1,
            value: b"SECRET-KEY-BYTES".to_vec(),
            served: vec![],
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
