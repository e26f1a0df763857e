//! The peer listener: it accepts connections on TCP (mutual TLS between peers, or plain with
//! `insecure = true`) or on a Unix socket for the single-box default, tells who the caller is
//! (the certificate's role under the cluster's trust), reads each connection's one request,
//! hands it with the caller to the peer's answer, and writes the reply.
//!
//! Not here: the messages, their framing and the caller's side ([`wire`](crate::wire)), what a
//! request is answered with and whom it is answered for ([`peer`](crate::peer), and its
//! authorization, `authorize`), openraft's view of the network ([`network`](crate::network)).
//!
//! The listener (`serve`) bounds what a connection may hold, so that idle or slow clients
//! cannot exhaust the process's file descriptors or memory, and so that no one who can connect
//! or holds a certificate can keep the peers' Raft messages out (Raft opens a connection per
//! RPC; see [`Limits`]). Places are shared ([`Places`]): past its share a holder's own oldest
//! connection makes room for its newest, and with every place taken a holder that holds fewer
//! than the largest takes the place of that one's oldest; so a peer, which holds a few
//! connections for milliseconds each, is always served. Closed and refused connections are
//! logged at most once a minute.
//! - [`PEER_MAX_CONNECTIONS`] (512) connections at once, [`PEER_MAX_PER_HOLDER`] (32) of one
//!   holder (`Holder`: a member or an operator by the role its certificate names). Under
//!   `[identity]` a certificate that makes its holder nobody (revoked, foreign) fails the
//!   handshake ([`PeerTls::trusted`]) and takes no place at all.
//!   Each client box holds about one connection to the leader (its watch), so this also bounds
//!   the clients one group serves. Over TLS a connection takes its place only once its
//!   handshake has succeeded and its certificate said who it is; on the Unix socket and over
//!   plain TCP at accept;
//! - [`PEER_MAX_HANDSHAKES`] (64) TLS handshakes in progress at once, apart from those places,
//!   [`PEER_MAX_HANDSHAKES_PER_IP`] (8) of them from one address (an IPv6 /64 counts as one;
//!   behind a shared NAT, the NAT's address): someone with no certificate holds at most these,
//!   and from its own addresses only its share; and [`PEER_VOTER_HANDSHAKES`] (16) apart for
//!   the addresses the group's voters listen on (`Group`), which no other address can take;
//! - [`PEER_HANDSHAKE_TIMEOUT`] (3 s) for the TLS handshake (one between peers on a LAN takes
//!   milliseconds): a silent connection holds a handshake place that long at most;
//! - [`PEER_IDLE_TIMEOUT`] (10 s) for a request to begin. A connection carries one request,
//!   written as soon as it is open, and no client reuses one, so nothing legitimate waits this
//!   long (Raft's heartbeat is 150 ms, a client call gives up after 2 s);
//! - [`PEER_FRAME_TIMEOUT`] (10 s) for the rest of a request once its first byte came, and for
//!   the reply to be taken;
//! - frames of [`MAX_FRAME`](crate::wire::MAX_FRAME) (64 MiB) at most from voters (Raft
//!   replication and snapshots), 4 MiB from other members, 64 KiB from an operator or a
//!   refused certificate (`authorize::largest_request`), whose buffer grows as their bytes
//!   arrive ([`wire`](crate::wire)): a declared length costs nothing until it is sent.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use stek_trust::identity::Trust;
use stek_trust::slots::{NoPlace, Place, Places, Refusals};
use tracing::{debug, warn};

use super::authorize::{self, Caller, Holder};
use super::tls::PeerTls;
use super::wire::{read_frame_into, write_frame};
use stek_trust::identity::Role;

/// How long a TLS handshake may take before the connection is closed.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection may stay silent before its request begins.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the rest of a frame may take once it has begun (a request), or to be taken (a
/// reply).
pub const PEER_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections the peer listener serves at once (over TLS: with their handshake done).
pub const PEER_MAX_CONNECTIONS: usize = 512;
/// How many of those one certificate holder (a member, an operator) may hold.
pub const PEER_MAX_PER_HOLDER: usize = 32;
/// How many TLS handshakes the peer listener runs at once.
pub const PEER_MAX_HANDSHAKES: usize = 64;
/// How many of those may come from one address.
pub const PEER_MAX_HANDSHAKES_PER_IP: usize = 8;

/// TLS handshakes kept for the addresses of the group's voters, apart from the others: what
/// fills the others cannot keep the voters' Raft messages out.
pub const PEER_VOTER_HANDSHAKES: usize = 16;

/// What the listener asks of the group it serves: who its voters are now.
pub(crate) trait Group: Send + Sync + 'static {
    /// Whether member `id` is a voter.
    fn is_voter(&self, id: &str) -> bool;
    /// Whether `ip` is an address a voter's peer listens on (its handshakes, and this box's
    /// calls, come from there).
    fn is_voter_address(&self, ip: IpAddr) -> bool;
    /// Counts a connection closed or refused, and why: [`ROOM`] or [`CERTIFICATE`].
    fn refused(&self, _why: &'static str) {}
}

/// Why a connection was closed or refused ([`Group::refused`]): to keep room for others.
pub const ROOM: &str = "room";
/// Why a connection was closed or refused ([`Group::refused`]): its TLS handshake failed.
pub const CERTIFICATE: &str = "certificate";

/// What the peer listener allows a connection (the module docs say why these values).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the TLS handshake.
    pub handshake: Duration,
    /// For a request to begin.
    pub idle: Duration,
    /// For the rest of a request once begun, and for the reply to be taken.
    pub frame: Duration,
    /// Connections at once (over TLS: once their handshake has succeeded).
    pub connections: usize,
    /// Connections at once of one holder (`authorize::Holder`).
    pub per_holder: usize,
    /// TLS handshakes in progress at once (the voters' addresses apart).
    pub handshakes: usize,
    /// TLS handshakes in progress at once from the voters' addresses.
    pub voter_handshakes: usize,
    /// TLS handshakes in progress at once from one address.
    pub handshakes_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake: PEER_HANDSHAKE_TIMEOUT,
            idle: PEER_IDLE_TIMEOUT,
            frame: PEER_FRAME_TIMEOUT,
            connections: PEER_MAX_CONNECTIONS,
            per_holder: PEER_MAX_PER_HOLDER,
            handshakes: PEER_MAX_HANDSHAKES,
            voter_handshakes: PEER_VOTER_HANDSHAKES,
            handshakes_per_ip: PEER_MAX_HANDSHAKES_PER_IP,
        }
    }
}

/// A peer's listener: TCP, or a Unix socket for the single-box default.
#[derive(Debug)]
pub enum Listener {
    /// host:port.
    Tcp(tokio::net::TcpListener),
    /// `unix:/path`: the socket, mode 0600 in a directory only its owner can enter.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `addr`. A Unix socket's directory is made 0700 if missing and refused if another
    /// user owns it or can enter it; a socket a live process still answers on is refused, a
    /// stale one (a killed node's) replaced.
    pub async fn bind(addr: &str) -> std::io::Result<Self> {
        let Some(path) = addr.strip_prefix("unix:") else {
            return Ok(Self::Tcp(tokio::net::TcpListener::bind(addr).await?));
        };
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
        let path = std::path::PathBuf::from(path);
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other(format!("{}: no directory", path.display())))?;
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let meta = std::fs::symlink_metadata(dir)?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} must be a directory of uid {me} that no other user can enter (it is uid {}, mode {:o}); its socket gives full control of the cluster: chown it and chmod 700, or choose another [raft] listen = \"unix:/...\"",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if !m.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; remove it", path.display()),
                ));
            }
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: another stek node of this cluster runs on this box",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self::Unix(listener, path))
    }
}

/// Reads a connection's one request, of `largest` bytes at most: its first byte within
/// `limits.idle`, the rest of the frame within `limits.frame`.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &Limits,
    largest: u32,
) -> std::io::Result<Vec<u8>> {
    let mut first = [0u8; 1];
    let got = tokio::time::timeout(limits.idle, stream.read(&mut first))
        .await
        .map_err(|_| timed_out(format!("no request began within {:?}", limits.idle)))??;
    if got == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before sending a request",
        ));
    }
    let mut body = Vec::new();
    let mut rest = (&first[..]).chain(&mut *stream);
    tokio::time::timeout(limits.frame, read_frame_into(&mut rest, &mut body, largest))
        .await
        .map_err(|_| {
            timed_out(format!(
                "a request did not arrive within {:?} of its first byte",
                limits.frame
            ))
        })??;
    Ok(body)
}

fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// A connection a [`Listener`] accepted.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Listener {
    /// The next connection. A Unix socket's caller must be this user or root: the socket's
    /// directory lets only this user in, and the kernel's word is checked as well.
    async fn accept(&self) -> std::io::Result<Option<Accepted>> {
        match self {
            Self::Tcp(l) => {
                let (stream, from) = l.accept().await?;
                Ok(Some(Accepted::Tcp(stream, from)))
            }
            Self::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if !uid.is_some_and(|u| u == 0 || u == nix::unistd::geteuid().as_raw()) {
                    warn!(?uid, "refused a local connection from another user");
                    return Ok(None);
                }
                Ok(Some(Accepted::Unix(stream)))
            }
        }
    }
}

/// The address a connection's handshake counts against: an IPv4 address, or an IPv6 /64 (a
/// host is given a /64, so one host's many addresses count as one).
pub(crate) fn address_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// Who a refused or closed connection was, for the log.
#[derive(Debug)]
enum Shed {
    /// A handshake from this address, which has so many in progress.
    Handshake(IpAddr, usize),
    /// A connection of this holder, which holds so many.
    Connection(Holder, usize),
}

/// The listener's refusals, counted for the group and logged at most once a minute however
/// many there are.
#[derive(Clone)]
struct Said(Arc<Mutex<Refusals>>, Arc<dyn Group>);

impl Said {
    /// Counts one connection closed or refused to keep room (`shed`), and logs it when due.
    fn shed(&self, shed: Shed, limits: &Limits) {
        self.1.refused(ROOM);
        let said = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refuse(Instant::now());
        let Some(n) = said else {
            return;
        };
        let latest = match shed {
            Shed::Handshake(ip, holds) => {
                format!("a TLS handshake from {ip}, which had {holds} in progress")
            }
            Shed::Connection(who, holds) => format!("a connection of {who}, which holds {holds}"),
        };
        warn!(
            "raft listener: closed or refused {n} connection(s) since the last such message to keep room for others ({} handshakes at most, {} from one address; {} connections, {} for one certificate holder); the latest {latest}. Something opens or holds connections (`ss -tn` shows who); peers that hold fewer are still served",
            limits.handshakes, limits.handshakes_per_ip, limits.connections, limits.per_holder
        );
    }
}

/// Who a mutual-TLS caller that presented `certs` is: any holder of the CA's certificates
/// without `trust`, else whom `trust` says the certificate makes it.
fn caller_of(certs: &[CertificateDer<'_>], trust: Option<&Trust>) -> Caller {
    let Some(trust) = trust else {
        return Caller::AnyCertificate;
    };
    match certs.first() {
        None => Caller::Refused("no client certificate".into()),
        Some(der) => match trust.verify(der, std::time::SystemTime::now()) {
            Ok(v) => Caller::Cert(v.role),
            Err(e) => Caller::Refused(e.to_string()),
        },
    }
}

/// Serves `listener` within `limits` (over mutual TLS when `tls` is given): each connection
/// carries one request frame, which `answer` turns into the reply's body for the caller the
/// connection is (an error closes the connection without a reply).
pub(crate) async fn serve<F, Fut>(
    listener: Listener,
    tls: Option<Arc<PeerTls>>,
    limits: Limits,
    group: Arc<dyn Group>,
    answer: F,
) where
    F: Fn(Caller, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::io::Result<Vec<u8>>> + Send + 'static,
{
    let trust = tls.as_ref().and_then(|t| t.trust.clone());
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
    let places = Places::new(limits.connections, limits.per_holder);
    let handshakes = Places::new(limits.handshakes, limits.handshakes_per_ip);
    let voter_handshakes = Places::new(limits.voter_handshakes, limits.handshakes_per_ip);
    let said = Said(Arc::default(), group.clone());
    let failed = Arc::new(Mutex::new(Refusals::default()));
    let mut accepted = 0u64;
    loop {
        let conn = match listener.accept().await {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            Err(e) => {
                warn!("raft listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        accepted += 1;
        let served = Served {
            n: accepted,
            group: group.clone(),
            places: places.clone(),
            said: said.clone(),
            limits,
        };
        match (conn, &acceptor) {
            // The kernel has vouched for the caller (or there is nothing to check): a place now.
            // Admitted here, in the order accepted.
            (Accepted::Unix(s), _) => {
                if let Some(place) = served.admit(&Caller::Local) {
                    tokio::spawn(served.run(place, Caller::Local, s, answer.clone()));
                }
            }
            (Accepted::Tcp(s, _), None) => {
                if let Some(place) = served.admit(&Caller::Insecure) {
                    tokio::spawn(served.run(place, Caller::Insecure, s, answer.clone()));
                }
            }
            (Accepted::Tcp(s, from), Some(acceptor)) => {
                let address = address_of(from.ip());
                let handshakes = if group.is_voter_address(address) {
                    &voter_handshakes
                } else {
                    &handshakes
                };
                let mut place = match handshakes.admit(address) {
                    Ok((place, closed)) => {
                        if let Some(ip) = closed {
                            said.shed(Shed::Handshake(ip, handshakes.held(&ip)), &limits);
                        }
                        place
                    }
                    Err(NoPlace) => {
                        drop(s);
                        said.shed(Shed::Handshake(address, handshakes.held(&address)), &limits);
                        continue;
                    }
                };
                let (acceptor, trust, failed) = (acceptor.clone(), trust.clone(), failed.clone());
                let (answer, group) = (answer.clone(), group.clone());
                tokio::spawn(async move {
                    let shaken = tokio::select! {
                        shaken = tokio::time::timeout(limits.handshake, acceptor.accept(s).into_fallible()) => shaken,
                        _ = &mut place.taken => {
                            debug!(%from, "closed a TLS handshake in progress to make room for a newer one");
                            return;
                        }
                    };
                    let s = match shaken {
                        Ok(Ok(s)) => s,
                        Err(_) => {
                            debug!(%from, "closed a peer connection whose TLS handshake did not finish within {:?}", limits.handshake);
                            return;
                        }
                        Ok(Err((e, io))) => {
                            debug!(%from, "refused a peer connection without a valid certificate: {e}");
                            group.refused(CERTIFICATE);
                            let said = lock(&failed).refuse(Instant::now());
                            if let Some(n) = said {
                                warn!(
                                    "raft listener: refused {n} connection(s) without a valid certificate since the last such message, the latest from {from}: {e}"
                                );
                            }
                            // The TLS alert that says why is sent: close gently, still in the
                            // handshake place, so that the caller reads it.
                            tokio::select! {
                                _ = linger(io) => {}
                                _ = &mut place.taken => {}
                            }
                            return;
                        }
                    };
                    drop(place);
                    // The caller has shown a certificate of the CA: who it makes the caller
                    // decides whose share of the connections this one takes.
                    let certs = s.get_ref().1.peer_certificates().unwrap_or_default();
                    let caller = caller_of(certs, trust.as_deref());
                    if let Some(place) = served.admit(&caller) {
                        served.run(place, caller, s, answer).await;
                    }
                });
            }
        }
    }
}

/// How long a connection refused at its handshake is kept, closed for writing, so that the
/// caller reads the TLS alert before the connection ends.
const LINGER: Duration = Duration::from_secs(1);

/// Closes a refused caller's connection gently: this side's end first (after the alert
/// already sent), then whatever it still sends (its request, 64 KiB at most) read and dropped
/// for [`LINGER`] at most. Closed at once with unread bytes, the kernel would answer with a
/// reset, and the caller would see "broken pipe" instead of the reason.
async fn linger(mut io: TcpStream) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A refusal counter's lock; a poisoned one only means a panic while counting.
fn lock(refusals: &Mutex<Refusals>) -> std::sync::MutexGuard<'_, Refusals> {
    refusals.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What serves one connection once its caller is known.
struct Served {
    /// The connection's number.
    n: u64,
    group: Arc<dyn Group>,
    places: Arc<Places<Holder>>,
    said: Said,
    limits: Limits,
}

impl Served {
    /// A place in the share of `caller`'s holder, if it gets one (else the caller closes the
    /// connection).
    fn admit(&self, caller: &Caller) -> Option<Place<Holder>> {
        let holder = authorize::holder(caller, self.n);
        match self.places.admit(holder.clone()) {
            Ok((place, closed)) => {
                if let Some(whose) = closed {
                    let holds = self.places.held(&whose);
                    self.said.shed(Shed::Connection(whose, holds), &self.limits);
                }
                Some(place)
            }
            Err(NoPlace) => {
                let holds = self.places.held(&holder);
                self.said
                    .shed(Shed::Connection(holder, holds), &self.limits);
                None
            }
        }
    }

    /// Serves `stream` from `caller` in `place`, until it is done or another connection takes
    /// the place.
    async fn run<S, F, Fut>(self, mut place: Place<Holder>, caller: Caller, stream: S, answer: F)
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: Fn(Caller, Vec<u8>) -> Fut,
        Fut: Future<Output = std::io::Result<Vec<u8>>>,
    {
        let holder = authorize::holder(&caller, self.n);
        let voter = matches!(&caller, Caller::Cert(Role::Member(id)) if self.group.is_voter(id));
        let largest = authorize::largest_request(&caller, voter);
        tokio::select! {
            done = serve_one(stream, caller, &self.limits, largest, answer) => {
                if let Err(e) = done {
                    debug!("peer connection: {e}");
                }
            }
            _ = &mut place.taken => {
                debug!("closed a peer connection of {holder} to make room for another's");
            }
        }
    }
}

/// Reads the request, answers it and writes the reply, each within `limits`.
/// The request's frame may be `largest` bytes at most.
async fn serve_one<S, F, Fut>(
    mut stream: S,
    caller: Caller,
    limits: &Limits,
    largest: u32,
    answer: F,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Caller, Vec<u8>) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<u8>>>,
{
    let body = read_request(&mut stream, limits, largest).await?;
    let reply = answer(caller, body).await?;
    let send = async {
        write_frame(&mut stream, &reply).await?;
        // Close our side cleanly (a TLS close_notify) so the caller sees no truncation.
        let _ = stream.shutdown().await;
        Ok(())
    };
    tokio::time::timeout(limits.frame, send)
        .await
        .map_err(|_| timed_out(format!("the reply was not taken within {:?}", limits.frame)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{call, exchange, read_frame, Reply, Request, MAX_FRAME};
    use tokio::sync::Semaphore;

    /// Every test's bound: a listener that fails to close a connection fails the test rather
    /// than hanging it.
    const BOUND: Duration = Duration::from_secs(10);

    fn limits(handshake_ms: u64, idle_ms: u64, frame_ms: u64, connections: usize) -> Limits {
        Limits {
            handshake: Duration::from_millis(handshake_ms),
            idle: Duration::from_millis(idle_ms),
            frame: Duration::from_millis(frame_ms),
            connections,
            per_holder: PEER_MAX_PER_HOLDER,
            handshakes: PEER_MAX_HANDSHAKES,
            voter_handshakes: PEER_VOTER_HANDSHAKES,
            handshakes_per_ip: PEER_MAX_HANDSHAKES_PER_IP,
        }
    }

    /// A group whose voters are these members, listening on these addresses.
    #[derive(Debug, Default)]
    struct Voters {
        ids: Vec<String>,
        addresses: Vec<IpAddr>,
    }

    impl Group for Voters {
        fn is_voter(&self, id: &str) -> bool {
            self.ids.iter().any(|v| v == id)
        }

        fn is_voter_address(&self, ip: IpAddr) -> bool {
            self.addresses.contains(&ip)
        }
    }

    /// Answers every request with who asked: 1 for TLS with a certificate, 2 for plain TCP,
    /// 3 for the Unix socket; a refused certificate with why.
    async fn origin_reply(caller: Caller, _body: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let reply = match caller {
            Caller::AnyCertificate | Caller::Cert(_) => Reply::Revision(1),
            Caller::Refused(why) => Reply::Error(why),
            Caller::Insecure => Reply::Revision(2),
            Caller::Local => Reply::Revision(3),
        };
        Ok(serde_json::to_vec(&reply)?)
    }

    /// Starts `serve` on a loopback port; its address.
    async fn listen(limits: Limits, tls: Option<PeerTls>) -> String {
        listen_with(limits, tls, origin_reply).await
    }

    /// [`listen`], answering with `answer`.
    async fn listen_with<F, Fut>(limits: Limits, tls: Option<PeerTls>, answer: F) -> String
    where
        F: Fn(Caller, Vec<u8>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        listen_in(limits, tls, Voters::default(), answer).await
    }

    /// [`listen_with`] for the group of `voters`.
    async fn listen_in<F, Fut>(
        limits: Limits,
        tls: Option<PeerTls>,
        voters: Voters,
        answer: F,
    ) -> String
    where
        F: Fn(Caller, Vec<u8>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        let listener = Listener::bind("127.0.0.1:0").await.unwrap();
        let Listener::Tcp(l) = &listener else {
            unreachable!("a TCP address binds TCP")
        };
        let addr = l.local_addr().unwrap().to_string();
        let group: Arc<dyn Group> = Arc::new(voters);
        tokio::spawn(serve(listener, tls.map(Arc::new), limits, group, answer));
        addr
    }

    /// Starts `serve` with an [`origin_reply`] that holds every request (and so its
    /// connection's slot) until the returned gate gets a permit; each request says when it
    /// arrives on the returned receiver.
    async fn listen_gated(
        limits: Limits,
        tls: PeerTls,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        Arc<Semaphore>,
    ) {
        let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let answer = move |caller: Caller, body: Vec<u8>| {
            let (arrived, gate) = (arrived.clone(), held.clone());
            async move {
                let _ = arrived.send(());
                // A permit taken and given back: once open, the gate stays open.
                drop(gate.acquire().await);
                origin_reply(caller, body).await
            }
        };
        (listen_with(limits, Some(tls), answer).await, arrivals, gate)
    }

    /// Whether `stream` is still open: nothing came from the server, not even its end.
    fn still_open(stream: &TcpStream) -> bool {
        let mut sink = [0u8; 1];
        matches!(stream.try_read(&mut sink), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Calls until a call is served, within [`BOUND`]: a slot or handshake place given back
    /// is free once the server has noticed, which the caller cannot see.
    async fn served(addr: &str, tls: Option<&PeerTls>) -> u64 {
        let served = async {
            loop {
                match revision(addr, tls).await {
                    Ok(r) => return r,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::time::timeout(BOUND, served)
            .await
            .expect("a call is served once the server has freed its place")
    }

    fn peer_tls() -> PeerTls {
        let year = Duration::from_secs(365 * 24 * 3600);
        let ca = stek_trust::identity::init_ca("limits", year).unwrap();
        let role = stek_trust::identity::Role::Member("p1".into());
        let cert =
            stek_trust::identity::issue(&ca.cert, &ca.key, &role, &["127.0.0.1".into()], year)
                .unwrap();
        PeerTls::from_pem(
            ca.cert.as_bytes(),
            cert.cert.as_bytes(),
            cert.key.as_bytes(),
        )
        .unwrap()
    }

    /// Whether the server closed `stream` (end of file or reset) within [`BOUND`], reading and
    /// discarding whatever it sent first.
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
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

    async fn revision(addr: &str, tls: Option<&PeerTls>) -> std::io::Result<u64> {
        match call(addr, &Request::Members, BOUND, tls).await? {
            Reply::Revision(r) => Ok(r),
            other => Err(std::io::Error::other(format!("{other:?}"))),
        }
    }

    #[tokio::test]
    async fn a_connection_that_never_starts_its_tls_handshake_is_closed() {
        let tls = peer_tls();
        let addr = listen(limits(200, 30_000, 30_000, 8), Some(tls.clone())).await;
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await);
        // A client that does shake hands is served.
        assert_eq!(revision(&addr, Some(&tls)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_request_is_closed() {
        let addr = listen(limits(30_000, 200, 30_000, 8), None).await;
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await);
        assert_eq!(revision(&addr, None).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_frame_that_declares_a_large_length_and_stalls_is_closed() {
        let addr = listen(limits(30_000, 30_000, 200, 8), None).await;
        let mut stalled = TcpStream::connect(&addr).await.unwrap();
        stalled
            .write_all(&(MAX_FRAME - 1).to_be_bytes())
            .await
            .unwrap();
        stalled.write_all(b"{").await.unwrap();
        assert!(closed_by_server(&mut stalled).await);
        assert_eq!(revision(&addr, None).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn past_the_cap_the_oldest_connection_makes_room_for_the_newest() {
        let addr = listen(limits(30_000, 30_000, 30_000, 2), None).await;
        let mut first = TcpStream::connect(&addr).await.unwrap();
        let mut second = TcpStream::connect(&addr).await.unwrap();
        // The listener accepts (and admits plain TCP) in order: these two hold both places
        // when the third comes, and the oldest goes.
        let mut third = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut first).await);

        let request = serde_json::to_vec(&Request::Members).unwrap();
        for held in [&mut second, &mut third] {
            write_frame(held, &request).await.unwrap();
            let reply: Reply = serde_json::from_slice(&read_frame(held).await.unwrap()).unwrap();
            assert!(matches!(reply, Reply::Revision(2)), "{reply:?}");
        }
        // Their places are free again once the server has closed them.
        assert!(closed_by_server(&mut second).await);
        assert!(closed_by_server(&mut third).await);
        assert_eq!(served(&addr, None).await, 2);
    }

    /// The security review's finding: a slot was taken before the TLS handshake, so anyone
    /// who could reach the port kept every slot with silent connections, and the peers'
    /// heartbeats and votes were refused.
    #[tokio::test]
    async fn silent_connections_cannot_take_the_slots_of_authenticated_ones() {
        let tls = peer_tls();
        let limits = Limits {
            handshakes: 4,
            handshakes_per_ip: 4,
            ..limits(30_000, 30_000, 30_000, 2)
        };
        let (addr, mut arrivals, gate) = listen_gated(limits, tls.clone()).await;
        // As many silent connections as there are slots, accepted before anything else (the
        // listener accepts in order); they wait in their handshake for far longer than the test.
        let silent = [
            TcpStream::connect(&addr).await.unwrap(),
            TcpStream::connect(&addr).await.unwrap(),
        ];

        // Two peers are still served, and their requests (held in `answer`) take both places.
        let oldest = held_call(&addr, &tls, &mut arrivals).await;
        let second = held_call(&addr, &tls, &mut arrivals).await;

        // A third peer finishes its handshake (a handshake place is left) and then takes the
        // place of the oldest held call: the cap still holds, counted in authenticated
        // connections.
        let third = held_call(&addr, &tls, &mut arrivals).await;
        let closed = oldest.await.unwrap();
        assert!(closed.is_err(), "{closed:?}");

        gate.add_permits(1);
        for call in [second, third] {
            let reply = call.await.unwrap().unwrap();
            assert!(matches!(reply, Reply::Revision(1)), "{reply:?}");
        }
        // The slots are free again, while the silent connections still wait.
        assert_eq!(served(&addr, Some(&tls)).await, 1);
        assert!(silent.iter().all(still_open));
    }

    #[tokio::test]
    async fn with_every_handshake_place_taken_the_address_holding_them_is_refused_not_others() {
        let tls = peer_tls();
        let limits = Limits {
            handshakes: 2,
            handshakes_per_ip: 8,
            ..limits(30_000, 30_000, 30_000, 8)
        };
        let addr = listen(limits, Some(tls.clone())).await;
        let silent = [
            TcpStream::connect(&addr).await.unwrap(),
            TcpStream::connect(&addr).await.unwrap(),
        ];
        // Closed long before its handshake could time out: refused, not timed out.
        let mut third = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut third).await);
        assert!(silent.iter().all(still_open));
        // From the address that holds every place, a peer's handshake finds none either.
        assert!(revision(&addr, Some(&tls)).await.is_err());

        // Linux routes all of 127.0.0.0/8 to the loopback: another address, holding none,
        // takes the place of the largest holder's oldest.
        #[cfg(target_os = "linux")]
        {
            let mut silent = silent;
            let other = IpAddr::from([127, 0, 0, 2]);
            let served = tokio::time::timeout(BOUND, revision_from(other, &addr, &tls)).await;
            assert!(matches!(served, Ok(Ok(1))), "{served:?}");
            assert!(
                closed_by_server(&mut silent[0]).await,
                "the oldest made room"
            );
            assert!(still_open(&silent[1]));
        }
    }

    #[tokio::test]
    async fn past_the_cap_of_one_address_its_own_oldest_handshake_makes_room() {
        let tls = peer_tls();
        let limits = Limits {
            handshakes: 8,
            handshakes_per_ip: 2,
            ..limits(30_000, 30_000, 30_000, 8)
        };
        let addr = listen(limits, Some(tls.clone())).await;
        let mut silent = [
            TcpStream::connect(&addr).await.unwrap(),
            TcpStream::connect(&addr).await.unwrap(),
        ];
        // A third from the same address: served in place of the oldest, which is closed long
        // before its handshake could time out.
        let _third = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut silent[0]).await);
        assert!(still_open(&silent[1]));
        // A peer behind the same address (a NAT, the loopback) is served all the same: its
        // handshake takes milliseconds, the silent ones' places are the oldest.
        assert_eq!(served(&addr, Some(&tls)).await, 1);

        #[cfg(target_os = "linux")]
        {
            let other = IpAddr::from([127, 0, 0, 2]);
            let served = tokio::time::timeout(BOUND, revision_from(other, &addr, &tls)).await;
            assert!(matches!(served, Ok(Ok(1))), "{served:?}");
        }
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_mapped_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_of(a), address_of(b));
        assert_ne!(address_of(a), address_of(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_of(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    /// A CA of cluster `limits` and, under it, certificates for these roles (the last one
    /// revoked), each as a client's [`PeerTls`]; the first is the server's.
    fn trusted_roles(roles: &[stek_trust::identity::Role]) -> Vec<PeerTls> {
        use stek_trust::identity::{init_ca, issue, Credentials, Trust};
        let year = Duration::from_secs(365 * 24 * 3600);
        let ca = init_ca("limits", year).unwrap();
        let issued: Vec<_> = roles
            .iter()
            .map(|r| issue(&ca.cert, &ca.key, r, &["127.0.0.1".into()], year).unwrap())
            .collect();
        let open = Trust::new(ca.cert.as_bytes(), "limits", &[]).unwrap();
        let last = issued.last().unwrap();
        let revoked = Credentials::new(&open, last.cert.as_bytes(), last.key.as_bytes())
            .unwrap()
            .serial()
            .to_owned();
        issued
            .iter()
            .map(|i| {
                let trust =
                    Trust::new(ca.cert.as_bytes(), "limits", std::slice::from_ref(&revoked))
                        .unwrap();
                PeerTls::trusted(
                    ca.cert.as_bytes(),
                    i.cert.as_bytes(),
                    i.key.as_bytes(),
                    trust,
                )
                .unwrap()
            })
            .collect()
    }

    /// A call of `tls`'s holder whose request waits in the gated server: spawned, and
    /// returned once the server has it.
    async fn held_call(
        addr: &str,
        tls: &PeerTls,
        arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> tokio::task::JoinHandle<std::io::Result<Reply>> {
        let (addr, tls) = (addr.to_owned(), tls.clone());
        let call =
            tokio::spawn(async move { call(&addr, &Request::Members, BOUND, Some(&tls)).await });
        let arrived = tokio::time::timeout(BOUND, arrivals.recv()).await;
        assert!(
            matches!(arrived, Ok(Some(()))),
            "the request reached the server"
        );
        call
    }

    /// The review of issue 25: one certificate (revoked ones included) held every slot, and
    /// the peers' Raft messages found none.
    #[tokio::test]
    async fn one_certificate_holder_past_its_share_loses_its_oldest_and_others_are_served() {
        use stek_trust::identity::Role;
        let tls = trusted_roles(&[
            Role::Member("p1".into()),
            Role::Member("p2".into()),
            Role::Operator("alice".into()),
            Role::Member("gone".into()),
        ]);
        let (p1, p2, alice, revoked) = (&tls[0], &tls[1], &tls[2], &tls[3]);
        let limits = Limits {
            per_holder: 2,
            ..limits(30_000, 30_000, 30_000, 3)
        };
        let (addr, mut arrivals, gate) = listen_gated(limits, p1.clone()).await;

        // Operator alice at her share (2): her third takes her own oldest's place.
        let a1 = held_call(&addr, alice, &mut arrivals).await;
        let a2 = held_call(&addr, alice, &mut arrivals).await;
        let a3 = held_call(&addr, alice, &mut arrivals).await;
        let closed = tokio::time::timeout(BOUND, a1).await.unwrap().unwrap();
        assert!(closed.is_err(), "alice's oldest was closed: {closed:?}");
        // A revoked certificate fails its handshake, told why by the TLS alert, and takes
        // no place.
        let refused = call(&addr, &Request::Members, BOUND, Some(revoked)).await;
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("CertificateRevoked")),
            "{refused:?}"
        );
        // p2 takes the third and last place; its second, with every place taken and p2
        // holding fewer than the largest holder (alice, 2), takes the place of alice's oldest
        // connection (her second).
        let p2_call = held_call(&addr, p2, &mut arrivals).await;
        let p2_again = held_call(&addr, p2, &mut arrivals).await;
        let closed = tokio::time::timeout(BOUND, a2).await.unwrap().unwrap();
        assert!(closed.is_err(), "{closed:?}");

        gate.add_permits(1);
        for call in [p2_call, p2_again] {
            let reply = call.await.unwrap().unwrap();
            assert!(matches!(reply, Reply::Revision(1)), "{reply:?}");
        }
        let _ = a3.await;
        assert_eq!(served(&addr, Some(alice)).await, 1);
    }

    #[tokio::test]
    async fn a_request_past_what_its_caller_may_send_is_refused_unread() {
        use stek_trust::identity::Role;
        let tls = trusted_roles(&[
            Role::Member("p1".into()),
            Role::Member("c1".into()),
            Role::Operator("alice".into()),
            Role::Member("gone".into()),
        ]);
        let (voter, client_box, alice) = (&tls[0], &tls[1], &tls[2]);
        let voters = Voters {
            ids: vec!["p1".into()],
            addresses: vec![],
        };
        let addr = listen_in(
            limits(30_000, 30_000, 30_000, 8),
            Some(voter.clone()),
            voters,
            origin_reply,
        )
        .await;
        let of = |bytes: u32| {
            serde_json::to_vec(&Request::Join {
                name: "x".repeat(bytes as usize),
                addr: "127.0.0.1:1".into(),
            })
            .unwrap()
        };
        let send = |tls: &PeerTls, body: Vec<u8>| {
            let (addr, tls) = (addr.clone(), tls.clone());
            async move {
                let mut stream = tls.connect(&addr, None).await?;
                write_frame(&mut stream, &body).await?;
                read_frame(&mut stream).await
            }
        };
        // (who, how large, read)
        let cases = [
            (alice, 2 * authorize::SMALL_REQUEST, false),
            (alice, authorize::SMALL_REQUEST / 2, true),
            (client_box, authorize::MEMBER_REQUEST + (1 << 20), false),
            (client_box, 2 * authorize::SMALL_REQUEST, true),
            (voter, authorize::MEMBER_REQUEST + (1 << 20), true),
        ];
        for (i, (tls, bytes, read)) in cases.into_iter().enumerate() {
            let got = tokio::time::timeout(BOUND, send(tls, of(bytes)))
                .await
                .unwrap();
            assert_eq!(got.is_ok(), read, "case {i}: {bytes} bytes: {got:?}");
        }
    }

    /// A client with trust follows redirects to addresses it did not know: whatever answers
    /// there must be a member, not revoked.
    #[tokio::test]
    async fn a_client_with_trust_talks_only_to_a_member_that_is_not_revoked() {
        use stek_trust::identity::Role;
        let tls = trusted_roles(&[
            Role::Member("p1".into()),
            Role::Member("p2".into()),
            Role::Operator("alice".into()),
            Role::Member("gone".into()),
        ]);
        let client = &tls[0];
        // (the server's certificate, what the client's error says: none if it talks to it).
        // An operator's certificate is not one for a server at all (TLS refuses it); a
        // revoked member's is, and the client's trust refuses it.
        for (server, refused) in [
            (&tls[1], None),
            (&tls[2], Some("server authentication")),
            (&tls[3], Some("revoked")),
        ] {
            let addr = listen(limits(30_000, 30_000, 30_000, 8), Some(server.clone())).await;
            let got = call(&addr, &Request::Members, BOUND, Some(client)).await;
            match (refused, got) {
                (None, got) => assert!(got.is_ok(), "{got:?}"),
                (Some(why), Err(e)) => assert!(e.to_string().contains(why), "{e}"),
                (Some(why), Ok(reply)) => panic!("answered ({reply:?}), not refused for {why}"),
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_voters_handshakes_have_places_of_their_own() {
        let tls = peer_tls();
        let limits = Limits {
            handshakes: 2,
            voter_handshakes: 2,
            handshakes_per_ip: 8,
            ..limits(30_000, 30_000, 30_000, 8)
        };
        let voters = Voters {
            ids: vec![],
            addresses: vec![IpAddr::from([127, 0, 0, 1])],
        };
        let addr = listen_in(limits, Some(tls.clone()), voters, origin_reply).await;
        // Two silent connections from two other addresses hold every other handshake place.
        let silent_from = |last: u8| {
            let addr = addr.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket
                    .bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0))
                    .unwrap();
                socket.connect(addr.parse().unwrap()).await.unwrap()
            }
        };
        let mut silent = [silent_from(2).await, silent_from(3).await];
        // The voter's address is served without taking any of their places.
        assert_eq!(served(&addr, Some(&tls)).await, 1);
        assert!(silent.iter().all(still_open));
        // Anyone else takes the place of the oldest of them.
        let other = IpAddr::from([127, 0, 0, 4]);
        let got = tokio::time::timeout(BOUND, revision_from(other, &addr, &tls)).await;
        assert!(matches!(got, Ok(Ok(1))), "{got:?}");
        assert!(closed_by_server(&mut silent[0]).await);
    }

    /// [`revision`] over mutual TLS from the local address `source`.
    #[cfg(target_os = "linux")]
    async fn revision_from(source: IpAddr, addr: &str, tls: &PeerTls) -> std::io::Result<u64> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket
            .connect(addr.parse().map_err(std::io::Error::other)?)
            .await?;
        let name = PeerTls::server_name(addr).map_err(std::io::Error::other)?;
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        let mut stream = connector.connect(name, stream).await?;
        match exchange(&mut stream, &Request::Members).await? {
            Reply::Revision(r) => Ok(r),
            other => Err(std::io::Error::other(format!("{other:?}"))),
        }
    }

    #[tokio::test]
    async fn the_unix_socket_serves_within_the_same_limits() {
        let dir = tempfile::tempdir().unwrap();
        // A directory the listener makes itself (0700): the temporary one may be open to others.
        let addr = format!("unix:{}", dir.path().join("raft/raft.sock").display());
        let listener = Listener::bind(&addr).await.unwrap();
        tokio::spawn(serve(
            listener,
            None,
            limits(30_000, 200, 30_000, 1),
            Arc::new(Voters::default()),
            origin_reply,
        ));
        assert_eq!(revision(&addr, None).await.unwrap(), 3);
        let path = addr.trim_start_matches("unix:");
        let mut silent = UnixStream::connect(path).await.unwrap();
        let mut sink = [0u8; 1];
        let closed = tokio::time::timeout(BOUND, silent.read(&mut sink)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    }
}
