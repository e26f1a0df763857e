//! The admin HTTP listener (`[admin] listen`, loopback by default): Prometheus `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (this node has applied the current ring).
//!
//! The node loop updates [`Metrics`] on every pass; the listener only reads it. Nothing here
//! ever holds key bytes: keys appear as epochs and fingerprints, members as node ids.
//! docs/metrics.md lists every metric; a cluster test scrapes each one.
//!
//! `/healthz` is a liveness probe, so nobody who can connect must be able to make it fail:
//! - **A probe is answered on accepting.** A `GET /healthz` already waiting whole on a new
//!   connection (a probe sends it as soon as it is connected) is answered and closed there and
//!   then: no task, no place, no lookup for anyone to take first.
//! - **Any other connection is served at once and meanwhile told apart** ([`Client`]): one from
//!   this host by the uid owning its socket (on loopback every local user connects from
//!   127.0.0.1, so the address tells nobody apart), read from `/proc/net/tcp` (the `peer`
//!   module) with one read for all those waiting, off the runtime's threads; any other, or
//!   every one when that table cannot be read, by its address. Until then it holds one of
//!   [`ADMIN_MAX_CONNECTIONS`] waiting places, where the newest always gets in at the cost of
//!   the oldest, so a flood of new connections cannot keep one out; a connection told to close
//!   first answers a request it has.
//! - **Connections told apart are shared among clients** ([`stek_trust::slots::Shares`]):
//!   [`ADMIN_MAX_PER_CLIENT`] (8) per client, root's and the probe's included, a client's ninth
//!   closing its own oldest; [`ADMIN_MAX_CONNECTIONS`] (64) in all, and with every one taken a
//!   client holding fewer than the largest holder takes the place of that holder's oldest, so
//!   a client holding none is always served. Only a client already holding as many as any
//!   other is refused.
//!
//! Connections closed or refused for room count in `stek_admin_connections_refused_total` and
//! are logged at most once a minute. A request's headers must arrive within
//! [`ADMIN_HEADER_TIMEOUT`] (2 s), counted from when the listener waits for them, so a
//! connection that sends nothing, or a keep-alive one idle between requests, closes after as
//! long (Prometheus opens another at its next scrape); a connection lasts at most
//! [`ADMIN_CONNECTION_TIMEOUT`] (10 s), however busy. See [`Limits`]. Answering `/healthz`
//! takes no lock; the table of connections is locked only to decide, never across a read or
//! a write.
//!
//! What is left, while someone opens new connections as fast as they can: a probe's SYN may
//! find the kernel's queue (128) full and be sent again a second later, and a probe that waits,
//! once connected, longer than 64 newer connections take to arrive before it sends its request
//! is closed unanswered. docs/metrics.md says how a probe rides that out.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use stek_trust::slots::{Refusals, Share, Shares};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, warn};

/// How many connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// How many of those one client (a local uid, or a remote address) may hold.
pub const ADMIN_MAX_PER_CLIENT: usize = 8;
/// How long a request's headers may take, counted from when the listener waits for them.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may last.
pub const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin listener allows a connection (the module docs say why these values).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once once told apart (and as many again from this host while they are
    /// being told apart).
    pub connections: usize,
    /// Connections at once of one [`Client`].
    pub per_client: usize,
    /// For a request's headers.
    pub header: Duration,
    /// For a whole connection.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: ADMIN_MAX_CONNECTIONS,
            per_client: ADMIN_MAX_PER_CLIENT,
            header: ADMIN_HEADER_TIMEOUT,
            connection: ADMIN_CONNECTION_TIMEOUT,
        }
    }
}

/// Labels of a per-target metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// `target[i]`'s index.
    pub target: String,
    /// Its format.
    pub format: String,
}

/// Labels of a per-target error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `target[i]`'s index.
    pub target: String,
    /// Its format.
    pub format: String,
    /// `write` (render or file write) or `reload` (reload, runtime push or verify).
    pub stage: String,
}

/// Labels saying why the Raft listener closed or refused a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `room` (closed or refused to keep room for others: a holder past its share, the
    /// largest holder's oldest) or `certificate` (its TLS handshake failed: no certificate of
    /// the CA, or one that is revoked or names no one).
    pub reason: String,
}

/// Labels naming a member.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// The member's node id.
    pub member: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// Every metric a node exports, and its readiness.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 while this node leads.
    pub leader: Gauge,
    /// The generation of the ring in the store.
    pub ring_generation: Gauge,
    /// The generation this node applied to every target.
    pub applied_generation: Gauge,
    /// Seconds since the active key was created.
    pub active_key_age: Seconds,
    /// When the current schedule started (the last rotation, or the bootstrap).
    pub last_rotation: Seconds,
    /// How far the stored ring's stamps are ahead of this node's clock (0 normally).
    pub ring_clock_ahead: Seconds,
    /// When the next scheduled rotation is due.
    pub next_rotation: Seconds,
    /// Members whose liveness lease holds.
    pub members_live: Gauge,
    /// Members known to the store, live or not.
    pub members: Gauge,
    /// 1 while a due rotation waits for members.
    pub rotation_blocked: Gauge,
    /// 1 for each member a due rotation waits for.
    pub rotation_blocker: Family<MemberLabels, Gauge>,
    /// 1 while this node's sealed copy of the stored ring opens.
    pub sealed_copy_ok: Gauge,
    /// 1 while the last read of the store succeeded.
    pub store_up: Gauge,
    /// 1 while this node's id is held by another liveness lease and it cannot join.
    pub node_id_held: Gauge,
    /// Rotations this node performed as leader.
    pub rotations: Counter,
    /// 1 while this node runs with `insecure = true` (no `[identity]` on a store others reach).
    pub insecure: Gauge,
    /// Member records whose enrollment did not verify (never sealed for).
    pub members_refused: Gauge,
    /// 1 while the stored ring is rejected (unsigned, forged, edited, replayed, malformed).
    pub ring_rejected: Gauge,
    /// Failed applies per target and stage.
    pub target_errors: Family<ErrorLabels, Counter>,
    /// Duration of each successful reload (or runtime push) per target.
    pub reload_duration: Family<TargetLabels, Histogram>,
    /// Admin connections closed or refused to keep room for other clients.
    pub admin_refused: Counter,
    /// Raft listener connections closed or refused, by why (this box's Raft peer only).
    pub raft_refused: Family<RefusedLabels, Counter>,
    ready: Mutex<Result<String, String>>,
    started: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered (all at zero).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stek");
        let leader = Gauge::default();
        let ring_generation = Gauge::default();
        let applied_generation = Gauge::default();
        let active_key_age = Seconds::default();
        let last_rotation = Seconds::default();
        let ring_clock_ahead = Seconds::default();
        let next_rotation = Seconds::default();
        let members_live = Gauge::default();
        let members = Gauge::default();
        let rotation_blocked = Gauge::default();
        let rotation_blocker = Family::<MemberLabels, Gauge>::default();
        let sealed_copy_ok = Gauge::default();
        let store_up = Gauge::default();
        let node_id_held = Gauge::default();
        let rotations = Counter::default();
        let insecure = Gauge::default();
        let members_refused = Gauge::default();
        let ring_rejected = Gauge::default();
        let target_errors = Family::<ErrorLabels, Counter>::default();
        let reload_duration =
            Family::<TargetLabels, Histogram>::new_with_constructor(reload_histogram as fn() -> _);
        let admin_refused = Counter::default();
        let raft_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "leader",
            "1 while this node is the cluster's leader",
            leader.clone(),
        );
        registry.register(
            "ring_generation",
            "Generation of the ring in the coordination store",
            ring_generation.clone(),
        );
        registry.register(
            "applied_generation",
            "Ring generation this node applied to every target",
            applied_generation.clone(),
        );
        registry.register_with_unit(
            "active_key_age",
            "Time since the active key was created",
            Unit::Seconds,
            active_key_age.clone(),
        );
        registry.register_with_unit(
            "ring_clock_ahead",
            "How far the stored ring's stamps (its schedule's start, its newest key) are ahead of this node's clock: its writer's clock ran at least that far ahead (0 normally)",
            Unit::Seconds,
            ring_clock_ahead.clone(),
        );
        registry.register_with_unit(
            "last_rotation_timestamp",
            "Unix time at which the current schedule started: the last rotation, or the bootstrap",
            Unit::Seconds,
            last_rotation.clone(),
        );
        registry.register_with_unit(
            "next_rotation_timestamp",
            "Unix time at which the next scheduled rotation is due",
            Unit::Seconds,
            next_rotation.clone(),
        );
        registry.register(
            "members_live",
            "Members whose liveness lease holds",
            members_live.clone(),
        );
        registry.register(
            "members",
            "Members known to the store, live or not",
            members.clone(),
        );
        registry.register(
            "rotation_blocked",
            "1 while a due rotation waits for live members to acknowledge the staged key",
            rotation_blocked.clone(),
        );
        registry.register(
            "rotation_blocker",
            "1 for each member a due rotation waits for",
            rotation_blocker.clone(),
        );
        registry.register(
            "sealed_copy_ok",
            "1 while this node's sealed copy of the stored ring opens",
            sealed_copy_ok.clone(),
        );
        registry.register(
            "store_up",
            "1 while the last read of the coordination store succeeded",
            store_up.clone(),
        );
        registry.register(
            "node_id_held",
            "1 while this node's id is held by another liveness lease and it cannot join",
            node_id_held.clone(),
        );
        registry.register(
            "rotations",
            "Rotations this node performed as leader",
            rotations.clone(),
        );
        registry.register(
            "insecure",
            "1 while this node runs with insecure = true: no [identity], so anyone who reaches the store or a peer can enroll and read every key",
            insecure.clone(),
        );
        registry.register(
            "members_refused",
            "Member records whose certificate or key signature does not verify: never sealed for, never counted",
            members_refused.clone(),
        );
        registry.register(
            "ring_rejected",
            "1 while the stored ring is rejected (unsigned, signed by a non-member, edited, replayed or malformed); nodes keep the keys they have",
            ring_rejected.clone(),
        );
        registry.register(
            "target_errors",
            "Failed applies of a ring to a target, by stage (write or reload)",
            target_errors.clone(),
        );
        registry.register_with_unit(
            "reload_duration",
            "Duration of a target's reload command or runtime push",
            Unit::Seconds,
            reload_duration.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Admin connections closed or refused to keep room for other clients: a client's oldest past its cap, the largest holder's oldest when every connection is taken, or a new one of a client already holding as many as any other",
            admin_refused.clone(),
        );
        registry.register(
            "raft_connections_refused",
            "Connections this box's Raft peer closed or refused: reason=room to keep room for others (a certificate holder or an address past its share, the largest holder's oldest), reason=certificate for a failed TLS handshake (no certificate of the CA, or a revoked or foreign one)",
            raft_refused.clone(),
        );
        Self {
            registry,
            leader,
            ring_generation,
            applied_generation,
            active_key_age,
            last_rotation,
            ring_clock_ahead,
            next_rotation,
            members_live,
            members,
            rotation_blocked,
            rotation_blocker,
            sealed_copy_ok,
            store_up,
            node_id_held,
            rotations,
            insecure,
            members_refused,
            ring_rejected,
            target_errors,
            reload_duration,
            admin_refused,
            raft_refused,
            ready: Mutex::new(Err("starting: the ring has not been read yet".into())),
            started: AtomicU64::new(unix(SystemTime::now()) as u64),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }

    /// Records whether this node is ready (`Ok(why)`) or not (`Err(why)`).
    pub fn set_ready(&self, state: Result<String, String>) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Whether this node is ready, and why.
    pub fn ready(&self) -> Result<String, String> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn uptime(&self) -> u64 {
        (unix(SystemTime::now()) as u64).saturating_sub(self.started.load(Ordering::Relaxed))
    }
}

fn reload_histogram() -> Histogram {
    // 10 ms to about 40 s: a reload is a signal (ms) or an ATS config reload (seconds).
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Who holds an admin connection, as far as the listener can tell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A client on this host, by the uid owning its socket.
    Uid(u32),
    /// Any other client, or one whose socket was not found, by its address.
    Address(IpAddr),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Uid(uid) => write!(f, "uid {uid}"),
            Client::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// Finding who owns the other end of a connection from this host, in `/proc/net/tcp`.
mod peer {
    use std::collections::{HashMap, HashSet};
    use std::io::BufRead;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::Client;

    /// A connection as the server sees it: (the client's end, the server's end), with
    /// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener sees an IPv4 client so, while
    /// the client's own socket is listed as IPv4).
    pub type Ends = (SocketAddr, SocketAddr);

    /// `addr` with an IPv4-mapped IPv6 address as IPv4.
    pub fn canonical(addr: SocketAddr) -> SocketAddr {
        SocketAddr::new(addr.ip().to_canonical(), addr.port())
    }

    /// Whether the client of `ends` is on this host, so that its socket is in this host's
    /// (this network namespace's) socket table: on loopback, or connected from the server's
    /// own address.
    pub fn on_this_host((client, server): Ends) -> bool {
        client.ip().is_loopback() || client.ip() == server.ip()
    }

    /// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Row {
        /// The socket's own end (`local_address`).
        pub local: SocketAddr,
        /// The other end (`rem_address`).
        pub remote: SocketAddr,
        /// The TCP state (`st`), e.g. 0x01 established.
        pub state: u8,
        /// The uid owning the socket (the creator's filesystem uid).
        pub uid: u32,
    }

    /// TCP_TIME_WAIT: what is left of a closed socket. It has no owner: its uid reads 0 (root).
    pub const TIME_WAIT: u8 = 0x06;

    /// Parses a row such as `0: 0100007F:A1B2 0100007F:24F5 01 00000000:00000000 00:00000000
    /// 00000000 1000 0 12345 ...`; `None` for the header or anything else. Addresses are
    /// printed as 32-bit words in the host's byte order, ports in hex.
    pub fn parse_row(line: &str) -> Option<Row> {
        let mut cols = line.split_whitespace();
        cols.next()?.strip_suffix(':')?;
        let local = endpoint(cols.next()?)?;
        let remote = endpoint(cols.next()?)?;
        let state = u8::from_str_radix(cols.next()?, 16).ok()?;
        // tx_queue:rx_queue, tr:tm->when, retrnsmt, then uid.
        let uid = cols.nth(3)?.parse().ok()?;
        Some(Row {
            local,
            remote,
            state,
            uid,
        })
    }

    fn endpoint(text: &str) -> Option<SocketAddr> {
        let (addr, port) = text.split_once(':')?;
        if !addr
            .bytes()
            .chain(port.bytes())
            .all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let port = u16::from_str_radix(port, 16).ok()?;
        // Each word is the address's bytes read as a native u32: its native bytes are them.
        let word = |i: usize| u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok();
        let ip = match addr.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(0)?.to_ne_bytes())),
            32 => {
                let mut bytes = [0u8; 16];
                for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                    chunk.copy_from_slice(&word(i)?.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(canonical(SocketAddr::new(ip, port)))
    }

    /// Adds to `found` the owner of each `wanted` connection's client socket listed in
    /// `lines`: the row whose own end is the client's and whose other end is the server's (the
    /// server's row of the same connection is the other way round), never a TIME_WAIT
    /// leftover. Stops once all are found.
    pub fn find_owners<S: AsRef<str>>(
        lines: impl IntoIterator<Item = S>,
        wanted: &HashSet<Ends>,
        found: &mut HashMap<Ends, u32>,
    ) {
        for line in lines {
            if found.len() >= wanted.len() {
                return;
            }
            let Some(row) = parse_row(line.as_ref()) else {
                continue;
            };
            let ends = (row.local, row.remote);
            if row.state != TIME_WAIT && wanted.contains(&ends) {
                found.insert(ends, row.uid);
            }
        }
    }

    /// The owners of the `wanted` connections' client sockets, from this host's
    /// `/proc/net/tcp` and `/proc/net/tcp6`; an error when neither can be read (not Linux, no
    /// /proc). Reads as far as needed: its cost grows with the host's sockets (some 2 µs each).
    pub fn socket_owners(wanted: &HashSet<Ends>) -> std::io::Result<HashMap<Ends, u32>> {
        let mut found = HashMap::new();
        let (mut read, mut unreadable) = (false, None);
        for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if found.len() >= wanted.len() {
                break;
            }
            match std::fs::File::open(path) {
                Ok(file) => {
                    let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
                    find_owners(lines, wanted, &mut found);
                    read = true;
                }
                Err(e) => unreadable = Some(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
            }
        }
        match unreadable {
            Some(e) if !read => Err(e),
            _ => Ok(found),
        }
    }

    /// Who the client of `ends` is: the uid in `owners`, else its address.
    pub fn client(ends: Ends, owners: &HashMap<Ends, u32>) -> Client {
        owners
            .get(&ends)
            .map_or(Client::Address(ends.0.ip()), |uid| Client::Uid(*uid))
    }
}

/// The admin listener's connections: those from this host not told apart yet, those told
/// apart and who holds them, how to close each in another's place, and the refusals not
/// logged yet.
#[derive(Debug)]
struct Admission {
    table: Mutex<Table>,
    /// Woken when a connection starts waiting to be told apart.
    waiting: Notify,
    /// Connections accepted, answered at once or not.
    accepted: AtomicU64,
    /// Messages logged about connections closed or refused.
    said: AtomicU64,
    metrics: Arc<Metrics>,
    limits: Limits,
}

#[derive(Debug)]
struct Table {
    /// Connections from this host being told apart: served meanwhile, the newest always, at
    /// the cost of the oldest when all places are taken.
    waiting: Shares<()>,
    /// Connections told apart: shared among their clients.
    told: Shares<Client>,
    /// Every open connection by number; its `close` tells its task to close it.
    conns: HashMap<u64, Conn>,
    next: u64,
    refusals: Refusals,
}

#[derive(Debug)]
struct Conn {
    ends: peer::Ends,
    told: bool,
    close: oneshot::Sender<()>,
}

/// Whose connection was closed or refused to keep room, for the log.
#[derive(Debug)]
enum Shed {
    /// One from this host not told apart yet.
    Waiting,
    /// One of this client, which holds so many.
    Client(Client, usize),
}

/// An admitted connection's place, given back when dropped.
#[derive(Debug)]
struct Held {
    admission: Arc<Admission>,
    id: u64,
    /// Resolves when the connection is to close in another's place.
    closed: oneshot::Receiver<()>,
}

impl Admission {
    fn new(metrics: Arc<Metrics>, limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            table: Mutex::new(Table {
                waiting: Shares::new(limits.connections, limits.connections),
                told: Shares::new(limits.connections, limits.per_client),
                conns: HashMap::new(),
                next: 0,
                refusals: Refusals::default(),
            }),
            waiting: Notify::new(),
            accepted: AtomicU64::new(0),
            said: AtomicU64::new(0),
            metrics,
            limits,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned table only means a panic while deciding; what it holds is consistent
        // between calls.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection: told apart at once when it comes from another host (by
    /// its address), else waiting to be; `None` when refused (the caller closes it).
    fn arrive(self: &Arc<Self>, ends: peer::Ends) -> Option<Held> {
        let mut table = self.table();
        let id = table.next;
        table.next += 1;
        let (close, closed) = oneshot::channel();
        let held = Held {
            admission: self.clone(),
            id,
            closed,
        };
        let told = !peer::on_this_host(ends);
        table.conns.insert(id, Conn { ends, told, close });
        if told {
            let shed = table.tell(id, Client::Address(ends.0.ip()));
            let refused = matches!(&shed, Some((gone, _)) if *gone == id);
            self.shed(table, shed.map(|(_, whose)| whose));
            return (!refused).then_some(held);
        }
        let shed = match table.waiting.admit(id, ()) {
            Share::InPlaceOf { closes, .. } => {
                table.close(closes);
                Some(Shed::Waiting)
            }
            Share::Admitted | Share::Refused => None,
        };
        self.shed(table, shed);
        self.waiting.notify_one();
        Some(held)
    }

    /// The connections waiting to be told apart.
    fn waiting(&self) -> Vec<(u64, peer::Ends)> {
        let table = self.table();
        table
            .conns
            .iter()
            .filter(|(_, c)| !c.told)
            .map(|(id, c)| (*id, c.ends))
            .collect()
    }

    /// Tells apart the connections `looked_up` (those still open and waiting): by the owner
    /// of the client's socket in `owners`, else by address.
    fn tell_apart(&self, looked_up: &[(u64, peer::Ends)], owners: &HashMap<peer::Ends, u32>) {
        for (id, ends) in looked_up {
            let mut table = self.table();
            if table.conns.get(id).is_none_or(|c| c.told) {
                continue;
            }
            table.waiting.release(*id);
            let shed = table.tell(*id, peer::client(*ends, owners));
            self.shed(table, shed.map(|(_, whose)| whose));
        }
    }

    /// Counts (and at most once a minute logs) a connection closed or refused to keep room.
    fn shed(&self, mut table: std::sync::MutexGuard<'_, Table>, shed: Option<Shed>) {
        let Some(shed) = shed else {
            return;
        };
        let say = table.refusals.refuse(Instant::now());
        drop(table);
        self.metrics.admin_refused.inc();
        if let Some(n) = say {
            warn!("{}", refused_message(n, &shed, &self.limits));
            self.said.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the listener logs, at most once a minute, about the `n` connections it closed or
/// refused since it last did, the latest being `latest`.
fn refused_message(n: u64, latest: &Shed, limits: &Limits) -> String {
    let latest = match latest {
        Shed::Waiting => "one from this host not told apart yet: new connections came faster than they are told apart".to_owned(),
        Shed::Client(who, holds) => format!("one of {who}, which holds {holds}"),
    };
    format!(
        "admin listener: closed or refused {n} connection(s) since the last such message to keep room for other clients ({} at most per client, {} in all); the latest {latest}. Something holds or opens connections (`ss -tnp` shows who)",
        limits.per_client, limits.connections
    )
}

impl Table {
    /// Connection `id` (open, not told apart) is `who`'s: the connection closed for it, or
    /// `id` itself when refused, and whose that was.
    fn tell(&mut self, id: u64, who: Client) -> Option<(u64, Shed)> {
        let (gone, of) = match self.told.admit(id, who.clone()) {
            Share::Admitted => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.told = true;
                }
                return None;
            }
            Share::InPlaceOf { closes, of } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.told = true;
                }
                (closes, of)
            }
            Share::Refused => (id, who),
        };
        self.close(gone);
        let holds = self.told.held(&of);
        Some((gone, Shed::Client(of, holds)))
    }

    /// Forgets connection `id`; its task, if it still runs, closes it.
    fn close(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id) {
            // Its task may have ended already: nobody to tell then.
            let _ = conn.close.send(());
        }
        self.waiting.release(id);
        self.told.release(id);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.admission.table().close(self.id);
    }
}

/// Binds the listener now (so a port in use fails the start) and serves it in a task.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    serve_within(listen, metrics, Limits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let (bound, _) = start(listen, metrics, limits).await?;
    Ok(bound)
}

/// [`serve_within`], and the listener's connections (for tests to look at).
async fn start(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, Arc<Admission>)> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let admission = Admission::new(metrics.clone(), limits);
    tokio::spawn(tell_apart(admission.clone()));
    let accepting = admission.clone();
    tokio::spawn(async move {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("admin listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            accepting.accepted.fetch_add(1, Ordering::Relaxed);
            if answered_at_once(&stream, &metrics) {
                continue;
            }
            let server = stream.local_addr().unwrap_or(bound);
            let ends = (peer::canonical(client), peer::canonical(server));
            // Served at once, before it is told apart: a probe needs an answer, not a name.
            if let Some(held) = accepting.arrive(ends) {
                tokio::spawn(serve_connection(stream, client, held, metrics.clone()));
            }
        }
    });
    Ok((bound, admission))
}

/// Answers, there and then, a `GET /healthz` (or `HEAD`) already waiting whole on a connection
/// just accepted, and closes it: true if it did. A probe sends its request as soon as it is
/// connected, so when new connections queue in the kernel (a flood of them), its request is
/// there by the time it is accepted, and it is answered without a task or a place: nothing
/// another client holds or opens can take its turn. Anything else (nothing sent yet, another
/// request, more than one) is left unread for the listener's HTTP server.
fn answered_at_once(stream: &TcpStream, metrics: &Metrics) -> bool {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    // Through a second descriptor of the same socket (non-blocking like the first), because the
    // runtime does not know yet whether this new one is readable and would say "not yet".
    let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
        return false;
    };
    let mut socket = std::net::TcpStream::from(socket);
    let mut buf = [0u8; 1024];
    // Whatever has arrived, without waiting for more, and without taking it.
    let Ok(n) = socket.peek(&mut buf) else {
        return false;
    };
    let Some(method) = whole_healthz_request(&buf[..n]) else {
        return false;
    };
    // Taken, so that closing sends a FIN after the answer rather than a reset.
    if socket.read(&mut buf[..n]).ok() != Some(n) {
        return false;
    }
    let body = healthz_body(metrics);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if method == Method::GET {
        response.push_str(&body);
    }
    // A new connection's send buffer takes this whole; if not, the probe sees a short answer
    // and tries again.
    let _ = socket.write(response.as_bytes());
    true
}

/// `GET` or `HEAD` when `bytes` are exactly one whole HTTP/1 request for `/healthz`.
fn whole_healthz_request(bytes: &[u8]) -> Option<Method> {
    let head = std::str::from_utf8(bytes).ok()?.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let line = head.split("\r\n").next()?;
    let mut words = line.split(' ');
    let (method, path, version) = (words.next()?, words.next()?, words.next()?);
    let method = match method {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let is_http1 = version == "HTTP/1.1" || version == "HTTP/1.0";
    (words.next().is_none() && path == "/healthz" && is_http1).then_some(method)
}

/// What `/healthz` says.
fn healthz_body(metrics: &Metrics) -> String {
    format!("ok: up {} s\n", metrics.uptime())
}

/// Tells apart the connections from this host as they come, all those waiting with one read
/// of the socket table (whose cost grows with the host's sockets, not with how many wait),
/// one read at a time.
async fn tell_apart(admission: Arc<Admission>) {
    let mut said_unreadable = false;
    loop {
        let waiting = admission.waiting();
        if waiting.is_empty() {
            admission.waiting.notified().await;
            continue;
        }
        let wanted: HashSet<peer::Ends> = waiting.iter().map(|(_, ends)| *ends).collect();
        // Off the runtime's threads: reading the table takes milliseconds on a busy host.
        let owners = match tokio::task::spawn_blocking(move || peer::socket_owners(&wanted)).await {
            Ok(Ok(owners)) => owners,
            Ok(Err(e)) => {
                if !std::mem::replace(&mut said_unreadable, true) {
                    warn!("admin listener: cannot read the socket table ({e}): local users are told apart by address only, so those connecting from one address share one client's connections");
                }
                HashMap::new()
            }
            Err(e) => {
                warn!("admin listener: looking up local clients failed: {e}");
                HashMap::new()
            }
        };
        admission.tell_apart(&waiting, &owners);
    }
}

/// Serves one admitted connection until it ends, its time is up, or it must close in
/// another's place.
async fn serve_connection(
    stream: TcpStream,
    client: SocketAddr,
    mut held: Held,
    metrics: Arc<Metrics>,
) {
    let limits = held.admission.limits;
    let service = hyper::service::service_fn(move |req| {
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        // The connection first: one told to close that has a request waiting (a probe whose
        // task was slow to run) answers it before it closes.
        biased;
        served = tokio::time::timeout(limits.connection, conn) => match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(%client, "admin connection: {e}"),
            Err(_) => debug!(%client, "admin connection closed after {:?}", limits.connection),
        },
        _ = &mut held.closed => debug!(%client, "admin connection closed in another's place"),
    }
    drop(held);
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a response from constant parts is valid")
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD\n".into(),
            PLAIN,
        );
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, healthz_body(metrics), PLAIN),
        "/readyz" => match metrics.ready() {
            Ok(why) => text(StatusCode::OK, format!("ready: {why}\n"), PLAIN),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                PLAIN,
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
            PLAIN,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_conventional_names() {
        let m = Metrics::new();
        m.target_errors
            .get_or_create(&ErrorLabels {
                target: "0".into(),
                format: "nginx".into(),
                stage: "reload".into(),
            })
            .inc();
        m.reload_duration
            .get_or_create(&TargetLabels {
                target: "0".into(),
                format: "nginx".into(),
            })
            .observe(0.02);
        m.rotation_blocker
            .get_or_create(&MemberLabels {
                member: "n2".into(),
            })
            .set(1);
        let text = m.render();
        for name in [
            "stek_leader ",
            "stek_ring_generation ",
            "stek_applied_generation ",
            "stek_active_key_age_seconds ",
            "stek_last_rotation_timestamp_seconds ",
            "stek_ring_clock_ahead_seconds ",
            "stek_next_rotation_timestamp_seconds ",
            "stek_members_live ",
            "stek_members ",
            "stek_rotation_blocked ",
            "stek_rotation_blocker{member=\"n2\"} 1",
            "stek_sealed_copy_ok ",
            "stek_store_up ",
            "stek_rotations_total ",
            "stek_target_errors_total{target=\"0\",format=\"nginx\",stage=\"reload\"} 1",
            "stek_reload_duration_seconds_bucket{le=\"0.02\",target=\"0\",format=\"nginx\"} 1",
            "stek_admin_connections_refused_total ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    /// Every listener test's bound: a listener that fails to close a connection fails the
    /// test rather than hanging it.
    const BOUND: Duration = Duration::from_secs(10);

    async fn listen(limits: Limits) -> SocketAddr {
        listen_with(limits, Arc::new(Metrics::new())).await.0
    }

    async fn listen_with(limits: Limits, metrics: Arc<Metrics>) -> (SocketAddr, Arc<Admission>) {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        start(any, metrics, limits).await.unwrap()
    }

    /// Waits until `done` holds of the listener's connections, at most [`BOUND`].
    async fn settled(admission: &Admission, what: &str, done: impl Fn(&Table) -> bool) {
        let deadline = Instant::now() + BOUND;
        while !done(&admission.table()) {
            assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every open connection told apart.
    fn all_told(t: &Table) -> bool {
        t.waiting.open() == 0 && t.conns.values().all(|c| c.told)
    }

    /// Waits until the listener accepted `n` connections and told apart every one it holds.
    async fn all_told_of(admission: &Admission, n: u64) {
        let what = format!("{n} connections accepted and told apart");
        settled(admission, &what, |t| {
            admission.accepted.load(Ordering::Relaxed) >= n && all_told(t)
        })
        .await;
    }

    /// Whether the server closed `stream` (end of file or reset) within [`BOUND`], reading and
    /// discarding whatever it sent first.
    async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let drain = async {
            let mut sink = [0u8; 1024];
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
                }
            }
        };
        tokio::time::timeout(BOUND, drain).await.unwrap_or(false)
    }

    /// `GET /healthz` on `stream`; the response's status line (empty if the connection was
    /// closed without one).
    async fn healthz(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let mut response = Vec::new();
        let exchange = async {
            stream.write_all(request).await?;
            stream.read_to_end(&mut response).await
        };
        let _ = tokio::time::timeout(BOUND, exchange).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_request_whose_headers_never_end_is_closed() {
        use tokio::io::AsyncWriteExt;
        let addr = listen(Limits {
            connections: 4,
            per_client: 4,
            header: Duration::from_millis(200),
            connection: Duration::from_secs(30),
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        assert!(closed_by_server(&mut slow).await);
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await);
        // A keep-alive connection idle after its answer is closed the same way.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert!(closed_by_server(&mut idle).await);
        let mut prompt = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut prompt).await, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_earlier_ones_still_work() {
        // One client (this process) may hold every connection: when it holds them all, its
        // next is refused (it holds as many as anyone), not served in its oldest's place.
        let limits = Limits {
            connections: 2,
            per_client: 8,
            header: Duration::from_secs(30),
            connection: Duration::from_secs(30),
        };
        let (addr, admission) = listen_with(limits, Arc::new(Metrics::new())).await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Told apart, these two hold both places when the third comes.
        all_told_of(&admission, 2).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut third).await);
        assert_eq!(healthz(&mut first).await, "HTTP/1.1 200 OK");
        assert_eq!(healthz(&mut second).await, "HTTP/1.1 200 OK");
        // Their slots are free again once they are closed.
        let served = async {
            loop {
                let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
                let status = healthz(&mut next).await;
                if !status.is_empty() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        assert_eq!(
            tokio::time::timeout(BOUND, served).await.unwrap(),
            "HTTP/1.1 200 OK"
        );
    }

    #[test]
    fn readiness_starts_false_and_follows_the_node() {
        let m = Metrics::new();
        assert!(m.ready().is_err());
        m.set_ready(Ok("applied generation 3".into()));
        assert_eq!(m.ready(), Ok("applied generation 3".into()));
    }

    /// `0: <local> <remote> <st> ...` as the kernel prints a row, with `uid`.
    fn row(local: &str, remote: &str, state: &str, uid: u32) -> String {
        format!("   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:>5}        0 4242 1 0000000000000000 20 4 30 10 -1")
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    // The kernel prints each 32-bit word of an address in the host's byte order: these rows are
    // a little-endian host's.
    #[cfg(target_endian = "little")]
    #[test]
    fn socket_table_rows_parse_for_ipv4_ipv6_and_ipv4_mapped_ends() {
        use peer::{parse_row, Row};
        const V6_LOOPBACK: &str = "00000000000000000000000001000000";
        let cases: [(String, Option<Row>); 7] = [
            (
                row("0100007F:D431", "0100007F:24F5", "01", 1000),
                Some(Row {
                    local: at("127.0.0.1:54321"),
                    remote: at("127.0.0.1:9461"),
                    state: 0x01,
                    uid: 1000,
                }),
            ),
            // A listening socket: any address, port 0 on the other end.
            (
                row("00000000:24F5", "00000000:0000", "0A", 0),
                Some(Row {
                    local: at("0.0.0.0:9461"),
                    remote: at("0.0.0.0:0"),
                    state: 0x0A,
                    uid: 0,
                }),
            ),
            (
                row(
                    &format!("{V6_LOOPBACK}:D433"),
                    &format!("{V6_LOOPBACK}:24F5"),
                    "01",
                    65534,
                ),
                Some(Row {
                    local: at("[::1]:54323"),
                    remote: at("[::1]:9461"),
                    state: 0x01,
                    uid: 65534,
                }),
            ),
            // An IPv4 client of a dual-stack listener, in tcp6: read as IPv4.
            (
                row(
                    "0000000000000000FFFF00000100007F:D434",
                    "0000000000000000FFFF00000A00000A:24F5",
                    "01",
                    7,
                ),
                Some(Row {
                    local: at("127.0.0.1:54324"),
                    remote: at("10.0.0.10:9461"),
                    state: 0x01,
                    uid: 7,
                }),
            ),
            (
                "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".into(),
                None,
            ),
            // Not hex, a non-ASCII byte where a digit goes, a row cut short: nothing, no panic.
            (row("0100007G:D431", "0100007F:24F5", "01", 1), None),
            (row("0100007é:D43", "0100007F:24F5", "01", 1), None),
        ];
        for (line, want) in &cases {
            assert_eq!(&parse_row(line), want, "{line}");
        }
        assert_eq!(parse_row("   0: 0100007F:D431 0100007F:24F5 01"), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn a_clients_owner_is_its_own_row_never_the_servers_or_a_time_wait_leftover() {
        use peer::find_owners;
        let (server, client) = (at("127.0.0.1:9461"), at("127.0.0.1:54321"));
        let (gone, v6) = (at("127.0.0.1:54322"), at("[::1]:54323"));
        let v6_server = at("[::1]:9461");
        let table = [
            "  sl  local_address rem_address   st tx_queue ...".to_owned(),
            // The server's end of each connection (owned by the node, root), listed first.
            row("0100007F:24F5", "0100007F:D431", "01", 0),
            row("0100007F:24F5", "0100007F:D432", "01", 0),
            // The same port towards another server: not this connection.
            row("0100007F:D431", "0100007F:0050", "01", 2000),
            // The client's end of a connection it closed: no owner, uid 0 (never "root").
            row("0100007F:D432", "0100007F:24F5", "06", 0),
            row("0100007F:D431", "0100007F:24F5", "01", 1000),
            row(
                "00000000000000000000000001000000:D433",
                "00000000000000000000000001000000:24F5",
                "01",
                1001,
            ),
        ];
        let wanted = HashSet::from([(client, server), (gone, server), (v6, v6_server)]);
        let mut found = HashMap::new();
        find_owners(&table, &wanted, &mut found);
        assert_eq!(
            found,
            HashMap::from([((client, server), 1000), ((v6, v6_server), 1001)])
        );
        assert_eq!(
            peer::client((gone, server), &found),
            Client::Address(gone.ip())
        );
        assert_eq!(peer::client((client, server), &found), Client::Uid(1000));
    }

    /// Opens a loopback connection to `listener` from a thread whose filesystem uid is `uid`
    /// (the uid a new socket is owned by), and returns (the client's end, the server's end).
    fn connect_as(uid: u32, listener: &std::net::TcpListener) -> (std::net::TcpStream, peer::Ends) {
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            // Per thread (the raw system call, which glibc does not spread to the other
            // threads), and this thread ends here.
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
            std::net::TcpStream::connect(addr).unwrap()
        })
        .join()
        .unwrap();
        let (served, from) = listener.accept().unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        let ends = (
            peer::canonical(from),
            peer::canonical(served.local_addr().unwrap()),
        );
        (client, ends)
    }

    #[test]
    fn a_loopback_connection_is_found_owned_by_the_uid_that_opened_it() {
        let me = nix::unistd::Uid::effective().as_raw();
        let mut uids = vec![me];
        if crate::test_support::needs_root("open sockets as another uid") {
            uids.push(65534);
        }
        let mut listeners = vec![std::net::TcpListener::bind("127.0.0.1:0").unwrap()];
        // IPv6 may be off on this host: then only IPv4 is tried.
        listeners.extend(std::net::TcpListener::bind("[::1]:0").ok());
        for listener in &listeners {
            for &uid in &uids {
                let (_client, ends) = connect_as(uid, listener);
                assert!(peer::on_this_host(ends));
                let owners = peer::socket_owners(&HashSet::from([ends])).unwrap();
                assert_eq!(
                    peer::client(ends, &owners),
                    Client::Uid(uid),
                    "{ends:?} opened by uid {uid}"
                );
            }
        }
        // The fs uid of this thread, where the tests runs, never changed.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let fs_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(3))
            .unwrap();
        assert_eq!(fs_uid, me.to_string());
    }

    #[test]
    fn a_refusal_message_names_the_latest_client_and_the_caps() {
        let limits = Limits::default();
        let said = refused_message(192, &Shed::Client(Client::Uid(1000), 8), &limits);
        assert_eq!(
            said,
            "admin listener: closed or refused 192 connection(s) since the last such message to keep room for other clients (8 at most per client, 64 in all); the latest one of uid 1000, which holds 8. Something holds or opens connections (`ss -tnp` shows who)"
        );
        let said = refused_message(
            1,
            &Shed::Client(Client::Address(at("10.0.0.7:1").ip()), 8),
            &limits,
        );
        assert!(
            said.contains("the latest one of 10.0.0.7, which holds 8"),
            "{said}"
        );
        let said = refused_message(1, &Shed::Waiting, &limits);
        assert!(
            said.contains("the latest one from this host not told apart yet"),
            "{said}"
        );
    }

    /// The attack tests' limits: the default caps and a header deadline long enough that none
    /// of the attacker's connections times out while a loaded machine opens them all (so the
    /// counts are exact); a connection limit longer than [`BOUND`], so a connection closed
    /// within it was closed by a cap or the header deadline.
    fn attacked() -> Limits {
        Limits {
            header: Duration::from_secs(5),
            connection: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    /// Issue 25, item 7: an unprivileged local user filled the admin listener's 64 slots, so
    /// `/healthz` failed and an orchestrator restarted stek.
    #[tokio::test]
    async fn a_local_user_holding_200_idle_connections_does_not_stop_healthz() {
        let metrics = Arc::new(Metrics::new());
        let limits = attacked();
        let (addr, admission) = listen_with(limits, metrics.clone()).await;
        tracing::info!("--- the attacker opens 200 connections and sends nothing");
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tracing::info!("--- a probe, of the same uid as every connection of this test");
        let asked = Instant::now();
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut probe).await, "HTTP/1.1 200 OK");
        let answered = asked.elapsed();
        all_told_of(&admission, 201).await;
        // Every connection here has one owner, which holds 8 at most, each new one closing
        // its oldest: every other of the 200 was closed to keep room (the probe, served and
        // closed by then, never was). A timeout did none of this: none is that old.
        let me = Client::Uid(nix::unistd::Uid::effective().as_raw());
        let (holds, open) = {
            let t = admission.table();
            (t.told.held(&me), t.told.open())
        };
        assert!(
            holds <= limits.per_client && holds == open,
            "{me} holds {holds} of {open}"
        );
        assert_eq!(metrics.admin_refused.get() + open as u64, 200);
        tracing::info!("--- every idle connection is closed by the server");
        let closing = Instant::now();
        for (i, stream) in idle.iter_mut().enumerate() {
            assert!(
                closed_by_server(stream).await,
                "idle connection {i} still open"
            );
        }
        let all_closed = closing.elapsed();
        // Logged once for the lot (then at most once a minute).
        assert_eq!(admission.said.load(Ordering::Relaxed), 1);
        eprintln!(
            "figures: /healthz answered {answered:?} after its connect, with 200 idle connections opened; the {open} left of them closed {all_closed:?} later (header deadline {:?})",
            limits.header
        );
    }

    /// Opens `n` loopback connections to the listener at `addr` as `uid`, ready for tokio (in
    /// a thread of its own while the listener accepts them).
    async fn open_as(uid: u32, addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let opened = tokio::task::spawn_blocking(move || {
            // Per thread (the raw system call, which glibc does not spread to the others); a
            // blocking-pool thread may serve another test later, so it is set back.
            let was = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
            let opened: Vec<_> = (0..n)
                .map(|_| {
                    std::net::TcpStream::connect(addr).and_then(|s| {
                        s.set_nonblocking(true)?;
                        Ok(s)
                    })
                })
                .collect();
            nix::unistd::setfsuid(was);
            opened
        });
        tokio::time::timeout(BOUND, opened)
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|s| tokio::net::TcpStream::from_std(s.unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn local_users_filling_the_listener_never_take_a_probes_place() {
        if !crate::test_support::needs_root("open sockets as other uids") {
            return;
        }
        let metrics = Arc::new(Metrics::new());
        let limits = attacked();
        let (addr, admission) = listen_with(limits, metrics.clone()).await;
        let holds = |uid| admission.table().told.held(&Client::Uid(uid));
        tracing::info!("--- one user opens 200 connections");
        let mut idle = open_as(60000, addr, 200).await;
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut probe).await, "HTTP/1.1 200 OK");
        all_told_of(&admission, 201).await;
        // The user keeps 8; the probe, root's, closed none of them.
        assert_eq!((holds(60000), metrics.admin_refused.get()), (8, 192));

        tracing::info!("--- ten more users open 20 each: 88 past their caps, for 64 places");
        for (i, uid) in (60001..60011).enumerate() {
            idle.extend(open_as(uid, addr, 20).await);
            all_told_of(&admission, 201 + 20 * (i as u64 + 1)).await;
            // Up to the listener's 64, 8 each; past it, those holding fewer take the places
            // of those holding the most: some 64 / 11 each.
            let fair = if i < 7 { 8 } else { 64 / (i + 2) };
            assert!(
                (fair..=8).contains(&holds(uid)),
                "uid {uid}: {}",
                holds(uid)
            );
        }
        assert_eq!(admission.table().told.open(), limits.connections);
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut probe).await, "HTTP/1.1 200 OK");

        tracing::info!("--- root holds a connection open too: it gets a place, full as it is");
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        all_told_of(&admission, 401 + 2).await;
        assert_eq!(holds(0), 1);
        assert_eq!(admission.table().told.open(), limits.connections);
        assert!((60000..60011).all(|uid| holds(uid) <= 8));
        // Of the 401 idle connections, those not holding one of the 64 places were closed or
        // refused to keep room, and only those (the probes, answered, are neither).
        assert_eq!(metrics.admin_refused.get(), 401 - 64);
        for (i, stream) in idle.iter_mut().enumerate() {
            assert!(
                closed_by_server(stream).await,
                "idle connection {i} still open"
            );
        }
    }

    #[test]
    fn only_one_whole_healthz_request_is_answered_on_accepting() {
        let cases: [(&str, Option<Method>); 10] = [
            ("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", Some(Method::GET)),
            (
                "GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:9477\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                Some(Method::GET),
            ),
            ("HEAD /healthz HTTP/1.0\r\n\r\n", Some(Method::HEAD)),
            // Not whole yet, or more than one request, or anything else: for the server.
            ("GET /healthz HTTP/1.1\r\nHost: t\r\n", None),
            ("GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n", None),
            ("GET /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", None),
            ("GET /metrics HTTP/1.1\r\n\r\n", None),
            ("GET /healthz?x HTTP/1.1\r\n\r\n", None),
            ("POST /healthz HTTP/1.1\r\n\r\n", None),
            ("GET /healthz HTTP/2.0\r\n\r\n", None),
        ];
        for (request, want) in cases {
            assert_eq!(
                whole_healthz_request(request.as_bytes()),
                want,
                "{request:?}"
            );
        }
        assert_eq!(
            whole_healthz_request(b"GET /healthz HTTP/1.1\r\n\xff\r\n\r\n"),
            None
        );
    }

    #[tokio::test]
    async fn a_probe_whose_request_waits_with_its_connection_takes_no_place() {
        use std::io::Write;
        let limits = attacked();
        let (addr, admission) = listen_with(limits, Arc::new(Metrics::new())).await;
        // Connected and asked before the listener (this thread's runtime, blocked meanwhile)
        // accepts: the request is there when it does.
        let mut probe = std::net::TcpStream::connect(addr).unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let probe = tokio::net::TcpStream::from_std({
            probe.set_nonblocking(true).unwrap();
            probe
        })
        .unwrap();
        let mut response = Vec::new();
        let read = async {
            let mut probe = probe;
            use tokio::io::AsyncReadExt;
            probe.read_to_end(&mut response).await
        };
        tokio::time::timeout(BOUND, read).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("\r\n\r\nok: up "),
            "{text}"
        );
        // Answered on accepting: never numbered, never held.
        assert_eq!(admission.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(admission.table().next, 0);
    }
}
