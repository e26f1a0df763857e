//! The admin HTTP listener (`[admin] listen`, loopback by default): Prometheus `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (this node has applied the current ring).
//!
//! The node loop updates [`Metrics`] on every pass; the listener only reads it. Nothing here
//! ever holds key bytes: keys appear as epochs and fingerprints, members as node ids.
//! docs/metrics.md lists every metric; a cluster test scrapes each one.
//!
//! `/healthz` is a liveness probe, so nobody who can connect must be able to make it fail: no
//! client can hold the connections a probe needs. The listener tells its clients apart ([`Client`]): one
//! on this host by the uid owning its socket (on loopback every local user connects from
//! 127.0.0.1, so the address tells nobody apart), read from `/proc/net/tcp` (the `peer`
//! module), and any other (or when that fails) by its address. Then (see [`Limits`]):
//! - [`ADMIN_MAX_PER_CLIENT`] (8) connections per client, root's and the probe's included:
//!   a client's ninth closes its own oldest. A scraper and a probe or two need a handful;
//! - [`ADMIN_MAX_CONNECTIONS`] (64) in all: with every one taken, a client holding fewer
//!   connections than the largest holder takes the place of that holder's oldest, so a client
//!   holding none (a probe's new connection) is always served, however many users fill their
//!   shares; only a client already holding as many as any other is refused
//!   ([`stek_trust::slots::Shares`]). Both are counted in
//!   `stek_admin_connections_refused_total` and logged at most once a minute;
//! - [`ADMIN_HEADER_TIMEOUT`] (2 s) for a request's headers, counted from when the listener
//!   waits for them: it also closes a keep-alive connection idle that long (Prometheus opens
//!   another at its next scrape). A connection that sends nothing holds its place 2 s;
//! - [`ADMIN_CONNECTION_TIMEOUT`] (10 s) for a whole connection, however busy.
//!
//! Answering `/healthz` takes no lock; the connections' table is locked only to decide, never
//! across a read or a write. What is left: new connections opened faster than the listener
//! accepts them fill the kernel's queue (128), and a probe's connection then waits its turn,
//! or its SYN is sent again after a second; docs/metrics.md says how a probe rides that out.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
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
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// How many connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// How many of those one client (a local uid, or a remote address) may hold.
pub const ADMIN_MAX_PER_CLIENT: usize = 8;
/// How long a request's headers may take, counted from when the listener waits for them.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection may last.
pub const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections waiting in the kernel are accepted and told apart at once,
/// with one read of `/proc/net/tcp` for them all: so a flood costs a read per so many
/// connections, not one each, and holds at most so many file descriptors more than the caps.
const ACCEPT_BATCH: usize = 64;

/// What the admin listener allows a connection (the module docs say why these values).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
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
        let rotations = Counter::default();
        let insecure = Gauge::default();
        let members_refused = Gauge::default();
        let ring_rejected = Gauge::default();
        let target_errors = Family::<ErrorLabels, Counter>::default();
        let reload_duration =
            Family::<TargetLabels, Histogram>::new_with_constructor(reload_histogram as fn() -> _);
        let admin_refused = Counter::default();
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
            rotations,
            insecure,
            members_refused,
            ring_rejected,
            target_errors,
            reload_duration,
            admin_refused,
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
        let mut failed = None;
        for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if found.len() >= wanted.len() {
                break;
            }
            match std::fs::File::open(path) {
                Ok(file) => {
                    let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
                    find_owners(lines, wanted, &mut found);
                    failed = None;
                }
                Err(e) if found.is_empty() => failed = failed.or(Some((path, e))),
                Err(_) => {}
            }
        }
        match failed {
            Some((path, e)) => Err(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
            None => Ok(found),
        }
    }

    /// Who the client of `ends` is: the uid in `owners`, else its address.
    pub fn client(ends: Ends, owners: &HashMap<Ends, u32>) -> Client {
        owners
            .get(&ends)
            .map_or(Client::Address(ends.0.ip()), |uid| Client::Uid(*uid))
    }
}

/// The admin listener's connections: who holds them, how to close each in another's place,
/// and the refusals not logged yet.
#[derive(Debug)]
struct Admission {
    table: Mutex<Table>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

#[derive(Debug)]
struct Table {
    shares: Shares<Client>,
    /// Dropping a connection's sender tells its task to close it.
    closers: HashMap<u64, oneshot::Sender<()>>,
    refusals: Refusals,
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
                shares: Shares::new(limits.connections, limits.per_client),
                closers: HashMap::new(),
                refusals: Refusals::default(),
            }),
            metrics,
            limits,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned table only means a panic while deciding; what it holds is consistent
        // between calls.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection of `who`, or `None`: the caller then closes it.
    fn admit(self: &Arc<Self>, who: &Client) -> Option<Held> {
        let mut table = self.table();
        let (held, shed) = match table.shares.admit(who.clone()) {
            Share::Admitted { id } => (Some(id), None),
            Share::InPlaceOf { id, closes, of } => {
                table.closers.remove(&closes);
                (Some(id), Some(of))
            }
            Share::Refused => (None, Some(who.clone())),
        };
        let held = held.map(|id| {
            let (close, closed) = oneshot::channel();
            table.closers.insert(id, close);
            Held {
                admission: self.clone(),
                id,
                closed,
            }
        });
        let Some(of) = shed else {
            return held;
        };
        let say = table.refusals.refuse(Instant::now());
        let holds = table.shares.held(&of);
        drop(table);
        self.metrics.admin_refused.inc();
        if let Some(n) = say {
            let Limits {
                per_client,
                connections,
                ..
            } = self.limits;
            warn!(
                "admin listener: closed or refused {n} connection(s) since the last such message to keep room for other clients ({per_client} at most per client, {connections} in all); the latest of {of}, which holds {holds}. Something holds connections open (`ss -tnp` shows who)"
            );
        }
        held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut table = self.admission.table();
        table.shares.release(self.id);
        table.closers.remove(&self.id);
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
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let admission = Admission::new(metrics.clone(), limits);
    tokio::spawn(async move {
        let mut said_unreadable = false;
        loop {
            let batch = accept_waiting(&listener).await;
            let ends: Vec<peer::Ends> = batch
                .iter()
                .map(|(stream, client)| {
                    let server = stream.local_addr().unwrap_or(bound);
                    (peer::canonical(*client), peer::canonical(server))
                })
                .collect();
            let owners = owners_on_this_host(&ends, &mut said_unreadable).await;
            for ((stream, client), ends) in batch.into_iter().zip(ends) {
                let who = peer::client(ends, &owners);
                match admission.admit(&who) {
                    Some(held) => {
                        tokio::spawn(serve_connection(stream, client, held, metrics.clone()));
                    }
                    None => drop(stream),
                }
            }
        }
    });
    Ok(bound)
}

/// The owners of the client sockets of those of `ends` from this host; none when the socket
/// table cannot be read (said once: `said` is set then).
async fn owners_on_this_host(ends: &[peer::Ends], said: &mut bool) -> HashMap<peer::Ends, u32> {
    let local: HashSet<peer::Ends> = ends
        .iter()
        .copied()
        .filter(|e| peer::on_this_host(*e))
        .collect();
    if local.is_empty() {
        return HashMap::new();
    }
    // Off the runtime's threads: the table grows with the host's sockets.
    match tokio::task::spawn_blocking(move || peer::socket_owners(&local)).await {
        Ok(Ok(owners)) => owners,
        Ok(Err(e)) => {
            if !std::mem::replace(said, true) {
                warn!("admin listener: cannot read the socket table ({e}): local users are told apart by address only, so those connecting from one address share one client's connections");
            }
            HashMap::new()
        }
        Err(e) => {
            warn!("admin listener: looking up local clients failed: {e}");
            HashMap::new()
        }
    }
}

/// The next connection, and every other already waiting (up to [`ACCEPT_BATCH`]), so that one
/// read of the socket table tells them all apart however many a client opens.
async fn accept_waiting(listener: &TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let mut batch = Vec::new();
    while batch.is_empty() {
        match listener.accept().await {
            Ok(conn) => batch.push(conn),
            Err(e) => {
                warn!("admin listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    while batch.len() < ACCEPT_BATCH {
        // None waiting, or an error, which the next accept reports.
        let Poll::Ready(Ok(conn)) =
            std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await
        else {
            break;
        };
        batch.push(conn);
    }
    batch
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
        "/healthz" => text(
            StatusCode::OK,
            format!("ok: up {} s\n", metrics.uptime()),
            PLAIN,
        ),
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
        listen_with(limits, Arc::new(Metrics::new())).await
    }

    async fn listen_with(limits: Limits, metrics: Arc<Metrics>) -> SocketAddr {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        serve_within(any, metrics, limits).await.unwrap()
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
        let addr = listen(Limits {
            connections: 2,
            per_client: 8,
            header: Duration::from_secs(30),
            connection: Duration::from_secs(30),
        })
        .await;
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The listener accepts in order: these two hold both slots when the third comes.
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

    /// A tracing writer into memory, to read what the listener logged.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        /// Logs of this thread (where a current-thread runtime runs the listener) go here
        /// until the guard is dropped.
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let log = self.clone();
            tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .with_writer(move || log.clone())
                    .with_ansi(false)
                    .finish(),
            )
        }

        fn lines_with(&self, needle: &str) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect()
        }
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
        let log = Log::default();
        let _logging = log.capture();
        let metrics = Arc::new(Metrics::new());
        let limits = attacked();
        let addr = listen_with(limits, metrics.clone()).await;
        tracing::info!("--- the attacker opens 200 connections and sends nothing");
        let started = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tracing::info!("--- a probe, of the same uid as every connection of this test");
        let asked = Instant::now();
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut probe).await, "HTTP/1.1 200 OK");
        let answered = asked.elapsed();
        // Every connection here has one owner: it holds 8 at most, each new one closing its
        // oldest. 192 closed for the attacker's later ones, one for the probe; had the probe
        // been served only once an idle connection timed out, fewer would have been.
        assert_eq!(metrics.admin_refused.get(), 193);
        tracing::info!("--- every idle connection is closed by the server");
        for (i, stream) in idle.iter_mut().enumerate() {
            assert!(
                closed_by_server(stream).await,
                "idle connection {i} still open"
            );
        }
        let all_closed = started.elapsed();
        // Logged once for the lot (then at most once a minute), naming the client.
        let me = nix::unistd::Uid::effective().as_raw();
        let said = log.lines_with("admin listener: closed or refused");
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("closed or refused 1 connection(s)")
                && (said[0].contains(&format!("uid {me}")) || said[0].contains("127.0.0.1")),
            "{}",
            said[0]
        );
        eprintln!(
            "figures: /healthz answered {answered:?} after its connect, under 200 idle connections; all 200 closed {all_closed:?} after the first opened (header deadline {:?})",
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
        let addr = listen_with(attacked(), metrics.clone()).await;
        tracing::info!("--- one user opens 200 connections");
        let mut idle = open_as(60000, addr, 200).await;
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut probe).await, "HTTP/1.1 200 OK");
        // Its own oldest made room for its newest past 8; the probe (root) closed nothing.
        assert_eq!(metrics.admin_refused.get(), 192);

        tracing::info!("--- ten users open 20 each: 80 past their caps fill all 64");
        for uid in 60001..60011 {
            idle.extend(open_as(uid, addr, 20).await);
        }
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(healthz(&mut probe).await, "HTTP/1.1 200 OK");
        // Each user's 12 past its cap closed its own. With the first user's 8 still open, the
        // listener was full after seven more: the 8th, 9th and 10th users' first 8, and the
        // probe, each took the place of the oldest connection of a user holding 8.
        assert_eq!(metrics.admin_refused.get(), 192 + 10 * 12 + 3 * 8 + 1);
        for (i, stream) in idle.iter_mut().enumerate() {
            assert!(
                closed_by_server(stream).await,
                "idle connection {i} still open"
            );
        }
    }
}
