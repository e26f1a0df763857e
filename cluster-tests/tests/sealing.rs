//! Keys never in the clear outside a node (issue 5), against a real etcd and real `stek node`
//! processes: the keyspace and its whole history hold no key bytes; compaction leaves no
//! readable revision with a dropped key's copy; wrong public keys and moved or replayed copies
//! are rejected with a clear log line while the node keeps serving; trace-level logs hold no
//! key bytes; a full restart (every private key gone) starts new keys.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::time::Duration;

use cluster_tests::cluster::{check_invariants, Backend, Cluster, History};
use cluster_tests::wait_until;
use serde_json::Value;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

fn follower(c: &Cluster, status: &Value) -> usize {
    c.nodes
        .iter()
        .position(|n| status["leader"] != n.id.as_str())
        .unwrap()
}

fn epochs(ring: &Value) -> Vec<u64> {
    ring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].as_u64().unwrap())
        .collect()
}

/// Ten rotations on three nodes logging at trace level; then every key and value under the
/// prefix at every revision etcd still has, and every log line, is searched for every 16-byte
/// window of every key the nodes ever wrote (raw, base64 and hex).
fn no_key_bytes_in_the_store_its_history_or_trace_logs(backend: Backend) {
    let mut c = Cluster::with_backend(BIN, &format!("dump-{backend:?}"), 3, backend);
    c.log_filter = "trace".into();
    // Every revision is searched: keep them all (compaction is covered below).
    c.etcd_extra = "compact_history = false\ncompact_history_off_reason = \"the test searches every revision of the history\"\n".into();
    let mut history = c.start_checked();
    for i in 0..10 {
        c.rotate_and_check(i % 3, &mut history);
    }
    let needles = c.key_windows(&history);
    assert!(needles.keys() >= 12, "{} keys seen", needles.keys());
    if let Some(etcd) = &c.etcd {
        let prefix = format!("/stek/{}/", c.name);
        let newest = etcd.revision();
        let mut readable = 0;
        for rev in 1..=newest {
            let Some(dump) = etcd.dump_at(&prefix, rev) else {
                continue;
            };
            readable += 1;
            if let Some(found) = needles.find(&dump) {
                panic!("revision {rev} of the keyspace holds {found}");
            }
        }
        info!("searched {readable} revisions of the keyspace: no key bytes");
        assert!(
            readable > 30,
            "the history was searched ({readable} revisions)"
        );
    }
    let mut searched = 0;
    for n in &c.nodes {
        let log = n.log_text();
        searched += log.len();
        // The filter took: the most verbose lines each backend emits are there (etcd's client
        // stack logs at TRACE; openraft's most verbose is DEBUG).
        assert!(log.contains(" DEBUG "), "{} logged at trace level", n.id);
        for line in log.lines() {
            if let Some(found) = needles.find(line.as_bytes()) {
                panic!("{}'s trace log holds {found}: {line}", n.id);
            }
        }
    }
    info!("searched {searched} bytes of trace logs: no key bytes");
}

#[test]
fn etcd_no_key_bytes_in_the_store_its_history_or_trace_logs() {
    no_key_bytes_in_the_store_its_history_or_trace_logs(Backend::Etcd);
}

#[test]
fn raft_no_key_bytes_in_trace_logs() {
    no_key_bytes_in_the_store_its_history_or_trace_logs(Backend::Raft);
}

/// With `compact_history = true`, once a key is dropped the leader compacts etcd's history up to
/// that write: no readable revision of the keyspace holds a ring with a dropped key.
#[test]
fn compact_history_leaves_no_readable_revision_with_a_dropped_key() {
    let mut c = Cluster::new(BIN, "compact", 3);
    c.etcd_extra = "compact_history = true\n".into();
    let mut history = c.start_checked();
    let mut dropped = Vec::new();
    let mut before = Vec::new();
    for i in 0..4 {
        let status = c.rotate_and_check(i % 3, &mut history);
        let now = epochs(&status);
        dropped.extend(before.iter().filter(|e| !now.contains(e)).copied());
        before = now;
    }
    assert!(!dropped.is_empty(), "keys were dropped");
    let etcd = c.etcd.as_ref().unwrap();
    let ring_key = format!("/stek/{}/ring", c.name);
    wait_until(
        Duration::from_secs(10),
        "the history to be compacted",
        || {
            c.nodes
                .iter()
                .any(|n| n.log_text().contains("store history compacted"))
        },
    );
    let newest = etcd.revision();
    let (mut compacted, mut readable) = (0, 0);
    for rev in 1..=newest {
        match etcd.dump_at(&ring_key, rev) {
            None => compacted += 1,
            Some(dump) if dump.is_empty() => readable += 1,
            Some(dump) => {
                readable += 1;
                let text = String::from_utf8(dump).unwrap();
                let record: Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
                let held = epochs(&record);
                assert!(
                    held.iter().all(|e| !dropped.contains(e)),
                    "revision {rev} still holds a dropped key's sealed copy: epochs {held:?}, dropped {dropped:?}"
                );
            }
        }
    }
    info!("{compacted} revisions compacted, {readable} readable, none with a dropped key");
    assert!(compacted > 0 && readable > 0);
}

/// Per-node etcd users (docs/security.md) have a role that covers only the cluster's prefix.
/// etcd checks no permission for compaction, so with the default `compact_history` such a user
/// compacts: each node says so at start, the leader compacts after a key drop, nothing warns.
/// (docs/security.md used to say compaction needs the root role.)
#[test]
fn a_prefix_limited_etcd_user_compacts_history_by_default() {
    let mut c = Cluster::secured(BIN, "compact-rbac", 2);
    let prefix = format!("/stek/{}/", c.name);
    c.etcd().use_prefix_user("stek-nodes", &prefix);
    let mut history = c.start_checked();
    for i in 0..3 {
        c.rotate_and_check(i % 2, &mut history);
    }
    wait_until(
        Duration::from_secs(10),
        "the leader to compact etcd's history",
        || {
            c.nodes
                .iter()
                .any(|n| n.log_text().contains("store history compacted"))
        },
    );
    for n in &c.nodes {
        let log = n.log_text();
        assert!(
            log.contains("etcd lets this node's user compact"),
            "{} said at start whether it may compact:\n{log}",
            n.id
        );
        for bad in [
            "could not compact",
            "etcd refuses",
            "compact_history = false",
        ] {
            assert!(!log.contains(bad), "{} logged {bad:?}:\n{log}", n.id);
        }
    }
    let etcd = c.etcd.as_ref().unwrap();
    assert!(
        etcd.dump_at(&prefix, 2).is_none(),
        "the early revisions are compacted"
    );
}

/// Without `[identity]`: an acknowledgement announcing a malformed public key is rejected
/// (logged by every node); one announcing a valid but wrong key gets the member's copy sealed
/// to that key, while the member keeps serving the ring it holds (it needs no copy of a ring it
/// holds); it announces its own key again, and the next ring is sealed to that.
#[test]
fn wrong_public_keys_are_rejected_and_the_member_recovers() {
    let mut c = Cluster::new(BIN, "seal-wrongkey", 3);
    // The sealing layer on its own: with [identity] the forged key is refused before any copy
    // is sealed (tests/identity.rs).
    c.insecure();
    c.lease_ttl = Duration::from_secs(10);
    let mut history = c.start_checked();
    let status = c.rotate_and_check(0, &mut history);
    let b = follower(&c, &status);
    let b_id = c.nodes[b].id.clone();
    let etcd = c.etcd.as_ref().unwrap();
    // The announced key travels with the acknowledgement (it ratchets at every ring).
    let ack_key = format!("/stek/{}/acks/{b_id}", c.name);
    let announced = || -> String {
        let ack: Value = serde_json::from_slice(&etcd.get(&ack_key)).unwrap();
        ack["public_key"].as_str().unwrap_or_default().to_owned()
    };
    let own = announced();
    stek_store::seal::MemberKey::from_base64(&own).expect("b announces a key");

    info!("--- {b_id}'s acknowledgement announces a public key that is not 32 bytes");
    let mut ack: Value = serde_json::from_slice(&etcd.get(&ack_key)).unwrap();
    ack["public_key"] = "AAAA".into();
    etcd.put(&ack_key, &serde_json::to_vec(&ack).unwrap());
    wait_until(Duration::from_secs(10), "the record to be rejected", || {
        c.nodes.iter().any(|n| {
            n.log_text()
                .contains("public_key is not a 32-byte X25519 public key")
        })
    });
    let status = c.wait_converged(Duration::from_secs(15));
    check_invariants(&c, &status, &mut history);

    info!("--- {b_id} frozen; its acknowledgement names another node's valid public key");
    let before = c.nodes[b].files();
    let foreign = "jJV1+Qkx8BXIJNqljjS8CnDkmK4pbCGKJ0hfQEoDrC0=";
    c.pause(b, true);
    let own = announced();
    let mut ack: Value = serde_json::from_slice(&etcd.get(&ack_key)).unwrap();
    ack["public_key"] = foreign.into();
    // A forged acknowledgement of nothing, with no floor: b no longer counts as holding the
    // ring, so the leader seals it a copy, to the key the record names. (With its floor, the
    // leader would seal none: a member never gets a copy of a ring it accepted.)
    ack["applied_generation"] = 0.into();
    ack["applied_digest"] = Value::Null;
    ack["floor_generation"] = Value::Null;
    etcd.put(&ack_key, &serde_json::to_vec(&ack).unwrap());
    let copy_key = format!("/stek/{}/ring/copies/{b_id}", c.name);
    let foreign_id = stek_store::seal::MemberKey::from_base64(foreign)
        .unwrap()
        .id()
        .to_string();
    wait_until(
        Duration::from_secs(5),
        "the leader to seal for the wrong key",
        || {
            // The record's first copy is the stored ring's (the second, the ring before).
            let record: Value = serde_json::from_slice(&etcd.get(&copy_key)).unwrap();
            record[0]["member"] == b_id.as_str() && record[0]["recipient"] == foreign_id.as_str()
        },
    );
    c.pause(b, false);
    // b holds the ring already: it never needs the wrong copy. It puts its own announcement
    // back, and the next ring's copy is sealed to its own key.
    wait_until(
        Duration::from_secs(10),
        "b to announce its own key again",
        || announced() == own,
    );
    assert_eq!(c.nodes[b].files(), before, "{b_id} kept serving its keys");
    let status = c.wait_converged(Duration::from_secs(15));
    check_invariants(&c, &status, &mut history);
    c.rotate_and_check(b, &mut history);
    let own_id = stek_store::seal::MemberKey::from_base64(&own)
        .unwrap()
        .id()
        .to_string();
    let record: Value = serde_json::from_slice(&etcd.get(&copy_key)).unwrap();
    assert_eq!(record[0]["recipient"], own_id.as_str(), "{record}");
}

/// How a test tampers with a frozen member's copy in a freshly written ring.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// Its own copy from the previous generation.
    Replayed,
    /// Another member's copy of this generation, relabelled (member and key id) as its own.
    Moved,
}

/// Without `[identity]`: a tampered copy in the current ring is rejected by its member, which keeps serving the keys
/// it has, says why in its log, never applies that ring, and gets a fresh copy from the leader.
///
/// The member is killed across the rotation and the forgery, and restarted after: a running
/// member acts on its copy and the ring in the order the store wrote them (its watch carries
/// them), so it would apply the real copy before the forgery replaced it. A member that reads
/// afresh (a restart, or a broken watch) sees what the store holds now.
fn a_tampered_copy_is_rejected_and_the_leader_reseals(tamper: Tamper) {
    let mut c = Cluster::new(BIN, &format!("seal-{tamper:?}"), 3);
    // The sealing layer on its own: with [identity] the edited ring fails its signature at
    // every node first (tests/identity.rs).
    c.insecure();
    c.lease_ttl = Duration::from_secs(10);
    let mut history = c.start_checked();
    let status = c.rotate_and_check(0, &mut history);
    let b = follower(&c, &status);
    let b_id = c.nodes[b].id.clone();
    let a = (0..3).find(|i| *i != b).unwrap();
    c.kill(b);
    let etcd = c.etcd.as_ref().unwrap();
    let ring_key = format!("/stek/{}/ring", c.name);
    let old: Value = serde_json::from_slice(&etcd.get(&ring_key)).unwrap();
    let copy_key = |member: &str| format!("/stek/{}/ring/copies/{member}", c.name);
    // A copy record holds the stored ring's copy first (and the previous ring's second).
    let copy_of = |member: &str| -> Value {
        let record: Value = serde_json::from_slice(&etcd.get(&copy_key(member))).unwrap();
        record[0].clone()
    };
    let old_copy = copy_of(&b_id);

    info!("--- {b_id} killed; a rotation; its copy in the new ring: {tamper:?}");
    let out = c.cli(a, &["rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ring = Value::Null;
    wait_until(Duration::from_secs(5), "the rotation to be written", || {
        ring = serde_json::from_slice(&etcd.get(&ring_key)).unwrap();
        ring["generation"].as_u64() > old["generation"].as_u64()
    });
    // Each forged copy claims the current ring (its `ring` digest), as an attacker who wants
    // the leader to take it for good would write it: only opening it shows what it is.
    let current = copy_of(&b_id);
    let forged = match tamper {
        Tamper::Replayed => {
            let mut old = old_copy;
            old["ring"] = current["ring"].clone();
            old
        }
        Tamper::Moved => {
            let mut other = copy_of(&c.nodes[a].id);
            other["member"] = b_id.as_str().into();
            other["recipient"] = current["recipient"].clone();
            other
        }
    };
    etcd.put(
        &copy_key(&b_id),
        &serde_json::to_vec(&serde_json::json!([forged])).unwrap(),
    );
    // The other two are frozen while b starts and reads the forged copy: a leader that seals
    // b a copy of its own at once would otherwise often replace the forgery before b read it
    // (under load, always), and b would have nothing to reject. Their leases (10 s) run on.
    let others: Vec<usize> = (0..3).filter(|i| *i != b).collect();
    for &i in &others {
        c.pause(i, true);
    }
    c.start(b);
    // The replayed copy is sealed to the key that opened b's floor ring: b opens nothing
    // newer with that key (the ratchet keeps `current` for its floor's ring only), and the
    // leader, which sees the copy is not sealed to the key b announced, seals it one. The
    // moved copy names b's announced key but does not open with it: only b can tell, and the
    // leader writes the ring anew.
    let said = match tamper {
        Tamper::Replayed => "is sealed to public key",
        Tamper::Moved => "does not open with this node's key",
    };
    let rejected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(10), "b to reject the copy", || {
            c.nodes[b].log_text().contains(said)
        })
    }));
    for &i in &others {
        c.pause(i, false);
    }
    if let Err(e) = rejected {
        std::panic::resume_unwind(e);
    }
    info!("--- the leader seals again; {b_id} applies the rotation");
    let status = c.wait_converged(Duration::from_secs(15));
    let tampered = ring["generation"].as_u64().unwrap();
    check_invariants(&c, &status, &mut history);
    match tamper {
        Tamper::Replayed => {
            assert!(status["generation"].as_u64().unwrap() >= tampered);
            assert!(
                !c.nodes[b].log_text().contains("a replayed copy"),
                "{b_id} never tried the replayed copy with its current key"
            );
        }
        Tamper::Moved => {
            assert!(status["generation"].as_u64().unwrap() > tampered);
            let log = c.nodes[b].log_text();
            assert!(
                !log.contains(&format!(
                    "applied ring to every target generation={tampered} "
                )),
                "{b_id} never applied the ring whose copy it rejected"
            );
        }
    }
}

#[test]
fn a_replayed_copy_is_rejected_and_the_leader_reseals() {
    a_tampered_copy_is_rejected_and_the_leader_reseals(Tamper::Replayed);
}

#[test]
fn a_copy_moved_from_another_member_is_rejected_and_the_leader_reseals() {
    a_tampered_copy_is_rejected_and_the_leader_reseals(Tamper::Moved);
}

/// On etcd the ring outlives the nodes, but its copies open only with private keys that live
/// on the boxes' RAM disks: after every box reboots (the RAM disk, sealing key included, is
/// empty), nobody can open it, and the leader starts new keys whose epochs continue the old
/// ones (no epoch reused). A plain restart keeps them: see restarts.rs.
#[test]
fn a_full_reboot_on_etcd_creates_new_keys_that_continue_the_epochs() {
    let mut c = Cluster::new(BIN, "seal-restart", 3);
    let mut history = c.start_checked();
    let status = c.rotate_and_check(0, &mut history);
    let old = epochs(&status);
    for i in 0..3 {
        c.stop(i);
    }
    for n in &c.nodes {
        n.wipe_ram_disk();
    }
    c.start_all();
    let mut status = c.wait_converged(Duration::from_secs(30));
    // The stopped members' records still say "applied": wait for the new keys.
    cluster_tests::wait_until(Duration::from_secs(30), "new keys", || {
        status = c.wait_converged(Duration::from_secs(30));
        epochs(&status)
            .iter()
            .all(|e| e > old.iter().max().unwrap())
    });
    let new = epochs(&status);
    assert!(
        new.iter().all(|e| e > old.iter().max().unwrap()),
        "new keys continue the epochs: {old:?} then {new:?}"
    );
    assert!(c.nodes.iter().any(|n| n
        .log_text()
        .contains("no live member can open the stored ring")));
    let mut fresh = History::default();
    check_invariants(&c, &status, &mut fresh);
    c.rotate_and_check(1, &mut fresh);
}
