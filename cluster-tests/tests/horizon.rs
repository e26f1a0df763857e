//! I12: a box taken later yields only the rings it could still apply; and I10/I11 across
//! restarts: a store restored from a backup, or an old ring replayed, is never applied.
//!
//! `a_box_taken_later_*`: three `stek node`s with `[identity]` and retain 1 rotate 20 times;
//! then everything one box holds (its state directory with its private keys, its Raft data
//! directory or the etcd data directory with its whole WAL and database, plus a store backup
//! taken after the 5th rotation) is searched for every sealed copy, and every private key is
//! tried against every copy. What opens must hold only keys of the ring that box serves
//! (retain + 2 keys at most). A positive control shows the search works: the keys the box
//! held at the 5th rotation open that backup's copies. Checked again after a restart of the
//! box, after a leader change and after a power loss.
//!
//! `restore_and_replay_*`: an old signed ring and its copies put back (with the leader frozen,
//! status says who refuses it; in a loop while a node restarts); then the store restored from
//! a backup older than every key in use and every node restarted. No node ever applies a lower
//! generation or writes a dropped key, a replay costs no new generation, and the cluster
//! rotates on. On the embedded coordinator the replay goes through a member certificate's raw
//! Raft writes, and the restore puts an older copy of every peer's data directory back.
//!
//! Each test prints what it found and writes it to `target/horizon-results-<backend>.txt`.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_tests::cluster::{active_key, check_invariants, Backend, Cluster, History};
use cluster_tests::horizon::{private_keys, Found};
use cluster_tests::wait_until;
use serde_json::Value;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

#[test]
fn a_box_taken_later_yields_only_its_current_ring_on_etcd() {
    a_box_taken_later(Backend::Etcd);
}

#[test]
fn a_box_taken_later_yields_only_its_current_ring_on_raft() {
    a_box_taken_later(Backend::Raft);
}

#[test]
fn restore_and_replay_never_bring_a_key_back_on_etcd() {
    restore_and_replay(Backend::Etcd);
}

#[test]
fn restore_and_replay_never_bring_a_key_back_on_raft() {
    restore_and_replay(Backend::Raft);
}

/// The node whose box is taken.
const B: usize = 1;

/// Every sealed record the store keeps on disk: etcd's whole data directory (WAL, snapshots,
/// database with its freed pages), or every peer's Raft data directory (more than one box
/// holds: a superset, so that the ring the box serves is surely among what is found); plus
/// `backups` (files or directories) and, with `every_revision`, every revision etcd still
/// serves through its API.
fn dump(c: &Cluster, i: usize, backups: &[PathBuf], every_revision: bool) -> Found {
    let mut found = Found::default();
    found.scan_dir(&c.nodes[i].state_dir());
    match &c.etcd {
        Some(etcd) => {
            found.scan_dir(&etcd.data_dir());
            if every_revision {
                let prefix = format!("/stek/{}/", c.name);
                for rev in 1..=etcd.revision() {
                    if let Some(d) = etcd.dump_at(&prefix, rev) {
                        found.scan(&d);
                    }
                }
            }
        }
        None => {
            for n in &c.nodes {
                found.scan_dir(&n.raft_data_dir());
            }
        }
    }
    for b in backups {
        if b.is_dir() {
            found.scan_dir(b);
        } else if let Ok(bytes) = std::fs::read(b) {
            found.scan(&bytes);
        }
    }
    found
}

/// Takes node `i`'s box now: tries every private key in its state directory against every
/// copy in `found`, and checks that what opens holds only keys of the ring it serves (its key
/// files). Returns the report line.
fn take(c: &Cluster, i: usize, found: &Found, when: &str) -> String {
    let id = &c.nodes[i].id;
    let keys = private_keys(&c.nodes[i].state_dir());
    assert!(
        keys.len() <= 2,
        "{when}: {id} holds {} sealing private keys; the ratchet keeps two at most",
        keys.len()
    );
    let serves: BTreeSet<[u8; 16]> = c.nodes[i].key_names().into_iter().collect();
    let opened = found.open_with(&c.name, &keys);
    let mut generations = BTreeSet::new();
    let mut names = BTreeSet::new();
    for o in &opened {
        for n in &o.names {
            assert!(
                serves.contains(n),
                "{when}: {id}'s keys open its copy of generation {}, which holds a key it no longer serves (I12)",
                o.generation
            );
        }
        generations.insert(o.generation);
        names.extend(o.names.iter().copied());
    }
    assert!(
        names.len() <= 3,
        "{when}: {} keys recovered; the live ring holds retain + 2 = 3",
        names.len()
    );
    // The search works: the ring the box serves is found, and its keys open it.
    let serving = c.status(i)["generation"].as_u64().unwrap();
    assert!(
        generations.contains(&serving),
        "{when}: {id}'s keys do not open its copy of generation {serving}, the ring it serves: the search missed it (found {:?})",
        found.ring_generations()
    );
    let store = found.ring_generations();
    let line = format!(
        "{when}: {id} holds {} private key(s); the dump holds {} ring record(s) of {} generation(s) ({}..={}) and {} copies, {} generation(s) of which have their ring; its keys open {} copy(ies) of generation(s) {generations:?}, {} ticket key(s), every one in the ring it serves",
        keys.len(),
        found.rings.len(),
        store.len(),
        store.first().copied().unwrap_or(0),
        store.last().copied().unwrap_or(0),
        found.copies.len(),
        found.openable_generations().len(),
        opened.len(),
        names.len()
    );
    info!("{line}");
    line
}

fn results(backend: Backend, test: &str, lines: &[String]) {
    let name = match backend {
        Backend::Etcd => "etcd",
        Backend::Raft => "raft",
    };
    let path = PathBuf::from(format!(
        "{}/../target/horizon-results-{name}-{test}.txt",
        env!("CARGO_MANIFEST_DIR")
    ));
    let _ = std::fs::write(&path, lines.join("\n") + "\n");
}

/// A backup of the store now: etcd's `snapshot save`, or a copy of node `i`'s Raft data
/// directory.
fn backup(c: &Cluster, i: usize, to: &Path) -> PathBuf {
    match &c.etcd {
        Some(etcd) => {
            let file = to.join("etcd-backup.db");
            etcd.snapshot_save(&file);
            file
        }
        None => {
            let dir = to.join(format!("raft-backup-{}", c.nodes[i].id));
            copy_dir(&c.nodes[i].raft_data_dir(), &dir);
            dir
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn leader_of(c: &Cluster, status: &Value) -> usize {
    c.nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap()
}

fn a_box_taken_later(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("horizon-{backend:?}"), 3, backend);
    let mut history = c.start_checked();
    let mut lines = Vec::new();
    let vault = c.root.subdir("stolen");
    let (mut early_keys, mut early_names, mut early_backup) = (Vec::new(), Vec::new(), None);
    let mut early_gen = 0;
    for i in 0..20 {
        let status = c.rotate_and_check(i % 3, &mut history);
        if i == 4 {
            early_gen = status["generation"].as_u64().unwrap();
            // What a thief who took the box and a backup at the 5th rotation would hold.
            early_keys = private_keys(&c.nodes[B].state_dir());
            early_names = c.nodes[B].key_names();
            early_backup = Some(backup(&c, B, &vault));
        }
    }
    let backups: Vec<PathBuf> = early_backup.into_iter().collect();

    info!("--- everything n2 holds, after 20 rotations (retain 1)");
    let found = dump(&c, B, &backups, true);
    lines.push(take(&c, B, &found, "after 20 rotations"));
    // Positive control: the search finds and opens what existed. The keys n2 held at the
    // 5th rotation open that backup's copies of the ring it served then.
    let early = Found::default();
    let mut early = {
        let mut f = early;
        for b in &backups {
            if b.is_dir() {
                f.scan_dir(b);
            } else {
                f.scan(&std::fs::read(b).unwrap());
            }
        }
        f
    };
    early.rings.extend(found.rings.clone());
    let opened_early = early.open_with(&c.name, &early_keys);
    assert!(
        opened_early
            .iter()
            .any(|o| o.names.iter().all(|n| early_names.contains(n))),
        "the keys held at the 5th rotation open that rotation's copies in the backup: the search works"
    );
    let now: BTreeSet<[u8; 16]> = c.nodes[B].key_names().into_iter().collect();
    let retired_then = early_names.iter().filter(|n| !now.contains(*n)).count();
    lines.push(format!(
        "control: the {} keys n2 held at the 5th rotation open {} copy(ies) in that backup ({} of the keys they yield are retired by now); today's keys open none of them",
        early_keys.len(),
        opened_early.len(),
        retired_then
    ));
    assert!(
        retired_then > 0,
        "the control ring's keys are retired by now"
    );
    // The old keys against today's whole dump as well (a box taken then, the store today):
    // they open the ring it served then and the one next sealed to the key it had announced
    // (a box it could still apply then), never a later one.
    let old_today = found.open_with(&c.name, &early_keys);
    let later: BTreeSet<u64> = old_today.iter().map(|o| o.generation).collect();
    assert!(
        later.iter().all(|g| *g <= early_gen + 1),
        "the keys of the 5th rotation (generation {early_gen}) open generations {later:?}"
    );
    lines.push(format!(
        "control: against today's store, the keys n2 held at generation {early_gen} open generations {later:?} (the ring it served, and the next one, sealed to the key it had announced)"
    ));

    info!("--- n2 restarted (its RAM disk kept)");
    c.stop(B);
    c.start(B);
    let status = c.wait_converged(Duration::from_secs(30));
    check_invariants(&c, &status, &mut history);
    lines.push(take(
        &c,
        B,
        &dump(&c, B, &backups, false),
        "after a restart",
    ));
    c.rotate_and_check(B, &mut history);
    lines.push(take(
        &c,
        B,
        &dump(&c, B, &backups, false),
        "after a restart and a rotation",
    ));

    info!("--- the leader SIGKILLed: a new leader rotates; the old one comes back");
    let status = c.status(0);
    let old = leader_of(&c, &status);
    c.kill(old);
    let via = (0..3).find(|i| *i != old).unwrap();
    wait_until(Duration::from_secs(30), "a new leader", || {
        c.try_status(via)
            .is_some_and(|s| !s["leader"].is_null() && s["leader"] != c.nodes[old].id.as_str())
    });
    c.rotate_ok(via);
    c.start(old);
    let status = c.wait_converged(Duration::from_secs(30));
    check_invariants(&c, &status, &mut History::default());
    for i in [old, B] {
        lines.push(take(
            &c,
            i,
            &dump(&c, i, &backups, false),
            &format!("after a leader change ({} led before)", c.nodes[old].id),
        ));
    }

    info!("--- n2 rebooted alone: its RAM disk wiped");
    let before_reboot = private_keys(&c.nodes[B].state_dir());
    c.stop(B);
    c.nodes[B].wipe_ram_disk();
    c.start(B);
    let status = c.wait_converged(Duration::from_secs(30));
    check_invariants(&c, &status, &mut History::default());
    let after_reboot = dump(&c, B, &backups, false);
    lines.push(take(&c, B, &after_reboot, "after n2 rebooted alone"));
    // The keys it held before the reboot are gone with its RAM disk; what they opened is
    // in the store still, and no key it holds now opens any of it but the ring it serves.
    assert!(private_keys(&c.nodes[B].state_dir())
        .iter()
        .all(|k| before_reboot
            .iter()
            .all(|o| o.public().id() != k.public().id())));
    let status = c.status(0);

    info!("--- a power loss: every RAM disk wiped");
    let before: Vec<u64> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].as_u64().unwrap())
        .collect();
    for i in 0..3 {
        c.stop(i);
    }
    for n in &c.nodes {
        n.wipe_ram_disk();
    }
    c.start_all();
    let top = *before.iter().max().unwrap();
    let mut status = Value::Null;
    wait_until(
        Duration::from_secs(60),
        "new keys after the power loss",
        || {
            status = c.wait_converged(Duration::from_secs(30));
            status["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["epoch"].as_u64() > Some(top))
        },
    );
    check_invariants(&c, &status, &mut History::default());
    lines.push(take(
        &c,
        B,
        &dump(&c, B, &backups, false),
        "after a power loss",
    ));
    for l in &lines {
        println!("{l}");
    }
    results(backend, "box", &lines);
}

/// Every key name that was active once and is not in node `i`'s files now: dropped keys.
fn dropped(c: &Cluster, i: usize, history: &History) -> BTreeSet<[u8; 16]> {
    let now: BTreeSet<[u8; 16]> = c.nodes[i].key_names().into_iter().collect();
    history
        .actives
        .iter()
        .map(|(_, n)| *n)
        .filter(|n| !now.contains(n))
        .collect()
}

/// Fails if a running node's files hold a key of `dropped`.
fn no_dropped_key_on_disk(c: &Cluster, dropped: &BTreeSet<[u8; 16]>, when: &str) {
    for n in c.nodes.iter().filter(|n| n.running()) {
        for name in n.key_names() {
            assert!(
                !dropped.contains(&name),
                "{when}: {} wrote a dropped key back to its files",
                n.id
            );
        }
    }
}

fn restore_and_replay(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("rollback-{backend:?}"), 3, backend);
    c.lease_ttl = Duration::from_secs(6);
    let mut history = c.start_checked();
    let mut lines = Vec::new();
    for i in 0..3 {
        c.rotate_and_check(i % 3, &mut history);
    }
    let vault = c.root.subdir("backups");
    let old_gen = c.status(0)["generation"].as_u64().unwrap();
    info!("--- a backup at generation {old_gen}");
    let (etcd_backup, raft_backups) = match backend {
        Backend::Etcd => (Some(backup(&c, 0, &vault)), Vec::new()),
        Backend::Raft => {
            // Every peer's data directory, copied while the group is down (an upgrade
            // restarts every box at once; a backup is taken then).
            for i in 0..3 {
                c.stop(i);
            }
            let copies = (0..3).map(|i| backup(&c, i, &vault)).collect();
            c.start_all();
            let status = c.wait_converged(Duration::from_secs(30));
            check_invariants(&c, &status, &mut history);
            (None, copies)
        }
    };
    let replay = old_records(&c);
    // A key stays retain + 2 = 3 rotations: after 4, every key of the backup is dropped.
    for i in 0..4 {
        c.rotate_and_check(i % 3, &mut history);
    }
    let status = c.wait_converged(Duration::from_secs(30));
    let now_gen = status["generation"].as_u64().unwrap();
    let active = active_key(&status)["fingerprint"].clone();
    let gone = dropped(&c, 0, &history);
    assert!(
        gone.len() >= 3,
        "{} keys dropped since the backup",
        gone.len()
    );

    match backend {
        Backend::Etcd => {
            info!("--- the leader frozen; generation {old_gen} and its copies put back");
            let leader = leader_of(&c, &status);
            c.pause(leader, true);
            replay.put_back(&c);
            let via = (0..3).find(|i| *i != leader).unwrap();
            let mut said = None;
            wait_until(
                Duration::from_secs(5),
                "status to say who refuses it",
                || {
                    said = c
                        .try_status(via)
                        .and_then(|s| s["refused_ring"].as_str().map(str::to_owned));
                    said.is_some()
                },
            );
            let said = said.unwrap();
            assert!(
                said.contains("refuse") && said.contains(&format!("generation {old_gen}")),
                "{said}"
            );
            lines.push(format!("status while the replayed ring was stored: {said}"));
            no_dropped_key_on_disk(&c, &gone, "the replayed ring stored");
            c.pause(leader, false);
            let status = c.wait_converged(Duration::from_secs(30));
            assert_eq!(
                status["generation"].as_u64(),
                Some(now_gen),
                "put back unchanged: {status}"
            );
            assert_eq!(active_key(&status)["fingerprint"], active);

            info!("--- the old ring replayed in a loop while n2 restarts");
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let looped = {
                let (stop, endpoint, prefix) = (
                    stop.clone(),
                    c.etcd.as_ref().unwrap().endpoint(),
                    format!("/stek/{}/", c.name),
                );
                let records = replay.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    // Bounded: at most 300 replays, or until told to stop.
                    while n < 300 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        records.put_back_at(&endpoint, &prefix);
                        n += 1;
                    }
                    n
                })
            };
            let watch = |c: &Cluster, until: Duration, started: Instant| {
                while started.elapsed() < until {
                    no_dropped_key_on_disk(c, &gone, "during the replays");
                    std::thread::sleep(Duration::from_millis(100));
                }
            };
            let started = Instant::now();
            watch(&c, Duration::from_secs(1), started);
            c.stop(B);
            watch(&c, Duration::from_secs(2), started);
            c.start(B);
            watch(&c, Duration::from_secs(6), started);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let replays = looped.join().unwrap();
            let status = c.wait_converged(Duration::from_secs(30));
            check_invariants(&c, &status, &mut history);
            let g = status["generation"].as_u64().unwrap();
            lines.push(format!(
                "{replays} replays of generation {old_gen} over generation {now_gen} while n2 restarted: generation {g} after, the same active key"
            ));
            assert!(
                g <= now_gen + 3,
                "a new generation per replay: {now_gen} -> {g} for {replays} replays"
            );
            assert_eq!(active_key(&status)["fingerprint"], active);
        }
        Backend::Raft => {
            info!("--- a member certificate writes generation {old_gen} and its copies back, while n2 restarts");
            c.stop(B);
            let refused = replay.raft_writes(&c, 20);
            c.start(B);
            let status = c.wait_converged(Duration::from_secs(30));
            check_invariants(&c, &status, &mut history);
            assert_eq!(status["generation"].as_u64(), Some(now_gen), "{status}");
            lines.push(format!(
                "{refused} raw Raft writes of generation {old_gen} by a member certificate while n2 restarted: every one refused, generation {now_gen} unchanged"
            ));
        }
    }
    no_dropped_key_on_disk(&c, &gone, "after the replays");
    let (violations, applies) = c.applied_history_violations();
    assert!(violations.is_empty(), "{violations:?}");

    info!("--- the store restored from the backup at generation {old_gen}; every node restarted");
    let top = active_key(&c.status(0))["epoch"].as_u64().unwrap();
    for i in 0..3 {
        c.stop(i);
    }
    match (&etcd_backup, backend) {
        (Some(file), Backend::Etcd) => c.etcd().restore(file),
        _ => {
            for (i, b) in raft_backups.iter().enumerate() {
                copy_dir(b, &c.nodes[i].raft_data_dir());
            }
        }
    }
    c.start_all();
    // Every node refuses the restored ring (below its floor); nobody holds keys any more
    // (every process restarted): the leader makes new keys above every floor. Meanwhile no
    // node's files may hold a dropped key.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        no_dropped_key_on_disk(&c, &gone, "after the restore");
        if let Some(s) = c.try_status(0) {
            let g = s["generation"].as_u64().unwrap_or(0);
            let all = c.nodes.iter().all(|n| {
                s["members"].as_array().unwrap().iter().any(|m| {
                    m["node_id"] == n.id.as_str()
                        && m["live"] == true
                        && m["applied_generation"].as_u64() == Some(g)
                })
            });
            if g > now_gen && all && !s["leader"].is_null() {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not rotate on after the restore"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let epochs: Vec<u64> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].as_u64().unwrap())
        .collect();
    assert!(
        epochs.iter().all(|e| *e > top),
        "new keys, epochs go on: {epochs:?} after {top}"
    );
    let refusals = c
        .nodes
        .iter()
        .filter(|n| {
            n.log_text().contains(&format!(
                "ring generation {old_gen} is older than generation"
            ))
        })
        .count();
    assert!(refusals >= 1, "a node says it refused the restored ring");
    let mut fresh = History::default();
    check_invariants(&c, &status, &mut fresh);
    c.rotate_and_check(0, &mut fresh);
    let (violations, applies_after) = c.applied_history_violations();
    assert!(violations.is_empty(), "I11: {violations:?}");
    lines.push(format!(
        "store restored to generation {old_gen} (below every floor, {now_gen}) and every node restarted: {refusals} node(s) logged the refusal, new keys at generation {} (epochs {epochs:?}), no dropped key on any disk, no generation applied twice or going down ({applies}..{applies_after} applies checked)",
        status["generation"]
    ));
    for l in &lines {
        println!("{l}");
    }
    results(backend, "rollback", &lines);
}

/// The ring record and copy records of a moment, to put back later.
#[derive(Clone)]
struct OldRecords {
    ring: Vec<u8>,
    copies: Vec<(String, Vec<u8>)>,
}

fn old_records(c: &Cluster) -> OldRecords {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snap = rt.block_on(async {
        use stek_store::Coordinator;
        match &c.etcd {
            Some(e) => stek_etcd::Etcd::connect(&[e.endpoint()], &c.name)
                .await
                .unwrap()
                .snapshot()
                .await
                .unwrap(),
            None => raft_client(c, "zz-replayer").snapshot().await.unwrap(),
        }
    });
    let stored = snap.valid_ring().expect("a valid ring").clone();
    OldRecords {
        ring: stek_store::records::encode_ring(&stored),
        copies: stored.copy_records(),
    }
}

/// The mutual TLS of member `id`: a member certificate of the cluster's CA for a box that is
/// no Raft peer (a compromised member's, as far as the Raft peers can tell).
fn member_tls(c: &Cluster, id: &str) -> stek_raft::tls::PeerTls {
    let ca = c.ca.as_ref().unwrap();
    let dir = c.root.subdir(id);
    if !dir.join(format!("{id}.pem")).exists() {
        ca.issue_member(id, "127.0.0.1", &dir);
    }
    let pem = |n: &str| std::fs::read(dir.join(n)).unwrap();
    stek_raft::tls::PeerTls::from_pem(
        &std::fs::read(ca.cert()).unwrap(),
        &pem(&format!("{id}.pem")),
        &pem(&format!("{id}.key")),
    )
    .unwrap()
}

/// A Raft client as member `id`.
fn raft_client(c: &Cluster, id: &str) -> stek_raft::client::RaftClient {
    let peers = c.nodes.iter().map(|n| n.raft_addr.clone()).collect();
    stek_raft::client::RaftClient::new(&c.name, peers, None).with_tls(Some(member_tls(c, id)))
}

/// A raw write to the Raft group (following the leader's redirect), as a member certificate
/// can send one: what the group answered, or `None` if no peer took it.
async fn raw_write(
    peers: &[String],
    cmd: &stek_store::keyspace::Command,
    tls: &stek_raft::tls::PeerTls,
) -> Option<stek_store::keyspace::Applied> {
    use stek_raft::wire::{call, Reply, Request};
    for p in peers {
        let mut target = p.clone();
        for _ in 0..3 {
            match call(
                &target,
                &Request::Write(cmd.clone()),
                Duration::from_secs(3),
                Some(tls),
            )
            .await
            {
                Ok(Reply::NotLeader(Some(l))) => target = l,
                Ok(Reply::Applied(a)) => return Some(a),
                Ok(Reply::Written(o)) => return Some(o.applied),
                _ => break,
            }
        }
    }
    None
}

impl OldRecords {
    /// etcd: what a store writer puts back (the copies first, as the leader writes them).
    fn put_back(&self, c: &Cluster) {
        self.put_back_at(
            &c.etcd.as_ref().unwrap().endpoint(),
            &format!("/stek/{}/", c.name),
        );
    }

    /// [`OldRecords::put_back`] through etcdctl at `endpoint`, under `prefix`.
    fn put_back_at(&self, endpoint: &str, prefix: &str) {
        let put = |key: String, value: &[u8]| {
            let out = cluster_tests::cluster::etcdctl(
                endpoint,
                &["put", &key, &String::from_utf8_lossy(value)],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for (member, copy) in &self.copies {
            put(format!("{prefix}ring/copies/{member}"), copy);
        }
        put(format!("{prefix}ring"), &self.ring);
    }

    /// Raft: a member certificate's raw writes of the old ring (under the current leader's
    /// term) and of its copies, `times` each; returns how many were refused (all must be).
    fn raft_writes(&self, c: &Cluster, times: usize) -> usize {
        use stek_store::keyspace::{Applied, Command};
        use stek_store::Coordinator;
        let client = raft_client(c, "zz-replayer");
        let tls = member_tls(c, "zz-replayer");
        let peers: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.raft_addr.clone())
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // n2 was just stopped: if it led, it resigned, and the next leader may not be
            // elected yet. The replay is made under whoever leads once someone does.
            let mut snap = client.snapshot().await.unwrap();
            for _ in 0..60 {
                if snap.leader.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                snap = client.snapshot().await.unwrap();
            }
            let leader = snap
                .leader
                .as_ref()
                .expect("a leader within 15 s of n2 stopping");
            let term = u64::try_from(leader.term.0).unwrap();
            let copies: std::collections::BTreeMap<String, Vec<u8>> =
                self.copies.iter().cloned().collect();
            let mut refused = 0;
            for _ in 0..times {
                for cmd in [
                    Command::WriteRing {
                        term,
                        value: self.ring.clone(),
                        served: vec![],
                        expected: None,
                        copies: copies.clone(),
                    },
                    Command::WriteCopies {
                        term,
                        expected: u64::try_from(snap.ring_revision).unwrap(),
                        copies: copies.clone(),
                    },
                ] {
                    match raw_write(&peers, &cmd, &tls).await {
                        Some(Applied::Fenced | Applied::Stale) => refused += 1,
                        Some(other) => {
                            panic!("a member certificate's replay was applied: {other:?}")
                        }
                        None => panic!("no Raft peer answered the replay"),
                    }
                }
            }
            refused
        })
    }
}
