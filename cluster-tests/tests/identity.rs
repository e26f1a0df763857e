//! Only enrolled members receive keys, and nodes apply only rings their leader signed (issue
//! 13). Each test is one attack by whoever can write the coordination store (etcd, here with
//! etcdctl) against three real `stek node` processes running with `[identity]`, and asserts
//! what the nodes' files, the store and `stek status` show. (The Raft listener's attackers are
//! in tests/cluster.rs, `raft_peers_over_mutual_tls`; the local user against the single-box
//! default in crates/stek/tests/cli.rs.)

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use cluster_tests::cluster::{active_key, check_invariants, Cluster, History};
use cluster_tests::wait_until;
use serde_json::Value;
use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
use stek_store::records::{encode_ring, MemberRecord};
use stek_store::seal::{Identity, MemberKey};
use stek_store::StoredRing;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

/// Three nodes with `[identity]` on etcd, started, one rotation done.
fn cluster(tag: &str) -> (Cluster, History, Value) {
    cluster_with(tag, "")
}

/// Lines for `[etcd]` that keep etcd's history, for a test that searches every revision of
/// it: with compaction (the default) a revision that held what it looks for would be gone.
const KEEP_HISTORY: &str = "compact_history = false\ncompact_history_off_reason = \"the test searches every revision since the attack\"\n";

/// [`cluster`], with `etcd_extra` in every node's `[etcd]` section.
fn cluster_with(tag: &str, etcd_extra: &str) -> (Cluster, History, Value) {
    let mut c = Cluster::new(BIN, tag, 3);
    c.etcd_extra = etcd_extra.into();
    c.lease_ttl = Duration::from_secs(10);
    let mut history = c.start_checked();
    let status = c.rotate_and_check(0, &mut history);
    (c, history, status)
}

fn key(c: &Cluster, rest: &str) -> String {
    format!("/stek/{}/{rest}", c.name)
}

fn ring_now(c: &Cluster) -> Value {
    serde_json::from_slice(&c.etcd.as_ref().unwrap().get(&key(c, "ring"))).unwrap()
}

/// Every node's files, by node.
fn all_files(c: &Cluster) -> Vec<BTreeMap<String, Vec<u8>>> {
    c.nodes.iter().map(|n| n.files()).collect()
}

/// The ring record as of every etcd revision from `from` to now (compacted ones skipped).
fn rings_since(c: &Cluster, from: i64) -> Vec<Value> {
    let etcd = c.etcd.as_ref().unwrap();
    (from..=etcd.revision())
        .filter_map(|rev| {
            let out = etcd.ctl(&[
                "get",
                &key(c, "ring"),
                "--print-value-only",
                &format!("--rev={rev}"),
            ]);
            let text = String::from_utf8(out.stdout).ok()?;
            serde_json::from_str(text.trim()).ok()
        })
        .collect()
}

/// Every sealed copy record (`ring/copies/<node>`) as of every etcd revision from `from` to
/// now (compacted ones skipped).
fn copies_since(c: &Cluster, from: i64) -> Vec<Value> {
    let etcd = c.etcd.as_ref().unwrap();
    (from..=etcd.revision())
        .flat_map(|rev| {
            let out = etcd.ctl(&[
                "get",
                "--prefix",
                &key(c, "ring/copies/"),
                "--print-value-only",
                &format!("--rev={rev}"),
            ]);
            String::from_utf8(out.stdout)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Vec<Value>>(l.trim()).ok())
                .flatten()
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Waits until the current leader logged `words`.
fn leader_log(c: &Cluster, words: &str) {
    wait_until(
        Duration::from_secs(15),
        &format!("the leader to log \"{words}\""),
        || {
            c.try_status(0).is_some_and(|s| {
                c.nodes
                    .iter()
                    .any(|n| s["leader"] == n.id.as_str() && n.log_text().contains(words))
            })
        },
    );
}

/// Waits for the leader to have put a valid ring back over the attack (generation `at` or
/// above, signed: the ring it accepted, unchanged, or its keys written anew) and the cluster
/// to converge on it; returns the status.
fn repaired(c: &Cluster, at: u64, history: &mut History) -> Value {
    let mut status = Value::Null;
    wait_until(
        Duration::from_secs(30),
        "a signed ring put back over the attack",
        || {
            status = c.wait_converged(Duration::from_secs(30));
            status["generation"].as_u64() >= Some(at) && status["ring_signed_by"].is_string()
        },
    );
    check_invariants(c, &status, history);
    status
}

/// A store writer makes a live member of its own: a liveness key without a lease and a member
/// record holding its X25519 key, with a real member's certificate and key signature copied
/// from the store. It is refused (status lists it with the reason, the leader logs it), no
/// ring at any revision holds a copy sealed to its key, and it does not hold up rotations.
#[test]
fn a_store_writer_enrolling_a_fake_member_gets_no_copy() {
    let (c, mut history, _) = cluster_with("id-fake-member", KEEP_HISTORY);
    let etcd = c.etcd.as_ref().unwrap();
    let from = etcd.revision();
    // A member's record with its acknowledgement, which announces its key and signature.
    let whole = |id: &str| {
        MemberRecord::decode(&etcd.get(&key(&c, &format!("members/{id}"))))
            .unwrap()
            .with_ack(&etcd.get(&key(&c, &format!("acks/{id}"))))
            .unwrap()
    };
    let real = whole("n1");
    assert!(real.key_signature.is_some());
    let attacker = Identity::generate();
    let fake = MemberRecord {
        node_id: "mallory".into(),
        public_key: Some(attacker.public().to_base64()),
        applied_generation: 0,
        ..real.clone()
    };
    info!("--- mallory enrolls with n1's certificate and signature");
    etcd.put(&key(&c, "alive/mallory"), b"");
    etcd.put(&key(&c, "members/mallory"), &fake.encode());
    info!("--- and n3's acknowledgement announces the attacker's key (n3's signature kept)");
    let hijacked = MemberRecord {
        public_key: Some(attacker.public().to_base64()),
        ..whole("n3")
    };
    etcd.put(&key(&c, "acks/n3"), &hijacked.encode_ack());
    // The leader reads every member; followers read only their own records between full reads.
    let status = c.status(0);
    let leader = c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the leader to refuse mallory",
        || c.nodes[leader].log_text().contains("member refused"),
    );
    let status = c.status(0);
    let refused = status["refused_members"].as_array().unwrap();
    let mallory = refused.iter().find(|r| r["node_id"] == "mallory").unwrap();
    assert_eq!(mallory["live"], true, "{status}");
    assert!(
        mallory["reason"]
            .as_str()
            .unwrap()
            .contains("names member n1, not member mallory"),
        "{status}"
    );
    assert!(
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["node_id"] != "mallory"),
        "a refused member is not a member: {status}"
    );

    info!("--- rotations go on without waiting for mallory");
    let status = c.rotate_and_check(1, &mut history);
    c.rotate_and_check(2, &mut history);
    assert!(status["rotation"]["blocked_by"]
        .as_array()
        .unwrap()
        .is_empty());
    let attacker_id = attacker.public().id().to_string();
    let rings = rings_since(&c, from);
    assert!(rings.len() >= 2, "the ring was rewritten since the attack");
    let copies = copies_since(&c, from);
    assert!(!copies.is_empty(), "the copies were read");
    for copy in &copies {
        assert_ne!(copy["member"], "mallory", "a copy for mallory: {copy}");
        assert_ne!(
            copy["recipient"].as_str(),
            Some(attacker_id.as_str()),
            "a copy sealed to the attacker's key at generation {}",
            copy["generation"]
        );
    }
    let text = String::from_utf8_lossy(&c.cli(0, &["status"]).stdout).into_owned();
    assert!(
        text.contains("refused members") && text.contains("mallory"),
        "{text}"
    );
}

/// A ring of keys the writer chose, sealed to every member's published key, unsigned or signed
/// with a certificate of another CA naming the leader: no node applies it (their files stay
/// byte for byte), none of its keys reaches a disk, and the leader writes its own ring back.
#[test]
fn a_ring_of_the_writers_own_keys_is_never_applied() {
    let (c, mut history, status) = cluster("id-forged-ring");
    let etcd = c.etcd.as_ref().unwrap();
    let leader = status["leader"].as_str().unwrap().to_owned();
    let active = active_key(&status)["fingerprint"].clone();
    let recipients: Vec<(String, MemberKey)> = c
        .nodes
        .iter()
        .map(|n| {
            let r = MemberRecord::decode(&etcd.get(&key(&c, &format!("members/{}", n.id))))
                .unwrap()
                .with_ack(&etcd.get(&key(&c, &format!("acks/{}", n.id))))
                .unwrap();
            (n.id.clone(), r.sealing_key().unwrap())
        })
        .collect();
    let policy = Policy {
        interval: Duration::from_secs(3600),
        retain: 1,
    };
    let other_ca = cluster_tests::cluster::ClusterCa::new(&c.root.subdir("other-ca"), &c.name);
    let other_dir = c.root.subdir("other-leader");
    other_ca.issue_member(&leader, "127.0.0.1", &other_dir);
    let other_trust =
        stek_trust::identity::Trust::new(&std::fs::read(other_ca.cert()).unwrap(), &c.name, &[])
            .unwrap();
    let impostor = stek_trust::identity::Credentials::new(
        &other_trust,
        &std::fs::read(other_dir.join(format!("{leader}.pem"))).unwrap(),
        &std::fs::read(other_dir.join(format!("{leader}.key"))).unwrap(),
    )
    .unwrap();
    for signed in [false, true] {
        let before = all_files(&c);
        let now_gen = ring_now(&c)["generation"].as_u64().unwrap();
        let mut forged = KeyRing::bootstrap(
            SystemTime::now(),
            &policy,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
        while forged.generation() <= now_gen + 5 {
            forged = forged.with_next_rotation_at(forged.next_rotation_at());
        }
        let (mut stored, failed) =
            StoredRing::seal(&c.name, &forged, &policy, &leader, &recipients);
        assert!(failed.is_empty());
        if signed {
            stored.sign(&c.name, &impostor);
        }
        info!(
            "--- a forged ring, generation {}, signed by another CA: {signed}",
            forged.generation()
        );
        etcd.put(&key(&c, "ring"), &encode_ring(&stored));
        let words = if signed {
            "certificate does not verify against the cluster CA"
        } else {
            "the record carries no signature"
        };
        // The leader reads every write; a follower may see only the repair that follows.
        leader_log(&c, words);
        let status = repaired(&c, now_gen, &mut history);
        assert!(
            status["generation"].as_u64().unwrap() < forged.generation(),
            "{status}"
        );
        assert_eq!(active_key(&status)["fingerprint"], active, "{status}");
        assert_eq!(all_files(&c), before, "no node's files changed");
        let forged_names: Vec<[u8; 16]> = forged.keys().iter().map(|k| *k.key.name()).collect();
        for n in &c.nodes {
            assert!(
                n.key_names()
                    .iter()
                    .all(|name| !forged_names.contains(name)),
                "{} holds a key of the forged ring",
                n.id
            );
        }
    }
}

/// A writer who knows no key edits the signed description (rotation pushed to year 9999; then
/// the retiring key dropped early through the ring's policy; the generation bumped each time
/// so nodes would take it as new): it is rejected, the leader writes its own ring back, and the
/// schedule and the keys stay the leader's.
#[test]
fn an_edited_description_is_rejected_and_the_leaders_ring_restored() {
    let (c, mut history, status) = cluster("id-edited");
    let etcd = c.etcd.as_ref().unwrap();
    let before = all_files(&c);
    let next = status["next_rotation_at"].clone();
    let mut ring = ring_now(&c);
    let g = ring["generation"].as_u64().unwrap();
    ring["next_rotation_at_ms"] = 253_402_300_000_000u64.into();
    ring["generation"] = (g + 1).into();
    info!("--- rotation pushed to 9999 in the stored ring");
    etcd.put(&key(&c, "ring"), &serde_json::to_vec(&ring).unwrap());
    // The leader reads every write; a follower may see only the repair that follows.
    leader_log(&c, "signature does not verify against the certificate");
    // The ring put back is the one members accepted (g), unchanged: not above the forgery.
    let status = repaired(&c, g, &mut history);
    assert_eq!(status["generation"].as_u64(), Some(g), "{status}");
    assert_eq!(status["next_rotation_at"], next, "{status}");
    assert!(!status["next_rotation_at"]
        .as_str()
        .unwrap()
        .starts_with("9999"));
    assert_eq!(all_files(&c), before);
    let leader = &c.nodes[c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap()];
    assert!(
        leader
            .log_text()
            .contains("put back the ring this leader accepted last"),
        "the leader says what it did"
    );
    // The restored ring is the leader's: a rotation still happens when asked.
    let status = c.rotate_and_check(1, &mut history);

    info!("--- the retiring key dropped early: the ring's retain edited down to 0");
    let epochs: Vec<Value> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].clone())
        .collect();
    let before = all_files(&c);
    let mut ring = ring_now(&c);
    let g = ring["generation"].as_u64().unwrap();
    ring["policy"]["retain"] = 0.into();
    ring["generation"] = (g + 1).into();
    etcd.put(&key(&c, "ring"), &serde_json::to_vec(&ring).unwrap());
    // Refused as malformed (retain 0 breaks the ring's policy) or as unsigned: either way
    // never applied, and the leader writes its own ring back with the same keys.
    leader_log(&c, "rejected a record from the store");
    let status = repaired(&c, g, &mut history);
    let after: Vec<Value> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].clone())
        .collect();
    assert_eq!(after, epochs, "no key dropped: {status}");
    assert_eq!(all_files(&c), before);
}

/// An older ring, validly signed by the leader when it was current, put back: no node applies
/// it (their floors refuse it; their files stay), and the leader puts the current ring back
/// unchanged, with no new generation.
#[test]
fn a_replayed_older_ring_is_never_applied() {
    let (c, mut history, _) = cluster("id-replay");
    let etcd = c.etcd.as_ref().unwrap();
    let old = etcd.get(&key(&c, "ring"));
    let old_gen = ring_now(&c)["generation"].as_u64().unwrap();
    c.rotate_and_check(1, &mut history);
    let status = c.rotate_and_check(2, &mut history);
    let now_gen = status["generation"].as_u64().unwrap();
    let active = active_key(&status)["fingerprint"].clone();
    let before = all_files(&c);
    info!("--- generation {old_gen} replayed over {now_gen}");
    etcd.put(&key(&c, "ring"), &old);
    leader_log(
        &c,
        &format!("ring generation {old_gen} is older than generation {now_gen}"),
    );
    let status = repaired(&c, now_gen, &mut history);
    assert_eq!(status["generation"].as_u64(), Some(now_gen), "{status}");
    assert_eq!(active_key(&status)["fingerprint"], active, "{status}");
    assert_eq!(all_files(&c), before, "the retired keys did not come back");
}

/// The ring deleted from the store: the leader, which holds the keys, puts the ring it accepted
/// back unchanged; it never bootstraps new keys while members hold valid ones.
#[test]
fn a_deleted_ring_is_rewritten_never_bootstrapped_over() {
    let (c, mut history, status) = cluster("id-deleted");
    let etcd = c.etcd.as_ref().unwrap();
    let g = status["generation"].as_u64().unwrap();
    let epochs: Vec<Value> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].clone())
        .collect();
    let before = all_files(&c);
    info!("--- etcdctl del ring");
    let out = etcd.ctl(&["del", &key(&c, "ring")]);
    assert!(out.status.success());
    let status = repaired(&c, g, &mut history);
    let after: Vec<Value> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["epoch"].clone())
        .collect();
    assert_eq!(after, epochs, "the same keys, no bootstrap: {status}");
    assert_eq!(all_files(&c), before);
    let leader = &c.nodes[c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap()];
    assert!(leader
        .log_text()
        .contains("the ring record is missing: put back the ring this leader accepted last"));
}

/// Requests a store writer puts without a signature never rotate (they are rejected, listed by
/// `stek status`, and change no file); a flood of signed requests (`stek rotate`) rotates at
/// most once per `min_request_interval`, and every request is served in the end.
#[test]
fn unsigned_requests_never_rotate_and_a_flood_rotates_once_per_min_request_interval() {
    let mut c = Cluster::new(BIN, "id-flood", 3);
    c.lease_ttl = Duration::from_secs(10);
    c.min_request_interval = "4s".into();
    let history = c.start_checked();
    let etcd = c.etcd.as_ref().unwrap();
    let status = c.wait_converged(Duration::from_secs(10));
    let g = status["generation"].as_u64().unwrap();
    let before = all_files(&c);

    info!("--- 20 unsigned requests written straight into the store");
    for i in 0..20 {
        let record = stek_store::RequestRecord {
            requested_by: "mallory".into(),
            requested_at_ms: MemberRecord::now_ms(),
            certificate: None,
            signature: None,
        };
        etcd.put(
            &key(&c, &format!("requests/{i:04}-mallory")),
            &record.encode(),
        );
    }
    let leader = c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap();
    wait_until(Duration::from_secs(10), "the leader to reject them", || {
        c.nodes[leader]
            .log_text()
            .contains("the request carries no signature")
    });
    std::thread::sleep(Duration::from_secs(3));
    let status = c.status(0);
    assert_eq!(
        status["generation"].as_u64(),
        Some(g),
        "no rotation: {status}"
    );
    assert_eq!(status["pending_requests"], 0, "{status}");
    let rejected = status["rejected_records"].as_array().unwrap();
    assert_eq!(
        rejected
            .iter()
            .filter(|r| r["key"].as_str().unwrap().contains("-mallory"))
            .count(),
        20,
        "{status}"
    );
    assert_eq!(all_files(&c), before, "no file changed");

    info!("--- a flood of signed requests: 12 x stek rotate");
    let epoch = |s: &Value| active_key(s)["epoch"].as_u64().unwrap();
    let first = epoch(&status);
    let started = std::time::Instant::now();
    for i in 0..12 {
        let out = c.cli(i % 3, &["rotate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(
        Duration::from_secs(30),
        "every signed request to be served",
        || {
            c.try_status(0)
                .is_some_and(|s| s["pending_requests"] == 0 && epoch(&s) > first)
        },
    );
    let status = c.wait_converged(Duration::from_secs(15));
    let elapsed = started.elapsed();
    let rotations = epoch(&status) - first;
    let allowed = 1 + elapsed.as_secs() / 4;
    info!("{rotations} rotations for 12 requests in {elapsed:?}");
    assert!(rotations >= 1, "the requests were served: {status}");
    assert!(
        rotations <= allowed,
        "{rotations} rotations in {elapsed:?}: at most one per 4s was allowed ({allowed})"
    );
    // Several rotations since the last check: the checker's epoch history starts afresh.
    drop(history);
    check_invariants(&c, &status, &mut History::default());
    // Requests that came after the first rotation waited; the leader says why.
    let leader_log = c.nodes[c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap()]
    .log_text();
    assert!(
        rotations == 1 || leader_log.contains("requests rotate at most once per 4s"),
        "the leader says why requests wait"
    );
}

/// A compromised member removed as docs/security.md says: the box stopped, its certificate's
/// serial added to every other node's `[identity] revoked` and those nodes restarted one at a
/// time. When the box comes back with its (still unexpired) certificate, it is refused: listed
/// with the reason, no ring holds a copy for it, rotations go on without it, and after
/// `retain + 2` rotations none of the keys it holds is in the ring any more.
#[test]
fn a_revoked_member_gets_no_future_ring() {
    let (mut c, _, status) = cluster("id-revoked");
    let victim = c
        .nodes
        .iter()
        .position(|n| status["leader"] != n.id.as_str())
        .unwrap();
    let victim_id = c.nodes[victim].id.clone();
    let ca = c.ca.clone().unwrap();
    let trust =
        stek_trust::identity::Trust::new(&std::fs::read(ca.cert()).unwrap(), &c.name, &[]).unwrap();
    let pem = std::fs::read(
        c.nodes[victim]
            .dir
            .join("identity")
            .join(format!("{victim_id}.pem")),
    )
    .unwrap();
    let der = stek_trust::identity::pem_to_der(&pem).unwrap();
    let serial = trust.verify(&der, SystemTime::now()).unwrap().serial;
    info!("--- {victim_id} (serial {serial}) stopped and revoked on the others");
    c.stop(victim);
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    for &i in &others {
        c.nodes[i].revoked = vec![serial.clone()];
        c.stop(i);
        c.start(i);
        wait_until(
            Duration::from_secs(30),
            "the restarted node to apply the ring again",
            || {
                c.try_status(others[0]).is_some_and(|s| {
                    s["members"].as_array().unwrap().iter().any(|m| {
                        m["node_id"] == c.nodes[i].id.as_str()
                            && m["live"] == true
                            && m["applied_generation"] == s["generation"]
                    })
                })
            },
        );
    }
    let held = c.nodes[victim].key_names();
    assert!(!held.is_empty());
    info!("--- {victim_id} comes back with its revoked certificate");
    c.start(victim);
    let via = others[0];
    let mut last = Value::Null;
    wait_until(Duration::from_secs(30), "the victim to be refused", || {
        last = c.try_status(via).unwrap_or(Value::Null);
        Some(&last).is_some_and(|s| {
            s["refused_members"].as_array().unwrap().iter().any(|r| {
                r["node_id"] == victim_id.as_str()
                    && r["live"] == true
                    && r["reason"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("serial {serial} is revoked"))
            })
        }) || {
            info!("status: {last}");
            false
        }
    });
    // A key stays in the ring for retain + 2 rotations (staged, active, retiring).
    for _ in 0..3 {
        let out = c.cli(via, &["rotate", "--wait", "--timeout", "30s"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let status = c.status(via);
    assert!(
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["node_id"] != victim_id.as_str()),
        "{status}"
    );
    // Its copy record is gone: the leader deletes the copies no ring names (each write, after
    // the ring; three writes have come and gone since it was refused).
    let etcd = c.etcd.as_ref().unwrap();
    let copy = etcd.get(&key(&c, &format!("ring/copies/{victim_id}")));
    assert!(
        copy.is_empty(),
        "a copy for the revoked member: {}",
        String::from_utf8_lossy(&copy)
    );
    // The keys it still holds are gone from the ring; it never got the new ones.
    let current: Vec<[u8; 16]> = c.nodes[via].key_names();
    assert!(
        held.iter().all(|k| !current.contains(k)),
        "a key the revoked member holds is still in use"
    );
    assert_eq!(
        c.nodes[victim].key_names(),
        held,
        "the revoked member got no new key"
    );
    assert!(c.nodes[victim]
        .log_text()
        .contains("holds no sealed copy for this node"));
}

/// The cluster's etcd.
fn etcd(c: &Cluster) -> &cluster_tests::cluster::EtcdServer {
    c.etcd.as_ref().expect("an etcd cluster")
}

/// A store writer puts a liveness key of its own for n3's node id while n3 restarts: with
/// `[identity]` nothing signed names that holder, so n3 does not stop (it used to exit after
/// two lease TTLs, and systemd's start limit then left the box on its last key for good). It
/// keeps its files, reports `stek_node_id_held 1` and why in `/readyz`, and joins as soon as
/// the key is gone. (While the key is there n3 counts as live: a store writer can hold a
/// rotation up that way, as docs/security.md says, but no longer stop the node.)
#[test]
fn a_foreign_liveness_key_for_a_node_id_does_not_stop_that_node() {
    let mut c = Cluster::new(BIN, "id-held", 3);
    c.lease_ttl = Duration::from_secs(3);
    let mut history = c.start_checked();
    c.rotate_and_check(0, &mut history);
    let alive = key(&c, "alive/n3");
    info!("--- n3 stops; a store writer takes its liveness key");
    c.stop(2);
    wait_until(Duration::from_secs(10), "n3's lease to end", || {
        etcd(&c).get(&alive).is_empty()
    });
    etcd(&c).put(&alive, b"instance 00ff00ff00ff00ff on mallory (pid 666)");
    let files = c.nodes[2].files();
    c.start_no_wait(2);
    wait_until(Duration::from_secs(15), "n3 to report its id held", || {
        c.metric(2, "stek_node_id_held") == Some(1.0)
    });
    // Two lease TTLs and two seconds is when it used to give up: well past it, it runs on.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(c.nodes[2].exit_status(), None, "n3 must not stop");
    assert_eq!(c.metric(2, "stek_node_id_held"), Some(1.0));
    assert!(c.nodes[2].log_text().contains("not obeyed"), "n3 says why");
    let (code, ready) = c.admin_get(2, "/readyz");
    assert!(
        code == 503 && ready.contains("held by another lease"),
        "{code} {ready}"
    );
    assert_eq!(c.nodes[2].files(), files, "n3 keeps its keys");
    info!("--- the key is removed: n3 joins and catches up");
    let out = etcd(&c).ctl(&["del", &alive]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(20), "n3 to join", || {
        c.metric(2, "stek_node_id_held") == Some(0.0)
    });
    let status = c.wait_converged(Duration::from_secs(30));
    check_invariants(&c, &status, &mut history);
    c.rotate_and_check(0, &mut history);
}
