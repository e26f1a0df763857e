//! An in-memory [`Coordinator`]: the keyspace of one cluster ([`crate::keyspace`], the state
//! machine the Raft group applies its log to, with its rules) in a mutex, with a lease clock
//! and a watch from a revision. It passes
//! the same conformance suite as etcd and the Raft group, and lets the node's decisions be
//! tested in one process, with no root and no store to start: several nodes share one
//! [`Memory`] (each holds a clone). A test can also reach under the API: put or delete a raw
//! record (a store restore, an operator's edit, a hostile writer) and cut the store off.
//!
//! Never a production backend: it lives and dies with its process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::keyspace::{Command, Keyspace, Outcome};
use crate::records::{self, MemberRecord, RequestRecord, StoredRing};
use crate::{
    Change, ChangeStream, CoordError, Coordinator, KeepAlive, LeaseId, RawSnapshot, Snapshot, Term,
};

/// One cluster's keyspace in memory. Clones share it.
#[derive(Clone, Debug)]
pub struct Memory {
    prefix: String,
    inner: Arc<Mutex<State>>,
    /// The last change (watches wait on it).
    changes: watch::Sender<Published>,
}

#[derive(Debug, Default)]
struct State {
    /// The keyspace and its rules, as the Raft group's state machine holds them.
    keyspace: Keyspace,
    /// lease id -> (ttl, deadline): the clock the Raft leader keeps for the group.
    deadlines: BTreeMap<i64, (Duration, Instant)>,
    next_lease: i64,
    /// The revision of the last change published.
    published: i64,
    /// Every call fails as if the store were down.
    unreachable: bool,
}

/// A change as the store's watches see it.
#[derive(Debug, Clone, Default)]
struct Published {
    /// The revision after it.
    revision: i64,
    /// The keys it changed, relative to the prefix.
    keys: Vec<String>,
    /// The revision of the change published before it: the keys are every key changed
    /// after that one (revisions in between changed no key).
    since: i64,
}

fn signed(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

impl State {
    /// Ends every lease past its deadline, as the Raft leader's lease clock does: through the
    /// keyspace, which drops its liveness keys and the leadership bound to it.
    fn expire(&mut self, now: Instant, changed: &mut Vec<String>) {
        let gone: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in gone {
            self.deadlines.remove(&lease);
            self.keyspace
                .apply_listing(&Command::Revoke { lease }, changed);
        }
    }

    fn apply(&mut self, cmd: &Command, changed: &mut Vec<String>) -> Outcome {
        let outcome = self.keyspace.apply_listing(cmd, changed);
        if let Command::Revoke { lease } = cmd {
            self.deadlines.remove(lease);
        }
        outcome
    }

    /// A raw write: `key` (relative to the prefix) holds `value`, or nothing.
    fn put_raw(&mut self, prefix: &str, key: &str, value: Option<Vec<u8>>) {
        let k = &mut self.keyspace;
        let next = k.revision + 1;
        if key == "ring" {
            k.ring_generation = value
                .as_deref()
                .and_then(|v| records::decode_ring(v).ok())
                .map(|r| r.ring.generation());
            k.ring_revision = if value.is_some() { next } else { 0 };
            k.ring = value;
        } else {
            let (map, id) = if let Some(m) = key.strip_prefix(crate::COPIES) {
                (&mut k.copies, m.to_owned())
            } else if let Some(id) = key.strip_prefix("members/") {
                (&mut k.members, id.to_owned())
            } else if key.starts_with("requests/") {
                (&mut k.requests, format!("{prefix}{key}"))
            } else {
                panic!("the in-memory store keeps no raw key {key:?} (ring, ring/copies/, members/ and requests/ only)")
            };
            match value {
                Some(v) => {
                    map.insert(id, v);
                }
                None => {
                    map.remove(&id);
                }
            }
        }
        k.revision = next;
    }

    fn get_raw(&self, prefix: &str, key: &str) -> Option<Vec<u8>> {
        let k = &self.keyspace;
        if key == "ring" {
            k.ring.clone()
        } else if let Some(m) = key.strip_prefix(crate::COPIES) {
            k.copies.get(m).cloned()
        } else if let Some(id) = key.strip_prefix("members/") {
            k.members.get(id).cloned()
        } else {
            k.requests.get(&format!("{prefix}{key}")).cloned()
        }
    }
}

impl Memory {
    /// An empty keyspace for cluster `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("/stek/{cluster}/"),
            inner: Arc::new(Mutex::new(State {
                next_lease: 1,
                ..State::default()
            })),
            changes: watch::channel(Published::default()).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state after expiring leases; fails while cut off. Publishes the keys
    /// `f` (and the expiry) changed.
    fn with<T>(&self, f: impl FnOnce(&mut State, &mut Vec<String>) -> T) -> Result<T, CoordError> {
        let mut s = self.state();
        if s.unreachable {
            return Err(CoordError::Unreachable {
                endpoints: "memory".into(),
                reason: "cut off by the test".into(),
            });
        }
        let mut changed = Vec::new();
        s.expire(Instant::now(), &mut changed);
        let out = f(&mut s, &mut changed);
        if !changed.is_empty() {
            let revision = signed(s.keyspace.revision);
            let keys = changed
                .iter()
                .map(|k| self.relative(k).to_owned())
                .collect();
            let since = std::mem::replace(&mut s.published, revision);
            self.changes.send_replace(Published {
                revision,
                keys,
                since,
            });
        }
        Ok(out)
    }

    /// Applies `cmd` to the keyspace.
    fn apply(&self, cmd: &Command) -> Result<Outcome, CoordError> {
        self.with(|s, changed| s.apply(cmd, changed))
    }

    /// Puts a raw value under `key` (relative to the prefix: `ring`, `ring/copies/<member>`,
    /// `members/<id>` or `requests/<id>`), as whoever can write the store could.
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        let _ = self.with(|s, changed| {
            s.put_raw(&self.prefix, key, Some(value.to_vec()));
            changed.push(key.to_owned());
        });
    }

    /// Deletes `key` (relative to the prefix, as [`Memory::put_raw`] names it).
    pub fn delete_raw(&self, key: &str) {
        let _ = self.with(|s, changed| {
            if s.get_raw(&self.prefix, key).is_some() {
                s.put_raw(&self.prefix, key, None);
                changed.push(key.to_owned());
            }
        });
    }

    /// The raw value under `key` (relative to the prefix, as [`Memory::put_raw`] names it).
    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        self.state().get_raw(&self.prefix, key)
    }

    /// Cuts the store off (every call fails as unreachable) or brings it back. Leases keep
    /// their deadlines meanwhile: as with a partitioned etcd, one whose TTL passed without a
    /// renewal is gone when the store is reached again.
    pub fn set_unreachable(&self, cut: bool) {
        self.state().unreachable = cut;
    }

    fn relative<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }
}

/// Renews one lease of a [`Memory`] store.
struct Renewer {
    store: Memory,
    lease: LeaseId,
}

impl crate::Renew for Renewer {
    async fn renew(&mut self) -> crate::Renewal {
        let renewed = self.store.with(|s, _| {
            let (ttl, deadline) = s.deadlines.get_mut(&self.lease.0)?;
            *deadline = Instant::now() + *ttl;
            Some(())
        });
        match renewed {
            Ok(Some(())) => crate::Renewal::Renewed(Instant::now()),
            Ok(None) => crate::Renewal::Gone,
            Err(_) => crate::Renewal::Failed,
        }
    }
}

/// A watch on a [`Memory`] store.
#[derive(Debug)]
pub struct MemoryWatch {
    rx: watch::Receiver<Published>,
    after: i64,
}

impl ChangeStream for MemoryWatch {
    async fn changed(&mut self) -> Result<Change, CoordError> {
        loop {
            let Published {
                revision,
                keys,
                since,
            } = self.rx.borrow_and_update().clone();
            if revision > self.after {
                // Changes between `after` and the last one were coalesced: say what the last
                // one was, or "something" if an earlier one was missed.
                let keys = (since <= self.after).then_some(keys);
                self.after = revision;
                return Ok(Change { revision, keys });
            }
            if self.rx.changed().await.is_err() {
                return Err(CoordError::WatchBroken("the store was dropped".into()));
            }
        }
    }
}

impl Coordinator for Memory {
    type Watch = MemoryWatch;

    async fn snapshot(&self) -> Result<Snapshot, CoordError> {
        self.with(|s, _| s.keyspace.raw_snapshot(&self.prefix))
            .map(RawSnapshot::check)
    }

    async fn watch(&self, revision: i64) -> Result<MemoryWatch, CoordError> {
        self.with(|_, _| ())?;
        Ok(MemoryWatch {
            rx: self.changes.subscribe(),
            after: revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let ttl = ttl.max(Duration::from_secs(1));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.with(|s, changed| {
            let lease = s.next_lease;
            s.next_lease += 1;
            s.apply(&Command::Grant { lease, ttl_ms }, changed);
            s.deadlines.insert(lease, (ttl, Instant::now() + ttl));
            LeaseId(lease)
        })
    }

    async fn keep_alive(&self, lease: LeaseId, ttl: Duration) -> Result<KeepAlive, CoordError> {
        Ok(KeepAlive::run(
            Renewer {
                store: self.clone(),
                lease,
            },
            ttl,
        ))
    }

    async fn register(&self, lease: LeaseId, member: &MemberRecord) -> Result<(), CoordError> {
        self.apply(&Command::register(lease, member))?
            .registered(&member.node_id)
    }

    async fn ack(&self, member: &MemberRecord) -> Result<(), CoordError> {
        self.apply(&Command::ack(member))?.accepted()
    }

    async fn campaign(&self, lease: LeaseId, node_id: &str) -> Result<Option<Term>, CoordError> {
        self.apply(&Command::Campaign {
            lease: lease.0,
            node_id: node_id.to_owned(),
        })?
        .elected()
    }

    async fn write_ring(
        &self,
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> Result<i64, CoordError> {
        self.apply(&Command::write_ring(
            term,
            ring_revision,
            ring,
            served_requests,
        ))?
        .written(term)
    }

    async fn write_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        self.apply(&Command::write_copies(term, ring_revision, copies))?
            .written(term)
    }

    async fn forget_member(&self, term: Term, node_id: &str) -> Result<bool, CoordError> {
        self.apply(&Command::forget_member(term, node_id))?
            .forgotten(term)
    }

    async fn purge_history(&self, _revision: i64) -> Result<bool, CoordError> {
        // No history is kept: a record's old value is gone when it is replaced.
        Ok(true)
    }

    async fn resign(&self, term: Term) -> Result<(), CoordError> {
        self.apply(&Command::resign(term)).map(|_| ())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        // A lease that is gone already is revoked: done.
        self.apply(&Command::Revoke { lease: lease.0 }).map(|_| ())
    }

    async fn request_rotation(
        &self,
        by: &str,
        signer: Option<&stek_trust::identity::Credentials>,
    ) -> Result<String, CoordError> {
        let (key, record) = RequestRecord::new_signed(&self.prefix, by, signer);
        self.apply(&Command::PutRequest {
            key: key.clone(),
            value: record.encode(),
            by: None,
        })?
        .accepted()?;
        Ok(key)
    }
}
