//! An in-memory [`Coordinator`]: the keyspace of one cluster in a mutex, with etcd's
//! semantics (leases that expire, a leader key whose creation revision is the term, ring
//! writes fenced on the term and on the ring's revision, a watch from a revision). It passes
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

use crate::records::{self, MemberRecord, RequestRecord, StoredRing};
use crate::{
    Change, ChangeStream, CoordError, Coordinator, KeepAlive, Leader, LeaseId, RawSnapshot,
    Snapshot, Term,
};

/// One cluster's keyspace in memory. Clones share it.
#[derive(Clone, Debug)]
pub struct Memory {
    prefix: String,
    inner: Arc<Mutex<State>>,
    /// The revision after every change (watches wait on it).
    changes: watch::Sender<(i64, Vec<String>)>,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    /// lease id -> (ttl, deadline)
    leases: BTreeMap<i64, (Duration, Instant)>,
    next_lease: i64,
    /// key relative to the prefix -> (value, lease, create revision, mod revision)
    keys: BTreeMap<String, Entry>,
    /// Every call fails as if the store were down.
    unreachable: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    lease: i64,
    created: i64,
    modified: i64,
}

impl State {
    /// Ends every lease past its deadline, with its keys.
    fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        gone.into_iter().flat_map(|l| self.end_lease(l)).collect()
    }

    fn end_lease(&mut self, lease: i64) -> Vec<String> {
        self.leases.remove(&lease);
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, e)| e.lease == lease)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.keys.remove(k);
        }
        keys
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: i64, revision: i64) {
        let created = self.keys.get(key).map_or(revision, |e| e.created);
        self.keys.insert(
            key.to_owned(),
            Entry {
                value,
                lease,
                created,
                modified: revision,
            },
        );
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
            changes: watch::channel((0, Vec::new())).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state after expiring leases; fails while cut off. Publishes the keys
    /// `f` (and the expiry) changed under one new revision.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut State, i64) -> Result<(T, Vec<String>), CoordError>,
    ) -> Result<T, CoordError> {
        let mut s = self.state();
        if s.unreachable {
            return Err(CoordError::Unreachable {
                endpoints: "memory".into(),
                reason: "cut off by the test".into(),
            });
        }
        let mut changed = s.expire(Instant::now());
        let next = s.revision + 1;
        let (out, more) = f(&mut s, next)?;
        changed.extend(more);
        if !changed.is_empty() {
            s.revision = next;
            self.changes.send_replace((next, changed));
        }
        Ok(out)
    }

    /// Puts a raw value under `key` (relative to the prefix: `ring`, `members/n1`, ...), as
    /// whoever can write the store could.
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        let _ = self.with(|s, rev| {
            s.put(key, value.to_vec(), 0, rev);
            Ok(((), vec![key.to_owned()]))
        });
    }

    /// Deletes `key` (relative to the prefix).
    pub fn delete_raw(&self, key: &str) {
        let _ = self.with(|s, _| {
            let gone = s.keys.remove(key).is_some();
            Ok((
                (),
                if gone {
                    vec![key.to_owned()]
                } else {
                    Vec::new()
                },
            ))
        });
    }

    /// The raw value under `key` (relative to the prefix).
    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        self.state().keys.get(key).map(|e| e.value.clone())
    }

    /// Cuts the store off (every call fails as unreachable) or brings it back. Leases keep
    /// their deadlines meanwhile: as with a partitioned etcd, one whose TTL passed without a
    /// renewal is gone when the store is reached again.
    pub fn set_unreachable(&self, cut: bool) {
        self.state().unreachable = cut;
    }

    fn raw(&self, s: &State) -> RawSnapshot {
        let mut raw = RawSnapshot {
            revision: s.revision,
            ..RawSnapshot::default()
        };
        for (key, e) in &s.keys {
            let full = format!("{}{key}", self.prefix);
            if key == "leader" {
                raw.leader = Some(Leader {
                    node_id: String::from_utf8_lossy(&e.value).into_owned(),
                    term: Term(e.created),
                    lease: LeaseId(e.lease),
                });
            } else if key == "ring" {
                raw.ring = Some((full, e.value.clone()));
                raw.ring_revision = e.modified;
            } else if let Some(id) = key.strip_prefix(crate::COPIES) {
                raw.copies.push((full, id.to_owned(), e.value.clone()));
            } else if let Some(id) = key.strip_prefix("alive/") {
                raw.alive.insert(id.to_owned());
            } else if let Some(id) = key.strip_prefix("members/") {
                raw.members.push((full, id.to_owned(), e.value.clone()));
            } else if key.starts_with("requests/") {
                raw.requests.push((full, e.value.clone()));
            } else {
                raw.unknown.push(full);
            }
        }
        raw
    }

    fn relative<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }
}

/// A watch on a [`Memory`] store.
#[derive(Debug)]
pub struct MemoryWatch {
    rx: watch::Receiver<(i64, Vec<String>)>,
    after: i64,
}

impl ChangeStream for MemoryWatch {
    async fn changed(&mut self) -> Result<Change, CoordError> {
        loop {
            let (revision, keys) = self.rx.borrow_and_update().clone();
            if revision > self.after {
                // Changes between `after` and the last one were coalesced: say what the last
                // one was, or "something" if more than one revision passed.
                let keys = (revision == self.after + 1).then_some(keys);
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
        self.with(|s, _| Ok((self.raw(s), Vec::new())))
            .map(RawSnapshot::check)
    }

    async fn watch(&self, revision: i64) -> Result<MemoryWatch, CoordError> {
        self.with(|_, _| Ok(((), Vec::new())))?;
        Ok(MemoryWatch {
            rx: self.changes.subscribe(),
            after: revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let ttl = ttl.max(Duration::from_secs(1));
        self.with(|s, _| {
            let id = s.next_lease;
            s.next_lease += 1;
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            Ok((LeaseId(id), Vec::new()))
        })
    }

    async fn keep_alive(&self, lease: LeaseId, ttl: Duration) -> Result<KeepAlive, CoordError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = self.clone();
        let period = (ttl / 3).max(Duration::from_millis(100));
        let task = tokio::spawn(async move {
            let mut last_ok = Instant::now();
            let reason = loop {
                let renewed = store.with(|s, _| {
                    let Some((ttl, deadline)) = s.leases.get_mut(&lease.0) else {
                        return Err(CoordError::LeaseExpired);
                    };
                    *deadline = Instant::now() + *ttl;
                    Ok(((), Vec::new()))
                });
                match renewed {
                    Ok(()) => last_ok = Instant::now(),
                    Err(CoordError::LeaseExpired) => {
                        break "the store says the lease has expired".to_owned()
                    }
                    Err(_) if last_ok.elapsed() >= ttl => {
                        break format!("no renewal for {ttl:?}: the lease has expired")
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(period).await;
            };
            let _ = tx.send(reason);
        });
        Ok(KeepAlive { lost: rx, task })
    }

    async fn register(&self, lease: LeaseId, member: &MemberRecord) -> Result<(), CoordError> {
        let alive = format!("alive/{}", member.node_id);
        let holder = crate::holder_of(member);
        self.with(|s, rev| {
            if !s.leases.contains_key(&lease.0) {
                return Err(CoordError::LeaseExpired);
            }
            if let Some(e) = s.keys.get(&alive) {
                let held = crate::shown_holder(&e.value);
                if e.lease != lease.0 && !crate::same_holder(&held, member) {
                    return Err(CoordError::Held {
                        node_id: member.node_id.clone(),
                        holder: held,
                    });
                }
            }
            let record = format!("members/{}", member.node_id);
            s.put(&alive, holder.into_bytes(), lease.0, rev);
            s.put(&record, member.encode(), 0, rev);
            Ok(((), vec![alive.clone(), record]))
        })
    }

    async fn ack(&self, member: &MemberRecord) -> Result<(), CoordError> {
        let key = format!("members/{}", member.node_id);
        self.with(|s, rev| {
            s.put(&key, member.encode(), 0, rev);
            Ok(((), vec![key.clone()]))
        })
    }

    async fn campaign(&self, lease: LeaseId, node_id: &str) -> Result<Option<Term>, CoordError> {
        self.with(|s, rev| {
            if s.keys.contains_key("leader") {
                return Ok((None, Vec::new()));
            }
            if !s.leases.contains_key(&lease.0) {
                return Err(CoordError::LeaseExpired);
            }
            s.put("leader", node_id.as_bytes().to_vec(), lease.0, rev);
            Ok((Some(Term(rev)), vec!["leader".to_owned()]))
        })
    }

    async fn write_ring(
        &self,
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> Result<i64, CoordError> {
        let value = records::encode_ring(ring);
        let copies = ring.copy_records();
        self.with(|s, rev| {
            if s.keys.get("leader").map(|e| e.created) != Some(term.0) {
                return Err(CoordError::Fenced(term));
            }
            if s.keys.get("ring").map_or(0, |e| e.modified) != ring_revision {
                return Err(CoordError::Conflict);
            }
            // The copies with the ring (etcd writes them just before it), and no copy of a
            // member the ring has none for.
            let mut changed = Vec::with_capacity(copies.len() + 1);
            let stale: Vec<String> = s
                .keys
                .keys()
                .filter(|k| {
                    k.strip_prefix(crate::COPIES)
                        .is_some_and(|m| !copies.iter().any(|(c, _)| c == m))
                })
                .cloned()
                .collect();
            for k in stale {
                s.keys.remove(&k);
                changed.push(k);
            }
            for (member, bytes) in copies {
                let k = crate::copy_key(&member);
                s.put(&k, bytes, 0, rev);
                changed.push(k);
            }
            s.put("ring", value, 0, rev);
            changed.push("ring".to_owned());
            for k in served_requests {
                let k = self.relative(k);
                if s.keys.remove(k).is_some() {
                    changed.push(k.to_owned());
                }
            }
            Ok((rev, changed))
        })
    }

    async fn write_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        self.with(|s, rev| {
            if s.keys.get("leader").map(|e| e.created) != Some(term.0) {
                return Err(CoordError::Fenced(term));
            }
            if s.keys.get("ring").map_or(0, |e| e.modified) != ring_revision {
                return Err(CoordError::Conflict);
            }
            let mut changed = Vec::with_capacity(copies.len());
            for (member, bytes) in copies {
                let k = crate::copy_key(member);
                s.put(&k, bytes.clone(), 0, rev);
                changed.push(k);
            }
            Ok((rev, changed))
        })
    }

    async fn forget_member(&self, term: Term, node_id: &str) -> Result<bool, CoordError> {
        let record = format!("members/{node_id}");
        self.with(|s, _| {
            if s.keys.get("leader").map(|e| e.created) != Some(term.0) {
                return Err(CoordError::Fenced(term));
            }
            if s.keys.contains_key(&format!("alive/{node_id}")) || s.keys.remove(&record).is_none()
            {
                return Ok((false, Vec::new()));
            }
            let copy = crate::copy_key(node_id);
            let mut changed = vec![record.clone()];
            if s.keys.remove(&copy).is_some() {
                changed.push(copy);
            }
            Ok((true, changed))
        })
    }

    async fn purge_history(&self, _revision: i64) -> Result<(), CoordError> {
        // No history is kept: a record's old value is gone when it is replaced.
        Ok(())
    }

    async fn resign(&self, term: Term) -> Result<(), CoordError> {
        self.with(|s, _| {
            if s.keys.get("leader").map(|e| e.created) == Some(term.0) {
                s.keys.remove("leader");
                return Ok(((), vec!["leader".to_owned()]));
            }
            Ok(((), Vec::new()))
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.with(|s, _| Ok(((), s.end_lease(lease.0))))
    }

    async fn request_rotation(
        &self,
        by: &str,
        signer: Option<&crate::identity::Credentials>,
    ) -> Result<String, CoordError> {
        let (key, record) = RequestRecord::new_signed(&self.prefix, by, signer);
        let rel = self.relative(&key).to_owned();
        self.with(|s, rev| {
            s.put(&rel, record.encode(), 0, rev);
            Ok(((), vec![rel.clone()]))
        })?;
        Ok(key)
    }
}
