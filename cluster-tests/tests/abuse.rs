//! Invariant I13 under the connection attacks of issue 25: nobody who can connect to a Raft
//! peer, and no holder of a certificate (revoked, or an operator's), stops rotation by holding
//! connections open. A three-peer group over mutual TLS rotates on its schedule and answers
//! `stek rotate --wait` while, against every peer, a revoked member certificate, a valid
//! operator certificate and a client without one (plain TCP, never shaking hands) each hold
//! 600 connections, reopening each one the peer closes, and 200 connections are held on a
//! node's admin listener.
//!
//! The attackers bind loopback addresses of their own (80 each, in 127.3/16 to 127.5/16), as
//! attackers on other hosts would: the peers all talk from 127.0.0.1, and an attacker on a
//! peer's own address shares that address's handshake places (docs/security.md says what that
//! costs).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cluster_tests::cluster::{check_invariants, Backend, Cluster, History, LEASE_TTL};
use cluster_tests::wait_until;
use stek_raft::tls::PeerTls;
use stek_raft::wire::{call, write_frame, Reply, Request};
use stek_trust::identity::Role;
use tokio::io::AsyncReadExt;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

/// Connections each attacker holds to each peer: the number the review tried.
const HELD: usize = 600;
/// The addresses each attacker spreads them over (`127.<attacker>.0.1` and on): more than a
/// peer has handshake places for others than its voters (64), so that each address holding
/// one or two is never the largest holder: only the voters' own places keep them served.
const ADDRESSES: usize = 80;
/// How long an attacker waits before reopening a connection the peer closed: holding, not
/// a flood of handshakes (which costs the attacker as much CPU as the peer).
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// The cluster's rotation interval.
const INTERVAL: Duration = Duration::from_secs(6);
/// Every attacker task ends by itself after this, whatever the test does.
const ATTACK_BOUND: Duration = Duration::from_secs(180);

/// What one attacker did: connections opened, and how many of them the peers closed.
#[derive(Debug, Default)]
struct Tally {
    opened: AtomicU64,
    closed_by_peer: AtomicU64,
}

/// Holds one connection to `addr` from `from` (over TLS with `tls`, else plain and silent;
/// over TLS, sending `ask` if given, else nothing), reopening it `REOPEN_AFTER` once the peer
/// closes it, until `stop` or `ATTACK_BOUND`.
async fn hold(
    addr: String,
    from: IpAddr,
    tls: Option<PeerTls>,
    ask: Option<Vec<u8>>,
    tally: Arc<Tally>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let end = tokio::time::Instant::now() + ATTACK_BOUND;
    while !*stop.borrow() && tokio::time::Instant::now() < end {
        let held = async {
            let mut sink = [0u8; 256];
            match &tls {
                Some(tls) => {
                    let mut s = tls.connect(&addr, Some(from)).await?;
                    tally.opened.fetch_add(1, Ordering::Relaxed);
                    if let Some(ask) = &ask {
                        write_frame(&mut s, ask).await?;
                    }
                    // Wait for the peer to close.
                    while s.read(&mut sink).await? > 0 {}
                }
                None => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(std::net::SocketAddr::new(from, 0))?;
                    let mut s = socket
                        .connect(addr.parse().map_err(std::io::Error::other)?)
                        .await?;
                    tally.opened.fetch_add(1, Ordering::Relaxed);
                    while s.read(&mut sink).await? > 0 {}
                }
            }
            std::io::Result::Ok(())
        };
        tokio::select! {
            _ = held => {
                tally.closed_by_peer.fetch_add(1, Ordering::Relaxed);
            }
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(end) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(REOPEN_AFTER) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A client's mutual TLS from the PEM files `<name>.pem` and `<name>.key` in `dir`.
fn tls_of(ca: &std::path::Path, dir: &std::path::Path, name: &str) -> PeerTls {
    let read = |p: std::path::PathBuf| std::fs::read(&p).expect("the attacker's PEM files");
    PeerTls::from_pem(
        &read(ca.to_owned()),
        &read(dir.join(format!("{name}.pem"))),
        &read(dir.join(format!("{name}.key"))),
    )
    .expect("the attacker's certificate loads")
}

#[test]
fn nobody_who_can_connect_or_holds_a_certificate_stops_rotation() {
    // The attackers hold thousands of sockets: let this process have them.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    let mut c = Cluster::with_backend(BIN, "abuse", 3, Backend::Raft);
    c.interval = format!("{}s", INTERVAL.as_secs());
    let ca = c.ca.clone().unwrap();
    let attacker = c.root.subdir("attacker");
    ca.issue_member("n9", "127.0.0.1", &attacker);
    ca.issue(&Role::Operator("mallory".into()), &[], &attacker);
    let trust =
        stek_trust::identity::Trust::new(&std::fs::read(ca.cert()).unwrap(), &c.name, &[]).unwrap();
    let pem = std::fs::read(attacker.join("n9.pem")).unwrap();
    let der = stek_trust::identity::pem_to_der(&pem).unwrap();
    let serial = trust.verify(&der, SystemTime::now()).unwrap().serial;
    for node in &mut c.nodes {
        node.revoked = vec![serial.clone()];
    }
    c.start_checked();

    let t = Instant::now();
    c.rotate_ok(0);
    let normal = t.elapsed();
    info!("--- a rotation through `stek rotate --wait` took {normal:?} unattacked");

    let revoked = tls_of(&ca.cert(), &attacker, "n9");
    let operator = tls_of(&ca.cert(), &attacker, "mallory");
    let peers: Vec<String> = c.nodes.iter().map(|n| n.raft_addr.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The operator asks what a watch asks, for a revision that never comes: the Raft leader
    // holds each such call 30 s, as it would a client box's watch.
    let watch = serde_json::to_vec(&Request::Wait {
        after: u64::MAX,
        timeout_ms: 30_000,
    })
    .unwrap();
    let kinds = [
        (
            "a revoked member certificate, silent",
            Some(revoked.clone()),
            None,
            3,
        ),
        (
            "operator mallory's certificate, watching",
            Some(operator.clone()),
            Some(watch),
            4,
        ),
        ("no certificate (plain TCP)", None, None, 5),
    ];
    let mut tallies = Vec::new();
    let mut tasks = Vec::new();
    for (what, tls, ask, from) in &kinds {
        let tally = Arc::new(Tally::default());
        for addr in &peers {
            for i in 0..HELD {
                let host = u8::try_from(1 + i % ADDRESSES).unwrap();
                tasks.push(rt.spawn(hold(
                    addr.clone(),
                    IpAddr::from([127, *from, 0, host]),
                    tls.clone(),
                    ask.clone(),
                    tally.clone(),
                    stopped.clone(),
                )));
            }
        }
        tallies.push((*what, tally));
    }
    // 200 connections held on node 1's admin listener, silent.
    let admin: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(&c.nodes[0].admin_addr).ok())
        .collect();
    info!(
        "--- attack: {} connections per peer being opened; {} admin connections",
        HELD * kinds.len(),
        admin.len()
    );
    wait_until(
        Duration::from_secs(60),
        "the attackers' first connections",
        || {
            tallies
                .iter()
                .all(|(_, t)| t.opened.load(Ordering::Relaxed) >= (HELD * peers.len()) as u64)
        },
    );

    info!("--- under attack: the scheduled rotations go on, and a requested one is served");
    let before = c.status(1)["generation"].as_u64().unwrap();
    let (code, body) = c.admin_get(0, "/healthz");
    assert_eq!(
        code, 200,
        "/healthz under 200 held admin connections: {body}"
    );
    // Issue 25's bound: within one lease TTL of the unattacked rotation.
    let bound = normal + LEASE_TTL;
    let t = Instant::now();
    let out = c.rotate_wait(1, &format!("{}ms", bound.as_millis()));
    let attacked = t.elapsed();
    assert!(
        out.status.success(),
        "rotate --wait under attack, within {bound:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    info!("--- under attack, `stek rotate --wait` took {attacked:?} ({normal:?} unattacked)");
    // Two scheduled rotations beyond the requested one, each within its interval and a lease
    // TTL; every ring seen on the way holds the invariants (I1: what any node encrypts with,
    // every running node has).
    let mut seen = before + 1;
    let deadline = Instant::now() + 2 * (INTERVAL + LEASE_TTL);
    while seen < before + 3 {
        assert!(
            Instant::now() < deadline,
            "two scheduled rotations under attack within {:?}: generation {seen}, {before} before",
            2 * (INTERVAL + LEASE_TTL)
        );
        let generation = c.try_status(2).and_then(|s| s["generation"].as_u64());
        if generation.is_some_and(|g| g > seen) {
            let status = c.wait_converged(Duration::from_secs(10));
            check_invariants(&c, &status, &mut History::default());
            seen = status["generation"].as_u64().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    info!("--- operator mallory's 100 MiB request is refused unread");
    let huge = rt.block_on(async {
        let mut s = operator
            .connect(&peers[0], Some(IpAddr::from([127, 4, 0, 1])))
            .await?;
        let header = (100u32 << 20).to_be_bytes();
        tokio::io::AsyncWriteExt::write_all(&mut s, &header).await?;
        let mut sink = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink))
            .await
            .map_err(|_| std::io::Error::other("not closed within 10 s"))??;
        std::io::Result::Ok(n)
    });
    assert!(
        matches!(huge, Ok(0) | Err(_)),
        "the peer answered a 100 MiB request header: {huge:?}"
    );

    let _ = stop.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    drop(admin);
    for (what, tally) in &tallies {
        let (opened, closed) = (
            tally.opened.load(Ordering::Relaxed),
            tally.closed_by_peer.load(Ordering::Relaxed),
        );
        info!("--- {what}: {opened} connections opened, {closed} closed or refused by the peers");
        assert!(
            closed > 0,
            "{what}: the peers closed none of {opened} held connections"
        );
    }
    assert!(
        c.nodes
            .iter()
            .any(|n| n.log_text().contains("raft listener: closed or refused")),
        "no peer said it shed connections"
    );
    // What an operator sees: every peer counts what it closed or refused.
    for i in 0..c.nodes.len() {
        let counted = c.metric(i, "stek_raft_connections_refused_total");
        assert!(
            counted.is_some_and(|n| n > 0.0),
            "{}: stek_raft_connections_refused_total = {counted:?}",
            c.nodes[i].id
        );
    }

    info!("--- nothing the attackers sent is in the store; the revoked member is told why");
    let reply = rt.block_on(call(
        &peers[0],
        &Request::State,
        Duration::from_secs(5),
        Some(&revoked),
    ));
    assert!(
        matches!(&reply, Err(e) if e.to_string().contains("CertificateRevoked")),
        "{reply:?}"
    );
    let status = c.wait_converged(Duration::from_secs(30));
    // The history before the attack ended some rotations ago: the invariants now, and over
    // every node's log that no generation was applied with two rings or went down.
    check_invariants(&c, &status, &mut History::default());
    let (violations, applies) = c.applied_history_violations();
    assert!(
        violations.is_empty(),
        "{violations:?} (of {applies} applies)"
    );
    // Reads are served by the Raft leader: ask each peer.
    let state = peers
        .iter()
        .find_map(|p| {
            match rt.block_on(call(
                p,
                &Request::State,
                Duration::from_secs(5),
                Some(&operator),
            )) {
                Ok(Reply::State(s)) => Some(s),
                _ => None,
            }
        })
        .expect("the operator reads the state from the Raft leader");
    assert!(
        !state.members.contains_key("n9"),
        "the revoked member enrolled"
    );
    assert!(
        state.requests.is_empty(),
        "requests left unserved: {:?}",
        state.requests.keys()
    );
}
