//! The admin HTTP listener (`[admin] listen`, loopback by default): Prometheus `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (this node has applied the current ring).
//!
//! The node loop updates [`Metrics`] on every pass; the listener only reads it. Nothing here
//! ever holds key bytes: keys appear as epochs and fingerprints, members as node ids.
//! docs/metrics.md lists every metric; a cluster test scrapes each one.
//!
//! The listener bounds what a connection may hold (see [`Limits`]), so that idle or slow
//! clients cannot exhaust the process's file descriptors:
//! - [`ADMIN_MAX_CONNECTIONS`] (64) connections at once; past it a new connection is closed at
//!   once, and the refusals are logged at most once a minute. A scraper and a probe or two need
//!   a handful;
//! - [`ADMIN_HEADER_TIMEOUT`] (10 s) for a request's headers, counted from when the listener
//!   waits for them: it also closes a keep-alive connection idle that long (Prometheus opens
//!   another at its next scrape);
//! - [`ADMIN_CONNECTION_TIMEOUT`] (30 s) for a whole connection, however busy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use stek_trust::slots::Slots;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// How many connections the admin listener serves at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// How long a request's headers may take, counted from when the listener waits for them.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may last.
pub const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin listener allows a connection (the module docs say why these values).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
    pub connections: usize,
    /// For a request's headers.
    pub header: Duration,
    /// For a whole connection.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: ADMIN_MAX_CONNECTIONS,
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

/// Says the admin listener closed connections for want of a slot ([`Slots`]).
fn say_full(n: u64, limit: usize) {
    warn!(
        "admin listener: closed {n} new connection(s) at once since the last such message: {limit} are open, the most it serves. Something holds connections open (`ss -tn` shows who)"
    );
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
    let slots = Slots::new(limits.connections, say_full);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("admin listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = slots.take() else {
                drop(stream);
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                match tokio::time::timeout(limits.connection, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, "admin connection: {e}"),
                    Err(_) => {
                        debug!(%peer, "admin connection closed after {:?}", limits.connection)
                    }
                }
                drop(slot);
            });
        }
    });
    Ok(bound)
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
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    /// Every listener test's bound: a listener that fails to close a connection fails the
    /// test rather than hanging it.
    const BOUND: Duration = Duration::from_secs(10);

    async fn listen(limits: Limits) -> SocketAddr {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        serve_within(any, Arc::new(Metrics::new()), limits)
            .await
            .unwrap()
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
        let addr = listen(Limits {
            connections: 2,
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
}
