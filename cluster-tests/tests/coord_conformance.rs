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
