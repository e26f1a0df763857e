//! One cluster's keyspace as a pure state machine: revisions, leases, the leader slot, the
//! ring and its copies, member records and rotation requests, and the rules every write is
//! checked against. The embedded Raft group applies its log to it (`stek_raft::store`);
//! the in-memory test store (`memory`, feature `testing`) applies its calls to it directly.
//! No clock, no I/O: lease deadlines are kept by whoever runs it (the Raft leader's lease
//! clock, the in-memory store), which ends a lease by applying [`Command::Revoke`].
//!
//! # The rules
//!
//! etcd is the reference: `etcd.rs` implements each rule as a transaction compare, named here
//! beside the rule. The conformance suite (`cluster-tests/src/conformance.rs`) checks every
//! rule, one property each, against etcd, the Raft group and the in-memory store.
//!
//! | write | refused when | answer | etcd compare |
//! |---|---|---|---|
//! | leader writes (ring, copies, forget) | the leader slot's term is not the writer's | [`Applied::Fenced`] | `create_revision(leader) == term` |
//! | ring, copies | the ring's revision is not the one the decision read | [`Applied::Stale`] | `mod_revision(ring) == ring_revision` |
//! | ring | (none: a replay of the write that landed) the stored ring is byte for byte this term's write | [`Applied::Ok`] at the revision it landed | a failed compare, then `value(ring) == record` |
//! | register, campaign | the lease does not exist | [`Applied::NoLease`] | etcd's "requested lease not found" |
//! | register | another live lease holds the node id for another instance | [`Applied::Held`] | `create_revision(alive/<id>) == 0`, else the holder is read |
//! | campaign | someone leads | [`Applied::NotElected`] | `create_revision(leader) == 0` |
//! | forget | the member is live, or has no record | [`Applied::Stale`] | `create_revision(alive/<id>) == 0`, `create_revision(members/<id>) > 0` |
//! | resign | the term is not the leader's | (nothing changes) | `create_revision(leader) == term` |
//!
//! Every write that is not refused returns the revision it was applied at
//! ([`Outcome::revision`]), the revision a later read shows it at.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::bytes;
use crate::records::{self, MemberRecord, StoredRing};
use crate::{CoordError, Leader, LeaseId, RawSnapshot, Term};

/// A change to the keyspace (an entry of the Raft log: its serialised form must stay
/// readable by later versions).
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
        #[serde(with = "bytes")]
        value: Vec<u8>,
        /// Who registers ([`crate::holder_of`]): a second process with another sealing key is
        /// refused while the first one's lease lives.
        #[serde(default)]
        holder: Option<String>,
    },
    /// A member's record (its acknowledgement).
    PutMember {
        /// The node id.
        node_id: String,
        /// The encoded member record.
        #[serde(with = "bytes")]
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
    /// The leader's ring write, fenced on its term and on the ring it was decided on.
    WriteRing {
        /// The writer's term.
        term: u64,
        /// The encoded ring record.
        #[serde(with = "bytes")]
        value: Vec<u8>,
        /// Rotation requests the write serves (deleted with it).
        served: Vec<String>,
        /// The ring revision the decision read ([`Keyspace::ring_revision`]): a write decided
        /// on another ring is refused. `None` only in log entries of a stek before this
        /// compare-and-swap, which refused instead a ring not newer than the stored one.
        #[serde(default)]
        expected: Option<u64>,
        /// The members' sealed copies (node id to encoded copy record): they replace every
        /// copy stored, in the same entry as the ring.
        #[serde(default, with = "bytes::map")]
        copies: BTreeMap<String, Vec<u8>>,
    },
    /// Copies of the stored ring for members that lack one (a member that joined), fenced on
    /// the leader's term and on the ring being the one the leader read: each replaces that
    /// member's copy record; the ring and every other copy stay.
    WriteCopies {
        /// The writer's term.
        term: u64,
        /// The ring revision the copies were sealed for ([`Keyspace::ring_revision`]).
        expected: u64,
        /// Node id to encoded copy record.
        #[serde(with = "bytes::map")]
        copies: BTreeMap<String, Vec<u8>>,
    },
    /// Removes a dead member's record (the leader's, fenced on its term).
    ForgetMember {
        /// The writer's term.
        term: u64,
        /// The member.
        node_id: String,
    },
    /// A rotation request.
    PutRequest {
        /// The request's key.
        key: String,
        /// The encoded request record.
        #[serde(with = "bytes")]
        value: Vec<u8>,
        /// Who sent it, as the Raft peer that took it knows from the caller's certificate
        /// (`member <id>`, `operator <name>`), whatever the record claims; `None` from a
        /// caller every peer trusts (this node's own socket, `insecure`, tests). Requests
        /// pending by one sender are bounded ([`Bounds::REQUESTS_BY_ONE`]).
        #[serde(default)]
        by: Option<String>,
    },
}

impl Debug for Command {
    // The ring value holds key bytes: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::WriteRing { term, served, .. } => {
                write!(f, "WriteRing {{ term: {term}, served: {} }}", served.len())
            }
            Command::WriteCopies { term, copies, .. } => {
                write!(
                    f,
                    "WriteCopies {{ term: {term}, copies: {} }}",
                    copies.len()
                )
            }
            Command::Grant { lease, ttl_ms } => write!(f, "Grant {{ {lease}, {ttl_ms} ms }}"),
            Command::Revoke { lease } => write!(f, "Revoke {{ {lease} }}"),
            Command::Register { lease, node_id, .. } => {
                write!(f, "Register {{ {node_id}, {lease} }}")
            }
            Command::PutMember { node_id, .. } => write!(f, "PutMember {{ {node_id} }}"),
            Command::Campaign { lease, node_id } => write!(f, "Campaign {{ {node_id}, {lease} }}"),
            Command::Resign { term } => write!(f, "Resign {{ {term} }}"),
            Command::PutRequest { key, by, .. } => write!(f, "PutRequest {{ {key}, {by:?} }}"),
            Command::ForgetMember { term, node_id } => {
                write!(f, "ForgetMember {{ {node_id}, {term} }}")
            }
        }
    }
}

/// A store revision as the [`crate::Coordinator`] trait carries it.
fn signed(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// A revision or term from the [`crate::Coordinator`] trait, as the keyspace keeps it (a
/// negative one names nothing the keyspace holds: 0).
fn unsigned(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

impl Command {
    /// `member`'s registration under `lease`.
    pub fn register(lease: LeaseId, member: &MemberRecord) -> Self {
        Command::Register {
            lease: lease.0,
            node_id: member.node_id.clone(),
            value: member.encode(),
            holder: Some(crate::holder_of(member)),
        }
    }

    /// `member`'s acknowledgement.
    pub fn ack(member: &MemberRecord) -> Self {
        Command::PutMember {
            node_id: member.node_id.clone(),
            value: member.encode(),
        }
    }

    /// A ring write ([`crate::Coordinator::write_ring`]).
    pub fn write_ring(
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> Self {
        Command::WriteRing {
            term: unsigned(term.0),
            value: records::encode_ring(ring),
            served: served_requests.to_vec(),
            expected: Some(unsigned(ring_revision)),
            copies: ring.copy_records().into_iter().collect(),
        }
    }

    /// A write of more copies ([`crate::Coordinator::write_copies`]).
    pub fn write_copies(term: Term, ring_revision: i64, copies: &[(String, Vec<u8>)]) -> Self {
        Command::WriteCopies {
            term: unsigned(term.0),
            expected: unsigned(ring_revision),
            copies: copies.iter().cloned().collect(),
        }
    }

    /// Forgetting a dead member ([`crate::Coordinator::forget_member`]).
    pub fn forget_member(term: Term, node_id: &str) -> Self {
        Command::ForgetMember {
            term: unsigned(term.0),
            node_id: node_id.to_owned(),
        }
    }

    /// Giving up the leadership of `term`.
    pub fn resign(term: Term) -> Self {
        Command::Resign {
            term: unsigned(term.0),
        }
    }

    /// The bounds a command breaks on its own, whatever the keyspace holds: a record, key or
    /// holder too large, a request key outside `requests/`. Every replica checks it when it
    /// applies; a Raft peer checks it before it proposes, so that what breaks it never reaches
    /// the log.
    pub fn within_bounds(&self) -> Result<(), Applied> {
        let too_big = |what: String, len: usize, bound: usize| {
            if len > bound {
                Err(Applied::Bounded(format!(
                    "{what} is {len} bytes, above the bound of {bound}"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            Command::Register {
                node_id,
                value,
                holder,
                ..
            } => {
                too_big("a node id".to_owned(), node_id.len(), Bounds::NAME_BYTES)?;
                too_big(
                    format!("member {node_id}'s record"),
                    value.len(),
                    Bounds::MEMBER_BYTES,
                )?;
                let holder = holder.as_deref().map_or(0, str::len);
                too_big(
                    format!("member {node_id}'s holder"),
                    holder,
                    Bounds::NAME_BYTES,
                )
            }
            Command::PutMember { node_id, value } => {
                too_big("a node id".to_owned(), node_id.len(), Bounds::NAME_BYTES)?;
                too_big(
                    format!("member {node_id}'s record"),
                    value.len(),
                    Bounds::MEMBER_BYTES,
                )
            }
            Command::PutRequest { key, value, .. } => {
                let under_requests = key.starts_with("requests/") || key.contains("/requests/");
                if key.len() > Bounds::NAME_BYTES || !under_requests {
                    return Err(Applied::Bounded(format!(
                        "a rotation request's key must be under requests/ and at most {} bytes; this one is {} bytes",
                        Bounds::NAME_BYTES,
                        key.len()
                    )));
                }
                too_big(
                    format!("rotation request {key}"),
                    value.len(),
                    Bounds::REQUEST_BYTES,
                )
            }
            _ => Ok(()),
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
    /// Refused: the ring is not the one the write was decided on (or, for a member to forget:
    /// it is live or gone already).
    Stale,
    /// Refused: the lease does not exist (expired or revoked).
    NoLease,
    /// Refused: another live process holds the node id (its holder).
    Held(String),
    /// Refused: the lease is another member's (it registered under it), or, for a campaign,
    /// not the campaigner's own: why.
    NotYours(String),
    /// Refused: the write breaks a bound of the keyspace ([`Bounds`]): which, and by how much.
    Bounded(String),
}

/// What applying a command did, and at which revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// What it did.
    pub applied: Applied,
    /// The revision of the write: the one it was applied at, or, for a replay of a ring write
    /// that landed, the one the ring was written at. For a refusal, the keyspace's revision.
    pub revision: u64,
}

impl Outcome {
    /// A leader write's answer ([`crate::Coordinator::write_ring`],
    /// [`crate::Coordinator::write_copies`]): its revision, or why it was refused.
    pub fn written(self, term: Term) -> Result<i64, CoordError> {
        match self.applied {
            Applied::Ok => Ok(signed(self.revision)),
            Applied::Stale => Err(CoordError::Conflict),
            _ => Err(CoordError::Fenced(term)),
        }
    }

    /// A registration's answer.
    pub fn registered(self, node_id: &str) -> Result<(), CoordError> {
        match self.applied {
            Applied::NoLease => Err(CoordError::LeaseExpired),
            Applied::Held(holder) => Err(CoordError::Held {
                node_id: node_id.to_owned(),
                holder: crate::shown_holder(holder.as_bytes()),
            }),
            Applied::NotYours(why) | Applied::Bounded(why) => Err(CoordError::Refused {
                by: "the store".into(),
                reason: why,
            }),
            _ => Ok(()),
        }
    }

    /// An acknowledgement's or a rotation request's answer: refused only for a bound.
    pub fn accepted(self) -> Result<(), CoordError> {
        match self.applied {
            Applied::Bounded(why) => Err(CoordError::Refused {
                by: "the store".into(),
                reason: why,
            }),
            _ => Ok(()),
        }
    }

    /// A campaign's answer: the term won, `None` if someone leads.
    pub fn elected(self) -> Result<Option<Term>, CoordError> {
        match self.applied {
            Applied::Elected(t) => Ok(Some(Term(signed(t)))),
            Applied::NoLease => Err(CoordError::LeaseExpired),
            Applied::NotYours(why) => Err(CoordError::Refused {
                by: "the store".into(),
                reason: why,
            }),
            _ => Ok(None),
        }
    }

    /// Forgetting a member's answer: whether its record was removed.
    pub fn forgotten(self, term: Term) -> Result<bool, CoordError> {
        match self.applied {
            Applied::Ok => Ok(true),
            Applied::Stale => Ok(false),
            _ => Err(CoordError::Fenced(term)),
        }
    }
}

/// A command that passed the rules.
enum Done {
    /// Applied at the next revision.
    Applied(Applied),
    /// Applied before, at this revision: nothing changes.
    Already(u64),
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

/// What the keyspace holds at most, so that no member or operator certificate can grow the
/// replicated state until nobody can read it: every replica refuses a write past a bound
/// ([`Applied::Bounded`]), naming it. A member record with its certificate is about 2 KB, a
/// signed request about 1 KB.
#[derive(Debug)]
pub struct Bounds;

impl Bounds {
    /// The largest member record (registration or acknowledgement).
    pub const MEMBER_BYTES: usize = 16 * 1024;
    /// The largest rotation request record.
    pub const REQUEST_BYTES: usize = 8 * 1024;
    /// Pending rotation requests, in all (a rotation serves them all at once).
    pub const REQUESTS: usize = 256;
    /// Pending rotation requests by one requester (its `requested_by`).
    pub const REQUESTS_BY_ONE: usize = 8;
    /// Member records, live or dead (a dead one is forgotten after `forget_dead_after`).
    pub const MEMBERS: usize = 10_000;
    /// The longest key of a request, and the longest holder string of a registration.
    pub const NAME_BYTES: usize = 512;
}

/// The longest `[rotation] lease_ttl` a node may be configured with (two minutes).
pub const MAX_CONFIGURED_LEASE_TTL_MS: u64 = 2 * 60 * 1000;

/// The longest lease TTL the keyspace keeps: five times the longest a node may be configured
/// with ([`MAX_CONFIGURED_LEASE_TTL_MS`]); a longer one is shortened to it. A member that
/// grants itself a long lease and then stops (or is revoked) blocks rotations as a live
/// member for this long at most, not for the day it asked.
pub const MAX_LEASE_TTL_MS: u64 = 5 * MAX_CONFIGURED_LEASE_TTL_MS;

/// The keyspace (the Raft group's snapshots hold it: its serialised form must stay readable
/// by later versions).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Keyspace {
    /// Grows with every applied change.
    pub revision: u64,
    /// Leases and their TTLs.
    pub leases: BTreeMap<i64, u64>,
    /// Live members: node id to lease.
    pub alive: BTreeMap<String, i64>,
    /// The leadership.
    pub leader: Option<LeaderSlot>,
    /// The ring record.
    #[serde(default, with = "bytes::option")]
    pub ring: Option<Vec<u8>>,
    /// The revision at which `ring` was written (0: never).
    #[serde(default)]
    pub ring_revision: u64,
    /// Who registered each live node id ([`crate::holder_of`]).
    #[serde(default)]
    pub holders: BTreeMap<String, String>,
    /// The generation of `ring`.
    pub ring_generation: Option<u64>,
    /// Member records by node id.
    #[serde(with = "bytes::map")]
    pub members: BTreeMap<String, Vec<u8>>,
    /// The members' sealed copies of the ring's data key, by node id (the records etcd keeps
    /// under `ring/copies/`).
    #[serde(default, with = "bytes::map")]
    pub copies: BTreeMap<String, Vec<u8>>,
    /// Rotation requests by (full) key.
    #[serde(with = "bytes::map")]
    pub requests: BTreeMap<String, Vec<u8>>,
    /// Who sent each pending request that came with a sender (by key).
    #[serde(default)]
    pub request_senders: BTreeMap<String, String>,
}

impl Keyspace {
    /// Applies a command. The revision grows with every command applied, refused ones and a
    /// second grant of a lease id excepted; the Raft group's terms are revisions, so this
    /// counting must stay as it is for a log written by an earlier version to replay the same.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        self.apply_listing(cmd, &mut Vec::new())
    }

    /// [`Keyspace::apply`], adding to `changed` the keys it changed, relative to the cluster
    /// prefix (`ring`, `members/n1`, ...; a request's key as the command names it).
    pub fn apply_listing(&mut self, cmd: &Command, changed: &mut Vec<String>) -> Outcome {
        let next = self.revision + 1;
        let (applied, revision) = match self.rules(cmd, next, changed) {
            Ok(Done::Applied(applied)) => {
                self.revision = next;
                (applied, next)
            }
            Ok(Done::Already(revision)) => (Applied::Ok, revision),
            Err(refused) => (refused, self.revision),
        };
        Outcome { applied, revision }
    }

    /// Checks `cmd` against the rules and, unless it is refused (`Err`) or done already,
    /// applies it at revision `next`.
    fn rules(
        &mut self,
        cmd: &Command,
        next: u64,
        changed: &mut Vec<String>,
    ) -> Result<Done, Applied> {
        cmd.within_bounds()?;
        match cmd {
            Command::Grant { lease, ttl_ms } => {
                // A lease id is granted once (a client may not take over another's), and its
                // TTL is bounded so that no deadline arithmetic can overflow.
                if self.leases.contains_key(lease) {
                    return Ok(Done::Already(self.revision));
                }
                self.leases.insert(*lease, (*ttl_ms).min(MAX_LEASE_TTL_MS));
            }
            Command::Revoke { lease } => {
                if self.leases.remove(lease).is_none() {
                    return Err(Applied::NoLease);
                }
                let ended: Vec<String> = self
                    .alive
                    .iter()
                    .filter(|(_, l)| *l == lease)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in ended {
                    self.alive.remove(&n);
                    self.holders.remove(&n);
                    changed.push(format!("alive/{n}"));
                }
                if self.leader.as_ref().is_some_and(|s| s.lease == *lease) {
                    self.leader = None;
                    changed.push("leader".into());
                }
            }
            Command::Register {
                lease,
                node_id,
                value,
                holder,
            } => {
                self.lease_exists(*lease)?;
                self.member_fits(node_id)?;
                self.lease_is_free_for(*lease, node_id)?;
                self.not_held(*lease, node_id, holder.as_deref())?;
                self.alive.insert(node_id.clone(), *lease);
                if let Some(h) = holder {
                    self.holders.insert(node_id.clone(), h.clone());
                }
                self.members.insert(node_id.clone(), value.clone());
                changed.extend([format!("alive/{node_id}"), format!("members/{node_id}")]);
            }
            Command::PutMember { node_id, value } => {
                self.member_fits(node_id)?;
                self.members.insert(node_id.clone(), value.clone());
                changed.push(format!("members/{node_id}"));
            }
            Command::Campaign { lease, node_id } => {
                if self.leader.is_some() {
                    return Err(Applied::NotElected);
                }
                self.lease_exists(*lease)?;
                // The leadership is bound to the campaigner's own lease: a member cannot tie
                // it to another's (which it could then neither keep alive nor end).
                self.lease_is_free_for(*lease, node_id)?;
                self.leader = Some(LeaderSlot {
                    node_id: node_id.clone(),
                    lease: *lease,
                    term: next,
                });
                changed.push("leader".into());
                return Ok(Done::Applied(Applied::Elected(next)));
            }
            Command::Resign { term } => {
                if self.leader.as_ref().is_some_and(|s| s.term == *term) {
                    self.leader = None;
                    changed.push("leader".into());
                }
            }
            Command::WriteRing {
                term,
                value,
                served,
                expected,
                copies,
            } => {
                self.leads(*term)?;
                if self.is_landed(*term, value) {
                    // A replay of this term's write that landed (its reply was lost): done,
                    // at the revision it landed.
                    return Ok(Done::Already(self.ring_revision));
                }
                let generation = records::decode_ring(value)
                    .ok()
                    .map(|r| r.ring.generation());
                match expected {
                    Some(e) if *e != self.ring_revision => return Err(Applied::Stale),
                    Some(_) => {}
                    // A log entry of a stek before the compare-and-swap: applied as it was.
                    None if generation.is_none() || generation <= self.ring_generation => {
                        return Err(Applied::Stale)
                    }
                    None => {}
                }
                self.ring_generation = generation;
                self.ring = Some(value.clone());
                self.ring_revision = next;
                changed.push("ring".into());
                let gone: Vec<String> = self
                    .copies
                    .keys()
                    .filter(|m| !copies.contains_key(*m))
                    .cloned()
                    .collect();
                changed.extend(gone.iter().map(|m| crate::copy_key(m)));
                changed.extend(copies.keys().map(|m| crate::copy_key(m)));
                self.copies = copies.clone();
                for k in served {
                    self.request_senders.remove(k);
                    if self.requests.remove(k).is_some() {
                        changed.push(k.clone());
                    }
                }
            }
            Command::WriteCopies {
                term,
                expected,
                copies,
            } => {
                self.leads(*term)?;
                if *expected != self.ring_revision {
                    return Err(Applied::Stale);
                }
                for (m, c) in copies {
                    self.copies.insert(m.clone(), c.clone());
                    changed.push(crate::copy_key(m));
                }
            }
            Command::ForgetMember { term, node_id } => {
                self.leads(*term)?;
                if self.alive.contains_key(node_id) || self.members.remove(node_id).is_none() {
                    return Err(Applied::Stale);
                }
                changed.push(format!("members/{node_id}"));
                if self.copies.remove(node_id).is_some() {
                    changed.push(crate::copy_key(node_id));
                }
            }
            Command::PutRequest { key, value, by } => {
                self.request_fits(key, by.as_deref())?;
                if let Some(by) = by {
                    self.request_senders.insert(key.clone(), by.clone());
                }
                self.requests.insert(key.clone(), value.clone());
                changed.push(key.clone());
            }
        }
        Ok(Done::Applied(Applied::Ok))
    }

    /// Leader writes: `term` holds the leader slot.
    fn leads(&self, term: u64) -> Result<(), Applied> {
        match &self.leader {
            Some(s) if s.term == term => Ok(()),
            _ => Err(Applied::Fenced),
        }
    }

    /// Register and campaign: the lease exists.
    fn lease_exists(&self, lease: i64) -> Result<(), Applied> {
        if self.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(Applied::NoLease)
        }
    }

    /// A member record: not a new member past [`Bounds::MEMBERS`] (its size is
    /// [`Command::within_bounds`]'s).
    fn member_fits(&self, node_id: &str) -> Result<(), Applied> {
        if !self.members.contains_key(node_id) && self.members.len() >= Bounds::MEMBERS {
            return Err(Applied::Bounded(format!(
                "the store holds {} member records already, its bound",
                Bounds::MEMBERS
            )));
        }
        Ok(())
    }

    /// A rotation request: neither past [`Bounds::REQUESTS`] pending nor past
    /// [`Bounds::REQUESTS_BY_ONE`] by its sender (as the peer that took it knows it: what the
    /// record claims could name anyone); its size is [`Command::within_bounds`]'s.
    fn request_fits(&self, key: &str, by: Option<&str>) -> Result<(), Applied> {
        if self.requests.contains_key(key) {
            return Ok(());
        }
        if self.requests.len() >= Bounds::REQUESTS {
            return Err(Applied::Bounded(format!(
                "{} rotation requests are pending already, the bound: the next rotation serves them",
                Bounds::REQUESTS
            )));
        }
        if let Some(who) = by {
            let theirs = self.request_senders.values().filter(|s| *s == who).count();
            if theirs >= Bounds::REQUESTS_BY_ONE {
                return Err(Applied::Bounded(format!(
                    "{who} has {theirs} rotation requests pending already, the bound for one requester: the next rotation serves them"
                )));
            }
        }
        Ok(())
    }

    /// Register and campaign: no other member is registered under `lease`: a liveness lease
    /// is one member's (another that registered or campaigned under it could renew or end
    /// that member's liveness, or tie the leadership to it).
    fn lease_is_free_for(&self, lease: i64, node_id: &str) -> Result<(), Applied> {
        match self.alive.iter().find(|(n, l)| **l == lease && *n != node_id) {
            Some((other, _)) => Err(Applied::NotYours(format!(
                "lease {lease} is member {other}'s; member {node_id} must register under a lease of its own"
            ))),
            None => Ok(()),
        }
    }

    /// Register: no other live lease holds `node_id` for a process of another instance.
    fn not_held(&self, lease: i64, node_id: &str, holder: Option<&str>) -> Result<(), Applied> {
        let held = self
            .alive
            .get(node_id)
            .filter(|l| **l != lease && self.leases.contains_key(l))
            .map(|_| self.holders.get(node_id).cloned().unwrap_or_default());
        let Some(held) = held else { return Ok(()) };
        let key = |h: &str| crate::holder_key(h).map(str::to_owned);
        let same = key(&held).is_some() && key(&held) == holder.and_then(key);
        if same {
            Ok(())
        } else {
            Err(Applied::Held(held))
        }
    }

    /// Whether the stored ring is, byte for byte, a ring written in `term` equal to `value`.
    fn is_landed(&self, term: u64, value: &[u8]) -> bool {
        let written_in = |v: &[u8]| records::decode_ring(v).ok().map(|r| r.term);
        self.ring.as_deref() == Some(value) && written_in(value) == i64::try_from(term).ok()
    }

    /// What a read of the keyspace shows, under the cluster prefix `prefix`.
    pub fn raw_snapshot(&self, prefix: &str) -> RawSnapshot {
        RawSnapshot {
            revision: signed(self.revision),
            leader: self.leader.as_ref().map(|s| Leader {
                node_id: s.node_id.clone(),
                term: Term(signed(s.term)),
                lease: LeaseId(s.lease),
            }),
            ring: self.ring.clone().map(|v| (format!("{prefix}ring"), v)),
            ring_revision: signed(self.ring_revision),
            alive: self.alive.keys().cloned().collect::<BTreeSet<_>>(),
            members: self
                .members
                .iter()
                .map(|(id, v)| (format!("{prefix}members/{id}"), id.clone(), v.clone()))
                .collect(),
            // Each member's record is kept whole: no key is sent to every node.
            acks: Vec::new(),
            copies: self
                .copies
                .iter()
                .map(|(id, v)| {
                    (
                        format!("{prefix}{}", crate::copy_key(id)),
                        id.clone(),
                        v.clone(),
                    )
                })
                .collect(),
            requests: self
                .requests
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            unknown: Vec::new(),
            partial: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};

    fn ap(d: &mut Keyspace, c: &Command) -> Applied {
        d.apply(c).applied
    }

    /// Registers `node_id` under `lease`, as a member does before it campaigns.
    fn reg(d: &mut Keyspace, lease: i64, node_id: &str) -> Applied {
        ap(
            d,
            &Command::Register {
                lease,
                node_id: node_id.into(),
                value: b"rec".to_vec(),
                holder: None,
            },
        )
    }

    fn policy() -> Policy {
        Policy {
            interval: std::time::Duration::from_secs(60),
            retain: 1,
        }
    }

    fn ring(generation: u64) -> KeyRing {
        KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &policy(),
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap()
        .renumbered(generation)
    }

    /// A ring record written in `term`.
    fn record_in(term: u64, r: &KeyRing) -> Vec<u8> {
        let mut stored = crate::StoredRing::seal("c", r, &policy(), "a", &[]).0;
        stored.term = i64::try_from(term).unwrap();
        records::encode_ring(&stored)
    }

    /// A keyspace where member a leads under lease 1 (the term returned) and lease 2 exists.
    fn led() -> (Keyspace, u64) {
        let mut d = Keyspace::default();
        for lease in [1, 2] {
            ap(
                &mut d,
                &Command::Grant {
                    lease,
                    ttl_ms: 3000,
                },
            );
        }
        reg(&mut d, 1, "a");
        let Applied::Elected(term) = ap(
            &mut d,
            &Command::Campaign {
                lease: 1,
                node_id: "a".into(),
            },
        ) else {
            panic!("a is elected")
        };
        (d, term)
    }

    fn write_on(term: u64, expected: u64, value: Vec<u8>) -> Command {
        Command::WriteRing {
            term,
            value,
            served: vec![],
            expected: Some(expected),
            copies: BTreeMap::from([("m".to_owned(), b"copy".to_vec())]),
        }
    }

    #[test]
    fn leadership_is_lease_bound_and_ring_writes_are_fenced_on_its_term() {
        use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
        let p = Policy {
            interval: std::time::Duration::from_secs(60),
            retain: 1,
        };
        let r1 = KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &p,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
        let r2 = r1
            .rotated(
                std::time::SystemTime::now(),
                &p,
                &mut OsKeySource,
                &KeyHistory::new(),
            )
            .unwrap();
        let enc = |term: u64, r: &KeyRing| {
            let mut stored = crate::StoredRing::seal("c", r, &p, "a", &[]).0;
            stored.term = i64::try_from(term).unwrap();
            crate::records::encode_ring(&stored)
        };
        let mut d = Keyspace::default();
        assert_eq!(
            ap(
                &mut d,
                &Command::Campaign {
                    lease: 1,
                    node_id: "a".into()
                }
            ),
            Applied::NoLease
        );
        ap(
            &mut d,
            &Command::Grant {
                lease: 1,
                ttl_ms: 3000,
            },
        );
        ap(
            &mut d,
            &Command::Grant {
                lease: 2,
                ttl_ms: 3000,
            },
        );
        reg(&mut d, 1, "a");
        reg(&mut d, 2, "b");
        let Applied::Elected(t1) = ap(
            &mut d,
            &Command::Campaign {
                lease: 1,
                node_id: "a".into(),
            },
        ) else {
            panic!("a is elected")
        };
        assert_eq!(
            ap(
                &mut d,
                &Command::Campaign {
                    lease: 2,
                    node_id: "b".into()
                }
            ),
            Applied::NotElected
        );
        let write = |term, r: &KeyRing| Command::WriteRing {
            term,
            value: enc(term, r),
            served: vec![],
            expected: None,
            copies: BTreeMap::new(),
        };
        let first = write(t1, &r1);
        assert_eq!(ap(&mut d, &first), Applied::Ok);
        let rev = d.revision;
        assert_eq!(
            ap(&mut d, &first),
            Applied::Ok,
            "a retry of a write that landed is no conflict"
        );
        assert_eq!(d.revision, rev, "and changes nothing");
        let other_r1 = KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &p,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
        assert_eq!(
            ap(&mut d, &write(t1, &other_r1)),
            Applied::Stale,
            "another ring of the same generation is not newer"
        );
        let on = |expected, r: &KeyRing| Command::WriteRing {
            term: t1,
            value: enc(t1, r),
            served: vec![],
            expected: Some(expected),
            copies: BTreeMap::new(),
        };
        let older = d.ring_revision - 1;
        assert_eq!(
            ap(&mut d, &on(older, &r2)),
            Applied::Stale,
            "a write decided on an older ring is refused"
        );
        assert_eq!(d.ring_generation, Some(1));
        ap(&mut d, &Command::Revoke { lease: 1 });
        assert!(d.leader.is_none(), "revoking the lease ends the leadership");
        let Applied::Elected(t2) = ap(
            &mut d,
            &Command::Campaign {
                lease: 2,
                node_id: "b".into(),
            },
        ) else {
            panic!("b is elected")
        };
        assert!(t2 > t1);
        assert_eq!(
            ap(&mut d, &write(t1, &r2)),
            Applied::Fenced,
            "the deposed leader is fenced"
        );
        assert_eq!(ap(&mut d, &write(t2, &r2)), Applied::Ok);
        assert_eq!(d.ring_generation, Some(2));
    }

    #[test]
    fn command_debug_never_shows_the_ring_value() {
        let c = Command::WriteRing {
            term: 1,
            value: b"SECRET-KEY-BYTES".to_vec(),
            served: vec![],
            expected: None,
            copies: BTreeMap::from([("n1".to_owned(), b"SECRET-COPY".to_vec())]),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    /// A write that lands returns the revision it was applied at, which a read shows; a
    /// replay of it returns that same revision and changes nothing, even after other writes.
    #[test]
    fn a_write_returns_its_revision_and_its_replay_the_same_one() {
        let (mut d, term) = led();
        let value = record_in(term, &ring(1));
        let first = d.apply(&write_on(term, 0, value.clone()));
        assert_eq!(first.applied, Applied::Ok);
        assert_eq!(first.revision, d.revision);
        assert_eq!(
            d.raw_snapshot("/p/").ring_revision,
            i64::try_from(first.revision).unwrap()
        );
        ap(
            &mut d,
            &Command::PutRequest {
                key: "/p/requests/x".into(),
                value: b"r".to_vec(),
                by: None,
            },
        );
        let now = d.revision;
        let replay = d.apply(&write_on(term, 0, value));
        assert_eq!(replay, first, "a replay answers as the write did");
        assert_eq!(d.revision, now, "and takes no revision");
    }

    /// Fencing comes first, as etcd compares the term with everything else: a deposed
    /// leader's replay of a write that landed is fenced, not taken for done.
    #[test]
    fn a_deposed_leaders_replay_is_fenced() {
        let (mut d, term) = led();
        let write = write_on(term, 0, record_in(term, &ring(1)));
        assert_eq!(ap(&mut d, &write), Applied::Ok);
        ap(&mut d, &Command::Resign { term });
        assert_eq!(ap(&mut d, &write), Applied::Fenced);
    }

    /// etcd's rule: the compare-and-swap on the ring's revision decides, not the generation
    /// (a leader puts back the ring it accepted, unchanged, over a replayed one).
    #[test]
    fn a_ring_write_on_the_read_revision_lands_whatever_its_generation() {
        let (mut d, term) = led();
        ap(&mut d, &write_on(term, 0, record_in(term, &ring(5))));
        let at = d.ring_revision;
        assert_eq!(
            ap(&mut d, &write_on(term, at, record_in(term, &ring(5)))),
            Applied::Ok
        );
        assert_eq!(d.ring_generation, Some(5));
        assert_eq!(
            ap(&mut d, &write_on(term, at, record_in(term, &ring(6)))),
            Applied::Stale
        );
    }

    /// Copies land only beside the ring they were sealed for, and only in the leader's term;
    /// with no ring stored, the ring revision they name is 0, as etcd's mod revision of a
    /// missing key.
    #[test]
    fn copies_are_fenced_on_the_term_and_the_ring_revision() {
        let (mut d, term) = led();
        let copies = |expected| Command::WriteCopies {
            term,
            expected,
            copies: BTreeMap::from([("n".to_owned(), b"c".to_vec())]),
        };
        assert_eq!(ap(&mut d, &copies(0)), Applied::Ok);
        ap(&mut d, &write_on(term, 0, record_in(term, &ring(1))));
        assert_eq!(ap(&mut d, &copies(0)), Applied::Stale);
        let at = d.ring_revision;
        assert_eq!(ap(&mut d, &copies(at)), Applied::Ok);
        ap(&mut d, &Command::Revoke { lease: 1 });
        assert_eq!(ap(&mut d, &copies(at)), Applied::Fenced);
    }

    #[test]
    fn a_node_id_is_held_by_its_live_lease_for_its_instance_only() {
        let mut d = Keyspace::default();
        let register = |lease, holder: &str| Command::Register {
            lease,
            node_id: "n".into(),
            value: b"rec".to_vec(),
            holder: Some(holder.into()),
        };
        let first = "instance 00aa on h (pid 1)";
        assert_eq!(ap(&mut d, &register(1, first)), Applied::NoLease);
        for lease in [1, 2] {
            ap(
                &mut d,
                &Command::Grant {
                    lease,
                    ttl_ms: 3000,
                },
            );
        }
        assert_eq!(ap(&mut d, &register(1, first)), Applied::Ok);
        assert_eq!(
            ap(&mut d, &register(1, first)),
            Applied::Ok,
            "again, its own lease"
        );
        assert_eq!(
            ap(&mut d, &register(2, "instance ffee on h (pid 2)")),
            Applied::Held(first.into())
        );
        assert_eq!(
            ap(&mut d, &register(2, "no instance on h (pid 2)")),
            Applied::Held(first.into())
        );
        assert_eq!(
            ap(&mut d, &register(2, "instance 00aa on h (pid 3)")),
            Applied::Ok,
            "a restart of the same box takes it over"
        );
    }

    /// A liveness lease is one member's: another member cannot register under it (it could
    /// then keep a dead member live, or end a live one), and a campaign binds the leadership
    /// only to the campaigner's own lease (a slot tied to another's lease would outlive
    /// stopping, removing and revoking the campaigner).
    #[test]
    fn a_lease_is_one_members_and_a_campaign_is_bound_to_the_campaigners_own() {
        let mut d = Keyspace::default();
        for lease in [1, 2] {
            ap(
                &mut d,
                &Command::Grant {
                    lease,
                    ttl_ms: 3000,
                },
            );
        }
        assert_eq!(reg(&mut d, 1, "victim"), Applied::Ok);
        assert!(
            matches!(reg(&mut d, 1, "attacker"), Applied::NotYours(why) if why.contains("victim")),
            "registering under another member's lease"
        );
        assert_eq!(reg(&mut d, 1, "victim"), Applied::Ok, "its own, again");
        let campaign = |lease, node_id: &str| Command::Campaign {
            lease,
            node_id: node_id.into(),
        };
        assert!(
            matches!(ap(&mut d, &campaign(1, "attacker")), Applied::NotYours(_)),
            "a campaign under the victim's lease"
        );
        assert!(d.leader.is_none(), "no slot was taken");
        assert_eq!(reg(&mut d, 2, "attacker"), Applied::Ok);
        assert!(matches!(
            ap(&mut d, &campaign(2, "attacker")),
            Applied::Elected(_)
        ));
        // Its leadership ends with its own lease.
        ap(&mut d, &Command::Revoke { lease: 2 });
        assert!(d.leader.is_none());
        assert!(matches!(
            ap(&mut d, &campaign(1, "victim")),
            Applied::Elected(_)
        ));
    }

    /// Every bound of the keyspace, one row each: what a member or operator certificate can
    /// write is refused past it, by every replica, with a message that names it; a write that
    /// replaces a record it already holds is not a new one.
    #[test]
    fn every_bound_refuses_what_would_pass_it_and_names_it() {
        let mut d = Keyspace::default();
        ap(
            &mut d,
            &Command::Grant {
                lease: 1,
                ttl_ms: 3000,
            },
        );
        let member = |id: &str, bytes: usize| Command::PutMember {
            node_id: id.into(),
            value: vec![b'x'; bytes],
        };
        assert_eq!(ap(&mut d, &member("m", Bounds::MEMBER_BYTES)), Applied::Ok);
        let big = ap(&mut d, &member("m", Bounds::MEMBER_BYTES + 1));
        assert!(
            matches!(&big, Applied::Bounded(why) if why.contains("member m's record") && why.contains("16384")),
            "{big:?}"
        );
        let register = Command::Register {
            lease: 1,
            node_id: "r".into(),
            value: vec![b'x'; Bounds::MEMBER_BYTES + 1],
            holder: None,
        };
        assert!(matches!(ap(&mut d, &register), Applied::Bounded(_)));
        assert!(
            !d.alive.contains_key("r"),
            "a refused registration leaves nothing"
        );
        // A small record under a huge node id is as large: the node id is bounded too, and
        // the check needs no state (a Raft peer makes it before it proposes).
        let long_id = Command::PutMember {
            node_id: "i".repeat(Bounds::NAME_BYTES + 1),
            value: vec![b'x'; 10],
        };
        assert!(
            matches!(long_id.within_bounds(), Err(Applied::Bounded(why)) if why.contains("a node id")),
            "{long_id:?}"
        );
        assert!(matches!(ap(&mut d, &long_id), Applied::Bounded(_)));
        assert!(member("m", Bounds::MEMBER_BYTES).within_bounds().is_ok());
        let request = |n: usize, by: &str, pad: usize| {
            // The record claims to be alice's: the bound counts by who sent it.
            let record = records::RequestRecord {
                requested_by: "alice".into(),
                requested_at_ms: 1,
                certificate: Some("c".repeat(pad)),
                signature: None,
            };
            Command::PutRequest {
                key: format!("/p/requests/{by}-{n:04}"),
                value: record.encode(),
                by: Some(by.into()),
            }
        };
        for n in 0..Bounds::REQUESTS_BY_ONE {
            assert_eq!(ap(&mut d, &request(n, "mallory", 0)), Applied::Ok);
        }
        let more = ap(&mut d, &request(99, "mallory", 0));
        assert!(
            matches!(&more, Applied::Bounded(why) if why.contains("mallory has 8")),
            "{more:?}"
        );
        assert_eq!(
            ap(&mut d, &request(0, "mallory", 0)),
            Applied::Ok,
            "the same request again is no new one"
        );
        assert!(matches!(
            ap(&mut d, &request(0, "alice", Bounds::REQUEST_BYTES)),
            Applied::Bounded(why) if why.contains("bytes")
        ));
        let mut n = 0;
        while d.requests.len() < Bounds::REQUESTS {
            assert_eq!(
                ap(&mut d, &request(n, &format!("r{}", n / 4), 0)),
                Applied::Ok
            );
            n += 1;
        }
        assert!(matches!(
            ap(&mut d, &request(0, "alice", 0)),
            Applied::Bounded(why) if why.contains("256 rotation requests")
        ));
        assert_eq!(d.requests.len(), Bounds::REQUESTS);
        // A request key of any length, or outside requests/, and a holder of any length.
        let long_key = Command::PutRequest {
            key: format!("/p/requests/{}", "k".repeat(Bounds::NAME_BYTES)),
            value: b"r".to_vec(),
            by: None,
        };
        assert!(matches!(ap(&mut d, &long_key), Applied::Bounded(_)));
        let elsewhere = Command::PutRequest {
            key: "/p/members/x".into(),
            value: b"r".to_vec(),
            by: None,
        };
        assert!(matches!(ap(&mut d, &elsewhere), Applied::Bounded(_)));
        let long_holder = Command::Register {
            lease: 1,
            node_id: "h".into(),
            value: b"rec".to_vec(),
            holder: Some("x".repeat(Bounds::NAME_BYTES + 1)),
        };
        assert!(matches!(ap(&mut d, &long_holder), Applied::Bounded(_)));
        // Member records at their bound.
        let mut full = Keyspace {
            members: (0..Bounds::MEMBERS)
                .map(|i| (format!("m{i}"), b"r".to_vec()))
                .collect(),
            ..Keyspace::default()
        };
        assert!(matches!(
            ap(&mut full, &member("new", 10)),
            Applied::Bounded(_)
        ));
        assert_eq!(
            ap(&mut full, &member("m7", 10)),
            Applied::Ok,
            "an existing one"
        );
    }

    #[test]
    fn only_the_leader_forgets_and_only_the_dead() {
        let (mut d, term) = led();
        let register = |lease, node_id: &str| Command::Register {
            lease,
            node_id: node_id.into(),
            value: b"rec".to_vec(),
            holder: None,
        };
        ap(&mut d, &register(1, "a"));
        ap(&mut d, &register(2, "dead"));
        ap(&mut d, &Command::Revoke { lease: 2 });
        let forget = |node_id: &str| Command::ForgetMember {
            term,
            node_id: node_id.into(),
        };
        assert_eq!(ap(&mut d, &forget("a")), Applied::Stale);
        assert_eq!(ap(&mut d, &forget("dead")), Applied::Ok);
        assert_eq!(ap(&mut d, &forget("dead")), Applied::Stale, "gone already");
        ap(&mut d, &Command::Resign { term });
        ap(&mut d, &Command::Revoke { lease: 1 });
        assert_eq!(ap(&mut d, &forget("a")), Applied::Fenced);
    }

    /// What the in-memory store's watch reports as changed.
    #[test]
    fn every_write_lists_the_keys_it_changed() {
        let (mut d, term) = led();
        let mut changed = Vec::new();
        d.apply_listing(
            &Command::PutRequest {
                key: "/p/requests/r".into(),
                value: b"r".to_vec(),
                by: None,
            },
            &mut changed,
        );
        d.apply_listing(&Command::Revoke { lease: 1 }, &mut changed);
        assert_eq!(changed, ["/p/requests/r", "alive/a", "leader"]);
        changed.clear();
        d.apply_listing(&write_on(term, 0, record_in(term, &ring(1))), &mut changed);
        assert!(changed.is_empty(), "a fenced write changes nothing");
    }
}
