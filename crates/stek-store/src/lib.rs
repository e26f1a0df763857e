//! stek's store contract: what the store holds ([`records`]), the [`Coordinator`] trait the node
//! runtime drives and every backend implements (etcd's in stek-etcd, the embedded Raft group's
//! in stek-raft, `memory` for tests), and the keyspace rules they share ([`keyspace`]).
//!
//! The keyspace of a cluster `C`, under `/stek/C/`:
//!
//! | key | lease | holds |
//! |---|---|---|
//! | `leader` | leader's | the leader's node id; its create-revision is the leader's term |
//! | `ring` | none | the ring, its generation, policy and next rotation time (I8), its keys sealed under a data key |
//! | `ring/copies/<node>` | none | that member's copy of the data key, sealed to its public key; written before the ring that names it |
//! | `alive/<node>` | member's | present while the member's liveness lease holds (I7) |
//! | `members/<node>` | none | the member's record and acknowledgement (survives it, so status can show dead members) |
//! | `requests/<id>` | none | a rotation request; deleted by the rotation that serves it |
//!
//! Every leader write is a transaction that first compares the leader key's create-revision
//! with the writer's term, so a deposed leader's write is refused by the store (I3).
//!
//! Depends on `stek-core` and `stek-trust` only; knows nothing of files, servers or the CLI.

use std::future::Future;
use std::time::Duration;

use stek_core::MemberView;
use stek_trust::identity;

mod bytes;
pub mod clock;
pub mod keyspace;
#[cfg(feature = "testing")]
pub mod memory;
pub mod records;
pub mod seal;
pub mod status;

pub use records::{
    MemberRecord, OpenedCopy, RecordError, RequestRecord, RingSignature, RingWriter, StoredRing,
};

/// How far a signed rotation request's date may be from a node's clock, either way (a
/// requester's clock is not the node's).
pub const REQUEST_CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a member's sealed copy of the ring's data key is stored, under the cluster prefix.
pub const COPIES: &str = "ring/copies/";

/// Where etcd keeps each member's acknowledgement apart from its member record
/// (`acks/<member>`, [`records::MemberRecord::encode_ack`]): the record, with the member's
/// certificate, is written once at registration; an acknowledgement is a tenth of its size.
pub const ACKS: &str = "acks/";

/// The key of `member`'s sealed copy, under the cluster prefix.
pub fn copy_key(member: &str) -> String {
    format!("{COPIES}{member}")
}

/// A leader's term: the store revision at which it took the leader key. Writes carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term(pub i64);

/// Who leads, as the store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's node id.
    pub node_id: String,
    /// Its term.
    pub term: Term,
    /// The lease the leadership is bound to: a node that finds its own node id under its own
    /// current lease holds the leadership even if the reply to its campaign was lost.
    pub lease: LeaseId,
}

/// The ring key's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingSlot {
    /// No ring yet: the leader bootstraps one.
    Absent,
    /// A ring that passed every check.
    Valid(StoredRing),
    /// A record that failed a check; never applied, never bootstrapped over.
    Rejected(RecordError),
}

/// One member as the store shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its record (a placeholder with generation 0 if it registered but wrote none yet).
    pub record: MemberRecord,
    /// Whether its liveness lease holds.
    pub live: bool,
}

/// Everything under the cluster's prefix at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The store revision this snapshot was read at.
    pub revision: i64,
    /// The current leader, if any.
    pub leader: Option<Leader>,
    /// The ring.
    pub ring: RingSlot,
    /// The store revision at which the ring record was last written (0: there is none). A
    /// leader's write names it, so a write decided on an older ring is refused
    /// ([`Coordinator::write_ring`]).
    pub ring_revision: i64,
    /// Every member that has a record or a lease, sorted by node id.
    pub members: Vec<Member>,
    /// Keys of pending rotation requests (readable ones only).
    pub requests: Vec<String>,
    /// Keys of request records that do not decode: never taken as a request (a malformed
    /// record is never acted on); the next rotation's write deletes them with the requests it
    /// serves.
    pub unreadable_requests: Vec<String>,
    /// Who asked for each readable pending request: (key, requested_by).
    pub requested_by: Vec<(String, String)>,
    /// The readable pending requests' records, by key (for [`Snapshot::authenticate`]).
    pub request_records: Vec<(String, RequestRecord)>,
    /// Keys whose records were rejected, and why (logged; never applied).
    pub rejected: Vec<(String, RecordError)>,
    /// Read by [`Coordinator::snapshot_of_member`]: `members` holds at most that member, and
    /// `requests` and unknown keys were not read.
    pub partial: bool,
    /// Members taken out by [`Snapshot::authenticate`]: never sealed for, never counted.
    pub refused: Vec<Refused>,
}

/// A member record whose enrollment did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The node id it claims.
    pub node_id: String,
    /// Whether a liveness lease holds for it.
    pub live: bool,
    /// Why it was refused.
    pub reason: String,
}

impl Snapshot {
    /// The members as the rotation decision sees them. An acknowledgement counts only for the
    /// ring it names, by generation and digest: an acknowledgement of any other ring (an
    /// older one, another ring of this generation, or one above it after the store was rolled
    /// back) counts as nothing, since nobody can tell from it which keys the member holds. A
    /// member re-acknowledges every ring it applies within moments, so this delays a rotation
    /// by no more than that.
    pub fn member_views(&self) -> Vec<MemberView> {
        let ring = self.valid_ring().map(|r| &r.ring);
        self.members
            .iter()
            .map(|m| {
                let (applied, note) = counted_ack(&m.record, ring);
                MemberView {
                    id: m.record.node_id.clone(),
                    live: m.live,
                    applied_generation: applied,
                    last_error: m.record.last_error.clone().or(note),
                }
            })
            .collect()
    }

    /// With `[identity]`: rejects a ring that the member it names as writer did not sign with
    /// a valid certificate of the cluster, and takes out of `members` every member whose
    /// certificate or key signature does not verify (listed in `refused`). What remains is what
    /// a node may act on: copies are sealed only to enrolled members, and only they count for
    /// rotation decisions.
    pub fn authenticate(&mut self, trust: &identity::Trust, now: std::time::SystemTime) {
        if let RingSlot::Valid(stored) = &self.ring {
            if let Err(e) = stored.verify(trust, now) {
                self.rejected.push(("ring".into(), e.clone()));
                self.ring = RingSlot::Rejected(e);
            }
        }
        // A rotation request counts only if a member or an operator of this cluster signed it;
        // any other is rejected (logged, listed) and deleted by the next rotation's write.
        // A signed request made well before the ring's last rotation (its schedule's start)
        // was served already: one put back (a replay) is refused too. A request dated more
        // than a minute ahead of this node's clock is refused as well: it would pass the replay
        // check forever and force a rotation every min_request_interval. A minute of slack for
        // the requester's clock either way.
        let last_rotation = self.valid_ring().and_then(|r| {
            r.ring
                .next_rotation_at()
                .checked_sub(r.policy.interval)?
                .checked_sub(REQUEST_CLOCK_SLACK)
        });
        for (key, record) in std::mem::take(&mut self.request_records) {
            let at =
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(record.requested_at_ms);
            let verified = record
                .verify(&key, trust, now)
                .and_then(|v| match last_rotation {
                    Some(last) if at < last => Err(identity::IdentityError::Signature(format!(
                        "{} (a request made before the last rotation: served already, or replayed)",
                        v.role
                    ))),
                    _ if at > now + REQUEST_CLOCK_SLACK => {
                        Err(identity::IdentityError::Signature(format!(
                            "{} (a request dated {} ahead of this node's clock: refused, or it would never count as served)",
                            v.role,
                            humantime::format_duration(
                                at.duration_since(now).unwrap_or_default()
                            )
                        )))
                    }
                    _ => Ok(v),
                });
            match verified {
                Ok(v) => {
                    if let Some(by) = self.requested_by.iter_mut().find(|(k, _)| *k == key) {
                        by.1 = format!("{} ({})", by.1, v.role);
                    }
                    self.request_records.push((key, record));
                }
                Err(e) => {
                    self.requests.retain(|k| *k != key);
                    self.requested_by.retain(|(k, _)| *k != key);
                    self.rejected.push((key.clone(), RecordError::Unsigned(e)));
                    self.unreadable_requests.push(key);
                }
            }
        }
        let members = std::mem::take(&mut self.members);
        for m in members {
            match m.record.verify_enrollment(trust, now) {
                Ok(_) => self.members.push(m),
                Err(e) => self.refused.push(Refused {
                    node_id: m.record.node_id.clone(),
                    live: m.live,
                    reason: e.to_string(),
                }),
            }
        }
    }

    /// The valid ring, if any.
    pub fn valid_ring(&self) -> Option<&StoredRing> {
        match &self.ring {
            RingSlot::Valid(r) => Some(r),
            _ => None,
        }
    }
}

/// What the liveness key holds: who registered (the box's instance, the host and the pid), so
/// a second process with the same node id can be told from a restart of the first and named.
pub fn holder_of(member: &MemberRecord) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "an unknown host".into());
    let instance = member
        .instance
        .as_deref()
        .map_or_else(|| "no instance".to_owned(), |i| format!("instance {i}"));
    format!("{instance} on {host} (pid {})", std::process::id())
}

/// A holder description read from the store, safe to print: whoever can write the store chose
/// it, so control characters (a forged log line) are replaced and its length is bounded.
pub fn shown_holder(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Whether a liveness key's holder is `member`'s own process or an earlier one of the same
/// box (the same instance, kept in its state directory until the box reboots): then it may
/// take the node id over.
pub fn same_holder(holder: &str, member: &MemberRecord) -> bool {
    member
        .instance
        .as_deref()
        .is_some_and(|i| holder_key(holder) == Some(i))
}

/// The instance a holder description names, if any.
pub(crate) fn holder_key(holder: &str) -> Option<&str> {
    holder.strip_prefix("instance ")?.split(' ').next()
}

/// What a member's acknowledgement counts for against the stored ring: the generation it
/// applied, or 0 (with why) if it applied a different ring.
fn counted_ack(record: &MemberRecord, ring: Option<&stek_core::RingMeta>) -> (u64, Option<String>) {
    let Some(ring) = ring else {
        return (record.applied_generation, None);
    };
    let g = record.applied_generation;
    if record.acknowledges(ring) {
        return (g, None);
    }
    if g < ring.generation() {
        // Catching up (or a ring it applied before a rollback): not this ring, yet.
        return (0, None);
    }
    (
        0,
        Some(format!(
            "its acknowledgement of generation {g} names another ring than the stored one; it has not applied this ring"
        )),
    )
}

/// Raw records from a backend, turned into a checked [`Snapshot`] the same way for every
/// backend.
#[derive(Debug, Default)]
pub struct RawSnapshot {
    /// The store revision the records were read at.
    pub revision: i64,
    /// The current leader, if any.
    pub leader: Option<Leader>,
    /// (full key, value)
    pub ring: Option<(String, Vec<u8>)>,
    /// The revision at which the ring was last written.
    pub ring_revision: i64,
    /// node ids whose liveness lease holds
    pub alive: std::collections::BTreeSet<String>,
    /// (full key, node id from the key, value)
    pub members: Vec<(String, String, Vec<u8>)>,
    /// Acknowledgements kept apart from their member records (etcd's `acks/<member>`):
    /// (full key, node id from the key, value). One without a member record is ignored.
    pub acks: Vec<(String, String, Vec<u8>)>,
    /// Sealed copies: (full key, node id from the key, value)
    pub copies: Vec<(String, String, Vec<u8>)>,
    /// (full key, value)
    pub requests: Vec<(String, Vec<u8>)>,
    /// full keys stek does not know
    pub unknown: Vec<String>,
    /// only one member's records were read
    pub partial: bool,
}

impl RawSnapshot {
    /// Decodes and checks every record into a [`Snapshot`]; a record that fails a check is
    /// listed in [`Snapshot::rejected`], never applied.
    pub fn check(self) -> Snapshot {
        let mut snap = Snapshot {
            revision: self.revision,
            leader: self.leader,
            ring: RingSlot::Absent,
            ring_revision: self.ring_revision,
            members: Vec::new(),
            requests: Vec::new(),
            unreadable_requests: Vec::new(),
            requested_by: Vec::new(),
            request_records: Vec::new(),
            rejected: Vec::new(),
            partial: self.partial,
            refused: Vec::new(),
        };
        if let Some((key, value)) = self.ring {
            snap.ring = match records::decode_ring(&value) {
                Ok(r) => {
                    let mut copies = Vec::with_capacity(self.copies.len());
                    for (key, id, value) in self.copies {
                        match records::decode_copies(&id, &value) {
                            Ok(c) => copies.extend(c),
                            Err(e) => snap.rejected.push((key, e)),
                        }
                    }
                    RingSlot::Valid(r.with_copies(copies))
                }
                Err(e) => {
                    snap.rejected.push((key, e.clone()));
                    RingSlot::Rejected(e)
                }
            };
        }
        let mut by_id = std::collections::BTreeMap::new();
        for (key, id, value) in self.members {
            match MemberRecord::decode(&value) {
                Ok(m) if m.node_id == id => {
                    by_id.insert(id, m);
                }
                Ok(m) => snap
                    .rejected
                    .push((key, RecordError::WrongMember(m.node_id))),
                Err(e) => snap.rejected.push((key, e)),
            }
        }
        for (key, id, value) in self.acks {
            if let Some(m) = by_id.get_mut(&id) {
                match m.with_ack(&value) {
                    Ok(merged) => *m = merged,
                    Err(e) => snap.rejected.push((key, e)),
                }
            }
        }
        for (key, value) in self.requests {
            match RequestRecord::decode(&value) {
                Ok(r) => {
                    snap.requested_by
                        .push((key.clone(), r.requested_by.clone()));
                    snap.requests.push(key.clone());
                    snap.request_records.push((key, r));
                }
                Err(e) => {
                    snap.rejected.push((key.clone(), e));
                    snap.unreadable_requests.push(key);
                }
            }
        }
        for key in self.unknown {
            snap.rejected.push((key, RecordError::UnknownKey));
        }
        let ids: std::collections::BTreeSet<String> =
            self.alive.iter().chain(by_id.keys()).cloned().collect();
        for id in ids {
            let live = self.alive.contains(&id);
            let record = by_id.remove(&id).unwrap_or_else(|| MemberRecord {
                node_id: id.clone(),
                version: String::new(),
                targets: Vec::new(),
                applied_generation: 0,
                last_error: Some("no readable member record".into()),
                ..MemberRecord::default()
            });
            snap.members.push(Member { record, live });
        }
        snap
    }
}

/// A coordination failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordError {
    /// The store did not answer.
    #[error("the coordination store is unreachable (tried {endpoints}): {reason}")]
    Unreachable {
        /// Every endpoint tried.
        endpoints: String,
        /// The last error.
        reason: String,
    },
    /// The coordinator could not be set up: a bad address, TLS material, data directory or
    /// listener. Retrying does not help; the configuration must change.
    #[error("cannot set up the coordinator ({what}): {reason}")]
    Setup {
        /// What was being set up (an address, a directory).
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A peer answered and refused the request (not authorised, not a member, a failed
    /// membership change): asking again or asking another peer gives the same answer.
    #[error("refused by {by}: {reason}")]
    Refused {
        /// Who refused.
        by: String,
        /// The peer's reason.
        reason: String,
    },
    /// A peer answered something this build does not expect (another stek version?).
    #[error("unexpected answer from the coordinator at {endpoints}: {reason}; do all boxes run the same stek version?")]
    Protocol {
        /// Who answered.
        endpoints: String,
        /// What came.
        reason: String,
    },
    /// A leader write was refused: someone else leads now.
    #[error("write refused by the store: this node no longer holds the leadership term {0:?}")]
    Fenced(Term),
    /// The watch ended (compaction, server restart): re-read everything.
    #[error("watch interrupted ({0}); re-reading the whole keyspace")]
    WatchBroken(String),
    /// The ring changed between the decision and the write; decide again on a fresh read.
    #[error("the ring changed since this decision was made; deciding again")]
    Conflict,
    /// Another live process holds this node id's liveness lease.
    #[error("node id \"{node_id}\" is held by another live process ({holder}); every box needs its own node_id")]
    Held {
        /// The node id.
        node_id: String,
        /// Who holds it, as its registration says.
        holder: String,
    },
    /// The lease is gone (expired or revoked); join again with a new one.
    #[error("the liveness lease has expired or was revoked")]
    LeaseExpired,
    /// A record above the store's request size limit.
    #[error("the ring record would be {bytes} bytes, above the {limit}-byte limit of one store request; lower [rotation] retain or split the cluster (docs/architecture.md, \"Record sizes\")")]
    TooLarge {
        /// The record's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

/// How many members the store holds, counted ([`Coordinator::member_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberCounts {
    /// Member records.
    pub members: usize,
    /// Liveness leases held.
    pub live: usize,
}

/// A held liveness lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId(pub i64);

/// What changed under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The store revision of the change (0: unknown). A change at or below the revision of a
    /// later read is already in that read.
    pub revision: i64,
    /// The changed keys relative to the prefix (`ring`, `members/n2`, ...), when the backend
    /// says; `None` means "something", to be re-read in full.
    pub keys: Option<Vec<String>>,
}

impl Change {
    /// Whether a follower must read every member's record for this change, rather than only
    /// its own records, the ring and the leader: the leadership changed, a key stek does not
    /// know appeared, or the backend did not say what changed.
    pub fn needs_full_read(&self, node_id: &str) -> bool {
        self.keys.as_ref().is_none_or(|keys| {
            keys.iter().any(|k| {
                k != "ring"
                    && k.strip_prefix("members/") != Some(node_id)
                    && k.strip_prefix(ACKS) != Some(node_id)
                    && k.strip_prefix("alive/") != Some(node_id)
                    && k.strip_prefix(COPIES) != Some(node_id)
            })
        })
    }

    /// Whether a node that does not lead must re-read the keyspace for this change: the ring,
    /// the leadership or its own records changed (its copy included: a member that joins gets
    /// a copy of the stored ring with no ring write after it), or the backend did not say
    /// what. Other members' copies do not count.
    pub fn concerns_follower(&self, node_id: &str) -> bool {
        self.keys.as_ref().is_none_or(|keys| {
            keys.iter().any(|k| {
                k == "ring"
                    || k == "leader"
                    || k.strip_prefix("members/") == Some(node_id)
                    || k.strip_prefix(ACKS) == Some(node_id)
                    || k.strip_prefix("alive/") == Some(node_id)
                    || k.strip_prefix(COPIES) == Some(node_id)
                    || !(k.starts_with("members/")
                        || k.starts_with(ACKS)
                        || k.starts_with("alive/")
                        || k.starts_with("requests/")
                        || k.starts_with(COPIES))
            })
        })
    }
}

/// Notified when something under the prefix changed.
pub trait ChangeStream: Send {
    /// Waits for the next change. An error means: re-read everything and watch again.
    fn changed(&mut self) -> impl Future<Output = Result<Change, CoordError>> + Send;

    /// What the watched keys hold after the changes seen so far, when the watch keeps them
    /// from its events (etcd's carry the values): a snapshot as the matching read
    /// ([`Coordinator::snapshot`] for [`Coordinator::watch`],
    /// [`Coordinator::snapshot_of_member`] for [`Coordinator::watch_member`]) would give,
    /// without reading. `None`: read.
    fn snapshot(&self) -> Option<Snapshot> {
        None
    }

    /// A change this watch has already received, without waiting or asking the store:
    /// `None` when there is none, or when the backend cannot tell without asking (its
    /// changes do not queue: Raft's and the in-memory store's coalesce by themselves). A pass
    /// that takes every queued change first covers them all at once.
    fn queued(&mut self) -> impl Future<Output = Option<Result<Change, CoordError>>> + Send {
        async { None }
    }
}

/// What the node runtime needs from a coordination store.
pub trait Coordinator: Send + Sync + 'static {
    /// The watch handle.
    type Watch: ChangeStream;

    /// Reads everything under the cluster prefix.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, CoordError>> + Send;

    /// Reads what a follower needs: the ring, the leader, and `node_id`'s own member record and
    /// liveness, at one revision, without every other member's record. With N members a ring
    /// change wakes N followers; each reading all N records would cost the store O(N^2). The
    /// default reads everything (a backend whose reads cost the same either way).
    fn snapshot_of_member(
        &self,
        node_id: &str,
    ) -> impl Future<Output = Result<Snapshot, CoordError>> + Send {
        let _ = node_id;
        self.snapshot()
    }

    /// How many member records the store holds, counted without reading them, where that is
    /// cheaper than [`Coordinator::snapshot`] (`None`: the backend does not count apart). A
    /// follower that starts sizes the window of its first full read by it: a few members read
    /// everything at once, a thousand spread their reads over `FULL_READ`.
    fn member_count(&self) -> impl Future<Output = Result<Option<usize>, CoordError>> + Send {
        std::future::ready(Ok(None))
    }

    /// How many members the store holds and how many of them are live, counted without reading
    /// a record (`None`: the backend does not count apart). A follower of a large cluster
    /// takes its membership figures from this rather than read every member's record.
    fn member_counts(
        &self,
    ) -> impl Future<Output = Result<Option<MemberCounts>, CoordError>> + Send {
        std::future::ready(Ok(None))
    }

    /// Watches the prefix for changes after `revision`.
    fn watch(&self, revision: i64) -> impl Future<Output = Result<Self::Watch, CoordError>> + Send;

    /// Watches, after `revision`, only what concerns follower `node_id`: the ring, the leader
    /// and its own records. With N members a rotation brings N acknowledgements; a prefix watch
    /// on every node would carry N^2 events. The default watches everything.
    fn watch_member(
        &self,
        revision: i64,
        node_id: &str,
    ) -> impl Future<Output = Result<Self::Watch, CoordError>> + Send {
        let _ = node_id;
        self.watch(revision)
    }

    /// Grants a liveness lease.
    fn grant_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseId, CoordError>> + Send;

    /// Keeps a lease alive until the returned handle is dropped; the receiver fires with a
    /// reason once the lease is lost.
    fn keep_alive(
        &self,
        lease: LeaseId,
        ttl: Duration,
    ) -> impl Future<Output = Result<KeepAlive, CoordError>> + Send;

    /// Marks the member live under `lease` and writes its record. Refused with
    /// [`CoordError::Held`] while another live lease holds the node id for a process of
    /// another instance (a second box with the same `node_id`); a restarted process of the
    /// same box (the same instance, kept in its state directory) takes its node id over at
    /// once.
    fn register(
        &self,
        lease: LeaseId,
        member: &MemberRecord,
    ) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Writes the member's record (its acknowledgement).
    fn ack(&self, member: &MemberRecord) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Tries to take the leadership under `lease`; `None` if someone holds it.
    fn campaign(
        &self,
        lease: LeaseId,
        node_id: &str,
    ) -> impl Future<Output = Result<Option<Term>, CoordError>> + Send;

    /// Writes a sealed ring, fenced by `term` and by `ring_revision` (the revision of the ring
    /// the decision was made on, [`Snapshot::ring_revision`]; 0: there was none), and removes
    /// the rotation requests it served. A write whose term is gone is refused with
    /// [`CoordError::Fenced`]; one whose ring changed meanwhile with [`CoordError::Conflict`].
    /// Returns the store revision of the write.
    fn write_ring(
        &self,
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> impl Future<Output = Result<i64, CoordError>> + Send;

    /// Stores copy records (member, [`records::encode_copies`]) of the stored ring for members
    /// that lack one, without writing the ring: fenced like [`Coordinator::write_ring`] on
    /// `term` and on the ring still being the one written at `ring_revision`, so a copy never
    /// lands beside a ring it was not sealed for. Each replaces that member's copy record.
    /// Returns the store revision of the write.
    fn write_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> impl Future<Output = Result<i64, CoordError>> + Send;

    /// Removes `node_id`'s member record, fenced by `term`, if no liveness lease holds for it
    /// (a dead member's record, kept for `stek status`, goes after a grace period). `Ok(false)`
    /// when it is live again or already gone.
    fn forget_member(
        &self,
        term: Term,
        node_id: &str,
    ) -> impl Future<Output = Result<bool, CoordError>> + Send;

    /// Makes every version of every record older than `revision` unreadable, where the store
    /// keeps such history (etcd's compaction). Records current at `revision` stay. `Ok(true)`:
    /// no older version is readable now; `Ok(false)`: the store does this on its own (the Raft
    /// peers purge their logs after every write that drops keys, whoever asks).
    fn purge_history(&self, revision: i64)
        -> impl Future<Output = Result<bool, CoordError>> + Send;

    /// Gives up the leadership if `term` still holds it.
    fn resign(&self, term: Term) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Ends a lease at once (its keys disappear).
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Asks the leader to rotate now, signed by `signer` when given (a leader with
    /// `[identity]` acts only on signed requests); returns the request's key.
    fn request_rotation(
        &self,
        by: &str,
        signer: Option<&identity::Credentials>,
    ) -> impl Future<Output = Result<String, CoordError>> + Send;
}

/// A running lease keep-alive. Dropping it stops the keep-alive.
#[derive(Debug)]
pub struct KeepAlive {
    /// Fires once, with the reason, when the lease is lost.
    pub lost: tokio::sync::oneshot::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one attempt to renew a lease found.
#[derive(Debug)]
pub enum Renewal {
    /// Renewed, as of this instant (a Raft leader's renewal is worth no more than its last
    /// word from a quorum).
    Renewed(tokio::time::Instant),
    /// The store says the lease is gone.
    Gone,
    /// No answer (the store unreachable, a stream broken): try again.
    Failed,
}

/// One backend's way to renew one lease once.
pub trait Renew: Send + 'static {
    /// Tries once to renew the lease.
    fn renew(&mut self) -> impl Future<Output = Renewal> + Send;
}

impl KeepAlive {
    /// Renews through `renewer` every `ttl`/3 until the lease is lost: the store says it is
    /// gone, or a whole `ttl` passed without a renewal (transient failures are retried until
    /// then). The one keep-alive loop of every backend.
    pub fn run(mut renewer: impl Renew, ttl: Duration) -> Self {
        let (tx, lost) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let period = (ttl / 3).max(Duration::from_millis(100));
            let mut last_ok = tokio::time::Instant::now();
            let reason = loop {
                let left = ttl.saturating_sub(last_ok.elapsed());
                if left.is_zero() {
                    break format!("no renewal for {ttl:?}: the lease has expired");
                }
                // A renewal that cannot finish before the lease ends is a lost lease: a box
                // cut off from the store must see that within the TTL.
                match tokio::time::timeout(left, renewer.renew()).await {
                    Ok(Renewal::Renewed(at)) => last_ok = last_ok.max(at),
                    Ok(Renewal::Gone) => break "the store says the lease has expired".to_owned(),
                    Ok(Renewal::Failed) | Err(_) => {}
                }
                tokio::time::sleep(period.min(ttl.saturating_sub(last_ok.elapsed()))).await;
            };
            let _ = tx.send(reason);
        });
        Self { lost, task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_reads_again_only_for_what_concerns_it() {
        let change = |keys: &[&str]| Change {
            revision: 1,
            keys: Some(keys.iter().map(|k| (*k).to_owned()).collect()),
        };
        for quiet in [
            &["members/n2"][..],
            &["alive/n3", "members/n3"],
            &["requests/0001-ab"],
            &["ring/copies/n2"],
            &["acks/n2"],
        ] {
            assert!(!change(quiet).concerns_follower("n1"), "{quiet:?}");
        }
        for loud in [
            &["ring"][..],
            &["leader"],
            &["members/n1"],
            &["alive/n1"],
            &["members/n2", "ring"],
            &["ring/copies/n1"],
            &["acks/n1"],
            &["nonsense"],
        ] {
            assert!(change(loud).concerns_follower("n1"), "{loud:?}");
        }
        let unknown = Change {
            revision: 1,
            keys: None,
        };
        assert!(unknown.concerns_follower("n1"));
        assert!(unknown.needs_full_read("n1"));
        for own in [
            &["ring"][..],
            &["members/n1"],
            &["alive/n1", "ring"],
            &["ring/copies/n1"],
            &["acks/n1"],
        ] {
            assert!(!change(own).needs_full_read("n1"), "{own:?}");
        }
        for full in [&["leader"][..], &["ring", "leader"], &["nonsense"]] {
            assert!(change(full).needs_full_read("n1"), "{full:?}");
        }
    }

    #[test]
    fn an_unreadable_request_is_rejected_and_never_taken_as_a_request() {
        let good = RequestRecord::new_keyed("/stek/c/", "cli@a");
        let raw = RawSnapshot {
            requests: vec![
                ("/stek/c/requests/bad".into(), b"\x01\x02".to_vec()),
                (good.0.clone(), good.1.encode()),
            ],
            ..RawSnapshot::default()
        };
        let snap = raw.check();
        assert_eq!(snap.requests, vec![good.0.clone()]);
        assert_eq!(snap.requested_by, vec![(good.0, "cli@a".to_owned())]);
        assert_eq!(
            snap.unreadable_requests,
            vec!["/stek/c/requests/bad".to_owned()]
        );
        assert_eq!(snap.rejected.len(), 1);
        assert_eq!(snap.rejected[0].0, "/stek/c/requests/bad");

        let only_bad = RawSnapshot {
            requests: vec![("/stek/c/requests/bad".into(), b"{".to_vec())],
            ..RawSnapshot::default()
        }
        .check();
        assert!(
            only_bad.requests.is_empty(),
            "a malformed request must not rotate"
        );
    }

    fn member(id: &str, applied: u64, digest: Option<String>) -> Member {
        Member {
            record: MemberRecord {
                node_id: id.into(),
                version: String::new(),
                targets: Vec::new(),
                applied_generation: applied,
                last_error: None,
                updated_at_ms: 0,
                public_key: None,
                unsealable_generation: None,
                certificate: None,
                key_signature: None,
                applied_digest: digest,
                floor_generation: None,
                instance: None,
                floor_digest: None,
            },
            live: true,
        }
    }

    /// After a rollback or an aliasing write (an etcd restore, a lost write, a deleted ring),
    /// an acknowledgement counts only for the ring it names.
    #[test]
    fn an_acknowledgement_counts_only_for_the_ring_it_names() {
        use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
        let p = Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        };
        let stored_ring = KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &p,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap()
        .renumbered(5);
        let other = KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &p,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap()
        .renumbered(5);
        let stored = StoredRing::seal("c", &stored_ring, &p, "a", &[]).0;
        let snap = Snapshot {
            revision: 1,
            leader: None,
            ring: RingSlot::Valid(stored),
            ring_revision: 1,
            members: vec![
                member("same", 5, Some(stored_ring.digest().to_string())),
                member("other-ring", 5, Some(other.digest().to_string())),
                member("no-digest", 5, None),
                member("older", 4, Some(other.digest().to_string())),
                member("newer", 9, Some(other.digest().to_string())),
            ],
            requests: Vec::new(),
            unreadable_requests: Vec::new(),
            requested_by: Vec::new(),
            request_records: Vec::new(),
            rejected: Vec::new(),
            partial: false,
            refused: Vec::new(),
        };
        let views = snap.member_views();
        let applied = |id: &str| {
            let v = views.iter().find(|v| v.id == id).unwrap();
            (v.applied_generation, v.last_error.is_some())
        };
        assert_eq!(applied("same"), (5, false));
        assert_eq!(
            applied("other-ring"),
            (0, true),
            "same generation, other keys"
        );
        assert_eq!(applied("no-digest"), (0, true), "an ack that names no ring");
        assert_eq!(
            applied("older"),
            (0, false),
            "an older ring does not count for this one: which keys it held is unknown"
        );
        assert_eq!(
            applied("newer"),
            (0, true),
            "a ring the store no longer holds"
        );
    }

    #[test]
    fn a_second_process_is_told_from_a_restart_by_its_instance() {
        let mut rec = member("n1", 0, None).record;
        rec.instance = Some("00aa11bb22cc33dd".into());
        let holder = holder_of(&rec);
        assert!(holder.contains("pid"), "{holder}");
        assert!(same_holder(&holder, &rec));
        // The sealing key ratchets; the instance does not.
        rec.public_key = Some(seal::Identity::generate().public().to_base64());
        assert!(same_holder(&holder, &rec));
        let mut other = rec.clone();
        other.instance = Some("ffee".into());
        assert!(!same_holder(&holder, &other));
        let mut anonymous = rec.clone();
        anonymous.instance = None;
        assert!(!same_holder(&holder, &anonymous));
        assert!(!same_holder(&holder_of(&anonymous), &anonymous));
        assert!(!same_holder("garbage", &rec));
        let forged = shown_holder(b"x\n2026-01-01T00:00:00Z  INFO audit: forged\x1b[0m");
        assert!(!forged.chars().any(char::is_control), "{forged:?}");
        assert!(shown_holder(&[b'a'; 5000]).len() <= 200);
    }
}
