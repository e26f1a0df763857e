//! Restarts (issue 14): what a box keeps when its process, or every process at once, restarts;
//! what a Raft peer keeps on disk (and that it is never a key); how boxes join and leave a
//! running embedded group; and a fleet of 25 boxes on the embedded coordinator.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use cluster_tests::cluster::{check_invariants, Backend, Cluster, History};
use cluster_tests::servers::Nginx;
use cluster_tests::tls::{resume, take_ticket_under, Handshake, Tls};
use cluster_tests::{require_binary, self_signed_cert, wait_until};
use serde_json::Value;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

mod etcd {
    use super::*;

    #[test]
    fn every_box_restarted_at_once_keeps_its_keys_and_old_tickets_resume() {
        super::every_box_restarted_at_once_keeps_its_keys_and_old_tickets_resume(Backend::Etcd);
    }
}

mod raft {
    use super::*;

    #[test]
    fn every_box_restarted_at_once_keeps_its_keys_and_old_tickets_resume() {
        super::every_box_restarted_at_once_keeps_its_keys_and_old_tickets_resume(Backend::Raft);
    }
}

fn fingerprints(status: &Value) -> Vec<String> {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["fingerprint"].as_str().unwrap().to_owned())
        .collect()
}

fn active_fingerprint(status: &Value) -> String {
    cluster_tests::cluster::active_key(status)["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The history check over the whole run: no generation applied as two rings, no node's
/// generation going down.
fn assert_history(c: &Cluster) {
    let (violations, applies) = c.applied_history_violations();
    assert!(applies > 0, "ring applies in the logs");
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An upgrade restarts every box's stek at once: each node opens its copy of the ring again
/// with the sealing key it kept on its RAM disk, so the ring (and every key) survives, the
/// active key stays, and a ticket taken before the restart resumes on another box after it.
/// SIGKILL, not a graceful stop: nothing gets a chance to hand over.
fn every_box_restarted_at_once_keeps_its_keys_and_old_tickets_resume(backend: Backend) {
    for b in ["nginx", "openssl"] {
        require_binary(b);
    }
    let mut c = Cluster::with_backend(BIN, "restart-all", 3, backend);
    let (cert, key, _) = self_signed_cert(c.root.path());
    let mut servers: Vec<Nginx> = (0..3)
        .map(|i| {
            let n = &c.nodes[i];
            Nginx::new(n.dir.join("nginx-server"), &n.keys, &cert, &key, 1)
        })
        .collect();
    for (i, s) in servers.iter().enumerate() {
        c.nodes[i].reload = s.reload_once_running();
    }
    let mut history = c.start_checked();
    wait_until(Duration::from_secs(30), "key files on every box", || {
        c.nodes.iter().all(|n| n.keys.join("0.key").exists())
    });
    for s in &mut servers {
        s.start();
    }
    c.rotate_and_check(0, &mut history);
    let before = c.rotate_and_check(1, &mut history);

    info!("--- tickets from box 1, before the restart");
    let dir = c.root.subdir("tickets");
    let tickets: Vec<_> = [Tls::V12, Tls::V13]
        .into_iter()
        .map(|tls| {
            // The ticket of box 1's nginx once it serves the ring just applied.
            take_ticket_under(
                servers[0].port,
                tls,
                &dir.join(format!("{tls:?}.pem")),
                c.nodes[0].key_names()[0],
                Duration::from_secs(10),
            )
        })
        .collect();
    for t in &tickets {
        assert_eq!(
            resume(servers[1].port, t),
            Handshake::Reused,
            "box 2 resumes box 1's {:?} ticket before the restart",
            t.tls
        );
    }

    info!("--- every stek process SIGKILLed at once, then started again");
    for i in 0..3 {
        c.kill(i);
    }
    c.start_all();
    let after = c.wait_converged(Duration::from_secs(60));
    check_invariants(&c, &after, &mut history);
    assert_eq!(
        fingerprints(&after),
        fingerprints(&before),
        "the same keys after the restart: before {before}\nafter {after}"
    );
    assert_eq!(active_fingerprint(&after), active_fingerprint(&before));
    assert!(
        after["generation"].as_u64() >= before["generation"].as_u64(),
        "no rollback"
    );
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("kept from an earlier run"),
            "{} reused its sealing key: {log}",
            n.id
        );
    }
    for (b, s) in servers.iter().enumerate().skip(1) {
        for t in &tickets {
            assert_eq!(
                resume(s.port, t),
                Handshake::Reused,
                "box {} resumes box 1's {:?} ticket after every stek restarted",
                b + 1,
                t.tls
            );
        }
    }
    // The restarted cluster still rotates.
    c.rotate_and_check(2, &mut history);
    assert_history(&c);

    if backend == Backend::Raft {
        info!("--- the Raft data directories hold no key bytes, in any encoding");
        let windows = c.key_windows(&history);
        assert!(windows.keys() >= 4, "keys to look for");
        let mut searched = 0;
        for n in &c.nodes {
            let files = files_under(&n.raft_data_dir());
            assert!(!files.is_empty(), "{} keeps its Raft state on disk", n.id);
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                searched += bytes.len();
                assert_eq!(
                    windows.find(&bytes),
                    None,
                    "{} holds key bytes",
                    f.display()
                );
            }
        }
        info!(searched, "bytes of Raft state searched: no key bytes");
    }
}

/// A power loss: every box stops at once and comes back with an empty RAM disk (no key files,
/// no sealing key) while the Raft state on disk survives. Nobody can open the sealed ring, so
/// the leader makes new keys, numbered after the old ones (never from 1 again); and a ring
/// that nobody can open is not a reason to lose the group: the same group elects again.
#[test]
fn raft_power_loss_keeps_the_group_and_continues_the_numbering() {
    let mut c = Cluster::with_backend(BIN, "power-loss", 3, Backend::Raft);
    let mut history = c.start_checked();
    c.rotate_and_check(0, &mut history);
    let before = c.rotate_and_check(0, &mut history);
    let last_epoch = before["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].as_u64().unwrap())
        .max()
        .unwrap();
    for i in 0..3 {
        c.kill(i);
    }
    for n in &c.nodes {
        n.wipe_ram_disk();
    }
    c.start_all();
    // The old processes' records acknowledge the old ring until the new ones register (a
    // new sealing key waits out the old lease): wait for the new keys.
    let old_generation = before["generation"].as_u64().unwrap();
    let after = c.wait_converged_above(old_generation, Duration::from_secs(60));
    let mut fresh = History::default();
    check_invariants(&c, &after, &mut fresh);
    let old = fingerprints(&before);
    assert!(
        fingerprints(&after).iter().all(|f| !old.contains(f)),
        "the old keys are gone with the RAM disks: {after}"
    );
    assert!(
        after["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["epoch"].as_u64().unwrap() > last_epoch),
        "new epochs continue after {last_epoch}: {after}"
    );
    assert!(
        after["generation"].as_u64().unwrap() > before["generation"].as_u64().unwrap(),
        "the generation continues: before {before}\nafter {after}"
    );
    for n in &c.nodes {
        assert!(
            n.log_text().contains("raft state loaded from disk"),
            "{} rejoined its group from disk",
            n.id
        );
    }
    assert_history(&c);
}

/// `stek peers list` through node `i`, as printed.
fn peers_listing(c: &Cluster, i: usize, operator: &[&str]) -> String {
    let mut args = vec!["peers", "list"];
    args.extend_from_slice(operator);
    let out = c.cli_sub(i, &args);
    assert!(
        out.status.success(),
        "peers list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `stek peers list` through node `i`, as (kind, name) pairs.
fn peers(c: &Cluster, i: usize, operator: &[&str]) -> Vec<(String, String)> {
    peers_listing(c, i, operator)
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_owned(), w.next().unwrap().to_owned())
        })
        .collect()
}

/// Boxes join and leave a running embedded group without restarting it: a fourth box whose
/// config lists itself waits for an operator's `stek peers add` (a member certificate may not
/// add a box, and an address that answers with another peer's certificate is refused), then
/// is a voter; an operator removes a retired box with `stek peers remove`, which a member
/// certificate may not do for another box; a box whose
/// Raft data directory was wiped refuses to take part (its empty log would look like a log
/// going backwards) until it is removed, then joins afresh. Removing it would leave two voters,
/// below the voter floor of three: the leader refuses (an operator's plain `stek peers remove`,
/// and a member certificate removing its own box, with the flag or without) until an operator
/// passes `--below-voter-floor`. Rotation goes on under the invariant checker throughout.
#[test]
fn raft_boxes_join_and_leave_a_running_group() {
    let mut c = Cluster::with_backend(BIN, "membership", 3, Backend::Raft);
    let mut history = c.start_checked();
    let ops = c.root.subdir("operator");
    c.ca.as_ref().unwrap().issue(
        &stek_trust::identity::Role::Operator("ops".into()),
        &[],
        &ops,
    );
    let (cert, key) = (ops.join("ops.pem"), ops.join("ops.key"));
    let operator = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let voters = |c: &Cluster, i: usize| -> Vec<String> {
        let mut v: Vec<String> = peers(c, i, &operator)
            .into_iter()
            .filter(|(k, _)| k == "voter")
            .map(|(_, n)| n)
            .collect();
        v.sort();
        v
    };
    assert_eq!(voters(&c, 0), ["n1", "n2", "n3"]);

    info!("--- n4 starts with itself in its peers table: it waits to be added");
    let n4 = c.add_node(None);
    c.start(n4);
    wait_until(
        Duration::from_secs(30),
        "n4 to wait for an operator",
        || c.nodes[n4].log_text().contains("stek peers add n4"),
    );
    let n4_addr = c.nodes[n4].raft_addr.clone();
    info!("--- a member certificate may not add a box, nor remove another");
    let out = c.cli_sub(n4, &["peers", "add", "n4", &n4_addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("adding a peer takes an operator certificate"),
        "{err}"
    );
    let out = c.cli_sub(1, &["peers", "remove", "n1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not remove peer n1"), "{err}");
    assert_eq!(voters(&c, 0).len(), 3, "nothing changed");

    info!("--- an operator adds n4 at another peer's address: refused, the address is n1's");
    let mut args = vec!["peers", "add", "n4", c.nodes[0].raft_addr.as_str()];
    args.extend_from_slice(&operator);
    let out = c.cli_sub(1, &args);
    assert!(!out.status.success(), "n1's address cannot stand for n4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("answered with the certificate of member n1"),
        "{err}"
    );
    assert_eq!(peers(&c, 0, &operator).len(), 3, "nothing added");

    info!("--- an operator adds n4 at its own address: a learner, caught up, then a voter");
    let mut args = vec!["peers", "add", "n4", n4_addr.as_str()];
    args.extend_from_slice(&operator);
    let out = c.cli_sub(1, &args);
    assert!(
        out.status.success(),
        "add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(voters(&c, n4), ["n1", "n2", "n3", "n4"]);
    c.wait_converged(Duration::from_secs(30));
    c.rotate_and_check(n4, &mut history);

    info!("--- n1 retires: stopped, then removed by an operator");
    c.stop(0);
    let mut args = vec!["peers", "remove", "n1"];
    args.extend_from_slice(&operator);
    let out = c.cli_sub(1, &args);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(20), "n1 gone from the group", || {
        voters(&c, 1) == ["n2", "n3", "n4"]
    });
    c.rotate_and_check(1, &mut history);

    // A voter that is not the Raft leader (the leader then has replicated to it, and stays).
    let listing = peers_listing(&c, 2, &operator);
    let v = [1usize, 2, 3]
        .into_iter()
        .find(|i| {
            let id = &c.nodes[*i].id;
            listing
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(id) && !l.contains("(leader)"))
        })
        .unwrap();
    let via = [1usize, 2, 3].into_iter().find(|i| *i != v).unwrap();
    let vid = c.nodes[v].id.clone();
    info!("--- {vid}'s Raft data directory is wiped: it refuses to take part until removed");
    c.kill(v);
    std::fs::remove_dir_all(c.nodes[v].raft_data_dir()).unwrap();
    c.start_no_wait(v);
    wait_until(Duration::from_secs(30), "the wiped peer to exit", || {
        c.nodes[v].exit_status().is_some()
    });
    let status = c.nodes[v].exit_status().unwrap();
    assert!(status.contains("exit status: 1"), "{vid} exits 1: {status}");
    let log = c.nodes[v].log_text();
    assert!(
        log.contains("its data directory was lost")
            && log.contains(&format!("stek peers remove {vid}")),
        "{vid} says what happened and what to do: {log}"
    );
    c.stop(v);
    // The group was never disturbed: the other two rotate on (the wiped box's lease ends).
    c.rotate_and_check(via, &mut history);

    info!("--- removing {vid} would leave two voters: the leader refuses, naming the floor");
    let three = voters(&c, via);
    assert_eq!(three.len(), 3, "{three:?}");
    let mut args = vec!["peers", "remove", vid.as_str()];
    args.extend_from_slice(&operator);
    let out = c.cli_sub(via, &args);
    assert!(!out.status.success(), "below the floor without the flag");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "removing voter {vid} would leave 2 voter(s), below the group's floor of 3"
        )) && err.contains("--below-voter-floor"),
        "{err}"
    );
    assert_eq!(voters(&c, via), three, "nothing changed");

    info!("--- nor may a member certificate take its own box below the floor, flag or not");
    let me = c.nodes[via].id.clone();
    let out = c.cli_sub(via, &["peers", "remove", me.as_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("below the group's floor of 3"), "{err}");
    let out = c.cli_sub(
        via,
        &["peers", "remove", me.as_str(), "--below-voter-floor"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may not remove a voter below the voter floor"),
        "{err}"
    );
    assert_eq!(voters(&c, via), three, "nothing changed");

    info!("--- with --below-voter-floor an operator removes {vid}");
    args.push("--below-voter-floor");
    let out = c.cli_sub(via, &args);
    assert!(
        out.status.success(),
        "remove {vid} below the floor: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let two: Vec<String> = three.iter().filter(|n| **n != vid).cloned().collect();
    wait_until(Duration::from_secs(20), "the wiped peer gone", || {
        voters(&c, via) == two
    });
    c.start(v);
    let addr = c.nodes[v].raft_addr.clone();
    let mut args = vec!["peers", "add", vid.as_str(), addr.as_str()];
    args.extend_from_slice(&operator);
    let out = c.cli_sub(via, &args);
    assert!(
        out.status.success(),
        "add {vid} again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(voters(&c, via), ["n2", "n3", "n4"]);
    c.wait_converged(Duration::from_secs(30));
    c.rotate_and_check(v, &mut history);
    assert_history(&c);
}

/// 25 boxes on the embedded coordinator: five run the Raft group's voters, twenty reach it as
/// clients (`[raft] client = true`) and run their node loop like any other. Rotations under
/// the invariant checker; then a voter box is SIGKILLed and the fleet rotates on.
#[test]
fn raft_25_boxes_five_voters_and_twenty_clients_rotate_under_the_checker() {
    let mut c = Cluster::with_backend(BIN, "fleet25", 5, Backend::Raft);
    c.log_filter = "warn,stek=info".into();
    for _ in 5..25 {
        let i = c.add_node(None);
        c.nodes[i].raft_client = true;
    }
    let mut history = c.start_checked();
    let status = c.status(0);
    assert_eq!(status["members"].as_array().unwrap().len(), 25);
    for via in [7, 0, 24] {
        c.rotate_and_check(via, &mut history);
    }
    let leader = status["leader"].as_str().unwrap().to_owned();
    let voter = (0..5).find(|i| c.nodes[*i].id != leader).unwrap();
    info!("--- SIGKILL voter box {}", c.nodes[voter].id);
    c.kill(voter);
    c.rotate_and_check(12, &mut history);
    c.start(voter);
    let status = c.wait_converged(Duration::from_secs(60));
    check_invariants(&c, &status, &mut history);
    assert_history(&c);
}

/// A Raft peer whose storage fails (its data directory's disk is full) must not go on serving
/// a frozen state: its Raft core stops, and `stek node` exits 1 with the reason, for the
/// service manager to restart it. The other two rotate on; once the disk has room again, the
/// box restarts and rejoins from what it had written.
#[test]
fn raft_a_storage_failure_stops_the_node_with_exit_1_and_it_rejoins_after() {
    let mut c = Cluster::with_backend(BIN, "storage-failure", 3, Backend::Raft);
    let disk = cluster_tests::SmallDisk::mount(c.nodes[0].raft_data_dir(), 8 << 20);
    let mut history = c.start_checked();
    c.rotate_and_check(1, &mut history);
    info!("--- n1's data disk fills up");
    disk.fill();
    // Writes reach every peer: the next one fails on n1's disk.
    let out = c.rotate_wait(1, "30s");
    assert!(
        out.status.success(),
        "the other two rotate on: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(30), "n1 to exit", || {
        c.nodes[0].exit_status().is_some()
    });
    let status = c.nodes[0].exit_status().unwrap();
    assert!(status.contains("exit status: 1"), "n1 exits 1: {status}");
    let log = c.nodes[0].log_text();
    assert!(
        log.contains("the Raft core stopped"),
        "n1 says why it stopped: {log}"
    );
    c.stop(0);
    info!("--- room again: n1 restarts from its data directory and rejoins");
    disk.empty();
    c.start(0);
    let status = c.wait_converged(Duration::from_secs(60));
    check_invariants(&c, &status, &mut history);
    c.rotate_and_check(0, &mut history);
    assert!(c.nodes[0]
        .log_text()
        .contains("raft state loaded from disk"));
    assert_history(&c);
}
