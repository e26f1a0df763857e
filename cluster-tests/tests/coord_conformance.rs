//! The Coordinator conformance suite against every backend with a real store.

use cluster_tests::cluster::EtcdServer;
use cluster_tests::{conformance, init_logging, TestDir};
use stek_coord::etcd::Etcd;

#[test]
fn etcd_backend_passes_the_conformance_suite() {
    init_logging();
    let root = TestDir::new("conformance-etcd");
    let etcd = EtcdServer::start(&root);
    let endpoint = etcd.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(conformance::run_all(|| {
        let endpoint = endpoint.clone();
        async move {
            Etcd::connect(&[endpoint], "conformance")
                .await
                .expect("etcd client")
        }
    }));
}

#[test]
fn in_memory_backend_passes_the_conformance_suite() {
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let store = stek_coord::memory::Memory::new("conformance");
    rt.block_on(conformance::run_all(|| {
        let store = store.clone();
        async move { store }
    }));
}

#[test]
fn raft_backend_passes_the_conformance_suite() {
    raft_conformance(None);
}

#[test]
fn raft_backend_over_mutual_tls_passes_the_conformance_suite() {
    let root = TestDir::new("conformance-raft-tls");
    let pki = cluster_tests::cluster::make_peer_pki(root.path());
    let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls =
        stek_coord::raft::tls::PeerTls::from_pem(&pem(&pki.ca), &pem(&pki.cert), &pem(&pki.key))
            .expect("peer TLS");
    raft_conformance(Some(tls));
}

fn raft_conformance(tls: Option<stek_coord::raft::tls::PeerTls>) {
    use std::collections::BTreeMap;
    use stek_coord::raft::client::RaftClient;
    use stek_coord::raft::peer::Peer;
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
            let storage = stek_coord::raft::peer::Storage::Durable(dir.subdir(name).join("raft"));
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
