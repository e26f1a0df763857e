//! stek-bench: the figures of docs/benchmark-results.md, measured on this machine in one run.
//!
//! ```sh
//! cargo build --release -p cluster-tests --bins && target/release/stek-bench          # full
//! target/release/stek-bench --quick                                                    # N = 3 only
//! ```
//!
//! - etcd's bare put-to-watch round trip (the floor for anything built on etcd);
//! - rotation latency, from `stek rotate`'s request to every member applied, for N = 3, 10,
//!   100 and 1000 members: N node tasks (the real node loop, one Envoy-format target each, so
//!   the "reload" is a file write) in this process against one real etcd on loopback; with the
//!   store writes and bytes each rotation costs;
//! - the same latency on the embedded Raft coordinator (three peers in this process);
//! - failover: a leader's task aborted (its lease left to expire, as after SIGKILL) to the next
//!   completed rotation, and a graceful stop to the next leader;
//! - footprint: idle RSS and CPU of a real `stek node` process (the `stek-test-node` binary
//!   next to this one).
//!
//! Every loop is bounded. Nothing is asserted: the results file says what was measured and
//! where a target was missed, by how much.

#![allow(clippy::unwrap_used)] // a benchmark harness: a panic is the failure report

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::cluster::{ClusterCa, EtcdServer};
use cluster_tests::{free_port, Server, TestDir};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use stek_coord::etcd::Etcd;
use stek_coord::records::{decode_ring, MemberRecord};
use stek_coord::Coordinator;
use stek_node::admin::Metrics;
use stek_node::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One in-process node: its task and the handle that stops it gracefully.
struct NodeTask {
    id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A node's config, with `[identity]`: a member certificate from the cluster's CA (made in
/// `dir` on first use), so that the figures include signing and verifying.
fn node_config(dir: &Path, cluster: &str, id: &str, coordination: &str, ttl: u64) -> Config {
    let keys = dir.join(id);
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let ca_dir = dir.join(format!("ca-{cluster}"));
    let ca = if ca_dir.join("ca.pem").exists() {
        ClusterCa { dir: ca_dir }
    } else {
        std::fs::create_dir_all(&ca_dir).unwrap();
        ClusterCa::new(&ca_dir, cluster)
    };
    let host = coordination
        .split("listen = \"")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or("127.0.0.1");
    ca.issue_member(id, host, &keys);
    let identity = ca.identity_section(id, &keys);
    let text = format!(
        "cluster = \"{cluster}\"\nnode_id = \"{id}\"\nstate_dir = \"{}/state\"\n{coordination}{identity}\
         [admin]\nenabled = false\n[rotation]\ninterval = \"1h\"\nretain = 1\nlease_ttl = \"{ttl}s\"\nmin_request_interval = \"0s\"\n\
         [[target]]\nformat = \"envoy\"\npath = \"{}/envoy.keys\"\n",
        keys.display(),
        keys.display()
    );
    let path = keys.join("stek.toml");
    std::fs::write(&path, &text).unwrap();
    Config::parse(&path, &text).unwrap()
}

/// An operator's credentials from cluster `cluster`'s CA (made by [`node_config`], so call
/// it after the nodes' configs): nodes with `[identity]` act only on signed requests.
fn operator(dir: &Path, cluster: &str) -> stek_coord::identity::Credentials {
    let ca = ClusterCa {
        dir: dir.join(format!("ca-{cluster}")),
    };
    let out = dir.join(format!("operator-{cluster}"));
    if !out.join("bench.pem").exists() {
        ca.issue(
            &stek_coord::identity::Role::Operator("bench".into()),
            &[],
            &out,
        );
    }
    let trust =
        stek_coord::identity::Trust::new(&std::fs::read(ca.cert()).unwrap(), cluster, &[]).unwrap();
    stek_coord::identity::Credentials::new(
        &trust,
        &std::fs::read(out.join("bench.pem")).unwrap(),
        &std::fs::read(out.join("bench.key")).unwrap(),
    )
    .unwrap()
}

fn spawn_node<C: Coordinator>(config: Config, coord: C) -> NodeTask {
    let (stop, stopped) = oneshot::channel::<()>();
    let id = config.node_id.clone();
    let identity = config.identity.as_ref().map(|files| {
        let role = stek_coord::identity::Role::Member(config.node_id.clone());
        files.load(&config.path, &config.cluster, &role).unwrap().1
    });
    let task = tokio::spawn(async move {
        let metrics = Arc::new(Metrics::new());
        stek_node::node::run(
            &config,
            coord,
            metrics,
            identity.as_ref(),
            stek_coord::seal::Identity::generate(),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .expect("a benchmark node stops only when told to");
    });
    NodeTask {
        id,
        stop: Some(stop),
        task,
    }
}

/// Members' applied generations and the ring generation, kept current from a prefix watch.
struct Tracker {
    client: Client,
    prefix: String,
}

#[derive(Default)]
struct View {
    ring_generation: u64,
    ring_bytes: usize,
    applied: BTreeMap<String, u64>,
    alive: BTreeMap<String, bool>,
    leader: Option<String>,
    requests: usize,
}

impl View {
    fn all_applied(&self, generation: u64) -> bool {
        let live: Vec<&String> = self
            .alive
            .iter()
            .filter(|(_, l)| **l)
            .map(|(k, _)| k)
            .collect();
        !live.is_empty()
            && live
                .iter()
                .all(|m| self.applied.get(*m).copied().unwrap_or(0) >= generation)
    }
}

impl Tracker {
    async fn view(&mut self) -> (View, i64) {
        let resp = self
            .client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let mut v = View::default();
        for kv in resp.kvs() {
            self.apply(&mut v, kv.key(), kv.value(), false);
        }
        (v, resp.header().unwrap().revision())
    }

    fn apply(&self, v: &mut View, key: &[u8], value: &[u8], deleted: bool) {
        let key = String::from_utf8_lossy(key);
        let rest = key.strip_prefix(self.prefix.as_str()).unwrap_or(&key);
        if rest == "ring" && !deleted {
            if let Ok(r) = decode_ring(value) {
                v.ring_generation = r.ring.generation();
                v.ring_bytes = value.len();
            }
        } else if rest == "leader" {
            v.leader = (!deleted).then(|| String::from_utf8_lossy(value).into_owned());
        } else if let Some(id) = rest.strip_prefix("alive/") {
            v.alive.insert(id.to_owned(), !deleted);
        } else if let Some(id) = rest.strip_prefix("members/") {
            if let Ok(m) = MemberRecord::decode(value) {
                v.applied.insert(id.to_owned(), m.applied_generation);
            }
        } else if rest.starts_with("requests/") {
            if deleted {
                v.requests = v.requests.saturating_sub(1);
            } else {
                v.requests += 1;
            }
        }
    }

    /// A watch from `revision`, opened before the action it is to observe: etcd serves a
    /// watch that starts in the past from a catch-up loop that runs every 100 ms, which would
    /// be measured instead of stek.
    async fn watch(&mut self, revision: i64) -> etcd_client::WatchStream {
        self.client
            .watch(
                self.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .unwrap()
    }

    /// Consumes `stream` until `done(view)` or `within` passes; returns whether it held, and
    /// the store writes and value bytes seen.
    async fn wait(
        &mut self,
        v: &mut View,
        mut stream: etcd_client::WatchStream,
        within: Duration,
        mut done: impl FnMut(&View) -> bool,
    ) -> (bool, u64, u64) {
        let deadline = tokio::time::Instant::now() + within;
        let (mut writes, mut bytes) = (0u64, 0u64);
        let mut ok = done(v);
        while !ok {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let Ok(Some(resp)) = msg else { break };
            for e in resp.events() {
                if let Some(kv) = e.kv() {
                    let deleted = e.event_type() == EventType::Delete;
                    writes += 1;
                    bytes += (kv.key().len() + kv.value().len()) as u64;
                    self.apply(v, kv.key(), kv.value(), deleted);
                }
            }
            ok = done(v);
        }
        (ok, writes, bytes)
    }
}

async fn bare_rtt(endpoint: &str, samples: usize) -> Vec<Duration> {
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let mut stream = client.watch("/bench/rtt", None).await.unwrap();
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let t0 = Instant::now();
        client.put("/bench/rtt", i.to_string(), None).await.unwrap();
        loop {
            let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if !resp.events().is_empty() {
                break;
            }
        }
        out.push(t0.elapsed());
    }
    out.sort();
    out
}

/// Result of one N.
struct Latency {
    n: usize,
    samples: Vec<Duration>,
    converge: Duration,
    writes: f64,
    bytes: f64,
    ring_bytes: usize,
    failed: Option<String>,
}

async fn etcd_latency(
    endpoint: &str,
    dir: &Path,
    n: usize,
    rotations: usize,
    budget: Duration,
) -> Latency {
    let cluster = format!("bench{n}");
    let section = format!("[etcd]\nendpoints = [\"{endpoint}\"]\n");
    let started = Instant::now();
    let mut nodes = Vec::new();
    let mut shared: Option<Etcd> = None;
    for i in 0..n {
        // One client (one HTTP/2 connection) per 25 nodes.
        if i % 25 == 0 {
            shared = Some(
                Etcd::connect(&[endpoint.to_owned()], &cluster)
                    .await
                    .unwrap(),
            );
        }
        let config = node_config(dir, &cluster, &format!("n{i:04}"), &section, 10);
        nodes.push(spawn_node(config, shared.clone().unwrap()));
    }
    let mut tracker = Tracker {
        client: Client::connect([endpoint], None).await.unwrap(),
        prefix: format!("/stek/{cluster}/"),
    };
    let (mut view, rev) = tracker.view().await;
    let stream = tracker.watch(rev).await;
    let (ok, _, _) = tracker
        .wait(&mut view, stream, budget, |v| {
            v.alive.values().filter(|l| **l).count() == n
                && v.ring_generation > 0
                && v.all_applied(v.ring_generation)
        })
        .await;
    let converge = started.elapsed();
    let mut result = Latency {
        n,
        samples: Vec::new(),
        converge,
        writes: 0.0,
        bytes: 0.0,
        ring_bytes: view.ring_bytes,
        failed: (!ok).then(|| {
            let live = view.alive.values().filter(|l| **l).count();
            let applied = view
                .applied
                .values()
                .filter(|g| **g >= view.ring_generation)
                .count();
            format!(
                "did not converge within {budget:?}: {live} of {n} live, {applied} at ring generation {}",
                view.ring_generation
            )
        }),
    };
    let store = Etcd::connect(&[endpoint.to_owned()], &cluster)
        .await
        .unwrap();
    let signer = operator(dir, &cluster);
    let (mut total_writes, mut total_bytes) = (0u64, 0u64);
    for _ in 0..rotations {
        if result.failed.is_some() {
            break;
        }
        let (mut v, rev) = tracker.view().await;
        let stream = tracker.watch(rev).await;
        let before = v.ring_generation;
        let t0 = Instant::now();
        store
            .request_rotation("bench", Some(&signer))
            .await
            .unwrap();
        let (ok, writes, bytes) = tracker
            .wait(&mut v, stream, budget, |v| {
                v.ring_generation > before && v.requests == 0 && v.all_applied(v.ring_generation)
            })
            .await;
        if !ok {
            result.failed = Some(format!("a rotation did not complete within {budget:?}"));
            break;
        }
        result.samples.push(t0.elapsed());
        result.ring_bytes = v.ring_bytes;
        total_writes += writes;
        total_bytes += bytes;
        // Let stragglers' extra writes (reseals) settle before the next request.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let k = result.samples.len().max(1) as f64;
    result.writes = total_writes as f64 / k;
    result.bytes = total_bytes as f64 / k;
    result.samples.sort();
    // Stop every node at once, give them 20 s together to resign and revoke, then abort.
    let mut tasks = Vec::new();
    for mut node in nodes {
        if let Some(s) = node.stop.take() {
            let _ = s.send(());
        }
        tasks.push(node.task);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for t in &mut tasks {
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    for t in tasks {
        t.abort();
    }
    result
}

async fn failover(endpoint: &str, dir: &Path) -> (Option<Duration>, Option<Duration>, u64) {
    let ttl = 3;
    let cluster = "benchfail";
    let section = format!("[etcd]\nendpoints = [\"{endpoint}\"]\n");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let etcd = Etcd::connect(&[endpoint.to_owned()], cluster)
            .await
            .unwrap();
        let config = node_config(dir, cluster, &format!("f{i}"), &section, ttl);
        nodes.push(spawn_node(config, etcd));
    }
    let mut tracker = Tracker {
        client: Client::connect([endpoint], None).await.unwrap(),
        prefix: format!("/stek/{cluster}/"),
    };
    let (mut v, rev) = tracker.view().await;
    let stream = tracker.watch(rev).await;
    tracker
        .wait(&mut v, stream, Duration::from_secs(30), |v| {
            v.leader.is_some() && v.all_applied(v.ring_generation.max(1))
        })
        .await;
    let store = Etcd::connect(&[endpoint.to_owned()], cluster)
        .await
        .unwrap();

    // SIGKILL-like: the leader's task vanishes; its lease runs out.
    let leader = v.leader.clone().unwrap();
    let i = nodes.iter().position(|n| n.id == leader).unwrap();
    let killed = nodes.remove(i);
    let (mut v, rev) = tracker.view().await;
    let stream = tracker.watch(rev).await;
    let before = v.ring_generation;
    let t0 = Instant::now();
    killed.task.abort();
    store
        .request_rotation("bench", Some(&operator(dir, cluster)))
        .await
        .unwrap();
    let (ok, _, _) = tracker
        .wait(&mut v, stream, Duration::from_secs(30), |v| {
            v.ring_generation > before
                && v.requests == 0
                && v.leader.as_deref() != Some(leader.as_str())
                && v.all_applied(v.ring_generation)
        })
        .await;
    let kill = ok.then(|| t0.elapsed());

    // Graceful stop of the new leader.
    let (mut v, rev) = tracker.view().await;
    let stream = tracker.watch(rev).await;
    let leader = v.leader.clone().unwrap_or_default();
    let i = nodes.iter().position(|n| n.id == leader).unwrap();
    let mut stopping = nodes.remove(i);
    let t0 = Instant::now();
    let _ = stopping.stop.take().unwrap().send(());
    let (ok, _, _) = tracker
        .wait(&mut v, stream, Duration::from_secs(30), |v| {
            v.leader.as_ref().is_some_and(|l| *l != leader)
        })
        .await;
    let graceful = ok.then(|| t0.elapsed());
    for n in nodes {
        n.task.abort();
    }
    (kill, graceful, ttl)
}

async fn raft_latency(dir: &Path, rotations: usize) -> Vec<Duration> {
    use stek_coord::raft::client::RaftClient;
    use stek_coord::raft::peer::Peer;
    let peers: BTreeMap<String, String> = (0..3)
        .map(|i| (format!("r{i}"), format!("127.0.0.1:{}", free_port())))
        .collect();
    let table: Vec<String> = peers
        .iter()
        .map(|(k, a)| format!("{k} = \"{a}\""))
        .collect();
    let mut running = Vec::new();
    let mut nodes = Vec::new();
    for (id, addr) in &peers {
        let section = format!(
            "[raft]\nlisten = \"{addr}\"\npeers = {{ {} }}\n",
            table.join(", ")
        );
        let config = node_config(dir, "benchraft", id, &section, 10);
        let storage = stek_coord::raft::peer::Storage::Durable(dir.join(format!("raft-{id}")));
        let peer = Peer::start("benchraft", id, addr, &peers, storage, None)
            .await
            .unwrap();
        let client = RaftClient::new(
            "benchraft",
            peers.values().cloned().collect(),
            Some(addr.clone()),
        );
        running.push(peer);
        nodes.push(spawn_node(config, client));
    }
    let client = RaftClient::new("benchraft", peers.values().cloned().collect(), None);
    let converged = |s: &stek_coord::Snapshot, after: u64| {
        let g = s.valid_ring().map_or(0, |r| r.ring.generation());
        g > after
            && s.requests.is_empty()
            && s.members.iter().filter(|m| m.live).count() == 3
            && s.members
                .iter()
                .filter(|m| m.live)
                .all(|m| m.record.applied_generation >= g)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(s) = client.snapshot().await {
            if converged(&s, 0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signer = operator(dir, "benchraft");
    let mut samples = Vec::new();
    for _ in 0..rotations {
        let before = client
            .snapshot()
            .await
            .ok()
            .and_then(|s| s.valid_ring().map(|r| r.ring.generation()))
            .unwrap_or(0);
        let t0 = Instant::now();
        if client
            .request_rotation("bench", Some(&signer))
            .await
            .is_err()
        {
            continue;
        }
        // Polled every 2 ms: the Raft client's watch says that, not what, changed.
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(s) = client.snapshot().await {
                if converged(&s, before) {
                    samples.push(t0.elapsed());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in nodes {
        if let Some(s) = n.stop {
            let _ = s.send(());
        }
        n.task.abort();
    }
    for p in running {
        p.shutdown().await;
    }
    samples.sort();
    samples
}

/// Idle RSS (kB) and CPU (% of one core) of a real node process over `idle`.
fn footprint(endpoint: &str, dir: &Path, idle: Duration) -> Option<(u64, f64)> {
    let bin = std::env::current_exe()
        .ok()?
        .with_file_name("stek-test-node");
    if !bin.exists() {
        return None;
    }
    let mut children = Vec::new();
    for i in 0..3 {
        let id = format!("p{i}");
        let config = node_config(
            dir,
            "benchproc",
            &id,
            &format!("[etcd]\nendpoints = [\"{endpoint}\"]\n"),
            10,
        );
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["node", "--config"]).arg(&config.path);
        children.push(Server::spawn(&id, cmd, dir.join(format!("{id}.log"))));
    }
    std::thread::sleep(Duration::from_secs(5));
    for c in &mut children {
        c.assert_running(); // a node that died is reported with its exit status and log
    }
    let pid = children[1].pid();
    let cpu = |pid: u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?)
    };
    let before = cpu(pid)?;
    std::thread::sleep(idle);
    let after = cpu(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    drop(children); // SIGTERM, then SIGKILL
    let ticks = 100.0; // USER_HZ on Linux
    let pct = (after - before) as f64 / ticks / idle.as_secs_f64() * 100.0;
    Some((rss, pct))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let root = TestDir::new("bench");
    let etcd = EtcdServer::start(&root);
    let endpoint = etcd.endpoint();
    let keys = root.subdir("nodes");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let all: &[(usize, usize, u64)] = if quick {
        &[(3, 5, 60)]
    } else {
        &[(3, 30, 60), (10, 30, 60), (100, 10, 120), (1000, 3, 240)]
    };
    // STEK_BENCH_NS=1000 (or 3,100) measures only those N, for working on one of them; the
    // figures go to target/benchmark-results-partial.md, not to docs/.
    let only: Option<Vec<usize>> = std::env::var("STEK_BENCH_NS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let ns: Vec<(usize, usize, u64)> = all
        .iter()
        .copied()
        .filter(|(n, ..)| only.as_ref().is_none_or(|o| o.contains(n)))
        .collect();
    let results = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/benchmark-results.md"
    ));
    let target = if quick {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/benchmark-results-quick.md"
        ))
    } else if only.is_some() {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/benchmark-results-partial.md"
        ))
    } else {
        results
    };
    // Written after every section, so a run cut short keeps what it measured.
    let save = |out: &str| std::fs::write(&target, out).unwrap();
    let mut out = String::new();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        out,
        "# Benchmark results\n\nGenerated by `target/release/stek-bench{}` (cluster-tests/src/bin/stek-bench.rs) on {} ({cores} cores), etcd on loopback with its data on /dev/shm. Nothing here is asserted by tests.\n",
        if quick { " --quick" } else { "" },
        machine
    )
    .unwrap();

    rt.block_on(async {
        let rtt = bare_rtt(&endpoint, if quick { 50 } else { 300 }).await;
        let (p50, p99) = (percentile(&rtt, 0.5), percentile(&rtt, 0.99));
        writeln!(out, "## etcd's bare put-to-watch round trip\n\n{} samples: p50 {}, p99 {}.\n", rtt.len(), ms(p50), ms(p99)).unwrap();
        eprintln!("bare etcd rtt p50 {} p99 {}", ms(p50), ms(p99));

        writeln!(out, "## Rotation latency (request to every member applied), etcd\n\n| N | rotations | p50 | p99 | p99 / etcd p99 | to converge at start | store writes / rotation | bytes / rotation | ring record | target p99 | |\n|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
        for &(n, rotations, budget) in &ns {
            eprintln!("N = {n}: starting");
            let l = etcd_latency(&endpoint, &keys, n, rotations, Duration::from_secs(budget)).await;
            let (p50, p99l) = (percentile(&l.samples, 0.5), percentile(&l.samples, 0.99));
            let target = match n {
                3 => Duration::from_millis(50),
                100 => Duration::from_millis(300),
                1000 => Duration::from_secs(2),
                _ => Duration::ZERO,
            };
            let ratio = p99l.as_secs_f64() / p99.as_secs_f64().max(1e-9);
            let verdict = match (&l.failed, target.is_zero()) {
                (Some(why), _) => format!("not measured: {why}"),
                (None, true) => String::new(),
                (None, false) if p99l > target => format!("missed by {}", ms(p99l - target)),
                (None, false) if n == 3 && ratio > 5.0 => format!(
                    "time met; ratio missed: {ratio:.1}x etcd's round trip, target 5x"
                ),
                (None, false) => "met".into(),
            };
            writeln!(
                out,
                "| {} | {} | {} | {} | {:.1}x | {} | {:.0} | {:.0} | {} B | {} | {} |",
                l.n,
                l.samples.len(),
                ms(p50),
                ms(p99l),
                p99l.as_secs_f64() / p99.as_secs_f64().max(1e-9),
                ms(l.converge),
                l.writes,
                l.bytes,
                l.ring_bytes,
                if target.is_zero() { "-".into() } else { ms(target) },
                verdict
            )
            .unwrap();
            eprintln!("N = {n}: p50 {} p99 {} {}", ms(p50), ms(p99l), l.failed.unwrap_or_default());
            save(&out);
        }

        if !quick {
            out.push_str("\n### What bounds the misses\n\n\
- The ratio at N = 3: a rotation is about six store round trips one after another (the request's put, the leader's read, the ring write, the member's read, its file write and reload, its acknowledgement), so its floor is about 6x etcd's bare round trip; 5x is below what this protocol can reach.\n\
- N = 1000: the ring is one record holding a sealed copy for every member (the \"ring record\" column). etcd's watch pushes it to all N members and each parses it, so every ring write moves about N x that size (some 190 MB at N = 1000) through etcd and the members' JSON parser, on the same 2 cores as etcd (both run at full load during a rotation). Followers already watch and read only the ring, the leader and their own records; the next step is one key per member's copy, so that each member reads about 1 KB (docs/architecture.md, \"Record sizes\").\n");
        }
        save(&out);
        let raft = raft_latency(&keys, if quick { 5 } else { 30 }).await;
        writeln!(
            out,
            "\n## Rotation latency, embedded Raft coordinator (3 peers in one process)\n\n{} rotations: p50 {}, p99 {} (completion polled every 2 ms).\n",
            raft.len(),
            ms(percentile(&raft, 0.5)),
            ms(percentile(&raft, 0.99))
        )
        .unwrap();

        save(&out);
        let (kill, graceful, ttl) = failover(&endpoint, &keys).await;
        let show = |d: Option<Duration>| d.map_or("did not happen within 30 s".into(), ms);
        writeln!(
            out,
            "## Failover (etcd, 3 members, lease_ttl {ttl} s)\n\n- leader killed (task aborted, lease left to expire) to the next completed rotation: {} (target <= lease_ttl + 1 s = {} s)\n- graceful stop of the leader to a new leader: {} (target <= 1 s)\n",
            show(kill),
            ttl + 1,
            show(graceful)
        )
        .unwrap();
    });

    match footprint(&endpoint, &keys, Duration::from_secs(if quick { 5 } else { 30 })) {
        Some((rss, cpu)) => writeln!(
            out,
            "## Footprint of an idle node (a real `stek node` process, 3-member cluster)\n\nRSS {:.1} MB (target <= 20 MB), CPU {cpu:.2} % of one core.\n",
            rss as f64 / 1024.0
        )
        .unwrap(),
        None => writeln!(out, "## Footprint\n\nnot measured: build the `stek-test-node` binary next to stek-bench (`cargo build --release -p cluster-tests --bins`).\n").unwrap(),
    }
    print!("{out}");
    std::fs::write(&target, &out).unwrap();
    eprintln!("written to {}", target.display());
}
