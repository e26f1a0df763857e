//! The cluster: several real `stek node` processes on loopback, on a real etcd and on the
//! embedded Raft group, checked against rotation.md's invariants after every step. Each
//! scenario runs on both coordinators; the etcd outage, etcdctl garbage and store-level fencing
//! tests are etcd's own.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::fs;
use std::time::{Duration, Instant};

use cluster_tests::cluster::{
    active_key, assert_no_key_bytes_in_logs, check_invariants, etcdctl, hold, Backend, Cluster,
    History, LEASE_TTL,
};
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod etcd {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Etcd) })*
        }
        mod raft {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Raft) })*
        }
    };
}

on_both_backends!(
    three_nodes_bootstrap_then_20_rotations_keep_every_invariant,
    leader_sigkill_new_leader_within_lease_ttl_and_no_epoch_repeats,
    failing_reload_blocks_rotation_and_status_names_the_member_until_it_is_stopped,
    a_late_node_catches_up_to_the_current_ring_before_it_acknowledges,
    three_concurrent_rotate_calls_advance_epochs_by_one_per_rotation,
    graceful_stop_hands_over_leadership_at_once,
);

fn three_nodes_bootstrap_then_20_rotations_keep_every_invariant(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("20-{backend:?}"), 3, backend);
    c.start_all();
    info!("--- three nodes start: one leader, one active and one staged key everywhere");
    let status = c.wait_converged(Duration::from_secs(30));
    // Generation 1 is the bootstrap; members that registered after it got a sealed copy of it
    // from the leader (same ring, no new write).
    let keys = status["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .any(|k| k["state"] == "active" && k["epoch"] == 1));
    assert!(keys
        .iter()
        .any(|k| k["state"] == "staged" && k["epoch"] == 2));
    let leaders: Vec<_> = c
        .nodes
        .iter()
        .filter(|n| n.log_text().contains("leader elected"))
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one node was ever elected");
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);

    for i in 1..=20 {
        info!("--- rotation {i} of 20");
        c.rotate_ok(i % 3);
        let status = c.wait_converged(Duration::from_secs(10));
        check_invariants(&c, &status, &mut history);
    }
    assert_eq!(history.actives.last().unwrap().0, 21);
    assert_eq!(c.activated_epochs(), (2..=21).collect::<Vec<_>>());
    info!("--- no key bytes in any node's log");
    assert_no_key_bytes_in_logs(&c, &history);
}

fn leader_sigkill_new_leader_within_lease_ttl_and_no_epoch_repeats(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("kill-{backend:?}"), 3, backend);
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
    c.rotate_ok(0);
    let status = c.wait_converged(Duration::from_secs(10));
    check_invariants(&c, &status, &mut history);
    let leader = status["leader"].as_str().unwrap().to_owned();
    let li = c.nodes.iter().position(|n| n.id == leader).unwrap();
    info!("--- SIGKILL the leader {leader}");
    let killed = Instant::now();
    c.kill(li);
    let other = (li + 1) % 3;
    let mut new_leader = String::new();
    // etcd: the lease expires. Raft: if the killed node also led the Raft group, an election
    // (at most 1.2 s) comes first, then the new Raft leader's lease clock.
    let election = match backend {
        Backend::Etcd => Duration::ZERO,
        Backend::Raft => Duration::from_millis(1200),
    };
    cluster_tests::wait_until(
        LEASE_TTL + election + Duration::from_secs(2),
        "a new leader",
        || {
            let s = c.status(other);
            new_leader = s["leader"].as_str().unwrap_or_default().to_owned();
            !new_leader.is_empty() && new_leader != leader
        },
    );
    info!("new leader {new_leader} after {:?}", killed.elapsed());
    info!("--- the next rotation works once the dead member's lease expired");
    c.rotate_ok(other);
    let status = c.wait_converged(Duration::from_secs(10));
    check_invariants(&c, &status, &mut history);
    let dead = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == leader.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        dead["live"], false,
        "status shows the killed leader as not live"
    );
    let epochs = c.activated_epochs();
    let mut dedup = epochs.clone();
    dedup.dedup();
    assert_eq!(epochs, dedup, "an epoch was activated twice");
    assert_eq!(epochs, vec![2, 3]);
}

fn failing_reload_blocks_rotation_and_status_names_the_member_until_it_is_stopped(
    backend: Backend,
) {
    let mut c = Cluster::with_backend(BIN, &format!("block-{backend:?}"), 2, backend);
    let flag = c.root.join("n3-reload-fails");
    let script = format!("test ! -e {}", flag.display());
    let bad = c.add_node(Some(&["sh", "-c", &script]));
    c.start_all();
    // A bound, not a speed claim: this runs beside 17 other cluster tests on 2 cores.
    c.wait_converged(Duration::from_secs(60));
    info!("--- n3's reload starts failing; the next rotation happens but n3 cannot apply it");
    std::fs::write(&flag, b"").unwrap();
    let out = c.rotate_wait(0, "6s");
    assert!(!out.status.success());
    let text = out_text(&out);
    assert!(
        text.contains("n3"),
        "rotate names the member that did not apply: {text}"
    );
    assert!(text.contains("exit status 1"), "and why: {text}");
    info!("--- the following rotation is blocked by n3, and status says so");
    let out = c.rotate_wait(0, "4s");
    assert!(!out.status.success());
    let text = out_text(&out);
    assert!(
        text.contains("waits for members") && text.contains("n3"),
        "{text}"
    );
    let status = c.status(0);
    assert_eq!(status["rotation"]["state"], "waiting", "{status}");
    assert_eq!(
        status["rotation"]["blocked_by"][0]["node_id"], "n3",
        "{status}"
    );
    let n3 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == "n3")
        .unwrap();
    assert!(
        n3["last_error"]
            .as_str()
            .unwrap()
            .contains("reload command"),
        "{n3}"
    );
    let human = out_text(&c.cli(0, &["status"]));
    assert!(human.contains("blocked by n3"), "{human}");
    info!("--- n3 stops; once its lease expires the rotation proceeds");
    c.kill(bad);
    let out = c.rotate_wait(0, "30s");
    assert!(out.status.success(), "{}", out_text(&out));
    let status = c.wait_converged(Duration::from_secs(10));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
}

#[test]
fn etcd_outage_changes_no_file_and_rotation_resumes_afterwards() {
    let mut c = Cluster::new(BIN, "etcd-outage", 3);
    let mut history = c.start_checked();
    c.rotate_and_check(0, &mut history);
    let before: Vec<_> = c.nodes.iter().map(|n| n.files_with_mtimes()).collect();
    info!("--- etcd stopped for 30 s");
    c.etcd().stop();
    let out = c.cli(0, &["status"]);
    assert!(!out.status.success());
    assert!(
        out_text(&out).contains(&c.etcd().endpoint()),
        "an unreachable etcd names the endpoints tried: {}",
        out_text(&out)
    );
    hold(&mut c, Duration::from_secs(30));
    for (n, b) in c.nodes.iter().zip(&before) {
        assert_eq!(
            &n.files_with_mtimes(),
            b,
            "I4: {} changed its files while etcd was down",
            n.id
        );
        assert!(
            n.log_text().contains("keeping the keys on disk"),
            "{}",
            n.id
        );
    }
    info!("--- etcd back: rotation works");
    c.etcd().restart();
    c.rotate_ok(1);
    let status = c.wait_converged(Duration::from_secs(20));
    check_invariants(&c, &status, &mut history);
}

fn a_late_node_catches_up_to_the_current_ring_before_it_acknowledges(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("late-{backend:?}"), 3, backend);
    c.start(0);
    c.start(1);
    c.wait_converged(Duration::from_secs(30));
    for _ in 0..3 {
        c.rotate_ok(0);
    }
    let status = c.wait_converged(Duration::from_secs(10));
    let generation = status["generation"].as_u64().unwrap();
    let active = active_key(&status)["fingerprint"].clone();
    let applied_by = |c: &Cluster, i: usize| {
        c.nodes[i]
            .log_text()
            .lines()
            .filter(|l| l.contains("applied ring to every target"))
            .count()
    };
    let before = [applied_by(&c, 0), applied_by(&c, 1)];
    info!("--- n3 starts late, at generation {generation}");
    c.start(2);
    let status = c.wait_converged(Duration::from_secs(20));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
    // The leader (the stored ring's writer) sealed one more copy of the unchanged ring for n3
    // and wrote nothing else: the generation is the same, and n1 and n2 applied nothing.
    let now = status["generation"].as_u64().unwrap();
    assert_eq!(
        now, generation,
        "n3 cost one copy, not a new ring: {status}"
    );
    assert_eq!(
        [applied_by(&c, 0), applied_by(&c, 1)],
        before,
        "n1 and n2 applied nothing new"
    );
    let leader = c
        .nodes
        .iter()
        .find(|n| n.id == status["leader"].as_str().unwrap_or_default())
        .expect("status names a leader it started");
    assert!(
        leader
            .log_text()
            .contains("sealed a copy of the stored ring for n3"),
        "the leader logs the copy it sealed for n3"
    );
    assert!(status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["state"] == "active" && k["fingerprint"] == active));
    let log = c.nodes[2].log_text();
    let applied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("applied ring to every target"))
        .collect();
    assert_eq!(applied.len(), 1, "n3 wrote its files once: {applied:?}");
    assert!(
        applied[0].contains(&format!("generation={now}")),
        "the first ring n3 applied is the current one: {}",
        applied[0]
    );
    c.rotate_ok(2);
    let status = c.wait_converged(Duration::from_secs(10));
    check_invariants(&c, &status, &mut history);
}

fn three_concurrent_rotate_calls_advance_epochs_by_one_per_rotation(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("concurrent-{backend:?}"), 3, backend);
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
    info!("--- three rotate --wait at once, through three nodes");
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                s.spawn({
                    let c = &c;
                    move || c.rotate_wait(i, "30s")
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert!(o.status.success(), "{}", out_text(o));
    }
    let status = c.wait_converged(Duration::from_secs(10));
    let epochs = c.activated_epochs();
    assert!(!epochs.is_empty() && epochs.len() <= 3, "{epochs:?}");
    assert_eq!(
        epochs,
        (2..2 + epochs.len() as u64).collect::<Vec<_>>(),
        "strictly +1 per rotation"
    );
    let active = active_key(&status)["epoch"].as_u64().unwrap();
    assert_eq!(active, *epochs.last().unwrap());
    assert_eq!(status["pending_requests"], 0);
}

#[test]
fn garbage_records_are_rejected_and_logged_and_the_cluster_keeps_working() {
    let mut c = Cluster::new(BIN, "etcd-garbage", 3);
    let mut history = c.start_checked();
    c.rotate_and_check(0, &mut history);
    let before: Vec<_> = c.nodes.iter().map(|n| n.files()).collect();
    let prefix = format!("/stek/{}/", c.name);
    info!("--- garbage in the ring, a member record, a rotation request and an unknown key");
    for (key, value) in [
        ("ring", "garbage"),
        ("members/ghost", "{not json"),
        // Must not count as a request: a rotation would change every file below.
        ("requests/bad", "\u{1}"),
        ("nonsense", "x"),
    ] {
        let out = etcdctl(
            &c.etcd.as_ref().unwrap().endpoint(),
            &["put", &format!("{prefix}{key}"), value],
        );
        assert!(out.status.success(), "{}", out_text(&out));
    }
    // The records that stay must be logged by every node. The bad ring is replaced by the
    // leader within moments, so a follower may never read it; the leader must have.
    // Followers neither watch nor read other members' records; they see them at their next
    // full read (every 30 s) at the latest.
    cluster_tests::wait_until(
        Duration::from_secs(45),
        "every node to log the bad records",
        || {
            c.nodes.iter().all(|n| {
                let log = n.log_text();
                log.contains(&format!("{prefix}members/ghost"))
                    && log.contains(&format!("{prefix}nonsense"))
            })
        },
    );
    cluster_tests::wait_until(
        Duration::from_secs(10),
        "the leader to replace the bad ring",
        || {
            c.nodes.iter().any(|n| {
                let log = n.log_text();
                log.lines().any(|l| {
                    l.contains("rejected a record") && l.contains(&format!("{prefix}ring"))
                }) && log.contains("put back the ring this leader accepted last")
            })
        },
    );
    info!("--- the leader put the ring it accepted back; keys on disk never changed");
    let status = c.wait_converged(Duration::from_secs(10));
    for (n, b) in c.nodes.iter().zip(&before) {
        assert_eq!(
            &n.files(),
            b,
            "{} changed its keys because of a bad record",
            n.id
        );
    }
    let rejected = status["rejected_records"].as_array().unwrap();
    assert!(
        rejected
            .iter()
            .all(|r| r["key"] != format!("{prefix}ring").as_str()),
        "{status}"
    );
    assert!(
        rejected
            .iter()
            .any(|r| r["key"] == format!("{prefix}nonsense").as_str()),
        "{status}"
    );
    check_invariants(&c, &status, &mut history);
    c.rotate_ok(1);
    let status = c.wait_converged(Duration::from_secs(10));
    check_invariants(&c, &status, &mut history);
}

/// I3 at the store: after a leader loses its lease and another node takes over, the old
/// leader's write (with its old term) is refused, and the new leader's succeeds.
#[test]
fn a_deposed_leaders_write_is_refused_by_the_store() {
    use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
    use stek_etcd::Etcd;
    use stek_store::{CoordError, Coordinator, RingSlot, StoredRing};
    let c = Cluster::new(BIN, "etcd-fence", 0);
    let seal = |ring: &KeyRing, policy: &Policy, by: &str| {
        StoredRing::seal(&c.name, ring, policy, by, &[]).0
    };
    let policy = Policy {
        interval: Duration::from_secs(3600),
        retain: 1,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Etcd::connect(&[c.etcd.as_ref().unwrap().endpoint()], &c.name)
            .await
            .unwrap();
        let lease_a = store.grant_lease(LEASE_TTL).await.unwrap();
        let term_a = store
            .campaign(lease_a, "a")
            .await
            .unwrap()
            .expect("a leads");
        let ring = KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &policy,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
        store
            .write_ring(term_a, 0, &seal(&ring, &policy, "a"), &[])
            .await
            .unwrap();

        info!("--- a's lease ends (as if it stalled past its TTL); b is elected");
        store.revoke(lease_a).await.unwrap();
        let lease_b = store.grant_lease(LEASE_TTL).await.unwrap();
        let term_b = store
            .campaign(lease_b, "b")
            .await
            .unwrap()
            .expect("b leads");
        assert_ne!(term_a, term_b);
        assert_eq!(
            store.campaign(lease_a, "a").await.unwrap(),
            None,
            "one leader at a time"
        );

        info!("--- a, deposed, writes with its old term: refused");
        let rotated = ring
            .rotated(
                std::time::SystemTime::now(),
                &policy,
                &mut OsKeySource,
                &KeyHistory::new(),
            )
            .unwrap();
        let at = store.snapshot().await.unwrap().ring_revision;
        let err = store
            .write_ring(term_a, at, &seal(&rotated, &policy, "a"), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, CoordError::Fenced(t) if t == term_a), "{err}");
        let RingSlot::Valid(stored) = store.snapshot().await.unwrap().ring else {
            panic!("the ring must still be readable")
        };
        assert_eq!(
            stored.ring.generation(),
            1,
            "the refused write left no trace"
        );
        store
            .write_ring(term_b, at, &seal(&rotated, &policy, "b"), &[])
            .await
            .unwrap();
        let snap = store.snapshot().await.unwrap();
        assert_eq!(snap.valid_ring().unwrap().ring.generation(), 2);
        assert_eq!(snap.valid_ring().unwrap().written_by, "b");
        assert_eq!(snap.leader.unwrap().node_id, "b");
    });
}

/// Graceful stop releases the leadership and the lease at once. The lease here is 30 s, so a
/// new leader and a not-live member within the 10 s bound cannot come from expiry.
fn graceful_stop_hands_over_leadership_at_once(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("graceful-{backend:?}"), 0, backend);
    c.lease_ttl = Duration::from_secs(30);
    for _ in 0..3 {
        c.add_node(None);
    }
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let leader = status["leader"].as_str().unwrap().to_owned();
    let li = c.nodes.iter().position(|n| n.id == leader).unwrap();
    let other = (li + 1) % 3;
    info!("--- SIGTERM the leader {leader}");
    c.stop(li);
    let mut s = serde_json::Value::Null;
    cluster_tests::wait_until(Duration::from_secs(10), "a new leader", || {
        let Some(now) = c.try_status(other) else {
            return false;
        };
        s = now;
        s["leader"].as_str().is_some_and(|l| l != leader)
    });
    let gone = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == leader.as_str())
        .unwrap()["live"]
        .clone();
    assert_eq!(gone, false, "the stopped member's lease was revoked");
    assert!(c.nodes[li].log_text().contains("leadership released"));
    c.rotate_ok(other);
}

/// etcd over TLS with a client certificate and etcd user/password auth: the nodes join, rotate
/// and keep every invariant; a world-readable password file or client key makes a node refuse
/// to start; a wrong password is a clear error.
#[test]
fn etcd_over_tls_with_client_certificates_and_auth() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::secured(BIN, "etcd-tls", 2);
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
    c.rotate_ok(1);
    let status = c.wait_converged(Duration::from_secs(10));
    check_invariants(&c, &status, &mut history);

    info!("--- plain access is refused by this etcd");
    let plain = etcdctl(
        &c.etcd.as_ref().unwrap().endpoint(),
        &["get", "--prefix", "/stek/"],
    );
    assert!(!plain.status.success());

    let tls = c.etcd.as_ref().unwrap().tls.clone().unwrap();
    info!("--- secret files open to other users: the node refuses to start");
    for secret in [&tls.password_file, &tls.key] {
        fs::set_permissions(secret, fs::Permissions::from_mode(0o644)).unwrap();
        let out = c.cli(0, &["node"]);
        fs::set_permissions(secret, fs::Permissions::from_mode(0o600)).unwrap();
        let text = out_text(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains("readable by other users") && text.contains("chmod 600"),
            "{text}"
        );
        assert!(!text.contains("stek-test-root-pw"), "{text}");
    }

    info!("--- a wrong password is a clear error");
    let good = fs::read(&tls.password_file).unwrap();
    fs::write(&tls.password_file, "wrong\n").unwrap();
    let out = c.cli(0, &["status"]);
    fs::write(&tls.password_file, good).unwrap();
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.to_lowercase().contains("authentication failed"),
        "{text}"
    );
    assert!(
        !text.contains("wrong"),
        "the password is not echoed: {text}"
    );
}

/// Raft peers over mutual TLS from `[identity]`: the cluster forms and rotates. At the peer
/// listener: a client without TLS, or with a certificate of another CA, gets nothing; a valid
/// member certificate cannot act for another node id (register, acknowledge, campaign,
/// replicate or ask for votes as it); an operator certificate reads and requests rotations
/// but cannot register, campaign, write a ring or replicate. A key file others can read stops
/// a node at start.
#[test]
fn raft_peers_over_mutual_tls() {
    use std::os::unix::fs::PermissionsExt;
    use stek_raft::tls::PeerTls;
    use stek_raft::wire::{call, Reply, Request};
    use stek_store::keyspace::Command;
    use stek_trust::identity::Role;
    let mut c = Cluster::with_backend(BIN, "raft-mtls", 3, Backend::Raft);
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
    c.rotate_ok(2);
    let status = c.wait_converged(Duration::from_secs(10));
    check_invariants(&c, &status, &mut history);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leader_id = status["leader"].as_str().unwrap().to_owned();
    let leader = c.nodes.iter().position(|n| n.id == leader_id).unwrap();
    let peer = c.nodes[leader].raft_addr.clone();
    let ca = c.ca.clone().unwrap();
    let pem = |p: &std::path::Path| fs::read(p).unwrap();
    let ask = |tls: Option<&PeerTls>, req: &Request| {
        rt.block_on(call(&peer, req, Duration::from_secs(3), tls))
    };
    info!("--- a client without TLS gets nothing");
    let plain = ask(None, &Request::State);
    assert!(
        plain.is_err(),
        "a plaintext request was answered: {plain:?}"
    );

    info!("--- a client whose certificate comes from another CA (same cluster name) is refused");
    let other = cluster_tests::cluster::ClusterCa::new(&c.root.subdir("other-ca"), &c.name);
    let other_dir = c.root.subdir("other-n1");
    other.issue_member("n1", "127.0.0.1", &other_dir);
    let intruder = PeerTls::from_pem(
        &pem(&ca.cert()),
        &pem(&other_dir.join("n1.pem")),
        &pem(&other_dir.join("n1.key")),
    )
    .unwrap();
    let refused = ask(Some(&intruder), &Request::State);
    assert!(
        refused.is_err(),
        "a foreign certificate was accepted: {refused:?}"
    );
    cluster_tests::wait_until(
        Duration::from_secs(5),
        "the peer to log the refusal",
        || {
            c.nodes[leader]
                .log_text()
                .contains("connection(s) without a valid certificate")
        },
    );

    let tls_of = |dir: &std::path::Path, name: &str| {
        PeerTls::from_pem(
            &pem(&ca.cert()),
            &pem(&dir.join(format!("{name}.pem"))),
            &pem(&dir.join(format!("{name}.key"))),
        )
        .unwrap()
    };
    let refused_with = |reply: std::io::Result<Reply>, what: &str, words: &str| match reply {
        Ok(Reply::Error(e)) => assert!(e.contains("refused") && e.contains(words), "{what}: {e}"),
        other => panic!("{what} was not refused: {other:?}"),
    };
    let victim = c.nodes[(leader + 1) % 3].id.clone();
    let actor = c.nodes[(leader + 2) % 3].id.clone();
    info!("--- member {actor}'s valid certificate acting for {victim}");
    let member = tls_of(&c.nodes[(leader + 2) % 3].dir.join("identity"), &actor);
    let foreign_record = stek_store::MemberRecord {
        node_id: victim.clone(),
        version: "x".into(),
        targets: vec![],
        applied_generation: 99,
        last_error: None,
        updated_at_ms: 0,
        public_key: None,
        unsealable_generation: None,
        certificate: None,
        key_signature: None,
        applied_digest: None,
        floor_generation: None,
        instance: None,
        floor_digest: None,
    };
    for (what, cmd) in [
        (
            "register",
            Command::Register {
                lease: 1,
                node_id: victim.clone(),
                value: foreign_record.encode(),
                holder: None,
            },
        ),
        (
            "acknowledge",
            Command::PutMember {
                node_id: victim.clone(),
                value: foreign_record.encode(),
            },
        ),
        (
            "campaign",
            Command::Campaign {
                lease: 1,
                node_id: victim.clone(),
            },
        ),
    ] {
        refused_with(
            ask(Some(&member), &Request::Write(cmd)),
            what,
            &format!("member {actor} may not act for member {victim}"),
        );
    }
    // Only the leader removes a dead member's record: a member that does not lead is fenced,
    // even naming the current term, and the record stays.
    let term = c.status(0)["leader_term"].as_i64().unwrap();
    let forget = ask(
        Some(&member),
        &Request::Write(Command::ForgetMember {
            term: u64::try_from(term).unwrap(),
            node_id: victim.clone(),
        }),
    );
    assert!(
        matches!(
            forget,
            Ok(Reply::Applied(stek_store::keyspace::Applied::Fenced))
        ),
        "member {actor}, not leading, may not forget {victim}: {forget:?}"
    );
    assert!(c.status(0)["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["node_id"] == victim.as_str()));
    let victim_raft = stek_raft::group::raft_ids(
        &c.nodes
            .iter()
            .map(|n| (n.id.clone(), n.raft_addr.clone()))
            .collect(),
    )[&victim];
    let vote = openraft::Vote::new(u64::MAX / 2, victim_raft);
    refused_with(
        ask(
            Some(&member),
            &Request::Vote(openraft::raft::VoteRequest {
                vote,
                last_log_id: None,
            }),
        ),
        "a vote request in another peer's name",
        "not for itself",
    );
    refused_with(
        ask(
            Some(&member),
            &Request::Append(openraft::raft::AppendEntriesRequest {
                vote,
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
        ),
        "replication in another peer's name",
        "not for itself",
    );
    info!("--- member {actor} borrows {victim}'s liveness lease (lease ids are in the state)");
    // Writes and reads are served by the Raft leader (not always stek's): follow a redirect.
    let at_raft_leader = |tls: &PeerTls, req: &Request| {
        let reply = ask(Some(tls), req);
        match &reply {
            Ok(Reply::NotLeader(Some(raft_leader))) => {
                rt.block_on(call(raft_leader, req, Duration::from_secs(3), Some(tls)))
            }
            _ => reply,
        }
    };
    let Ok(Reply::State(before)) = at_raft_leader(&member, &Request::State) else {
        panic!("a member reads the state")
    };
    let victim_lease = before.alive[&victim];
    let actor_record = stek_store::MemberRecord {
        node_id: actor.clone(),
        ..foreign_record.clone()
    };
    let borrowed = at_raft_leader(
        &member,
        &Request::Write(Command::Register {
            lease: victim_lease,
            node_id: actor.clone(),
            value: actor_record.encode(),
            holder: None,
        }),
    );
    assert!(
        matches!(
            &borrowed,
            Ok(Reply::Written(stek_store::keyspace::Outcome {
                applied: stek_store::keyspace::Applied::NotYours(why),
                ..
            })) if why.contains(victim.as_str())
        ),
        "registering under {victim}'s lease must be refused by the store: {borrowed:?}"
    );
    for (what, req) in [
        (
            "renew",
            Request::Heartbeat {
                lease: victim_lease,
            },
        ),
        (
            "end",
            Request::Write(Command::Revoke {
                lease: victim_lease,
            }),
        ),
    ] {
        refused_with(
            at_raft_leader(&member, &req),
            &format!("{what} {victim}'s lease"),
            &format!("may not renew or end member {victim}'s lease"),
        );
    }
    let Ok(Reply::State(after)) = at_raft_leader(&member, &Request::State) else {
        panic!("a member reads the state")
    };
    assert_eq!(
        after.alive.get(&victim),
        Some(&victim_lease),
        "{victim} keeps its lease"
    );
    assert_eq!(
        after.alive.get(&actor),
        before.alive.get(&actor),
        "{actor} is still registered under its own lease only"
    );

    info!("--- a valid member certificate of a box that is not a voter, in its own name");
    let out_dir = c.root.subdir("outsider");
    ca.issue_member("zz-outsider", "127.0.0.1", &out_dir);
    let outsider = tls_of(&out_dir, "zz-outsider");
    let own = openraft::Vote::new(u64::MAX / 2, stek_raft::group::raft_id("zz-outsider"));
    refused_with(
        ask(
            Some(&outsider),
            &Request::Vote(openraft::raft::VoteRequest {
                vote: own,
                last_log_id: None,
            }),
        ),
        "a vote request from a box that is not a voter",
        "is not a voter of the group",
    );
    refused_with(
        ask(
            Some(&outsider),
            &Request::Append(openraft::raft::AppendEntriesRequest {
                vote: own,
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
        ),
        "replication from a box that is not a voter",
        "is not a voter of the group",
    );
    let after = c.status(0);
    assert!(
        after["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["applied_generation"] != 99),
        "a refused write reached the store: {after}"
    );
    assert_eq!(after["leader"], status["leader"], "{after}");
    assert!(
        after["leader_term"] == status["leader_term"],
        "no election followed the refused messages: {after}"
    );

    info!("--- an operator certificate reads and requests rotations, nothing else");
    let op_dir = c.root.subdir("operator");
    ca.issue(&Role::Operator("alice".into()), &[], &op_dir);
    let operator = tls_of(&op_dir, "alice");
    // State is served by the Raft leader (not always stek's leader): follow the redirect.
    let mut state = ask(Some(&operator), &Request::State);
    if let Ok(Reply::NotLeader(Some(raft_leader))) = &state {
        state = rt.block_on(call(
            raft_leader,
            &Request::State,
            Duration::from_secs(3),
            Some(&operator),
        ));
    }
    assert!(
        matches!(state, Ok(Reply::State(_))),
        "an operator reads the state: {state:?}"
    );
    for (what, req) in [
        (
            "register",
            Request::Write(Command::Register {
                lease: 1,
                node_id: "alice".into(),
                value: foreign_record.encode(),
                holder: None,
            }),
        ),
        (
            "campaign",
            Request::Write(Command::Campaign {
                lease: 1,
                node_id: "alice".into(),
            }),
        ),
        (
            "grant a lease",
            Request::Write(Command::Grant {
                lease: 7,
                ttl_ms: 1000,
            }),
        ),
        (
            "write a ring",
            Request::Write(Command::WriteRing {
                term: 1,
                value: b"{}".to_vec(),
                served: vec![],
                expected: None,
                copies: Default::default(),
            }),
        ),
        (
            "replicate",
            Request::Append(openraft::raft::AppendEntriesRequest {
                vote,
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
        ),
    ] {
        refused_with(
            ask(Some(&operator), &req),
            what,
            "operator alice may only read, request rotations and add or remove peers",
        );
    }
    let generation = after["generation"].as_u64().unwrap();
    let (cert, key) = (op_dir.join("alice.pem"), op_dir.join("alice.key"));
    let out = c.cli(
        0,
        &[
            "rotate",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "operator rotate: {}", out_text(&out));
    cluster_tests::wait_until(Duration::from_secs(20), "the operator's rotation", || {
        c.try_status(0)
            .and_then(|s| s["generation"].as_u64())
            .is_some_and(|g| g > generation)
    });

    info!("--- the operator certificate floods rotation requests: the store keeps 8 of them");
    let junk = |n: usize, pad: usize| {
        let record = stek_store::RequestRecord {
            requested_by: "cli@anyone".into(),
            requested_at_ms: 1,
            certificate: Some("c".repeat(pad)),
            signature: None,
        };
        Request::Write(Command::PutRequest {
            key: format!("/stek/{}/requests/0000000000001-{n:08x}", c.name),
            value: record.encode(),
            by: Some("member n9, says the request".into()),
        })
    };
    let applied = |reply: std::io::Result<Reply>| match reply {
        Ok(Reply::Written(o)) => o.applied,
        other => panic!("a rotation request is answered by the store: {other:?}"),
    };
    let flood: Vec<_> = (0..20)
        .map(|n| applied(at_raft_leader(&operator, &junk(n, 0))))
        .collect();
    let kept = flood
        .iter()
        .filter(|a| **a == stek_store::keyspace::Applied::Ok)
        .count();
    assert_eq!(
        kept,
        stek_store::keyspace::Bounds::REQUESTS_BY_ONE,
        "{flood:?}"
    );
    assert!(
        flood.iter().skip(kept).all(|a| matches!(
            a,
            stek_store::keyspace::Applied::Bounded(why) if why.contains("operator alice has 8")
        )),
        "counted against the certificate, not the name sent: {flood:?}"
    );
    // Past the request bound (8 KiB), within what a peer reads from an operator (64 KiB):
    // refused by the peer that took it, never proposed.
    let big = applied(at_raft_leader(&operator, &junk(99, 16 << 10)));
    assert!(
        matches!(&big, stek_store::keyspace::Applied::Bounded(why) if why.contains("bytes")),
        "{big:?}"
    );
    // Past that: not even read.
    let huge = at_raft_leader(&operator, &junk(98, 1 << 20));
    assert!(
        huge.is_err(),
        "a 1 MiB request of an operator was answered: {huge:?}"
    );
    info!("--- another identity still rotates, and the rotation takes the junk away");
    let generation = c.status(0)["generation"].as_u64().unwrap();
    c.rotate_ok(0);
    cluster_tests::wait_until(Duration::from_secs(20), "the junk to be deleted", || {
        matches!(
            at_raft_leader(&operator, &Request::State),
            Ok(Reply::State(s)) if s.requests.is_empty()
        )
    });
    assert!(c.status(0)["generation"].as_u64().unwrap() > generation);

    info!("--- a key readable by others: the node refuses to start");
    let key = c.nodes[0].dir.join("identity").join("n1.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.cli(0, &["node"]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("identity.key_file") && text.contains("chmod 600"),
        "{text}"
    );
}
