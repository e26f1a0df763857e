//! One peer of the embedded coordinator: the Raft instance, its listener (Raft RPCs and client
//! calls), and, while it is the Raft leader, the lease clock.
//!
//! Leases are replicated (granted, revoked, and which keys they hold); their deadlines are not:
//! the Raft leader keeps them in memory from heartbeats and revokes a lease, through the log,
//! once it expires. A new Raft leader starts every lease's clock afresh, as etcd does on a
//! leader change, so a live member is never taken for dead because the leader changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::net::{read_frame, write_frame, Listener, Network, Reply, Request};
use super::store::{Applied, Command, MemStore};
use super::tls::PeerTls;
use super::TypeConfig;
use crate::identity::Role;

/// How many log entries a peer holds before it folds them into a snapshot and purges them.
pub const RAFT_LOG_KEPT: u64 = 64;
use crate::CoordError;

/// How often the lease clock runs on the leader.
const LEASE_TICK: Duration = Duration::from_millis(200);

/// A running peer. Dropping it does not stop it: call [`Peer::shutdown`].
#[derive(Clone)]
pub struct Peer {
    raft: Raft<TypeConfig>,
    store: MemStore,
    id: u64,
    addrs: Arc<BTreeMap<u64, String>>,
    ids: Arc<BTreeMap<String, u64>>,
    deadlines: Arc<Mutex<HashMap<i64, Instant>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a request is not carried out.
#[derive(Debug)]
enum Refusal {
    /// Not allowed for this caller: an error reply, logged.
    Denied(String),
    /// A ring write or resignation by a member that does not lead: answered as the store's
    /// term fence answers it (a deposed leader's normal fate).
    Fenced(String),
}

/// Who is at the other end of a connection.
#[derive(Debug)]
enum Caller {
    /// The Unix socket: a process of this node's own user.
    Local,
    /// Plain TCP (`insecure = true`): anyone.
    Insecure,
    /// TLS without `[identity]` trust (tests): any certificate of the CA.
    AnyCertificate,
    /// A verified certificate.
    Cert(Role),
    /// A certificate of the CA that does not make its holder anyone (revoked, no stek role).
    Refused(String),
}

impl Caller {
    fn of(
        trust: &crate::identity::Trust,
        certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Self {
        match certs.and_then(|c| c.first()) {
            None => Self::Refused("no client certificate".into()),
            Some(der) => match trust.verify(der, std::time::SystemTime::now()) {
                Ok(v) => Self::Cert(v.role),
                Err(e) => Self::Refused(e.to_string()),
            },
        }
    }
}

/// Raft ids for peer names: their position in name order, from 1. Every peer computes the same
/// mapping from the same `peers` table.
pub fn raft_ids(peers: &BTreeMap<String, String>) -> BTreeMap<String, u64> {
    peers.keys().cloned().zip(1u64..).collect()
}

impl Peer {
    /// Starts the peer `name` listening on `listen`, in the group `peers` (name to address).
    pub async fn start(
        cluster: &str,
        name: &str,
        listen: &str,
        peers: &BTreeMap<String, String>,
        tls: Option<PeerTls>,
    ) -> Result<Self, CoordError> {
        let tls = tls.map(Arc::new);
        let ids = raft_ids(peers);
        let id = *ids.get(name).ok_or_else(|| CoordError::Unreachable {
            endpoints: listen.to_owned(),
            reason: format!("node {name} is not in the raft peers table"),
        })?;
        let addrs: BTreeMap<u64, String> = peers.iter().map(|(n, a)| (ids[n], a.clone())).collect();
        let config = Config {
            cluster_name: format!("stek-{cluster}"),
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            // History purge: the log (which holds every past ring record, sealed) is folded
            // into a snapshot every 64 entries and nothing before the snapshot is kept.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(RAFT_LOG_KEPT),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| CoordError::Unreachable {
            endpoints: listen.to_owned(),
            reason: e.to_string(),
        })?);
        let store = MemStore::default();
        let (log, sm) = openraft::storage::Adaptor::new(store.clone());
        let network = Network { tls: tls.clone() };
        let raft =
            Raft::new(id, config, network, log, sm)
                .await
                .map_err(|e| CoordError::Unreachable {
                    endpoints: listen.to_owned(),
                    reason: e.to_string(),
                })?;
        let listener = Listener::bind(listen)
            .await
            .map_err(|e| CoordError::Unreachable {
                endpoints: listen.to_owned(),
                reason: format!("cannot listen: {e}"),
            })?;
        let peer = Self {
            raft,
            store,
            id,
            addrs: Arc::new(addrs),
            ids: Arc::new(ids),
            deadlines: Arc::default(),
            tasks: Arc::default(),
        };
        let serve = tokio::spawn(peer.clone().serve(listener, tls));
        let clock = tokio::spawn(peer.clone().lease_clock());
        peer.tasks.lock().await.extend([serve, clock]);
        // Every peer proposes the same initial membership; only an empty group accepts it, so a
        // peer that restarts into a running group simply catches up from the leader.
        let members: BTreeMap<u64, BasicNode> = peer
            .addrs
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match peer.raft.initialize(members).await {
            Ok(()) => info!(peer = name, "raft group initialised"),
            Err(e) => debug!(peer = name, "raft group already initialised: {e}"),
        }
        Ok(peer)
    }

    /// Stops the Raft instance and the listener.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        for t in self.tasks.lock().await.drain(..) {
            t.abort();
        }
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader.and_then(|l| self.addrs.get(&l).cloned())
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Whether this peer may serve reads: it leads, and it has applied an entry of its own term,
    /// which implies it applied everything committed before it. (openraft's
    /// `ensure_linearizable` stalls for a long time when a voter is down, starving clients.)
    /// Reads are never what keeps the ring safe: writes are fenced on the leader's term and must
    /// carry a newer ring.
    /// On refusal, the address of the peer to ask instead, if known.
    fn can_read(&self) -> Result<(), Option<String>> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(m.current_leader.and_then(|l| self.addrs.get(&l).cloned()));
        }
        if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
            // Leading, but not caught up yet: ask again in a moment.
            return Err(None);
        }
        Ok(())
    }

    async fn serve(self, listener: Listener, tls: Option<Arc<PeerTls>>) {
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
        let trust = tls.and_then(|t| t.trust.clone());
        loop {
            let me = self.clone();
            match &listener {
                Listener::Unix(l, _) => match l.accept().await {
                    Ok((mut stream, _)) => {
                        // The socket's directory lets only our uid in; the kernel's word on
                        // the caller is checked as well (our uid, or root).
                        let uid = stream.peer_cred().map(|c| c.uid()).ok();
                        if !uid.is_some_and(|u| u == 0 || u == nix::unistd::geteuid().as_raw()) {
                            warn!(?uid, "refused a local connection from another user");
                            continue;
                        }
                        tokio::spawn(async move {
                            if let Err(e) = me.handle(&mut stream, &Caller::Local).await {
                                debug!("local connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        warn!("raft socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Listener::Tcp(l) => match l.accept().await {
                    Ok((stream, from)) => {
                        let acceptor = acceptor.clone();
                        let trust = trust.clone();
                        tokio::spawn(async move {
                            let served = match acceptor {
                                Some(a) => match a.accept(stream).await {
                                    Ok(mut s) => {
                                        let caller = match &trust {
                                            Some(trust) => {
                                                Caller::of(trust, s.get_ref().1.peer_certificates())
                                            }
                                            None => Caller::AnyCertificate,
                                        };
                                        me.handle(&mut s, &caller).await
                                    }
                                    Err(e) => {
                                        warn!(%from, "refused a peer connection without a valid certificate: {e}");
                                        return;
                                    }
                                },
                                None => {
                                    let mut s = stream;
                                    me.handle(&mut s, &Caller::Insecure).await
                                }
                            };
                            if let Err(e) = served {
                                debug!("peer connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        warn!("raft listener: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    async fn handle<S>(&self, stream: &mut S, caller: &Caller) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let body = read_frame(stream).await?;
        let req: Request = serde_json::from_slice(&body)?;
        let reply = match self.authorize(caller, &req).await {
            Ok(()) => self.answer(req).await,
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
        write_frame(stream, &serde_json::to_vec(&reply)?).await?;
        let _ = tokio::io::AsyncWriteExt::shutdown(stream).await;
        Ok(())
    }

    /// Whether `caller` may make `req`. Replication, votes and snapshots come only from the
    /// peer the certificate names, acting for itself; a member registers, acknowledges and
    /// campaigns only as itself; an operator only reads and requests rotations.
    async fn authorize(&self, caller: &Caller, req: &Request) -> Result<(), Refusal> {
        use Refusal::Denied;
        let role = match caller {
            Caller::Local | Caller::Insecure | Caller::AnyCertificate => return Ok(()),
            Caller::Refused(why) => return Err(Denied(why.clone())),
            Caller::Cert(role) => role,
        };
        let raft_leader = match req {
            Request::Append(r) => Some(r.vote.leader_id().voted_for()),
            Request::Vote(r) => Some(r.vote.leader_id().voted_for()),
            Request::InstallSnapshot(r) => Some(r.vote.leader_id().voted_for()),
            _ => None,
        };
        match (role, req) {
            (Role::Operator(_), Request::State | Request::Wait { .. }) => Ok(()),
            (Role::Operator(_), Request::Write(Command::PutRequest { .. })) => Ok(()),
            (Role::Operator(name), _) => Err(Denied(format!(
                "operator {name} may only read and request rotations"
            ))),
            (Role::Member(id), _) if raft_leader.is_some() => {
                let own = self.ids.get(id).copied();
                if own.is_some() && raft_leader == Some(own) {
                    Ok(())
                } else {
                    Err(Denied(format!(
                        "member {id} sent a Raft message for peer {:?}, not for itself",
                        raft_leader.flatten()
                    )))
                }
            }
            (
                Role::Member(id),
                Request::Write(
                    Command::Register { node_id, .. }
                    | Command::PutMember { node_id, .. }
                    | Command::Campaign { node_id, .. },
                ),
            ) if node_id != id => Err(Denied(format!(
                "member {id} may not act for member {node_id}"
            ))),
            (
                Role::Member(id),
                Request::Write(Command::WriteRing { .. } | Command::Resign { .. }),
            ) => {
                // Only the leader writes rings and resigns; the store fences the term too.
                let data = self.store.data().await;
                match data.leader.as_ref() {
                    Some(l) if l.node_id == *id => Ok(()),
                    _ => Err(Refusal::Fenced(format!(
                        "member {id} does not lead; only the leader writes the ring or resigns"
                    ))),
                }
            }
            (
                Role::Member(id),
                Request::Write(Command::Revoke { lease }) | Request::Heartbeat { lease },
            ) => {
                // A member renews or ends only a lease no other member holds.
                let data = self.store.data().await;
                let holder = data
                    .alive
                    .iter()
                    .find(|(_, l)| **l == *lease)
                    .map(|(n, _)| n.clone())
                    .or_else(|| {
                        data.leader
                            .as_ref()
                            .filter(|s| s.lease == *lease)
                            .map(|s| s.node_id.clone())
                    });
                match holder {
                    Some(other) if other != *id => Err(Denied(format!(
                        "member {id} may not renew or end member {other}'s lease"
                    ))),
                    _ => Ok(()),
                }
            }
            (Role::Member(_), _) => Ok(()),
        }
    }

    async fn answer(&self, req: Request) -> Reply {
        match req {
            Request::Append(r) => Reply::Append(self.raft.append_entries(r).await),
            Request::Vote(r) => Reply::Vote(self.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            Request::Write(cmd) => match self.raft.client_write(cmd).await {
                Ok(resp) => Reply::Applied(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Reply::NotLeader(f.leader_node.map(|n| n.addr))
                }
                Err(e) => Reply::Error(e.to_string()),
            },
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
                if !self.is_leader() {
                    return Reply::NotLeader(self.leader_addr());
                }
                let ttl = self.store.data().await.leases.get(&lease).copied();
                match ttl {
                    Some(ttl) => {
                        let deadline = Instant::now() + Duration::from_millis(ttl);
                        self.deadlines.lock().await.insert(lease, deadline);
                        Reply::Applied(Applied::Ok)
                    }
                    None => Reply::Applied(Applied::NoLease),
                }
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
            let leases = self.store.data().await.leases;
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
                self.deadlines.lock().await.remove(&lease);
                match self.raft.client_write(Command::Revoke { lease }).await {
                    Ok(_) => info!(lease, "lease expired"),
                    Err(e) => debug!(lease, "could not expire lease: {e}"),
                }
            }
        }
    }
}
