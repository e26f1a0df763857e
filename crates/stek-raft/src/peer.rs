//! One peer of the embedded coordinator: the Raft instance, what it answers on its listener (Raft
//! RPCs and client calls), forming or joining the group and changing its membership, the purge
//! of its log after a key drop, and, while it is the Raft leader, the lease clock.
//!
//! Not here: the messages and their framing ([`wire`](crate::wire)), accepting connections
//! within their bounds ([`listener`]), openraft's network ([`network`](crate::network)), the
//! group's ids and founding voters ([`group`](crate::group)), and whether a caller may make a
//! request (`authorize`, a pure function this peer gives the facts it needs).
//!
//! Leases are replicated (granted, revoked, and which keys they hold); their deadlines are not:
//! the Raft leader keeps them in memory from heartbeats and revokes a lease, through the log,
//! once it expires. A new Raft leader starts every lease's clock afresh, as etcd does on a
//! leader change, so a live member is never taken for dead because the leader changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState};
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use super::authorize::{self, Caller, Facts, LeaseHolder, Need, Refusal};
use super::group::{
    digest_of, founding_voters, may_remove, raft_id, voter_floor, Removal, MAX_VOTERS,
};
use super::listener::{self, Limits, Listener};
use super::network::Network;
use super::store::{Applied, Command, RaftStore};
use super::tls::PeerTls;
use super::wire::{call, call_peer, Reply, Request};
use super::TypeConfig;

/// How many log entries a peer holds before it folds them into a snapshot and purges them.
pub const RAFT_LOG_KEPT: u64 = 64;
use stek_store::CoordError;

/// How often the lease clock runs on the leader.
const LEASE_TICK: Duration = Duration::from_millis(200);
/// How long a write may wait to be committed before the peer stops waiting for it (a
/// leadership change under way); the caller asks again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running peer. Dropping it does not stop it: call [`Peer::shutdown`].
#[derive(Clone)]
pub struct Peer {
    raft: Raft<TypeConfig>,
    store: RaftStore,
    id: u64,
    name: Arc<str>,
    own_addr: Arc<str>,
    /// The founding voter set this peer proposes (a digest; see [`digest_of`]), and the ids
    /// of its `peers` table (who may send Raft messages before a membership exists).
    proposal: u64,
    table: Arc<std::collections::BTreeSet<u64>>,
    /// How many founding voters this peer's `peers` table names (the first [`MAX_VOTERS`]):
    /// the voter floor, on the leader, is three or this if fewer
    /// ([`may_remove`](crate::group::may_remove)).
    founders: usize,
    /// This peer's mutual TLS (to check a new peer's address before adding it).
    tls: Option<Arc<PeerTls>>,
    /// Whether this peer takes part in the group yet (see [`Peer::form_or_join`]); until then
    /// it answers only probes.
    admitted: Arc<AtomicBool>,
    /// Why this peer must stop, if it must.
    fatal: Arc<tokio::sync::watch::Sender<Option<String>>>,
    deadlines: Arc<Mutex<HashMap<i64, Instant>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// The addresses the group's voters listen on, resolved ([`Peer::follow_voter_addresses`]):
    /// the listener keeps TLS handshake places for them ([`listener::Group`]).
    voter_addresses: Arc<std::sync::RwLock<std::collections::HashSet<std::net::IpAddr>>>,
    /// The `peers` table's addresses: the voters' until the group has a membership.
    table_addresses: Arc<Vec<String>>,
    /// Counts the connections the listener closes or refuses ([`Peer::count_refused_with`]).
    count_refused: Arc<std::sync::OnceLock<RefusedCounter>>,
    /// The last `State` reply serialised, and the revision it is of ([`Peer::state_reply`]).
    state_cache: Arc<StateCache>,
}

/// A serialised `State` reply and its revision.
type StateCache = std::sync::Mutex<Option<(u64, Arc<Vec<u8>>)>>;

/// [`Reply::State`] over a borrowed state: the same JSON, without a copy to own.
#[derive(serde::Serialize)]
enum StateReply<'a> {
    State(&'a stek_store::keyspace::Keyspace),
}

/// How a peer's owner counts the connections its listener closes or refuses, given why
/// ([`listener::ROOM`], [`listener::CERTIFICATE`]).
pub type RefusedCounter = Box<dyn Fn(&'static str) + Send + Sync>;

impl listener::Group for Peer {
    fn is_voter(&self, id: &str) -> bool {
        Peer::is_voter(self, raft_id(id))
    }

    fn is_voter_address(&self, ip: std::net::IpAddr) -> bool {
        self.voter_addresses
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&ip)
    }

    fn refused(&self, why: &'static str) {
        if let Some(count) = self.count_refused.get() {
            count(why);
        }
    }
}

/// How often a peer resolves its voters' addresses again (a name's address may change).
const VOTER_ADDRESSES_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a peer that started without Raft state answers until it takes part in the group.
pub const NOT_ADMITTED: &str =
    "this peer is starting without Raft state and is not in the group yet";

/// How long `stek peers add` waits for a new peer to catch up before making it a voter.
const CATCH_UP: Duration = Duration::from_secs(30);

/// How recently a leader must have heard from a quorum to serve reads and lease renewals. A
/// leader cut off from the majority stops answering within this, so its box sees the store as
/// down instead of a frozen state (openraft 0.9 does not step such a leader down itself).
pub const QUORUM_FRESH: Duration = Duration::from_millis(1000);

/// Where a peer keeps its Raft state.
#[derive(Debug, Clone)]
pub enum Storage {
    /// `raft.redb` in this directory (created 0700): the vote, log and snapshots survive a
    /// restart. What `stek node` uses.
    Durable(std::path::PathBuf),
    /// In memory only: lost when the process ends (tests: feature `testing`).
    #[cfg(feature = "testing")]
    Memory,
}

impl Peer {
    /// Starts the peer `name` listening on `listen`, in the group `peers` (name to address),
    /// keeping its state as `storage` says.
    ///
    /// A peer with Raft state never initialises a group. A peer without any asks the other
    /// peers first: if none has a group, it proposes one of all `peers` (every fresh peer
    /// proposes the same, and only an empty group accepts); if a group runs and counts this
    /// peer, its data was lost, and it grants no vote until it has caught up to the commit
    /// index the group reported (so a wiped voter cannot elect a stale leader); if a group runs
    /// without it, it asks to join ([`MAX_VOTERS`] voters at most, learners beyond).
    pub async fn start(
        cluster: &str,
        name: &str,
        listen: &str,
        peers: &BTreeMap<String, String>,
        storage: Storage,
        tls: Option<PeerTls>,
    ) -> Result<Self, CoordError> {
        let tls = tls.map(Arc::new);
        let id = raft_id(name);
        let config_err = |reason: String| CoordError::Setup {
            what: format!("Raft peer {name} on {listen}"),
            reason,
        };
        let Some(own_addr) = peers.get(name).cloned() else {
            return Err(config_err(format!(
                "node {name} is not in the raft peers table"
            )));
        };
        let config = Config {
            cluster_name: format!("stek-{cluster}"),
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            // History purge: the log (which holds every past ring record, sealed) is folded
            // into a snapshot every 64 entries, and at once after a ring write that drops keys
            // (`purge_after_key_drops`); nothing before the snapshot is kept.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(RAFT_LOG_KEPT),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| config_err(e.to_string()))?);
        let store = match &storage {
            Storage::Durable(dir) => {
                RaftStore::open(dir).map_err(|e| config_err(format!("raft data_dir: {e}")))?
            }
            #[cfg(feature = "testing")]
            Storage::Memory => RaftStore::in_memory(),
        };
        let fresh = !store.has_state().await;
        let (log, sm) = openraft::storage::Adaptor::new(store.clone());
        let network = Network { tls: tls.clone() };
        let raft = Raft::new(id, config, network, log, sm)
            .await
            .map_err(|e| config_err(e.to_string()))?;
        let listener = Listener::bind(listen)
            .await
            .map_err(|e| config_err(format!("cannot listen: {e}")))?;
        let peer = Self {
            raft,
            store,
            id,
            name: Arc::from(name),
            own_addr: Arc::from(own_addr.as_str()),
            proposal: digest_of(founding_voters(peers).into_keys()),
            table: Arc::new(peers.keys().map(|n| raft_id(n)).collect()),
            founders: founding_voters(peers).len(),
            tls: tls.clone(),
            admitted: Arc::new(AtomicBool::new(false)),
            fatal: Arc::new(tokio::sync::watch::channel(None).0),
            deadlines: Arc::default(),
            tasks: Arc::default(),
            voter_addresses: Arc::default(),
            table_addresses: Arc::new(peers.values().cloned().collect()),
            count_refused: Arc::default(),
            state_cache: Arc::default(),
        };
        let serve = tokio::spawn(peer.clone().serve(listener, tls.clone()));
        let voters = tokio::spawn(peer.clone().follow_voter_addresses());
        let clock = tokio::spawn(peer.clone().lease_clock());
        let purge = tokio::spawn(purge_after_key_drops(
            peer.raft.clone(),
            peer.store.key_drops(),
            peer.name.clone(),
        ));
        peer.tasks
            .lock()
            .await
            .extend([serve, clock, purge, voters]);
        if fresh {
            let former = tokio::spawn(peer.clone().form_or_join(peers.clone(), tls));
            peer.tasks.lock().await.push(former);
        } else {
            info!(
                peer = name,
                "raft state loaded from disk; rejoining the group"
            );
            peer.admitted.store(true, Ordering::SeqCst);
        }
        Ok(peer)
    }

    /// For a peer that starts without Raft state: until it is admitted, it answers nothing
    /// but probes. It asks the other peers (following a redirect to the leader) until:
    /// - a majority of the founding voters (the first [`MAX_VOTERS`] of the `peers` table by
    ///   name, this one included) answers that there is no group yet, proposing the same
    ///   voters, and nobody answers that a group exists: it proposes that group (every fresh
    ///   peer proposes the same; only an empty group accepts). A peer whose table differs is
    ///   named and not counted: two tables never form two groups;
    /// - a leader that hears from a quorum answers and counts this peer, but has never
    ///   replicated to it: it is a member that never started. Admitted, it grants no vote until
    ///   it has applied the leader's last log index (kept on disk, so a restart keeps the gate):
    ///   an empty log must not elect a candidate that lacks committed entries;
    /// - such a leader has replicated to it before: its data directory was lost. It stops with
    ///   an error (the node exits): answering with an empty log would show the leader a
    ///   follower's log going backwards, which openraft treats as fatal. Remove it with
    ///   `stek peers remove`; started again, it is a new peer;
    /// - such a leader does not count it: admitted as a stranger (only voters' Raft messages
    ///   are accepted), it waits for an operator's `stek peers add`.
    async fn form_or_join(self, peers: BTreeMap<String, String>, tls: Option<Arc<PeerTls>>) {
        let name = self.name.to_string();
        let others: Vec<(String, String)> = peers
            .iter()
            .filter(|(n, _)| **n != name)
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        let founders = founding_voters(&peers);
        let mut waited = 0u32;
        loop {
            // Founding voters (this one included) that answered "no group yet" with the same
            // proposal, and whether anyone answered that a group exists.
            let mut same_proposal = usize::from(founders.contains_key(&self.id));
            let mut saw_group = false;
            let mut differing = Vec::new();
            let mut answer = None;
            for (other, addr) in &others {
                let mut target = addr.clone();
                for _ in 0..3 {
                    let probe = Request::Probe {
                        name: name.clone(),
                        proposal: self.proposal,
                    };
                    match call(&target, &probe, Duration::from_secs(2), tls.as_deref()).await {
                        Ok(Reply::Group {
                            initialized: false,
                            proposal,
                            ..
                        }) => {
                            if proposal == self.proposal {
                                if founders.contains_key(&raft_id(other)) {
                                    same_proposal += 1;
                                }
                            } else {
                                differing.push(other.clone());
                            }
                            break;
                        }
                        Ok(Reply::Group {
                            leader: true,
                            member,
                            replicated,
                            last_index,
                            ..
                        }) => {
                            answer = Some((member, replicated, last_index));
                            break;
                        }
                        Ok(Reply::Group {
                            leader_addr: Some(l),
                            ..
                        }) if l != target => target = l,
                        Ok(Reply::Group {
                            member: true,
                            last_index: 0,
                            proposal,
                            ..
                        }) if proposal == self.proposal => {
                            // A group formed a moment ago (only its first membership entry,
                            // no leader yet), the one this peer proposes: a founding member,
                            // whose vote the election needs.
                            answer = Some((true, false, 0));
                            break;
                        }
                        Ok(other) => {
                            saw_group |= matches!(
                                other,
                                Reply::Group {
                                    initialized: true,
                                    ..
                                }
                            );
                            debug!(peer = %name, "probe of {target}: {other:?}");
                            break;
                        }
                        Err(e) => {
                            debug!(peer = %name, "probe of {target}: {e}");
                            break;
                        }
                    }
                }
                if answer.is_some() {
                    break;
                }
            }
            match answer {
                Some((true, true, _)) => {
                    let why = format!("this peer ({name}) has no Raft state, but the group's leader has replicated to it before: its data directory was lost. Remove it from the group with `stek peers remove {name}` (from any box, with an operator certificate), then start it again and add it with `stek peers add {name} {}`", self.own_addr);
                    error!(peer = %name, "{why}");
                    self.fatal.send_replace(Some(why));
                    return;
                }
                Some((true, false, last_index)) => {
                    if last_index > 0 {
                        if let Err(e) = self.store.set_vote_gate(Some(last_index)).await {
                            self.fatal
                                .send_replace(Some(format!("cannot record the vote gate: {e}")));
                            return;
                        }
                    }
                    info!(peer = %name, last_index, "joining the group as a member that never started; no vote until caught up to index {last_index}");
                    self.admitted.store(true, Ordering::SeqCst);
                    return;
                }
                Some((false, _, _)) => {
                    info!(peer = %name, "a group runs without this peer: add it with `stek peers add {name} {}` (operator certificate)", self.own_addr);
                    self.admitted.store(true, Ordering::SeqCst);
                    return;
                }
                // A majority of the founding voters, all fresh and agreeing: no group can have
                // formed without one of them (short of a majority losing its data).
                None if !saw_group
                    && differing.is_empty()
                    && same_proposal > founders.len() / 2 =>
                {
                    let voters = founders.clone();
                    if voters.contains_key(&self.id) {
                        self.admitted.store(true, Ordering::SeqCst);
                        match self.raft.initialize(voters).await {
                            Ok(()) => info!(peer = %name, "raft group initialised"),
                            Err(e) => debug!(peer = %name, "raft group already initialised: {e}"),
                        }
                        return;
                    }
                }
                None => {}
            }
            waited += 1;
            if !differing.is_empty() && waited % 10 == 1 {
                warn!(peer = %name, "peers {differing:?} propose a different group: every peer's peers table must list the same peers until the group has formed");
            }
            if waited.is_multiple_of(20) {
                info!(peer = %name, "waiting for the other peers: a new group forms once a majority of its founding voters (the first five of the peers table) answer; a running one admits this peer once its leader answers");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Counts every connection the listener closes or refuses with `count`, from now on (the
    /// node's metrics); the first counter set stays.
    pub fn count_refused_with(&self, count: RefusedCounter) {
        let _ = self.count_refused.set(count);
    }

    /// Whether `id` is a voter of the group (of this peer's `peers` table while it has no
    /// membership yet).
    fn is_voter(&self, id: u64) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.voter_ids().next().is_none() {
            return self.table.contains(&id);
        }
        membership.voter_ids().any(|v| v == id)
    }

    /// Resolves when the Raft core has stopped on a fatal error (a storage failure, a panic),
    /// or the peer found it must not take part (its data was lost), with the reason. A node must
    /// not go on serving a frozen state: `stek node` exits.
    pub async fn failed(&self) -> String {
        let mut rx = self.raft.metrics();
        let mut own = self.fatal.subscribe();
        loop {
            if let Some(why) = own.borrow().clone() {
                return why;
            }
            if let Err(fatal) = &rx.borrow().running_state {
                return fatal.to_string();
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return "the Raft core stopped".into();
                },
                r = own.changed() => if r.is_err() {
                    return "the peer stopped".into();
                },
            }
        }
    }

    /// Stops the Raft instance and the listener.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        for t in self.tasks.lock().await.drain(..) {
            t.abort();
        }
    }

    fn addr_of(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> Option<String> {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Whether this peer may serve reads: it leads, and it has applied an entry of its own term,
    /// which implies it applied everything committed before it. (openraft's
    /// `ensure_linearizable` stalls for a long time when a voter is down, starving clients.)
    /// Reads are never what keeps the ring safe: writes are fenced on the leader's term and must
    /// carry a newer ring.
    /// On refusal, the address of the peer to ask instead, if known.
    /// A leader that has not heard from a quorum within [`QUORUM_FRESH`] refuses too: it may
    /// be cut off while the majority elected another.
    fn can_read(&self) -> Result<(), Option<String>> {
        let m = self.raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return Err(None);
        }
        if m.state != ServerState::Leader {
            return Err(m.current_leader.and_then(|l| Self::addr_of(&m, l)));
        }
        if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
            // Leading, but not caught up yet: ask again in a moment.
            return Err(None);
        }
        let fresh = u64::try_from(QUORUM_FRESH.as_millis()).unwrap_or(u64::MAX);
        if m.millis_since_quorum_ack.is_none_or(|ms| ms > fresh) {
            return Err(None);
        }
        Ok(())
    }

    /// Serves the listener within the default [`Limits`]: each connection carries one request.
    async fn serve(self, listener: Listener, tls: Option<Arc<PeerTls>>) {
        let group: Arc<dyn listener::Group> = Arc::new(self.clone());
        let answer = move |caller: Caller, body: Vec<u8>| {
            let me = self.clone();
            async move { me.handle(&body, &caller).await }
        };
        listener::serve(listener, tls, Limits::default(), group, answer).await;
    }

    /// The reply to one request (`body`) from `caller`.
    async fn handle(&self, body: &[u8], caller: &Caller) -> std::io::Result<Vec<u8>> {
        let req: Request = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                unreadable_request(&e);
                return Err(e.into());
            }
        };
        let admitted = self.admitted.load(Ordering::SeqCst);
        let reply = match self.authorize(caller, &req).await {
            Ok(()) if !admitted && !matches!(req, Request::Probe { .. }) => {
                Reply::Error(NOT_ADMITTED.into())
            }
            Ok(()) if matches!(req, Request::State) => return self.state_reply().await,
            Ok(()) => self.answer(authorize::stamped(caller, req)).await,
            Err(Refusal::Fenced(why)) => {
                // What the store's own fence would answer: the caller does not lead.
                debug!(caller = ?caller, "fenced a request: {why}");
                match req {
                    Request::Write(Command::Resign { .. }) => Reply::Applied(Applied::Ok),
                    _ => Reply::Applied(Applied::Fenced),
                }
            }
            Err(Refusal::Denied(why)) => {
                warn!(caller = ?caller, "refused a request: {why}");
                Reply::Error(format!("refused: {why}"))
            }
        };
        Ok(serde_json::to_vec(&reply)?)
    }

    /// The reply to a `State` read, serialised once per revision however many callers read
    /// it: each client box reads the state at every change, and a reader holding many
    /// connections costs the peer a copy, not a serialisation, per read.
    async fn state_reply(&self) -> std::io::Result<Vec<u8>> {
        if let Err(leader) = self.can_read() {
            return Ok(serde_json::to_vec(&Reply::NotLeader(leader))?);
        }
        let revision = self.store.read(|data| data.revision).await;
        let cached =
            |cache: &StateCache| match &*cache.lock().unwrap_or_else(PoisonError::into_inner) {
                Some((r, bytes)) if *r == revision => Some(bytes.clone()),
                _ => None,
            };
        if let Some(bytes) = cached(&self.state_cache) {
            return Ok(bytes.to_vec());
        }
        let data = self.store.data().await;
        let bytes = Arc::new(serde_json::to_vec(&StateReply::State(&data))?);
        *self
            .state_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((data.revision, bytes.clone()));
        Ok(bytes.to_vec())
    }

    /// Whether `caller` may make `req` ([`authorize::authorize`]), with the facts of the
    /// group's state it needs read first.
    async fn authorize(&self, caller: &Caller, req: &Request) -> Result<(), Refusal> {
        let mut facts = Facts::default();
        match authorize::needs(caller, req) {
            Need::Nothing => {}
            Need::Voter(id) => facts.sender_is_voter = self.is_voter(id),
            Need::Leader => {
                facts.leader = self
                    .store
                    .read(|data| data.leader.as_ref().map(|l| l.node_id.clone()))
                    .await;
            }
            Need::LeaseHolder(lease) => {
                facts.lease_holder = self
                    .store
                    .read(|data| {
                        data.alive
                            .iter()
                            .find(|(_, l)| **l == lease)
                            .map(|(n, _)| n.clone())
                            .or_else(|| {
                                data.leader
                                    .as_ref()
                                    .filter(|s| s.lease == lease)
                                    .map(|s| s.node_id.clone())
                            })
                    })
                    .await
                    .map_or(LeaseHolder::Nobody, LeaseHolder::Member);
            }
        }
        authorize::authorize(caller, req, &facts)
    }

    async fn answer(&self, req: Request) -> Reply {
        match req {
            Request::Append(r) => Reply::Append(self.raft.append_entries(r).await),
            Request::Vote(r) => {
                if let Some(gate) = self.store.vote_gate().await {
                    let applied = self
                        .raft
                        .metrics()
                        .borrow()
                        .last_applied
                        .map_or(0, |l| l.index);
                    if applied < gate {
                        return Reply::Error(format!(
                            "this peer started without Raft state and has caught up to index {applied} of {gate}: it grants no vote yet"
                        ));
                    }
                    if let Err(e) = self.store.set_vote_gate(None).await {
                        return Reply::Error(format!("cannot clear the vote gate: {e}"));
                    }
                }
                Reply::Vote(self.raft.vote(r).await)
            }
            Request::Probe { name, .. } => {
                let m = self.raft.metrics().borrow().clone();
                let admitted = self.admitted.load(Ordering::SeqCst);
                let membership = m.membership_config.membership();
                let initialized = admitted && membership.voter_ids().next().is_some();
                let asker = raft_id(&name);
                Reply::Group {
                    initialized,
                    // Only a leader that hears from a quorum speaks for the group.
                    leader: m.state == ServerState::Leader && self.can_read().is_ok(),
                    leader_addr: m.current_leader.and_then(|l| Self::addr_of(&m, l)),
                    last_index: m.last_log_index.unwrap_or(0),
                    proposal: if initialized {
                        digest_of(membership.voter_ids())
                    } else {
                        self.proposal
                    },
                    member: membership.get_node(&asker).is_some(),
                    replicated: m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&asker))
                        .is_some_and(Option::is_some),
                    committed: m.last_applied.map_or(0, |l| l.index),
                }
            }
            Request::Members => {
                let m = self.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let list = |ids: Vec<u64>| -> Vec<(u64, String)> {
                    ids.into_iter()
                        .map(|i| {
                            (
                                i,
                                membership
                                    .get_node(&i)
                                    .map(|n| n.addr.clone())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                };
                Reply::Members {
                    voters: list(membership.voter_ids().collect()),
                    learners: list(membership.learner_ids().collect()),
                    leader: m.current_leader,
                }
            }
            Request::Join { name, addr } => self.add_peer(&name, &addr).await,
            Request::Leave {
                name,
                below_voter_floor,
            } => self.remove_peer(&name, below_voter_floor).await,
            Request::InstallSnapshot(r) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            Request::Write(cmd) => {
                // What breaks a bound on its own never reaches the log: every replica would
                // refuse it, but only after storing and replicating it.
                if let Err(refused) = cmd.within_bounds() {
                    let revision = *self.store.revisions().borrow();
                    return Reply::Written(stek_store::keyspace::Outcome {
                        applied: refused,
                        revision,
                    });
                }
                match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(cmd)).await {
                    Ok(Ok(resp)) => Reply::Written(resp.data),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                        Reply::NotLeader(f.leader_node.map(|n| n.addr))
                    }
                    Ok(Err(e)) => Reply::Error(e.to_string()),
                    // Not committed in time (a leadership change under way): the client asks
                    // again, maybe elsewhere. Every command is safe to apply twice.
                    Err(_) => Reply::NotLeader(None),
                }
            }
            Request::State => match self.can_read() {
                Ok(()) => Reply::State(self.store.data().await),
                Err(leader) => Reply::NotLeader(leader),
            },
            Request::Wait { after, timeout_ms } => {
                if let Err(leader) = self.can_read() {
                    return Reply::NotLeader(leader);
                }
                let mut rx = self.store.revisions();
                let limit = Duration::from_millis(timeout_ms.min(30_000));
                let reached = tokio::time::timeout(limit, async {
                    let r = rx.wait_for(|r| *r > after).await.map(|r| *r);
                    r.ok()
                })
                .await
                .ok()
                .flatten();
                Reply::Revision(reached.unwrap_or(after))
            }
            Request::Heartbeat { lease } => {
                // Only a leader that hears from a quorum renews: a cut-off one must not keep
                // its own box's lease alive while the majority moves on.
                if let Err(leader) = self.can_read() {
                    return Reply::NotLeader(leader);
                }
                let ttl = self
                    .store
                    .read(|data| data.leases.get(&lease).copied())
                    .await;
                match ttl {
                    Some(ttl) => {
                        let deadline = Instant::now() + Duration::from_millis(ttl);
                        self.deadlines.lock().await.insert(lease, deadline);
                        let age = self.raft.metrics().borrow().millis_since_quorum_ack;
                        Reply::Renewed(age.unwrap_or(0))
                    }
                    None => Reply::Applied(Applied::NoLease),
                }
            }
        }
    }

    fn not_leader(&self) -> Option<Reply> {
        let m = self.raft.metrics().borrow().clone();
        (m.state != ServerState::Leader)
            .then(|| Reply::NotLeader(m.current_leader.and_then(|l| Self::addr_of(&m, l))))
    }

    /// On the leader: adds `name` at `addr` as a learner, waits (at most [`CATCH_UP`]) for it to
    /// catch up, and makes it a voter while the group has fewer than [`MAX_VOTERS`]. The
    /// leader's Raft client checks that whoever answers at `addr` holds `name`'s certificate.
    async fn add_peer(&self, name: &str, addr: &str) -> Reply {
        if let Some(r) = self.not_leader() {
            return r;
        }
        let valid_addr = addr.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.starts_with("unix") && p.parse::<u16>().is_ok()
        });
        if !valid_addr {
            return Reply::Error(format!("\"{addr}\" is not host:port"));
        }
        let id = raft_id(name);
        // Whoever answers at `addr` must hold `name`'s certificate (the Raft client checks it
        // on every message too): fail now, with the reason, rather than add a learner that
        // can never catch up.
        let probe = Request::Probe {
            name: self.name.to_string(),
            proposal: self.proposal,
        };
        if let Err(e) = call_peer(
            addr,
            Some(id),
            &probe,
            Duration::from_secs(3),
            self.tls.as_deref(),
        )
        .await
        {
            return Reply::Error(format!("cannot add {name} at {addr}: {e}"));
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        if let Some(node) = membership.get_node(&id) {
            if node.addr != addr {
                return Reply::Error(format!(
                    "{name} is a peer already, at {}: remove it first to move it",
                    node.addr
                ));
            }
        } else {
            let node = BasicNode {
                addr: addr.to_owned(),
            };
            if let Err(e) = self.raft.add_learner(id, node, false).await {
                return Self::membership_error(e);
            }
        }
        let target = m.last_log_index.unwrap_or(0);
        let caught_up = self
            .raft
            .wait(Some(CATCH_UP))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .is_some_and(|l| l.index >= target)
                },
                "the new peer to catch up",
            )
            .await;
        if caught_up.is_err() {
            return Reply::Error(format!(
                "{name} was added as a learner but did not catch up within {CATCH_UP:?}: is it running at {addr}, with a certificate naming it? Run the same command again once it is"
            ));
        }
        let voters = membership.voter_ids().count();
        if membership.voter_ids().any(|v| v == id) {
            info!(peer = name, addr, "already a voter");
        } else if voters < MAX_VOTERS {
            let ids: std::collections::BTreeSet<u64> = [id].into();
            if let Err(e) = self
                .raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(ids), true)
                .await
            {
                return Self::membership_error(e);
            }
            info!(peer = name, addr, "added to the raft group as a voter");
        } else {
            info!(
                peer = name,
                addr, "added to the raft group as a learner ({MAX_VOTERS} voters already)"
            );
        }
        Reply::Applied(Applied::Ok)
    }

    /// On the leader: removes `name` from the group, and promotes a learner in its place, as
    /// [`may_remove`] decides (the voter floor: `below_voter_floor` is the operator's flag).
    async fn remove_peer(&self, name: &str, below_voter_floor: bool) -> Reply {
        use std::collections::BTreeSet;
        if let Some(r) = self.not_leader() {
            return r;
        }
        let id = raft_id(name);
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let removal = match may_remove(&voters, &learners, name, self.founders, below_voter_floor) {
            Ok(r) => r,
            Err(refused) => {
                warn!(peer = name, "removal refused: {refused}");
                return Reply::Error(refused.to_string());
            }
        };
        if let Removal::Voter { next } = removal {
            if next.len() < voter_floor(self.founders) {
                warn!(
                    peer = name,
                    voters = next.len(),
                    "removing a voter below the voter floor, as the operator asked (--below-voter-floor)"
                );
            }
            if let Err(e) = self
                .raft
                .change_membership(openraft::ChangeMembers::ReplaceAllVoters(next), true)
                .await
            {
                return Self::membership_error(e);
            }
        }
        let ids: BTreeSet<u64> = [id].into();
        if let Err(e) = self
            .raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
            .await
        {
            return Self::membership_error(e);
        }
        info!(peer = name, "removed from the raft group");
        Reply::Applied(Applied::Ok)
    }

    fn membership_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Reply {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                Reply::NotLeader(f.leader_node.map(|n| n.addr))
            }
            e => Reply::Error(e.to_string()),
        }
    }

    /// Keeps [`Peer::voter_addresses`] current: the voters' listen addresses (of the `peers`
    /// table until the group has a membership), names resolved, on every membership change and
    /// every [`VOTER_ADDRESSES_EVERY`].
    async fn follow_voter_addresses(self) {
        let mut metrics = self.raft.metrics();
        let mut last: Option<Vec<String>> = None;
        let mut due = tokio::time::Instant::now();
        loop {
            let listed: Vec<String> = {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                let voters: Vec<String> = membership
                    .voter_ids()
                    .filter_map(|v| membership.get_node(&v).map(|n| n.addr.clone()))
                    .collect();
                if voters.is_empty() {
                    self.table_addresses.to_vec()
                } else {
                    voters
                }
            };
            // Metrics change with every heartbeat: resolve only when the voters' addresses
            // changed, or when it is time to look again.
            if last.as_ref() != Some(&listed) || tokio::time::Instant::now() >= due {
                let mut resolved = std::collections::HashSet::new();
                for addr in listed.iter().filter(|a| !a.starts_with("unix:")) {
                    let found = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio::net::lookup_host(addr.as_str()),
                    )
                    .await;
                    if let Ok(Ok(found)) = found {
                        resolved.extend(found.map(|a| listener::address_of(a.ip())));
                    }
                }
                *self
                    .voter_addresses
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = resolved;
                last = Some(listed);
                due = tokio::time::Instant::now() + VOTER_ADDRESSES_EVERY;
            }
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(due) => {}
            }
        }
    }

    /// On the leader: starts clocks for leases it has not heard of (fresh for all after a
    /// leader change) and revokes those that ran out.
    async fn lease_clock(self) {
        let mut led_term: Option<u64> = None;
        loop {
            tokio::time::sleep(LEASE_TICK).await;
            let m = self.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                led_term = None;
                self.deadlines.lock().await.clear();
                continue;
            }
            if led_term != Some(m.current_term) {
                led_term = Some(m.current_term);
                self.deadlines.lock().await.clear();
            }
            let leases = self.store.read(|data| data.leases.clone()).await;
            let now = Instant::now();
            let expired: Vec<i64> = {
                let mut d = self.deadlines.lock().await;
                d.retain(|l, _| leases.contains_key(l));
                for (lease, ttl) in &leases {
                    d.entry(*lease)
                        .or_insert_with(|| now + Duration::from_millis(*ttl));
                }
                d.iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(l, _)| *l)
                    .collect()
            };
            for lease in expired {
                // Bounded: a write that never completes (this peer was deposed while it was
                // pending) must not stop the clock for good, or no lease would ever expire
                // again when this peer leads next. Not done: the next tick tries again.
                let revoke = self.raft.client_write(Command::Revoke { lease });
                match tokio::time::timeout(WRITE_TIMEOUT, revoke).await {
                    Ok(Ok(_)) => {
                        self.deadlines.lock().await.remove(&lease);
                        info!(lease, "lease expired");
                    }
                    Ok(Err(e)) => debug!(lease, "could not expire lease: {e}"),
                    Err(_) => debug!(
                        lease,
                        "could not expire lease: not committed within {WRITE_TIMEOUT:?}"
                    ),
                }
            }
        }
    }
}

/// How long a peer keeps asking for the snapshot that purges a key drop from its log before it
/// leaves it to the next scheduled one (every [`RAFT_LOG_KEPT`] entries).
const PURGE_PATIENCE: Duration = Duration::from_secs(30);

/// Snapshots and purges this peer's log right after it applied a ring write that dropped keys
/// (or a re-key; [`RaftStore::key_drops`]), so that `raft.redb` holds at most the live ring's
/// entries and the few after it, not the sealed copies of dropped keys. Each peer does it for
/// itself, leader or not: every peer applies every entry, and no request between peers is
/// needed. A task of its own because the signal comes from inside openraft's state machine
/// worker, which builds the snapshot: waiting for it there would deadlock.
///
/// redb frees the purged log's pages without overwriting them, so until they are reused the
/// file may still hold old sealed copies: what makes them worthless is that they open only with
/// sealing keys that no longer exist (docs/security.md, "History purge"), not this purge.
async fn purge_after_key_drops(
    raft: Raft<TypeConfig>,
    mut drops: tokio::sync::watch::Receiver<u64>,
    name: Arc<str>,
) {
    while drops.changed().await.is_ok() {
        let index = *drops.borrow_and_update();
        if index > 0 {
            purge_up_to(&raft, index, &name).await;
        }
    }
}

/// Asks openraft for a snapshot that covers `index` until it has one, and waits for the purge
/// it brings (`max_in_snapshot_log_to_keep = 0`: everything up to the snapshot). A request made
/// while another snapshot is being built is dropped by openraft, so it is made again.
async fn purge_up_to(raft: &Raft<TypeConfig>, index: u64, name: &str) {
    let mut metrics = raft.metrics();
    let deadline = Instant::now() + PURGE_PATIENCE;
    loop {
        let (snapshot, purged) = {
            let m = metrics.borrow();
            (m.snapshot, m.purged)
        };
        if purged.is_some_and(|p| p.index >= index) {
            info!(target: "audit", peer = name, index, "raft log purged: no log entry up to this ring write, which dropped keys, is kept");
            return;
        }
        let covered = snapshot.is_some_and(|s| s.index >= index);
        if !covered && raft.trigger().snapshot().await.is_err() {
            // The Raft core stopped: the node exits on it (`Peer::failed`).
            return;
        }
        let wake = (Instant::now() + Duration::from_millis(500)).min(deadline);
        if let Ok(Err(_)) = tokio::time::timeout_at(wake.into(), metrics.changed()).await {
            return;
        }
        if Instant::now() >= deadline {
            warn!(peer = name, index, "the raft log was not purged within {PURGE_PATIENCE:?} of a ring write that dropped keys; the next snapshot, within {RAFT_LOG_KEPT} entries, purges it");
            return;
        }
    }
}

/// Says (at most once a minute, so that a stranger's garbage cannot flood the log) that a
/// request did not parse: most likely a peer of another stek version, whose Raft messages
/// this one cannot read, and replication to or from it stops until every peer runs the same.
fn unreadable_request(e: &serde_json::Error) {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let due = LAST.lock().is_ok_and(|mut last| {
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            *last = Some(Instant::now());
        }
        due
    });
    if due {
        warn!("a peer request did not parse ({e}): if a peer runs another stek version, upgrade every peer to the same version (further such requests are logged at debug level for a minute)");
    } else {
        debug!("a peer request did not parse ({e})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RaftClient;
    use std::collections::BTreeSet;
    use std::time::SystemTime;
    use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
    use stek_store::{Coordinator, StoredRing, Term};

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    /// The cached `State` reply is serialised from a borrowed state: a client must read it
    /// as the `Reply::State` it always was.
    #[test]
    fn a_state_reply_of_a_borrowed_state_is_the_reply_a_client_reads() {
        let mut data = stek_store::keyspace::Keyspace::default();
        for cmd in [
            Command::Grant {
                lease: 7,
                ttl_ms: 3_000,
            },
            Command::PutMember {
                node_id: "n1".into(),
                value: b"{}".to_vec(),
            },
        ] {
            data.apply(&cmd);
        }
        let borrowed = serde_json::to_vec(&StateReply::State(&data)).unwrap();
        let owned = serde_json::to_vec(&Reply::State(data.clone())).unwrap();
        assert_eq!(borrowed, owned);
        let Reply::State(read) = serde_json::from_slice(&borrowed).unwrap() else {
            panic!("not a State reply")
        };
        assert_eq!((read.revision, read.members.len()), (data.revision, 1));
    }

    /// Writes `ring` as the leader of `term`, serving every pending rotation request.
    async fn write(client: &RaftClient, term: Term, ring: &KeyRing, policy: &Policy) {
        let snap = client.snapshot().await.unwrap();
        let mut stored = StoredRing::seal("purge", ring, policy, "n1", &[]).0;
        stored.term = term.0;
        client
            .write_ring(term, snap.ring_revision, &stored, &snap.requests)
            .await
            .unwrap();
    }

    /// Waits until `done`, polling every 50 ms; panics with `what` after 20 s.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Three peers on loopback, each with its `raft.redb`, and a leader that rotates with
    /// retain 1 (so that from the second rotation on every ring write drops a key), with
    /// rotation requests between writes. After every write that drops a key, every peer's log
    /// table holds no entry up to that write and its snapshot covers it: the file keeps only
    /// the live ring and the entries after it. Prints the measurement for docs/security.md.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_peer_purges_its_log_right_after_a_ring_write_that_drops_keys() {
        let dir = tempfile::tempdir().unwrap();
        let peers: BTreeMap<String, String> = ["p1", "p2", "p3"]
            .into_iter()
            .map(|n| (n.to_owned(), free_addr()))
            .collect();
        let mut running = Vec::new();
        for (name, addr) in &peers {
            let storage = Storage::Durable(dir.path().join(name));
            running.push(
                Peer::start("purge", name, addr, &peers, storage, None)
                    .await
                    .unwrap(),
            );
        }
        let client = RaftClient::new("purge", peers.values().cloned().collect(), None);
        let lease = client.grant_lease(Duration::from_secs(300)).await.unwrap();
        let term = client
            .campaign(lease, "n1")
            .await
            .unwrap()
            .expect("elected");
        let policy = Policy {
            interval: Duration::from_secs(3600),
            retain: 1,
        };
        let seen = KeyHistory::new();
        let mut ring =
            KeyRing::bootstrap(SystemTime::now(), &policy, &mut OsKeySource, &seen).unwrap();
        write(&client, term, &ring, &policy).await;
        let mut drops = 0;
        for _ in 0..20 {
            for by in ["a", "b", "c"] {
                client.request_rotation(by, None).await.unwrap();
            }
            let next = ring
                .rotated(SystemTime::now(), &policy, &mut OsKeySource, &seen)
                .unwrap();
            let dropped = ring
                .keys()
                .iter()
                .any(|k| !next.keys().iter().any(|n| n.epoch == k.epoch));
            write(&client, term, &next, &policy).await;
            ring = next;
            if !dropped {
                continue;
            }
            drops += 1;
            // The write's index, as each peer's state machine saw it.
            let index = running
                .iter()
                .map(|p| *p.store.key_drops().borrow())
                .max()
                .unwrap();
            // A follower that fell behind while the leader folded its log gets the state as a
            // snapshot at or past the write instead of the entry: it signals no drop then (it
            // holds no entry to purge), and it has the write all the same.
            until("every peer to apply the write", || {
                running.iter().all(|p| {
                    *p.store.key_drops().borrow() == index
                        || p.store.kept().snapshot_at >= Some(index)
                })
            })
            .await;
            until("every peer to purge its log up to the write", || {
                running.iter().all(|p| {
                    let kept = p.store.kept();
                    kept.snapshot_at >= Some(index) && kept.log.first().is_none_or(|i| *i > index)
                })
            })
            .await;
        }
        assert_eq!(drops, 19, "every rotation but the first drops a key");
        // What comes before the next rotation stays in the log until then (or until 64 entries).
        for by in ["a", "b", "c"] {
            client.request_rotation(by, None).await.unwrap();
        }
        until("every peer to append the requests", || {
            running.iter().all(|p| p.store.kept().log.len() == 3)
        })
        .await;
        for (name, p) in peers.keys().zip(&running) {
            let kept = p.store.kept();
            println!(
                "{name}: {} log entries (indexes {:?}..={:?}), snapshot at {:?}, ring generations {:?}",
                kept.log.len(),
                kept.log.first(),
                kept.log.last(),
                kept.snapshot_at,
                kept.generations
            );
            assert_eq!(
                kept.generations,
                BTreeSet::from([ring.generation()]),
                "{name} keeps only the live ring"
            );
        }
        for p in running {
            p.shutdown().await;
        }
    }
}
