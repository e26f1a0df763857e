//! The Coordinator conformance suite against every backend with a real store.

use cluster_tests::cluster::EtcdServer;
use cluster_tests::{conformance, init_logging, TestDir};
use stek_etcd::Etcd;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One test per property, each on a fresh in-memory store.
mod in_memory {
    use super::*;
    use stek_store::memory::Memory;

    fn setup(_test: &str) -> (tokio::runtime::Runtime, (), Memory, Memory) {
        init_logging();
        let store = Memory::new("conformance");
        (runtime(), (), store.clone(), store)
    }

    cluster_tests::conformance_tests!(setup);
}

/// One test per property, each on an etcd of its own.
mod etcd {
    use super::*;

    fn setup(test: &str) -> (tokio::runtime::Runtime, (EtcdServer, TestDir), Etcd, Etcd) {
        init_logging();
        let root = TestDir::new(&format!("conformance-etcd-{test}"));
        let etcd = EtcdServer::start(&root);
        let endpoint = etcd.endpoint();
        let rt = runtime();
        let connect = || Etcd::connect(std::slice::from_ref(&endpoint), "conformance");
        let (a, b) = rt.block_on(async {
            let a = connect().await.expect("an etcd client");
            (a, connect().await.expect("an etcd client"))
        });
        (rt, (etcd, root), a, b)
    }

    cluster_tests::conformance_tests!(setup);

    /// etcd's watches carry what they saw (so `what_a_watch_carries_is_what_a_read_shows`
    /// compares something): a prefix watch and a member's watch both keep a snapshot.
    #[test]
    fn an_etcd_watch_keeps_what_its_events_carried() {
        use stek_store::{ChangeStream, Coordinator};
        let (rt, _guard, a, _b) = setup("watch-keeps");
        rt.block_on(async {
            let rev = a.snapshot().await.unwrap().revision;
            let all = a.watch(rev).await.unwrap();
            let mine = a.watch_member(rev, "n1").await.unwrap();
            let full = all.snapshot().expect("a prefix watch keeps a snapshot");
            assert!(!full.partial);
            let own = mine.snapshot().expect("a member's watch keeps a snapshot");
            assert!(own.partial);
        });
    }

    /// In etcd a member's acknowledgement is a small record of its own (`acks/<member>`):
    /// acknowledging leaves the member record (with its certificate) as registration wrote
    /// it, a member record changed by someone else is written back by the next
    /// acknowledgement, and forgetting the member deletes both.
    #[test]
    fn an_etcd_acknowledgement_writes_only_its_own_small_record() {
        use stek_store::seal::Identity;
        use stek_store::{Coordinator, MemberRecord};
        let (rt, guard, a, _b) = setup("acks-apart");
        let etcd = &guard.0;
        let record = MemberRecord {
            node_id: "n1".into(),
            version: "test".into(),
            targets: vec!["nginx".into()],
            applied_generation: 0,
            last_error: None,
            updated_at_ms: 1,
            public_key: Some(Identity::generate().public().to_base64()),
            unsealable_generation: None,
            certificate: Some("A".repeat(900)),
            key_signature: Some("B".repeat(96)),
            applied_digest: None,
            floor_generation: None,
            instance: Some("0123456789abcdef".into()),
            floor_digest: None,
        };
        let read = |key: &str| etcd.get(&format!("/stek/conformance/{key}"));
        let acked = MemberRecord {
            applied_generation: 5,
            updated_at_ms: 2,
            ..record.clone()
        };
        rt.block_on(async {
            let lease = a
                .grant_lease(std::time::Duration::from_secs(10))
                .await
                .unwrap();
            a.register(lease, &record).await.unwrap();
            // The count a starting follower sizes its first full read by: member records
            // only, not acknowledgements or liveness keys.
            assert_eq!(a.member_count().await.unwrap(), Some(1));
            let registered = read("members/n1");
            a.ack(&acked).await.unwrap();
            assert_eq!(
                read("members/n1"),
                registered,
                "the member record is not rewritten"
            );
            let ack = read("acks/n1");
            // With the announced key and its signature (a ratchet step at every ring).
            assert!(ack.len() < 400, "{} bytes", ack.len());
            assert!(
                !String::from_utf8_lossy(&registered).contains("public_key"),
                "the announced key is not in the member record"
            );
            let shown = |s: stek_store::Snapshot| {
                s.members
                    .into_iter()
                    .find(|m| m.record.node_id == "n1")
                    .unwrap()
                    .record
            };
            assert_eq!(shown(a.snapshot().await.unwrap()), acked);
            assert_eq!(shown(a.snapshot_of_member("n1").await.unwrap()), acked);
            // The next acknowledgement announces the next key: still the small record only.
            let ratcheted = MemberRecord {
                applied_generation: 6,
                public_key: Some(Identity::generate().public().to_base64()),
                ..acked.clone()
            };
            a.ack(&ratcheted).await.unwrap();
            assert_eq!(read("members/n1"), registered);
            assert_eq!(shown(a.snapshot().await.unwrap()), ratcheted);
            let acked = ratcheted;

            // Someone else changes the member record: the next acknowledgement puts it back.
            etcd.put("/stek/conformance/members/n1", b"{}");
            a.ack(&acked).await.unwrap();
            assert_eq!(read("members/n1"), registered);
            assert_eq!(shown(a.snapshot().await.unwrap()), acked);

            a.revoke(lease).await.unwrap();
            let term = {
                let l = a
                    .grant_lease(std::time::Duration::from_secs(10))
                    .await
                    .unwrap();
                a.campaign(l, "lead").await.unwrap().expect("elected")
            };
            assert!(a.forget_member(term, "n1").await.unwrap());
            assert!(read("acks/n1").is_empty(), "forgotten with its record");
            assert_eq!(a.member_count().await.unwrap(), Some(0));
        });
    }
}

/// Every property in turn on one Raft group (a group takes seconds to form).
#[test]
fn raft_backend_passes_the_conformance_suite() {
    raft_conformance(None);
}

#[test]
fn raft_backend_over_mutual_tls_passes_the_conformance_suite() {
    let root = TestDir::new("conformance-raft-tls");
    let pki = cluster_tests::cluster::make_peer_pki(root.path());
    let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls = stek_raft::tls::PeerTls::from_pem(&pem(&pki.ca), &pem(&pki.cert), &pem(&pki.key))
        .expect("peer TLS");
    raft_conformance(Some(tls));
}

fn raft_conformance(tls: Option<stek_raft::tls::PeerTls>) {
    use std::collections::BTreeMap;
    use stek_raft::client::RaftClient;
    use stek_raft::peer::Peer;
    init_logging();
    let peers: BTreeMap<String, String> = (1..=3)
        .map(|i| {
            (
                format!("p{i}"),
                format!("127.0.0.1:{}", cluster_tests::free_port()),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let mut running = Vec::new();
        let dir = cluster_tests::TestDir::new("conformance-raft");
        for (name, addr) in &peers {
            let storage = stek_raft::peer::Storage::Durable(dir.subdir(name).join("raft"));
            running.push(
                Peer::start("conformance", name, addr, &peers, storage, tls.clone())
                    .await
                    .expect("peer starts"),
            );
        }
        let addrs: Vec<String> = peers.values().cloned().collect();
        conformance::run_all(|| {
            let addrs = addrs.clone();
            let tls = tls.clone();
            async move { RaftClient::new("conformance", addrs, None).with_tls(tls) }
        })
        .await;
        for p in running {
            p.shutdown().await;
        }
    });
}
