//! Fault sequences as engine scenarios, under simulated time. What real processes add nothing
//! to (decision sequences, timeouts, orderings) is driven here through [`Leading`] alone: three
//! nodes, a model of the store, and a clock that moves only when the simulation moves it. The
//! invariants are checked at every step, not only at the end. `cluster-tests/tests/faults.rs`
//! injects the same faults into real processes, for what only they show (files, reloads, TLS).
//!
//! The model store does what a real one does for these decisions: a revision counter; a
//! leader key bound to a lease, taken only when there is none; leases that end when not
//! renewed for [`TTL`], taking the leader key bound to them; a ring written only under the
//! current leader's term (`Fenced`) and over the ring revision the decision read
//! (`Conflict`); member records, live while their lease holds, with the ring each
//! acknowledged. A node is a [`Leading`] with the ring it holds: a pass reads the store (or,
//! deaf to it, decides on what it heard last), opens and applies the stored ring at once and
//! acknowledges it, then performs its plan as `node/leader.rs` does, feeding each result back.
//!
//! Every ring that lands is checked against the store as it stands (`Store::check_landing`):
//! it is written under the newest term (I3); its generation is above the stored ring's and
//! every live member's (no rollback); a key becomes active only once every live member
//! acknowledged a ring that staged it (I1), and no sooner than an interval after the last
//! activation (no double rotation).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use stek_core::{KeyRing, OsKeySource, RingDigest};
use stek_store::{CoordError, Leader, LeaseId, RingSlot, Snapshot, StoredRing, Term};
use tracing::info;

use super::fixtures::{mono, policy, snap, t, M, NO_HISTORY};
use super::lead::{
    Action, Event, Inputs, Leading, Now, Plan, Refused, Report, Resignation, Settings, BACKOFF_MIN,
};
use super::read::RESYNC;
use super::Held;

/// The nodes, in the order they pass when due at the same instant (n1 wins a tie).
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// A liveness lease ends this long after its last renewal.
const TTL: Duration = Duration::from_secs(10);
/// How often a keep-alive renews (under a third of the TTL, as the runtime does), and the
/// longest step the clock takes.
const TICK: Duration = Duration::from_secs(3);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// More passes than this at one instant: the nodes do not settle.
const MAX_PASSES_AT_ONCE: usize = 64;
/// More actions than this in one pass, follow-ups included: a plan that does not end.
const MAX_ACTIONS_PER_PASS: usize = 32;
/// More steps of the clock than this in one run: time does not move.
const MAX_STEPS: usize = 100_000;

fn settings() -> Settings {
    Settings {
        policy: policy(),
        min_request_interval: MINUTE,
        forget_dead_after: 10 * MINUTE,
        compact_history: true,
    }
}

/// A ring with its digest, hashed once: hashing is most of what the simulation spends its
/// time on in a debug build.
#[derive(Debug, Clone)]
struct Digested {
    ring: KeyRing,
    digest: RingDigest,
}

impl Digested {
    fn new(ring: KeyRing) -> Self {
        let digest = ring.digest();
        Digested { ring, digest }
    }
}

/// The digest of `ring`, if any.
fn digest(ring: Option<&Digested>) -> Option<RingDigest> {
    ring.map(|r| r.digest)
}

/// The ring as the store holds it.
#[derive(Debug)]
struct StoredAt {
    /// With its keys: the model opens it for whoever reads it.
    ring: Digested,
    /// Its record, as a snapshot shows it (sealed once, when it landed).
    record: StoredRing,
    /// The revision that wrote it.
    revision: i64,
}

/// A member's record.
#[derive(Debug)]
struct Record {
    /// The lease its liveness key is bound to: live while it holds.
    lease: LeaseId,
    /// The ring it acknowledged last.
    acked: Option<Digested>,
    /// When, by its clock.
    acked_at: SystemTime,
}

/// A ring write that landed.
#[derive(Debug, Clone)]
struct Landed {
    /// When (offset from the start).
    at: Duration,
    /// Under which term.
    term: Term,
    /// The ring.
    ring: Digested,
    /// It activated a key.
    activated: bool,
}

/// The model store.
#[derive(Debug, Default)]
struct Store {
    revision: i64,
    leader: Option<Leader>,
    /// Each live lease, and when it ends unless renewed.
    leases: BTreeMap<i64, Duration>,
    next_lease: i64,
    ring: Option<StoredAt>,
    members: BTreeMap<&'static str, Record>,
    /// The last term the store granted.
    newest_term: Option<Term>,
    /// Every ring that landed, oldest first.
    landed: Vec<Landed>,
}

impl Store {
    fn next_revision(&mut self) -> i64 {
        self.revision += 1;
        self.revision
    }

    fn live(&self, lease: LeaseId) -> bool {
        self.leases.contains_key(&lease.0)
    }

    fn grant(&mut self, at: Duration) -> LeaseId {
        self.next_lease += 1;
        self.leases.insert(self.next_lease, at + TTL);
        LeaseId(self.next_lease)
    }

    /// Whether `lease` still held, renewed until a TTL after `at`.
    fn renew(&mut self, lease: LeaseId, at: Duration) -> bool {
        match self.leases.get_mut(&lease.0) {
            Some(end) => {
                *end = at + TTL;
                true
            }
            None => false,
        }
    }

    /// Keeps `lease` until `until` whatever its renewals: etcd extends every lease when its
    /// own leader changes, so the store may hold a lease longer than its holder counts.
    fn hold_lease(&mut self, lease: LeaseId, until: Duration) {
        self.leases.insert(lease.0, until);
    }

    /// Ends the leases not renewed for a TTL, with the leader key bound to one; whether
    /// anything changed.
    fn expire(&mut self, at: Duration) -> bool {
        let ended: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, end)| **end <= at)
            .map(|(lease, _)| *lease)
            .collect();
        for lease in &ended {
            self.leases.remove(lease);
            if self.leader.as_ref().is_some_and(|l| l.lease.0 == *lease) {
                self.leader = None;
            }
            self.next_revision();
        }
        !ended.is_empty()
    }

    /// Keeps `id`'s record as the runtime does: registered under `lease` while it holds, then
    /// acknowledging `held` (a plain write, lease or not). Without a live lease, a member
    /// whose record was forgotten writes nothing.
    fn record(
        &mut self,
        id: &'static str,
        lease: LeaseId,
        held: Option<&Digested>,
        wall: SystemTime,
    ) {
        let live = self.live(lease);
        let changed = match self.members.get_mut(id) {
            None if !live => false,
            None => {
                self.members.insert(
                    id,
                    Record {
                        lease,
                        acked: held.cloned(),
                        acked_at: wall,
                    },
                );
                true
            }
            Some(r) => {
                let registered = live && r.lease != lease;
                if registered {
                    r.lease = lease;
                }
                let acked = digest(r.acked.as_ref()) != digest(held);
                if acked {
                    r.acked = held.cloned();
                    r.acked_at = wall;
                }
                registered || acked
            }
        };
        if changed {
            self.next_revision();
        }
    }

    /// A leader key bound to `lease` for `id`, only if there is none.
    fn campaign(&mut self, lease: LeaseId, id: &str) -> Result<Option<Term>, String> {
        if self.leader.is_some() {
            return Ok(None);
        }
        if !self.live(lease) {
            return Err(format!("lease {} has ended", lease.0));
        }
        let term = Term(self.next_revision());
        self.leader = Some(Leader {
            node_id: id.into(),
            term,
            lease,
        });
        self.newest_term = Some(term);
        Ok(Some(term))
    }

    /// Removes the leader key if it is `term`'s.
    fn resign(&mut self, term: Term) {
        if self.leader.as_ref().is_some_and(|l| l.term == term) {
            self.leader = None;
            self.next_revision();
        }
    }

    fn fence(&self, term: Term) -> Result<(), CoordError> {
        match &self.leader {
            Some(l) if l.term == term => Ok(()),
            _ => Err(CoordError::Fenced(term)),
        }
    }

    fn ring_revision(&self) -> i64 {
        self.ring.as_ref().map_or(0, |r| r.revision)
    }

    /// Removes a dead member's record, fenced on `term`; whether it was removed.
    fn forget(&mut self, term: Term, id: &str) -> Result<bool, CoordError> {
        self.fence(term)?;
        let dead = self.members.get(id).is_some_and(|r| !self.live(r.lease));
        if dead {
            self.members.remove(id);
            self.next_revision();
        }
        Ok(dead)
    }

    /// Writes `ring`, fenced on `term` and on the ring revision the decision read.
    fn write_ring(
        &mut self,
        term: Term,
        ring_revision: i64,
        ring: &KeyRing,
        writer: &'static str,
        at: Duration,
    ) -> Result<i64, CoordError> {
        self.fence(term)?;
        if ring_revision != self.ring_revision() {
            return Err(CoordError::Conflict);
        }
        let activated = self.check_landing(term, ring, at);
        let revision = self.next_revision();
        let (mut record, _) = StoredRing::seal("c", ring, &policy(), writer, &[]);
        record.term = term.0;
        let ring = Digested::new(ring.clone());
        self.ring = Some(StoredAt {
            ring: ring.clone(),
            record,
            revision,
        });
        self.landed.push(Landed {
            at,
            term,
            ring,
            activated,
        });
        Ok(revision)
    }

    /// The invariants of `ring` about to land under `term` at `at`, against the store as it
    /// stands; whether it activates a key.
    fn check_landing(&self, term: Term, ring: &KeyRing, at: Duration) -> bool {
        assert_eq!(
            Some(term),
            self.newest_term,
            "I3: a ring lands only under the newest term"
        );
        let live: Vec<(&str, Option<&KeyRing>)> = self
            .members
            .iter()
            .filter(|(_, r)| self.live(r.lease))
            .map(|(id, r)| (*id, r.acked.as_ref().map(|a| &a.ring)))
            .collect();
        let newest = live
            .iter()
            .filter_map(|(_, acked)| acked.map(KeyRing::generation))
            .chain(self.ring.as_ref().map(|s| s.ring.ring.generation()))
            .max()
            .unwrap_or(0);
        assert!(
            ring.generation() > newest,
            "no rollback: generation {} would land over generation {newest}, stored or applied by a live member",
            ring.generation()
        );
        let Some(before) = self.ring.as_ref().map(|s| &s.ring.ring) else {
            return false;
        };
        let active = ring.active();
        if active.epoch == before.active().epoch {
            return false;
        }
        assert_eq!(
            Some(active.epoch),
            before.staged().map(|k| k.epoch),
            "a rotation activates the key the ring before it staged"
        );
        for (id, acked) in &live {
            assert!(
                acked.is_some_and(|r| holds(r, active)),
                "I1: key {} activated before live member {id} acknowledged a ring that staged it (it acknowledged generation {:?})",
                active.epoch,
                acked.map(KeyRing::generation)
            );
        }
        if let Some(last) = self.landed.iter().rev().find(|l| l.activated) {
            assert!(
                at >= last.at + policy().interval,
                "a second rotation {:?} after the last one, inside one interval",
                at - last.at
            );
        }
        true
    }

    /// The ring with `digest`, with its keys: every ring a snapshot shows landed here.
    fn open(&self, digest: RingDigest) -> Digested {
        self.landed
            .iter()
            .rev()
            .find(|l| l.ring.digest == digest)
            .map(|l| l.ring.clone())
            .expect("every ring the model shows landed through it")
    }

    /// What a read shows: the fixtures' snapshot of the members, with the store's ring,
    /// leader and revisions.
    fn snapshot(&self) -> Snapshot {
        let members: Vec<M> = self
            .members
            .iter()
            .map(|(id, r)| M {
                id,
                live: self.live(r.lease),
                acked: r
                    .acked
                    .as_ref()
                    .map(|a| (a.ring.generation(), Some(a.digest.to_string()))),
                // No sealing key: the model opens rings for its members itself, so no copy is
                // sealed or missing.
                key: None,
                at: r.acked_at,
                floor: None,
            })
            .collect();
        let mut s = snap(None, &members);
        s.revision = self.revision;
        s.leader = self.leader.clone();
        s.ring = self
            .ring
            .as_ref()
            .map_or(RingSlot::Absent, |r| RingSlot::Valid(r.record.clone()));
        s.ring_revision = self.ring_revision();
        s
    }

    /// The ring in the store now.
    fn generation(&self) -> u64 {
        self.ring.as_ref().map_or(0, |r| r.ring.ring.generation())
    }

    /// Rings that activated a key under `term`.
    fn rotations_under(&self, term: Term) -> usize {
        self.landed
            .iter()
            .filter(|l| l.activated && l.term == term)
            .count()
    }
}

/// Whether `ring` holds `key`: its epoch, with its bytes.
fn holds(ring: &KeyRing, key: &stek_core::RingKey) -> bool {
    ring.keys()
        .iter()
        .any(|k| k.epoch == key.epoch && k.key == key.key)
}

/// How a node hears the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// It reads the store on every pass, and its keep-alive renews its lease.
    Up,
    /// It hears nothing new: each pass decides on what it heard last (what its watch carried),
    /// its renewals are lost and its keep-alive has not told it yet; what it sends itself
    /// goes through (a write, a campaign, the fresh read the engine asks for). The fault a
    /// fence is for: a leader acting on an old view while its lease has ended in the store.
    Deaf,
    /// Nothing gets through either way: no pass reads, no renewal or resignation arrives; its
    /// keep-alive tells it when the lease has ended.
    Cut,
    /// SIGSTOP: no pass, no renewal, nothing noticed.
    Frozen,
    /// Its passes hang (a reload past its timeout) while its keep-alive renews: live, and
    /// behind.
    Stuck,
}

/// A leader write the node attempted.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    at: Duration,
    term: Term,
    generation: u64,
    landed: bool,
}

/// One node: what the engine keeps, the ring it holds, and what it did.
#[derive(Debug)]
struct Node {
    id: &'static str,
    leading: Leading,
    link: Link,
    /// The ring it opened and applied last.
    held: Option<Digested>,
    /// The newest generation it accepted.
    newest_seen: u64,
    /// The snapshot its last pass decided on.
    view: Option<Snapshot>,
    /// When it passes next.
    wake_at: Duration,
    /// The store elects it on its next campaign, but the reply is lost.
    loses_campaign_reply: bool,
    campaigns: usize,
    reports: Vec<(Duration, Report)>,
    resignations: Vec<(Term, Resignation)>,
    writes: Vec<Attempt>,
}

impl Node {
    fn new(id: &'static str) -> Self {
        Node {
            id,
            leading: Leading::default(),
            link: Link::Up,
            held: None,
            newest_seen: 0,
            view: None,
            wake_at: Duration::ZERO,
            loses_campaign_reply: false,
            campaigns: 0,
            reports: Vec::new(),
            resignations: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn passes(&self) -> bool {
        matches!(self.link, Link::Up | Link::Deaf)
    }

    fn hears(&self) -> bool {
        self.link == Link::Up
    }

    /// Whether a write of its under `term` was fenced.
    fn fenced_in(&self, term: Term) -> bool {
        self.reports
            .iter()
            .any(|(_, r)| *r == Report::Refused(Refused::Fenced(term)))
    }

    /// Its elections: (when, term, adopted).
    fn elections(&self) -> Vec<(Duration, Term, bool)> {
        self.reports
            .iter()
            .filter_map(|(at, r)| match r {
                Report::Elected { term, adopted } => Some((*at, *term, *adopted)),
                _ => None,
            })
            .collect()
    }
}

/// Three nodes and a store, at a simulated time.
#[derive(Debug)]
struct Sim {
    /// Now, as an offset from the start (`t(0)`, `mono()`).
    at: Duration,
    store: Store,
    nodes: Vec<Node>,
}

impl Sim {
    fn new() -> Self {
        Sim {
            at: Duration::ZERO,
            store: Store::default(),
            nodes: NODES.into_iter().map(Node::new).collect(),
        }
    }

    fn now(&self) -> Now {
        Now {
            wall: t(0) + self.at,
            mono: mono() + self.at,
        }
    }

    fn index(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("one of the three nodes")
    }

    fn node(&self, id: &str) -> &Node {
        &self.nodes[self.index(id)]
    }

    fn set_link(&mut self, id: &str, link: Link) {
        let i = self.index(id);
        self.nodes[i].link = link;
    }

    /// Who leads, as the store says.
    fn leader(&self) -> Option<(&'static str, Term)> {
        let l = self.store.leader.as_ref()?;
        Some((self.nodes[self.index(&l.node_id)].id, l.term))
    }

    /// Runs every node and the store until `end`, calling `check` after every pass and every
    /// step of the clock.
    fn run_until(&mut self, end: Duration, check: &mut dyn FnMut(&Sim)) {
        for _ in 0..MAX_STEPS {
            let mut passes = 0;
            while let Some(i) = self.due() {
                passes += 1;
                assert!(
                    passes <= MAX_PASSES_AT_ONCE,
                    "the nodes do not settle at {:?}",
                    self.at
                );
                self.pass(i);
                self.check_pass(i);
                check(self);
            }
            if self.at >= end {
                return;
            }
            let next = self
                .nodes
                .iter()
                .filter(|n| n.passes())
                .map(|n| n.wake_at)
                .chain([self.at + TICK, end])
                .min()
                .expect("never empty");
            self.advance(next);
            self.check_roles();
            check(self);
        }
        panic!("the clock did not reach {end:?} in {MAX_STEPS} steps");
    }

    /// The first node due to pass.
    fn due(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.passes() && n.wake_at <= self.at)
    }

    /// Moves the clock to `to`: the store ends leases, keep-alives renew theirs or hear they
    /// are gone.
    fn advance(&mut self, to: Duration) {
        self.at = to;
        let revision = self.store.revision;
        self.store.expire(to);
        for i in 0..self.nodes.len() {
            let Some(lease) = self.nodes[i].leading.role.lease() else {
                continue;
            };
            let lost = match self.nodes[i].link {
                Link::Up | Link::Stuck => !self.store.renew(lease, to),
                Link::Cut => !self.store.live(lease),
                Link::Deaf | Link::Frozen => false,
            };
            if lost {
                self.lease_lost(i);
            }
        }
        self.wake_on_change(revision, None);
    }

    /// The keep-alive of node `i` says its lease has ended: the runtime feeds that to the
    /// engine and performs what comes of it.
    fn lease_lost(&mut self, i: usize) {
        let revision = self.store.revision;
        let now = self.now();
        let plan = self.nodes[i].leading.on(Event::LeaseLost, now, &settings());
        self.perform(i, plan);
        self.nodes[i].wake_at = self.at;
        self.wake_on_change(revision, Some(i));
    }

    /// A change since `revision` wakes every node that hears the store (its watch), but the
    /// one that made it.
    fn wake_on_change(&mut self, revision: i64, by: Option<usize>) {
        if self.store.revision == revision {
            return;
        }
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.hears() && Some(i) != by {
                n.wake_at = n.wake_at.min(self.at);
            }
        }
    }

    /// One pass of node `i`, as `Node::reconcile` makes it: join, read, open and apply,
    /// acknowledge, lead.
    fn pass(&mut self, i: usize) {
        let now = self.now();
        let at = self.at;
        let revision = self.store.revision;
        let node = &mut self.nodes[i];
        let lease = match node.leading.role.lease() {
            Some(lease) => lease,
            None => {
                let lease = self.store.grant(at);
                node.leading.role.joined(lease);
                lease
            }
        };
        // What the watch carried serves only while it covers the node's own last write and no
        // fresh read was asked for (`engine::read`); a node that hears the store reads it.
        let carried = node.view.take().filter(|v| {
            node.link == Link::Deaf
                && !node.leading.read_fresh
                && v.revision >= node.leading.written_at
        });
        let snap = carried.unwrap_or_else(|| {
            node.leading.read_fresh = false;
            self.store.snapshot()
        });
        if let Some(stored) = snap.valid_ring() {
            let stored = stored.ring.digest();
            if digest(node.held.as_ref()) != Some(stored) {
                let ring = self.store.open(stored);
                let generation = ring.ring.generation();
                if let Some(held) = &node.held {
                    assert!(
                        generation > held.ring.generation(),
                        "{} would apply generation {generation} after generation {}",
                        node.id,
                        held.ring.generation()
                    );
                }
                node.newest_seen = node.newest_seen.max(generation);
                node.held = Some(ring);
            }
        }
        self.store
            .record(node.id, lease, node.held.as_ref(), now.wall);
        let inputs = Inputs {
            me: node.id,
            snap: &snap,
            held: Held {
                opened: node.held.as_ref().map(|h| &h.ring),
                applied: node.held.as_ref().map(|h| &h.ring),
            },
            newest_seen: node.newest_seen,
            floor: None,
            accepted: None,
            accepted_verifies: true,
            own_certificate: None,
            data_key_write: None,
            signer: None,
            history: &NO_HISTORY,
            settings: settings(),
        };
        let plan = node.leading.plan(&inputs, now, &mut OsKeySource);
        node.view = Some(snap);
        // At the latest after RESYNC, as the runtime; a wake-up in the past is now.
        let wake = self.perform(i, plan);
        let wake_at = wake.map_or(at + RESYNC, |w| w.saturating_duration_since(mono()));
        self.nodes[i].wake_at = wake_at.clamp(at, at + RESYNC);
        self.wake_on_change(revision, Some(i));
    }

    /// Performs `plan` for node `i` as `Node::perform` does: each action in order, each
    /// result fed back, follow-up actions after; returns the earliest wake-up asked for.
    fn perform(&mut self, i: usize, plan: Plan) -> Option<Instant> {
        let now = self.now();
        let mut wake = plan.wake_at;
        let mut queue: VecDeque<Action> = plan.actions.into();
        let mut performed = 0;
        while let Some(action) = queue.pop_front() {
            performed += 1;
            assert!(
                performed <= MAX_ACTIONS_PER_PASS,
                "{}: a plan that does not end",
                self.nodes[i].id
            );
            for event in self.act(i, action) {
                let more = self.nodes[i].leading.on(event, now, &settings());
                wake = match (wake, more.wake_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                queue.extend(more.actions);
            }
        }
        wake
    }

    /// Performs one action against the store, as `Node::act` does; returns what came of it.
    fn act(&mut self, i: usize, action: Action) -> Vec<Event> {
        let at = self.at;
        let node = &mut self.nodes[i];
        let store = &mut self.store;
        match action {
            Action::Report(report) => {
                node.reports.push((at, report));
                Vec::new()
            }
            Action::Resign { term, why } => {
                node.resignations.push((term, why));
                if matches!(node.link, Link::Up | Link::Deaf) {
                    store.resign(term);
                }
                Vec::new()
            }
            Action::Campaign { lease } => {
                node.campaigns += 1;
                let answer = store.campaign(lease, node.id);
                if std::mem::take(&mut node.loses_campaign_reply) {
                    vec![Event::Campaigned(Err("the reply was lost".into()))]
                } else {
                    vec![Event::Campaigned(answer)]
                }
            }
            Action::Forget { term, members } => members
                .into_iter()
                .filter(|m| store.forget(term, m).is_ok())
                .map(|member| Event::Forgot { member })
                .collect(),
            Action::Write {
                term,
                ring_revision,
                ring,
                why,
                before,
                ..
            } => {
                let written = store.write_ring(term, ring_revision, &ring, node.id, at);
                node.writes.push(Attempt {
                    at,
                    term,
                    generation: ring.generation(),
                    landed: written.is_ok(),
                });
                vec![match written {
                    Ok(revision) => Event::Wrote {
                        revision,
                        why,
                        before,
                        ring,
                    },
                    Err(e) => Event::Refused(e),
                }]
            }
            Action::Restore { .. } => {
                panic!(
                    "{}: no node of the model holds an accepted ring to put back",
                    node.id
                )
            }
            // The runtime seals copies only with the data key of the write it opened; no node
            // of the model holds one.
            Action::SealCopies { .. } => vec![Event::SealedCopies(None)],
            // The model keeps no history to compact.
            Action::Purge { .. } => Vec::new(),
        }
    }

    /// After node `i`'s pass: if it hears the store and leads, the store's leader key is its
    /// own, in its term and under its lease.
    fn check_pass(&self, i: usize) {
        let node = &self.nodes[i];
        if let (true, Some(term)) = (node.hears(), node.leading.role.term()) {
            let mine = Leader {
                node_id: node.id.into(),
                term,
                lease: node.leading.role.lease().expect("a leader holds a lease"),
            };
            assert_eq!(
                self.store.leader.as_ref(),
                Some(&mine),
                "{} leads in {term:?} at {:?}, but the store's leader key is another",
                node.id,
                self.at
            );
        }
        self.check_roles();
    }

    /// Never two nodes that hear the store leading at once.
    fn check_roles(&self) {
        let leading: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.hears() && n.leading.role.leads())
            .map(|n| n.id)
            .collect();
        assert!(
            leading.len() <= 1,
            "{leading:?} lead at once at {:?}",
            self.at
        );
    }

    /// Every node that hears the store holds and acknowledged the stored ring.
    fn assert_converged(&self) {
        let stored = self.store.ring.as_ref().expect("a ring").ring.digest;
        for n in self.nodes.iter().filter(|n| n.hears()) {
            assert_eq!(
                digest(n.held.as_ref()),
                Some(stored),
                "{} holds the stored ring",
                n.id
            );
            let record = self.store.members.get(n.id).expect("a record");
            assert!(self.store.live(record.lease), "{} is live", n.id);
            assert_eq!(
                digest(record.acked.as_ref()),
                Some(stored),
                "{} acknowledged the stored ring",
                n.id
            );
        }
    }
}

fn nothing(_: &Sim) {}

/// A partitioned leader is fenced: n1 leads, then stops hearing the store past its lease (its
/// passes decide on what it heard last, its lease ends in the store); n2 is elected. When n1's
/// old view says a rotation is due, its write under its old term is refused (`Fenced`): it
/// steps down at once and its next pass reads the store fresh, and follows. No write under an
/// old term ever lands; once n1 hears the store again it rejoins, and rotations go on under
/// n2 with n1 among the members they wait for.
#[test]
fn a_partitioned_leader_is_fenced_and_rotations_go_on_under_the_next() {
    let mut sim = Sim::new();
    info!("--- three nodes start; n1 campaigns first and leads");
    sim.run_until(90 * MINUTE, &mut nothing);
    let (_, old) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n1", old)));
    assert_eq!(sim.store.rotations_under(old), 1, "rotated at one hour");
    sim.assert_converged();

    info!("--- n1 stops hearing the store");
    sim.set_link("n1", Link::Deaf);
    let deaf = sim.at;
    let stale = stale_writes_refused("n1", old, deaf);
    sim.run_until(125 * MINUTE, &mut |s| stale(s));
    let (new_leader, new) = sim.leader().expect("a leader");
    assert_ne!(new_leader, "n1");
    assert_fenced_once(&sim, "n1", old, deaf);
    let tried = sim.node("n1").writes.last().expect("a write").at;
    assert_eq!(tried, 2 * HOUR, "when its old view said a rotation was due");
    assert_eq!(sim.store.rotations_under(new), 1, "n2 rotated at two hours");

    info!("--- n1 hears the store again");
    sim.set_link("n1", Link::Up);
    sim.run_until(4 * HOUR + 30 * MINUTE, &mut nothing);
    assert_eq!(sim.leader(), Some((new_leader, new)));
    assert_eq!(
        sim.store.rotations_under(new),
        3,
        "rotations at two, three and four hours"
    );
    // n1 is live again, and holds and acknowledged the stored ring: the rotations at three
    // and four hours counted it (I1 is checked at each landing).
    sim.assert_converged();
}

/// A lost campaign reply is adopted, not campaigned twice: the store elects n1 but the reply
/// is lost (`Campaigned(Err(..))`); n1's next pass finds its own id under its own lease and
/// leads (`Elected { adopted: true }`) without a second campaign. The same at a failover: n1
/// is cut off, its lease ends, n2 wins a campaign whose reply is lost and adopts it. Never
/// two nodes leading at once, whatever they hear.
#[test]
fn a_lost_campaign_reply_is_adopted_not_campaigned_twice() {
    let mut sim = Sim::new();
    sim.nodes[0].loses_campaign_reply = true;
    let mut one_leader = |s: &Sim| {
        let leading: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.leading.role.leads())
            .map(|n| n.id)
            .collect();
        assert!(leading.len() <= 1, "{leading:?} lead at once at {:?}", s.at);
        for n in &s.nodes {
            assert!(
                n.campaigns <= 1,
                "{} campaigned {} times",
                n.id,
                n.campaigns
            );
        }
    };
    info!("--- three nodes start; n1's campaign lands but its reply is lost");
    sim.run_until(90 * MINUTE, &mut one_leader);
    let (_, first) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n1", first)));
    let n1 = sim.node("n1");
    assert_eq!(n1.campaigns, 1);
    // Adopted on its next pass: woken by n2 joining, or BACKOFF_MIN after the failure.
    assert!(
        matches!(n1.elections().as_slice(), [(at, term, true)] if *at <= BACKOFF_MIN && *term == first),
        "{:?}",
        n1.elections()
    );
    assert!(n1
        .reports
        .iter()
        .any(|(_, r)| matches!(r, Report::CampaignFailed(_))));
    assert_eq!(sim.store.rotations_under(first), 1);

    info!("--- n1 is cut off; n2's campaign at the failover lands, its reply is lost");
    sim.nodes[1].loses_campaign_reply = true;
    sim.set_link("n1", Link::Cut);
    sim.run_until(2 * HOUR + 30 * MINUTE, &mut one_leader);
    let (_, second) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n2", second)));
    let n2 = sim.node("n2");
    assert_eq!(n2.campaigns, 1);
    assert!(
        matches!(n2.elections().as_slice(), [(_, term, true)] if *term == second),
        "{:?}",
        n2.elections()
    );
    assert_eq!(
        sim.node("n1").resignations,
        vec![(first, Resignation::LeaseEnded)]
    );
    assert_eq!(sim.store.rotations_under(second), 1);

    info!("--- n1 comes back and follows");
    sim.set_link("n1", Link::Up);
    sim.run_until(3 * HOUR + 30 * MINUTE, &mut one_leader);
    assert_eq!(sim.leader(), Some(("n2", second)));
    assert_eq!(sim.store.rotations_under(second), 2);
    assert_eq!(sim.node("n3").campaigns, 0, "n3 never had a reason to");
    sim.assert_converged();
}

/// A lease lost while leading: n1's keep-alive gives its lease up while the store still holds
/// it (the store extended it, as etcd does when its own leader changes), and n1's resignation
/// does not get through. `LeaseLost` makes n1 resign (`LeaseEnded`) and rejoin under a new
/// lease; while its old leader key (under its old lease) is still in the store nobody leads:
/// n1 does not take that leadership for its own, nobody campaigns over it. Once the key is
/// gone one node is elected, and rotations go on.
#[test]
fn a_leader_whose_lease_ends_resigns_and_waits_for_its_old_key_to_go() {
    let mut sim = Sim::new();
    sim.run_until(90 * MINUTE, &mut nothing);
    let (_, old) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n1", old)));
    let old_lease = sim.node("n1").leading.role.lease().expect("a lease");

    info!("--- n1 is cut off; the store holds its lease for two TTLs");
    sim.set_link("n1", Link::Cut);
    let until = sim.at + 2 * TTL;
    sim.store.hold_lease(old_lease, until);
    sim.run_until(sim.at + TTL, &mut nothing);
    assert_eq!(sim.leader(), Some(("n1", old)), "the store still holds it");

    info!("--- n1's keep-alive gives the lease up; its resignation is lost; it comes back");
    let i = sim.index("n1");
    sim.lease_lost(i);
    assert_eq!(
        sim.node("n1").resignations,
        vec![(old, Resignation::LeaseEnded)]
    );
    sim.set_link("n1", Link::Up);
    let campaigns = |s: &Sim| s.nodes.iter().map(|n| n.campaigns).sum::<usize>();
    let before = campaigns(&sim);
    let mut rejoined = false;
    sim.run_until(until + TTL, &mut |s| {
        let n1 = s.node("n1");
        let old_key_held = s
            .store
            .leader
            .as_ref()
            .is_some_and(|l| l.lease == old_lease);
        if old_key_held {
            rejoined |= n1.leading.role.lease().is_some_and(|l| l != old_lease);
            for n in &s.nodes {
                assert!(
                    !n.leading.role.leads(),
                    "{} leads while n1's old key is in the store",
                    n.id
                );
            }
            assert_eq!(campaigns(s), before, "nobody campaigns over a leader key");
        }
    });
    assert!(
        rejoined,
        "n1 rejoined under a new lease while its old key was held"
    );
    let elections: Vec<(&str, Term)> = sim
        .nodes
        .iter()
        .flat_map(|n| {
            n.elections()
                .into_iter()
                .map(move |(_, term, _)| (n.id, term))
        })
        .filter(|(_, term)| *term != old)
        .collect();
    assert_eq!(elections.len(), 1, "one node elected: {elections:?}");
    let (_, new) = sim.leader().expect("a leader");
    assert_eq!(Some(elections[0]), sim.leader());

    info!("--- rotations go on");
    sim.run_until(3 * HOUR + 30 * MINUTE, &mut nothing);
    assert_eq!(sim.store.rotations_under(new), 2, "at two and three hours");
    sim.assert_converged();
}

/// A frozen leader resumed (SIGSTOP, SIGCONT): n1 leads, is frozen past its lease and past
/// two rotations under n2, then resumes with its whole stale memory and its old view, on
/// which a rotation is long due. It writes nothing older than what live members applied (its
/// stale rotation is refused) and no key is activated twice in one interval; it rejoins,
/// and when n2 is frozen in turn n1 leads again from the store's ring, with its old memory,
/// and rotates on schedule; n2, resumed, is refused the same way.
#[test]
fn a_frozen_leader_resumed_neither_rolls_back_nor_rotates_twice() {
    let mut sim = Sim::new();
    sim.run_until(90 * MINUTE, &mut nothing);
    let (_, first) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n1", first)));

    info!("--- n1 frozen (SIGSTOP)");
    sim.set_link("n1", Link::Frozen);
    sim.run_until(3 * HOUR + 20 * MINUTE, &mut nothing);
    let (_, second) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n2", second)));
    assert_eq!(
        sim.store.rotations_under(second),
        2,
        "at two and three hours"
    );

    info!("--- n1 resumed (SIGCONT) with its old view");
    sim.set_link("n1", Link::Deaf);
    let resumed = sim.at;
    let stale = stale_writes_refused("n1", first, resumed);
    sim.run_until(3 * HOUR + 25 * MINUTE, &mut |s| stale(s));
    assert_fenced_once(&sim, "n1", first, resumed);
    sim.set_link("n1", Link::Up);

    info!("--- n2 frozen; n1 leads again, with its old memory");
    sim.run_until(3 * HOUR + 30 * MINUTE, &mut nothing);
    sim.set_link("n2", Link::Frozen);
    sim.run_until(4 * HOUR + 20 * MINUTE, &mut nothing);
    let (_, third) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n1", third)));
    assert_eq!(sim.store.rotations_under(third), 1, "at four hours");

    info!("--- n2 resumed with its old view");
    sim.set_link("n2", Link::Deaf);
    let resumed = sim.at;
    let stale = stale_writes_refused("n2", second, resumed);
    sim.run_until(4 * HOUR + 25 * MINUTE, &mut |s| stale(s));
    assert_fenced_once(&sim, "n2", second, resumed);
    sim.set_link("n2", Link::Up);
    sim.run_until(5 * HOUR + 30 * MINUTE, &mut nothing);
    assert_eq!(sim.leader(), Some(("n1", third)));
    assert_eq!(
        sim.store.rotations_under(third),
        2,
        "at four and five hours"
    );
    let activations: Vec<u64> = sim
        .store
        .landed
        .iter()
        .filter(|l| l.activated)
        .map(|l| l.ring.ring.active().epoch)
        .collect();
    assert_eq!(activations, vec![2, 3, 4, 5, 6], "one rotation an hour");
    sim.assert_converged();
}

/// A check that nothing `id` writes from `since` on (under `term`, on its old view) lands,
/// and that once fenced it leads in `term` no more.
fn stale_writes_refused(id: &'static str, term: Term, since: Duration) -> impl Fn(&Sim) {
    move |s: &Sim| {
        let node = s.node(id);
        if node.fenced_in(term) {
            assert_ne!(
                node.leading.role.term(),
                Some(term),
                "{id}, fenced, steps down at once"
            );
        }
        for w in node.writes.iter().filter(|w| w.at >= since) {
            assert!(!w.landed, "{id} wrote under its old view: {w:?}");
            assert_eq!(w.term, term);
        }
    }
}

/// That `id`, deciding on its old view of `term` since `since`, tried one write (a ring of a
/// generation the store holds another of by now: a rollback or a second ring of it, had it
/// landed), was refused as fenced, stepped down, took nothing back from that view (no
/// election), and read the store fresh: its view shows the store's leader.
fn assert_fenced_once(sim: &Sim, id: &str, term: Term, since: Duration) {
    let node = sim.node(id);
    let tried: Vec<&Attempt> = node.writes.iter().filter(|w| w.at >= since).collect();
    assert!(
        matches!(tried.as_slice(), [w] if w.term == term && !w.landed),
        "{id} tried one write on its old view, not {}: the first {:?}",
        tried.len(),
        tried.first()
    );
    assert!(
        tried[0].generation <= sim.store.generation(),
        "{id}'s write (generation {}) was decided on its old view",
        tried[0].generation
    );
    assert!(
        node.fenced_in(term),
        "{id} refused as fenced: {:?}",
        node.reports
    );
    assert!(!node.leading.role.leads(), "{id} follows");
    assert!(
        node.elections().iter().all(|(at, ..)| *at < since),
        "{id} took no leadership back from its old view: {:?}",
        node.elections()
    );
    let seen = node.view.as_ref().and_then(|v| v.leader.clone());
    assert_eq!(
        seen, sim.store.leader,
        "{id} read the store fresh after the fence"
    );
}

/// I1 with a member that falls behind: n3's passes hang (a reload past its timeout) while its
/// keep-alive renews, so it stays live and does not acknowledge the ring written at two hours.
/// The rotation due at three hours waits for it, and says so naming it; once n3 applies that
/// ring the key activates. The store checks I1 at every landing in every scenario; here it
/// would bite, and at every step n3 holds the key that encrypts.
#[test]
fn a_key_activates_only_once_every_live_member_acknowledged_it() {
    let mut sim = Sim::new();
    sim.run_until(90 * MINUTE, &mut nothing);
    info!("--- n3's passes hang; its keep-alive goes on");
    sim.set_link("n3", Link::Stuck);
    let mut n3_holds_the_active_key = |s: &Sim| {
        let active = s.store.ring.as_ref().expect("a ring").ring.ring.active();
        let n3 = s.store.members.get("n3").expect("n3's record");
        assert!(s.store.live(n3.lease), "n3 stays live");
        assert!(
            n3.acked.as_ref().is_some_and(|a| holds(&a.ring, active)),
            "I1: key {} encrypts, and n3 lacks it",
            active.epoch
        );
    };
    sim.run_until(3 * HOUR + 15 * MINUTE, &mut n3_holds_the_active_key);
    let (_, term) = sim.leader().expect("a leader");
    assert_eq!(sim.leader(), Some(("n1", term)));
    assert_eq!(
        sim.store.rotations_under(term),
        2,
        "at one and two hours only"
    );
    let waits = sim
        .node("n1")
        .reports
        .iter()
        .any(|(_, r)| matches!(r, Report::Waits(w) if w.contains("n3")));
    assert!(waits, "the rotation says it waits for n3");

    info!("--- n3 unsticks");
    sim.set_link("n3", Link::Up);
    sim.run_until(3 * HOUR + 16 * MINUTE, &mut n3_holds_the_active_key);
    assert_eq!(sim.store.rotations_under(term), 3, "at once");
    sim.assert_converged();
}
