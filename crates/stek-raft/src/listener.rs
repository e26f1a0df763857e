//! The peer listener: it accepts connections on TCP (mutual TLS between peers, or plain with
//! `insecure = true`) or on a Unix socket for the single-box default, reads each connection's one
//! request, hands it with the connection's `Origin` to the peer's answer, and writes the reply.
//!
//! Not here: the messages, their framing and the caller's side ([`wire`](crate::wire)), what a
//! request is answered with and whom it is answered for ([`peer`](crate::peer), and its
//! authorization, `authorize`), openraft's view of the network ([`network`](crate::network)).
//!
//! The listener (`serve`) bounds what a connection may hold, so that idle or slow clients
//! cannot exhaust the process's file descriptors or memory (see [`Limits`]):
//! - [`PEER_MAX_CONNECTIONS`] (512) connections at once; past it a new connection is closed at
//!   once, and the refusals are logged at most once a minute. Each client box holds about one
//!   connection to the leader (its watch), so this also bounds the clients one group serves.
//!   Over TLS a connection takes its slot only once its handshake has succeeded (the caller
//!   presented a certificate of the CA), so that anyone who can reach the port, with no
//!   certificate, cannot keep the slots full and the peers' heartbeats and votes out (Raft opens
//!   a connection per RPC); on the Unix socket and over plain TCP it takes it at accept;
//! - [`PEER_MAX_HANDSHAKES`] (64) TLS handshakes in progress at once, apart from those slots,
//!   and [`PEER_MAX_HANDSHAKES_PER_IP`] (8) of them from one address (behind a shared NAT: from
//!   the NAT's address); past either a new connection is closed at once, logged as above;
//! - [`PEER_HANDSHAKE_TIMEOUT`] (3 s) for the TLS handshake (one between peers on a LAN takes
//!   milliseconds): a silent connection holds a handshake place that long at most;
//! - [`PEER_IDLE_TIMEOUT`] (10 s) for a request to begin. A connection carries one request,
//!   written as soon as it is open, and no client reuses one, so nothing legitimate waits this
//!   long (Raft's heartbeat is 150 ms, a client call gives up after 2 s);
//! - [`PEER_FRAME_TIMEOUT`] (10 s) for the rest of a request once its first byte came, and for
//!   the reply to be taken;
//! - frames of [`MAX_FRAME`](crate::wire::MAX_FRAME) (64 MiB) at most, whose buffer grows as
//!   their bytes arrive ([`wire`](crate::wire)): a declared length costs nothing until it is
//!   sent.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;

use stek_trust::slots::{Refusals, Slots};
use tracing::{debug, warn};

use super::tls::PeerTls;
use super::wire::{read_frame_into, write_frame};

/// How long a TLS handshake may take before the connection is closed.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection may stay silent before its request begins.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the rest of a frame may take once it has begun (a request), or to be taken (a
/// reply).
pub const PEER_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections the peer listener serves at once (over TLS: with their handshake done).
pub const PEER_MAX_CONNECTIONS: usize = 512;
/// How many TLS handshakes the peer listener runs at once.
pub const PEER_MAX_HANDSHAKES: usize = 64;
/// How many of those may come from one address.
pub const PEER_MAX_HANDSHAKES_PER_IP: usize = 8;

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
    /// TLS handshakes in progress at once.
    pub handshakes: usize,
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
            handshakes: PEER_MAX_HANDSHAKES,
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

/// Reads a connection's one request: its first byte within `limits.idle`, the rest of the
/// frame within `limits.frame`.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &Limits,
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
    tokio::time::timeout(limits.frame, read_frame_into(&mut rest, &mut body))
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

/// Who is at the other end of a connection, as the transport says.
#[derive(Debug)]
pub(crate) enum Origin {
    /// The Unix socket, from a process of this user or root.
    Local,
    /// Plain TCP (`insecure = true`).
    Plain,
    /// Mutual TLS: the certificate chain the client presented.
    Tls(Vec<CertificateDer<'static>>),
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

/// The TLS handshakes in progress, in all and from each address. A connection holds a place
/// here, never one of the [`Limits::connections`] slots, until it has shown a certificate: so
/// connections without one can fill these places at most, and one address only its share of
/// them.
#[derive(Debug)]
struct Handshakes {
    limit: usize,
    per_ip: usize,
    open: Mutex<InFlight>,
}

#[derive(Debug, Default)]
struct InFlight {
    all: usize,
    /// Only addresses with a handshake in progress, so that the map stays as small as `all`.
    by_ip: HashMap<IpAddr, usize>,
}

/// Why a handshake found no place.
#[derive(Debug, PartialEq, Eq)]
enum Crowded {
    /// [`Limits::handshakes`] are in progress.
    All,
    /// [`Limits::handshakes_per_ip`] are in progress from this address.
    Address,
}

/// A handshake's place, given back when dropped.
#[derive(Debug)]
struct Handshake {
    of: Arc<Handshakes>,
    ip: IpAddr,
}

impl Handshakes {
    fn new(limit: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_ip,
            open: Mutex::default(),
        })
    }

    /// The counts. Nothing panics while they are held, so a poisoned lock still holds them
    /// right.
    fn counts(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a handshake from `ip`, if there is one. Per address, not per network: a
    /// shared NAT's clients count as one, and a host with many IPv6 addresses as many (it can
    /// still fill [`Limits::handshakes`] at most, never the connection slots).
    fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<Handshake, Crowded> {
        let mut open = self.counts();
        if open.all >= self.limit {
            return Err(Crowded::All);
        }
        if open.by_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            return Err(Crowded::Address);
        }
        *open.by_ip.entry(ip).or_default() += 1;
        open.all += 1;
        Ok(Handshake {
            of: self.clone(),
            ip,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut open = self.of.counts();
        open.all -= 1;
        if let Some(from) = open.by_ip.get_mut(&self.ip) {
            *from -= 1;
            if *from == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `listener` within `limits` (over mutual TLS when `tls` is given): each connection
/// carries one request frame, which `answer` turns into the reply's body (an error closes the
/// connection without a reply).
pub(crate) async fn serve<F, Fut>(
    listener: Listener,
    tls: Option<Arc<PeerTls>>,
    limits: Limits,
    answer: F,
) where
    F: Fn(Origin, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::io::Result<Vec<u8>>> + Send + 'static,
{
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
    let slots = Slots::new(limits.connections, say_full);
    let handshakes = Handshakes::new(limits.handshakes, limits.handshakes_per_ip);
    let failed = Arc::new(Mutex::new(Refusals::default()));
    let mut busy = Refusals::default();
    let mut crowded = Refusals::default();
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
        match (conn, &acceptor) {
            // The kernel has vouched for the caller (or there is nothing to check): a slot now.
            (Accepted::Unix(s), _) => {
                if let Some(slot) = slots.take() {
                    tokio::spawn(serve_in(slot, s, Origin::Local, limits, answer.clone()));
                }
            }
            (Accepted::Tcp(s, _), None) => {
                if let Some(slot) = slots.take() {
                    tokio::spawn(serve_in(slot, s, Origin::Plain, limits, answer.clone()));
                }
            }
            (Accepted::Tcp(s, from), Some(acceptor)) => {
                let place = match handshakes.begin(from.ip()) {
                    Ok(place) => place,
                    Err(Crowded::All) => {
                        drop(s);
                        if let Some(n) = busy.refuse(Instant::now()) {
                            warn!(
                                "raft listener: closed {n} new connection(s) at once since the last such message: {} TLS handshakes were in progress, the most it runs at once. Something opens connections and does not finish their handshake (`ss -tn` shows who); while it does, the peers' new connections are refused too, those already through their handshake are not",
                                limits.handshakes
                            );
                        }
                        continue;
                    }
                    Err(Crowded::Address) => {
                        drop(s);
                        if let Some(n) = crowded.refuse(Instant::now()) {
                            warn!(
                                "raft listener: closed {n} new connection(s) at once since the last such message, the latest from {}: {} TLS handshakes from that address were in progress, the most it runs from one (clients behind one NAT count as one address). `ss -tn` shows who holds them",
                                from.ip(),
                                limits.handshakes_per_ip
                            );
                        }
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let (slots, failed) = (slots.clone(), failed.clone());
                let answer = answer.clone();
                tokio::spawn(async move {
                    let shaken = tokio::time::timeout(limits.handshake, acceptor.accept(s)).await;
                    drop(place);
                    let s = match shaken {
                        Ok(Ok(s)) => s,
                        Err(_) => {
                            debug!(%from, "closed a peer connection whose TLS handshake did not finish within {:?}", limits.handshake);
                            return;
                        }
                        Ok(Err(e)) => {
                            debug!(%from, "refused a peer connection without a valid certificate: {e}");
                            let said = lock(&failed).refuse(Instant::now());
                            if let Some(n) = said {
                                warn!(
                                    "raft listener: refused {n} connection(s) without a valid certificate since the last such message, the latest from {from}: {e}"
                                );
                            }
                            return;
                        }
                    };
                    // The caller has shown a certificate of the CA: only now does it count
                    // against the connections.
                    let Some(slot) = slots.take() else {
                        return;
                    };
                    let certs = s.get_ref().1.peer_certificates().unwrap_or_default();
                    let origin = Origin::Tls(certs.to_vec());
                    serve_in(slot, s, origin, limits, answer).await;
                });
            }
        }
    }
}

/// A refusal counter's lock; see [`Handshakes::counts`] for why a poisoned one will do.
fn lock(refusals: &Mutex<Refusals>) -> std::sync::MutexGuard<'_, Refusals> {
    refusals.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Says the peer listener closed connections for want of a slot ([`Slots`]).
fn say_full(n: u64, limit: usize) {
    warn!(
        "raft listener: closed {n} new connection(s) at once since the last such message: {limit} are open, the most a peer serves. Either more client boxes watch this leader than it serves (use etcd for such a fleet) or something holds connections open (`ss -tn` shows who)"
    );
}

/// [`serve_one`], holding `slot` until the connection is done.
async fn serve_in<S, F, Fut>(
    slot: OwnedSemaphorePermit,
    stream: S,
    origin: Origin,
    limits: Limits,
    answer: F,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Origin, Vec<u8>) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<u8>>>,
{
    if let Err(e) = serve_one(stream, origin, &limits, answer).await {
        debug!("peer connection: {e}");
    }
    drop(slot);
}

/// Reads the request, answers it and writes the reply, each within `limits`.
async fn serve_one<S, F, Fut>(
    mut stream: S,
    origin: Origin,
    limits: &Limits,
    answer: F,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Origin, Vec<u8>) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<u8>>>,
{
    let body = read_request(&mut stream, limits).await?;
    let reply = answer(origin, body).await?;
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
            handshakes: PEER_MAX_HANDSHAKES,
            handshakes_per_ip: PEER_MAX_HANDSHAKES_PER_IP,
        }
    }

    /// Answers every request with where it came from: 1 for TLS with a certificate, 2 for
    /// plain TCP, 3 for the Unix socket.
    async fn origin_reply(origin: Origin, _body: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let reply = match origin {
            Origin::Tls(certs) if !certs.is_empty() => Reply::Revision(1),
            Origin::Tls(_) => Reply::Error("no certificate".into()),
            Origin::Plain => Reply::Revision(2),
            Origin::Local => Reply::Revision(3),
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
        F: Fn(Origin, Vec<u8>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::io::Result<Vec<u8>>> + Send + 'static,
    {
        let listener = Listener::bind("127.0.0.1:0").await.unwrap();
        let Listener::Tcp(l) = &listener else {
            unreachable!("a TCP address binds TCP")
        };
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, tls.map(Arc::new), limits, answer));
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
        let answer = move |origin: Origin, body: Vec<u8>| {
            let (arrived, gate) = (arrived.clone(), held.clone());
            async move {
                let _ = arrived.send(());
                // A permit taken and given back: once open, the gate stays open.
                drop(gate.acquire().await);
                origin_reply(origin, body).await
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
    async fn connections_past_the_cap_are_closed_and_earlier_ones_still_work() {
        let addr = listen(limits(30_000, 30_000, 30_000, 2), None).await;
        let mut first = TcpStream::connect(&addr).await.unwrap();
        let mut second = TcpStream::connect(&addr).await.unwrap();
        // The listener accepts in order: these two hold both slots when the third comes.
        let mut third = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut third).await);

        let request = serde_json::to_vec(&Request::Members).unwrap();
        for held in [&mut first, &mut second] {
            write_frame(held, &request).await.unwrap();
            let reply: Reply = serde_json::from_slice(&read_frame(held).await.unwrap()).unwrap();
            assert!(matches!(reply, Reply::Revision(2)), "{reply:?}");
        }
        // Their slots are free again once the server has closed them.
        assert!(closed_by_server(&mut first).await);
        assert!(closed_by_server(&mut second).await);
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

        // Two peers are still served, and their requests (held in `answer`) take both slots.
        let held: Vec<_> = (0..2)
            .map(|_| {
                let (addr, tls) = (addr.clone(), tls.clone());
                tokio::spawn(async move { revision(&addr, Some(&tls)).await })
            })
            .collect();
        for _ in 0..2 {
            let arrived = tokio::time::timeout(BOUND, arrivals.recv()).await;
            assert!(
                matches!(arrived, Ok(Some(()))),
                "a peer's request did not reach the server while silent connections were open"
            );
        }

        // A third peer finishes its handshake (a place is left) and then finds no slot: the cap
        // still holds, counted in authenticated connections.
        let refused = revision(&addr, Some(&tls)).await;
        assert!(refused.is_err(), "{refused:?}");

        gate.add_permits(1);
        for call in held {
            assert_eq!(call.await.unwrap().unwrap(), 1);
        }
        // The slots are free again, while the silent connections still wait.
        assert_eq!(served(&addr, Some(&tls)).await, 1);
        assert!(silent.iter().all(still_open));
    }

    #[tokio::test]
    async fn handshakes_past_their_budget_are_closed_at_once() {
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
        // A peer's handshake finds no place either, until the silent connections go.
        assert!(revision(&addr, Some(&tls)).await.is_err());
        drop(silent);
        assert_eq!(served(&addr, Some(&tls)).await, 1);
    }

    #[tokio::test]
    async fn handshakes_past_the_cap_of_one_address_are_closed_at_once() {
        let tls = peer_tls();
        let limits = Limits {
            handshakes: 8,
            handshakes_per_ip: 2,
            ..limits(30_000, 30_000, 30_000, 8)
        };
        let addr = listen(limits, Some(tls.clone())).await;
        let silent = [
            TcpStream::connect(&addr).await.unwrap(),
            TcpStream::connect(&addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(&mut third).await);
        assert!(silent.iter().all(still_open));
        assert!(revision(&addr, Some(&tls)).await.is_err());

        // Linux routes all of 127.0.0.0/8 to the loopback: another address there has places.
        #[cfg(target_os = "linux")]
        {
            let other = IpAddr::from([127, 0, 0, 2]);
            let served = tokio::time::timeout(BOUND, revision_from(other, &addr, &tls)).await;
            assert!(matches!(served, Ok(Ok(1))), "{served:?}");
        }

        drop(silent);
        assert_eq!(served(&addr, Some(&tls)).await, 1);
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

    #[test]
    fn handshake_places_are_counted_in_all_and_per_address() {
        let handshakes = Handshakes::new(3, 2);
        let [a, b, c] = [1, 2, 3].map(|i| IpAddr::from([192, 0, 2, i]));
        let a1 = handshakes.begin(a).unwrap();
        let a2 = handshakes.begin(a).unwrap();
        assert_eq!(handshakes.begin(a).unwrap_err(), Crowded::Address);
        let b1 = handshakes.begin(b).unwrap();
        assert_eq!(handshakes.begin(c).unwrap_err(), Crowded::All);
        // A place given back is free for any address, its own included.
        drop(a1);
        let c1 = handshakes.begin(c).unwrap();
        assert_eq!(handshakes.begin(a).unwrap_err(), Crowded::All);
        drop((a2, b1, c1));
        let open = handshakes.counts();
        assert_eq!(open.all, 0);
        assert!(open.by_ip.is_empty(), "{:?}", open.by_ip);
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
