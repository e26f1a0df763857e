//! The node's decisions, tested in one process: real `stek node` loops (with real file
//! targets in a temporary directory) sharing one in-memory store
//! ([`stek_store::memory::Memory`]), which a test can reach under, as a store restore, an
//! operator's edit or a hostile writer would. No root, no processes, no network.
//!
//! Every wait is bounded and polls; nothing asserts a duration.
#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use stek_node::admin::Metrics;
use stek_node::node::{Clock, NodeError, SystemClock};
use stek_node::Config;
use stek_store::memory::Memory;
use stek_store::{Coordinator, RingSlot, Snapshot};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CLUSTER: &str = "scenarios";
const TTL_SECS: u64 = 2;

struct Running {
    id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
    metrics: Arc<Metrics>,
}

struct Fleet {
    store: Memory,
    dir: tempfile::TempDir,
    nodes: Vec<Running>,
}

/// A clock that runs `ahead` of the system's.
struct Ahead(Duration);

impl Clock for Ahead {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.0
    }
}

impl Fleet {
    fn new() -> Self {
        // RUST_LOG=info shows the nodes' logs (the harness keeps them for failing tests).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Self {
            store: Memory::new(CLUSTER),
            // Keys go only to a RAM disk (the writer checks): /dev/shm is one without root.
            dir: tempfile::Builder::new()
                .prefix("stek-scenarios-")
                .tempdir_in("/dev/shm")
                .expect("a temporary directory on /dev/shm"),
            nodes: Vec::new(),
        }
    }

    fn keys_file(&self, id: &str) -> PathBuf {
        self.dir.path().join(id).join("envoy.keys")
    }

    fn config(&self, id: &str) -> Config {
        let home = self.dir.path().join(id);
        std::fs::create_dir_all(&home).unwrap();
        // Keys go only where no other user can read them (the writer checks).
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let text = format!(
            "cluster = \"{CLUSTER}\"\nnode_id = \"{id}\"\nstate_dir = \"{home}/state\"\ninsecure = true\n\
             [etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n\
             [admin]\nenabled = false\n\
             [rotation]\ninterval = \"1h\"\nretain = 1\nlease_ttl = \"{TTL_SECS}s\"\nmin_request_interval = \"0s\"\nforget_dead_after = \"3s\"\n\
             [[target]]\nformat = \"envoy\"\npath = \"{home}/envoy.keys\"\n",
            home = home.display()
        );
        let path = home.join("stek.toml");
        std::fs::write(&path, &text).unwrap();
        Config::parse(&path, &text).expect("a valid config")
    }

    /// Starts node `id` on the box whose state directory is `state` (under the node's home:
    /// its sealing keys, floor and instance) with clock `clock`.
    fn start_as(&mut self, id: &str, state: &str, clock: Arc<dyn Clock>) {
        let mut config = self.config(id);
        config.state_dir = self.dir.path().join(id).join(state);
        // A node killed a moment ago (its task aborted) lets go of its directory's lock once
        // the runtime drops the task: bounded, a few seconds at most.
        let mut tries = 0;
        let sealing = loop {
            match stek_node::state::StateDir::open(&config.state_dir) {
                Err(stek_node::state::StateError::InUse { .. }) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                opened => break opened.and_then(stek_node::state::StateDir::load),
            }
        }
        .expect("a state directory on /dev/shm");
        let store = self.store.clone();
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            stek_node::node::run_with(&config, store, m, None, sealing, clock, async {
                let _ = stopped.await;
            })
            .await
        });
        self.nodes.push(Running {
            id: id.to_owned(),
            stop: Some(stop),
            task,
            metrics,
        });
    }

    fn start(&mut self, id: &str) {
        self.start_as(id, "state", Arc::new(SystemClock));
    }

    /// Stops the node like SIGKILL: no resignation, no revoke; its lease runs out.
    fn kill(&mut self, id: &str) {
        let i = self.nodes.iter().position(|n| n.id == id).unwrap();
        let n = self.nodes.remove(i);
        n.task.abort();
    }

    /// The node ids of the nodes running now.
    fn running(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    async fn snap(&self) -> Snapshot {
        self.store.snapshot().await.expect("the store answers")
    }

    async fn shutdown(mut self) {
        for n in &mut self.nodes {
            if let Some(stop) = n.stop.take() {
                let _ = stop.send(());
            }
        }
        for n in self.nodes.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), n.task).await;
        }
    }
}

/// Polls `check` every 100 ms until it gives a value, at most `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let tries = limit.as_millis() / 100;
    for _ in 0..tries {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The stored ring's generation once every running node is a live member and every live
/// member acknowledged exactly that ring (by digest), and it is above `above`.
///
/// Counting only the members already live is not enough: a node still starting has no
/// record yet, and "all live members applied" would then hold without it (a CI run read
/// such a node's key file before the node had written it).
fn converged_above(snap: &Snapshot, running: &[String], above: u64) -> Option<u64> {
    let stored = snap.valid_ring()?;
    let g = stored.ring.generation();
    let live: Vec<_> = snap.members.iter().filter(|m| m.live).collect();
    let all_running_live = running
        .iter()
        .all(|id| live.iter().any(|m| m.record.node_id == *id));
    (g > above
        && all_running_live
        && !live.is_empty()
        && live.iter().all(|m| m.record.acknowledges(&stored.ring)))
    .then_some(g)
}

/// Waits until the store holds the ring `digest` again (put back) and every running node
/// acknowledges it.
async fn restored(fleet: &Fleet, digest: stek_core::RingDigest) {
    let running = fleet.running();
    wait_for(
        Duration::from_secs(20),
        "the ring put back and acknowledged by every node",
        || async {
            let snap = fleet.snap().await;
            let g = snap.valid_ring()?.ring.generation();
            (snap.valid_ring()?.ring.digest() == digest
                && converged_above(&snap, &running, g - 1).is_some())
            .then_some(())
        },
    )
    .await;
}

async fn converged(fleet: &Fleet, above: u64) -> u64 {
    let running = fleet.running();
    wait_for(
        Duration::from_secs(20),
        "every running node to apply the ring",
        || async { converged_above(&fleet.snap().await, &running, above) },
    )
    .await
}

fn active(snap: &Snapshot) -> String {
    snap.valid_ring()
        .unwrap()
        .ring
        .active()
        .fingerprint()
        .to_string()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_and_rotate_on_request() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2", "n3"] {
        fleet.start(id);
    }
    let g = converged(&fleet, 0).await;
    let before = active(&fleet.snap().await);
    fleet.store.request_rotation("test", None).await.unwrap();
    let g2 = converged(&fleet, g).await;
    let snap = fleet.snap().await;
    assert_ne!(active(&snap), before, "the staged key became active");
    assert!(snap.requests.is_empty(), "the request was served");
    let files: Vec<Vec<u8>> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| read(&fleet.keys_file(id)))
        .collect();
    assert!(!files[0].is_empty());
    assert!(
        files.iter().all(|f| *f == files[0]),
        "every box holds the same keys"
    );
    assert!(fleet
        .nodes
        .iter()
        .all(|n| n.metrics.applied_generation.get() >= i64::try_from(g2).unwrap()));
    fleet.shutdown().await;
}

/// An operator deletes the ring: the leader puts the ring it accepted back, unchanged (the same
/// generation, the same keys, the same copies); nothing changes on disk, no key activates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_ring_is_put_back_unchanged() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2", "n3"] {
        fleet.start(id);
    }
    let g = converged(&fleet, 0).await;
    let snap = fleet.snap().await;
    let before = snap.valid_ring().unwrap().clone();
    let files_before = read(&fleet.keys_file("n2"));
    fleet.store.delete_raw("ring");
    restored(&fleet, before.ring.digest()).await;
    let snap = fleet.snap().await;
    let now = snap.valid_ring().unwrap();
    assert_eq!(now.ring.generation(), g, "no new generation");
    assert_eq!(
        now.write_id(),
        before.write_id(),
        "the same write, put back"
    );
    assert_eq!(
        read(&fleet.keys_file("n2")),
        files_before,
        "nothing changed on disk"
    );
    fleet.shutdown().await;
}

/// A store restored from an old backup holds an older ring: no node applies it (their floors
/// refuse it), and the leader puts the current ring back unchanged; the replay costs no new
/// generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_older_ring_is_never_applied_and_the_current_ring_is_put_back() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2", "n3"] {
        fleet.start(id);
    }
    let g1 = converged(&fleet, 0).await;
    let old = fleet.store.get_raw("ring").unwrap();
    fleet.store.request_rotation("test", None).await.unwrap();
    let g2 = converged(&fleet, g1).await;
    let current = fleet.snap().await.valid_ring().unwrap().ring.digest();
    let files = read(&fleet.keys_file("n3"));
    for _ in 0..5 {
        fleet.store.put_raw("ring", &old);
        // While the old ring is stored, nobody's applied generation goes down.
        for _ in 0..5 {
            for n in &fleet.nodes {
                assert!(
                    n.metrics.applied_generation.get() >= i64::try_from(g2).unwrap(),
                    "{} applied the restored ring",
                    n.id
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restored(&fleet, current).await;
    }
    let snap = fleet.snap().await;
    assert_eq!(
        snap.valid_ring().unwrap().ring.generation(),
        g2,
        "five replays, no new generation"
    );
    assert_eq!(read(&fleet.keys_file("n3")), files);
    fleet.store.request_rotation("test", None).await.unwrap();
    converged(&fleet, g2).await;
    fleet.shutdown().await;
}

/// A record claiming a generation near u64::MAX is refused, does not hang the leader, and
/// a ring written back after it is numbered as if it were not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_member_record_is_refused_and_rotation_goes_on() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2"] {
        fleet.start(id);
    }
    let g = converged(&fleet, 0).await;
    let mut evil = fleet.snap().await.members[0].record.clone();
    evil.node_id = "evil".into();
    evil.applied_generation = u64::MAX - 1;
    fleet.store.put_raw("members/evil", &evil.encode());
    fleet.store.request_rotation("test", None).await.unwrap();
    let g2 = converged(&fleet, g).await;
    let snap = fleet.snap().await;
    assert!(snap
        .rejected
        .iter()
        .any(|(k, _)| k.ends_with("members/evil")));
    fleet.store.delete_raw("ring");
    let digest = snap.valid_ring().unwrap().ring.digest();
    restored(&fleet, digest).await;
    fleet.store.request_rotation("test", None).await.unwrap();
    let g3 = converged(&fleet, g2).await;
    assert!(
        g3 < 1000,
        "numbered above the real acknowledgements only: {g3}"
    );
    fleet.shutdown().await;
}

/// A second process with a live node id (another box: another state directory, so another
/// instance) refuses to run and names the holder; a restart of the same box (its state
/// directory kept) takes its id over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_node_id_refuses_and_a_restart_takes_over() {
    let mut fleet = Fleet::new();
    fleet.start("n1");
    fleet.start("n2");
    let g = converged(&fleet, 0).await;
    let n1_instance = fleet
        .snap()
        .await
        .members
        .iter()
        .find(|m| m.record.node_id == "n1")
        .and_then(|m| m.record.instance.clone())
        .expect("n1 names its instance");

    fleet.start_as("n1", "another-box", Arc::new(SystemClock));
    let impostor = fleet.nodes.pop().unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(20), impostor.task)
        .await
        .expect("the second process stops by itself")
        .unwrap();
    match refused {
        Err(NodeError::NodeIdHeld { node_id, holder }) => {
            assert_eq!(node_id, "n1");
            assert!(
                holder.contains(&n1_instance),
                "the holder is named: {holder}"
            );
        }
        other => panic!("a second n1 must refuse to run, got {other:?}"),
    }
    assert_eq!(
        fleet.snap().await.valid_ring().unwrap().ring.generation(),
        g
    );

    // SIGKILL and restart on the same box: its lease still lives, and it takes over.
    fleet.kill("n1");
    fleet.start("n1");
    fleet.store.request_rotation("test", None).await.unwrap();
    converged(&fleet, g).await;
    assert!(
        !fleet.nodes.iter().any(|n| n.task.is_finished()),
        "nobody stopped"
    );
    fleet.shutdown().await;
}

/// A leader whose clock is a year fast: its members' acknowledgements show it; it stops
/// leading, and the next leader pulls the year-out schedule back to one interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_fast_clock_steps_down_and_the_schedule_is_pulled_back() {
    let mut fleet = Fleet::new();
    let year = Duration::from_secs(365 * 24 * 3600);
    fleet.start_as("fast", "state", Arc::new(Ahead(year)));
    let g = wait_for(
        Duration::from_secs(20),
        "the fast node's first ring",
        || async {
            let snap = fleet.snap().await;
            snap.valid_ring().map(|r| r.ring.generation())
        },
    )
    .await;
    let snap = fleet.snap().await;
    assert_eq!(snap.leader.as_ref().unwrap().node_id, "fast");
    assert!(
        stek_store::clock::ring_ahead(snap.valid_ring().unwrap(), SystemTime::now()) > year / 2
    );
    fleet.start("n2");
    fleet.start("n3");
    let next = wait_for(
        Duration::from_secs(30),
        "a sane leader to pull the schedule back",
        || async {
            let snap = fleet.snap().await;
            let leader = snap.leader.as_ref()?;
            let ring = snap.valid_ring()?;
            (leader.node_id != "fast" && ring.ring.generation() > g)
                .then(|| ring.ring.next_rotation_at())
                .filter(|at| *at < SystemTime::now() + Duration::from_secs(2 * 3600))
        },
    )
    .await;
    assert!(
        next > SystemTime::now(),
        "the next rotation is ahead, one interval out"
    );
    let snap = fleet.snap().await;
    assert_ne!(snap.leader.as_ref().unwrap().node_id, "fast");
    assert!(matches!(snap.ring, RingSlot::Valid(_)));
    fleet.shutdown().await;
}

/// Another ring with the generation every node accepted (a store restored from another
/// backup, a forged ring of the same number): no node applies it (I11: one ring per
/// generation), and the leader puts its own back; the next rotation activates the staged key
/// every node held all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ring_with_the_accepted_generation_is_refused_and_the_ring_put_back() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2", "n3"] {
        fleet.start(id);
    }
    let g = converged(&fleet, 0).await;
    let snap = fleet.snap().await;
    let stored = snap.valid_ring().unwrap().clone();
    let policy = stored.policy;
    let alias = stek_core::KeyRing::bootstrap(
        SystemTime::now(),
        &policy,
        &mut stek_core::OsKeySource,
        &stek_core::KeyHistory::new(),
    )
    .unwrap()
    .renumbered(g);
    assert_eq!(alias.generation(), g);
    let recipients: Vec<_> = snap
        .members
        .iter()
        .filter_map(|m| Some((m.record.node_id.clone(), m.record.sealing_key()?)))
        .collect();
    let (mut written, _) =
        stek_store::StoredRing::seal(CLUSTER, &alias, &policy, &stored.written_by, &recipients);
    written.term = stored.term;
    for (member, copy) in written.copy_records() {
        fleet.store.put_raw(&stek_store::copy_key(&member), &copy);
    }
    fleet
        .store
        .put_raw("ring", &stek_store::records::encode_ring(&written));
    restored(&fleet, stored.ring.digest()).await;
    let alias_digest = alias.digest().to_string();
    let snap = fleet.snap().await;
    assert!(
        snap.members
            .iter()
            .all(|m| m.record.applied_digest.as_deref() != Some(alias_digest.as_str())),
        "nobody applied the other ring"
    );
    fleet.store.request_rotation("test", None).await.unwrap();
    let g2 = converged(&fleet, g).await;
    let snap = fleet.snap().await;
    assert_eq!(
        snap.valid_ring().unwrap().ring.active().fingerprint(),
        stored.ring.staged().unwrap().key,
        "the accepted ring's staged key is the one activated (at generation {g2})"
    );
    fleet.shutdown().await;
}

/// A ring older than a member's floor, with a copy that really is sealed to the key the
/// member announced (a leader deceived, or a bug): the member refuses the ring, and since that
/// key would open it once it is `current`, it erases the key and announces another. The
/// leader puts its ring back, and the cluster rotates on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ring_sealed_to_a_members_next_key_makes_it_burn_that_key() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2", "n3"] {
        fleet.start(id);
    }
    let g = converged(&fleet, 0).await;
    fleet.store.request_rotation("test", None).await.unwrap();
    let g = converged(&fleet, g).await;
    let snap = fleet.snap().await;
    let stored = snap.valid_ring().unwrap().clone();
    let leader = snap.leader.clone().unwrap().node_id;
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let announced = |snap: &Snapshot| {
        snap.members
            .iter()
            .find(|m| m.record.node_id == victim)
            .and_then(|m| m.record.sealing_key())
            .unwrap()
    };
    let next = announced(&snap);
    // The other two boxes go down (killed, their leases left to run out) before the replay is
    // put in: a leader that puts its accepted ring back at once would otherwise often replace
    // the replay before the victim read it (under load, always), and the victim, which never
    // saw it, would have nothing to burn. Alone, the victim reads the replay first, whatever
    // the machine's load.
    let others: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|id| *id != victim)
        .collect();
    for id in &others {
        fleet.kill(id);
    }
    let key_file = fleet
        .dir
        .path()
        .join(victim)
        .join("state")
        .join(format!("sealing-{}.key", next.id()));
    assert!(key_file.exists(), "the announced key is on the RAM disk");
    let old = stek_core::KeyRing::bootstrap(
        SystemTime::now(),
        &stored.policy,
        &mut stek_core::OsKeySource,
        &stek_core::KeyHistory::new(),
    )
    .unwrap()
    .renumbered(g - 1);
    let (mut written, _) = stek_store::StoredRing::seal(
        CLUSTER,
        &old,
        &stored.policy,
        &stored.written_by,
        &[(victim.to_owned(), next)],
    );
    written.term = stored.term;
    for (member, copy) in written.copy_records() {
        fleet.store.put_raw(&stek_store::copy_key(&member), &copy);
    }
    fleet
        .store
        .put_raw("ring", &stek_store::records::encode_ring(&written));
    wait_for(
        Duration::from_secs(20),
        "the member to erase the key and announce another",
        || async {
            let snap = fleet.snap().await;
            (announced(&snap) != next && !key_file.exists()).then_some(())
        },
    )
    .await;
    // The victim leads alone once the others' leases ran out, and puts the ring back; the
    // others come back on their state and apply it, and the next rotation reaches all three.
    restored(&fleet, stored.ring.digest()).await;
    for id in &others {
        fleet.start(id);
    }
    restored(&fleet, stored.ring.digest()).await;
    fleet.store.request_rotation("test", None).await.unwrap();
    converged(&fleet, g).await;
    fleet.shutdown().await;
}

/// A member dead for `forget_dead_after` is forgotten by the leader; the live ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dead_for_the_grace_period_is_forgotten() {
    let mut fleet = Fleet::new();
    for id in ["n1", "n2", "n3"] {
        fleet.start(id);
    }
    converged(&fleet, 0).await;
    let leader = fleet.snap().await.leader.unwrap().node_id;
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    fleet.kill(victim);
    wait_for(
        Duration::from_secs(20),
        "the dead member's record to go",
        || async {
            let snap = fleet.snap().await;
            (!snap.members.iter().any(|m| m.record.node_id == victim)).then_some(())
        },
    )
    .await;
    let snap = fleet.snap().await;
    assert_eq!(snap.members.len(), 2, "the live members stay");
    assert!(snap.members.iter().all(|m| m.live));
    fleet.shutdown().await;
}
