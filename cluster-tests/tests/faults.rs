//! Fault suite (issue 7, part 2): three `stek node`s, etcd and the CLI each on a host of their
//! own in network namespaces the test makes (`cluster_tests::netns`), a real nginx per box fed
//! by its node, and the resumption client of the soak running the whole time. Faults, one
//! after another, on both coordinators:
//!
//! - a follower's cable pulled (rotations go on without it once its lease ends), then healed;
//! - the leader's cable pulled: it loses the leadership, a write under its term is refused by
//!   the store, rotations go on under the new leader; healed;
//! - SIGKILL of a follower and of the leader (the schedule survives: no rotation twice, none
//!   skipped), each restarted;
//! - SIGSTOP past the lease of a follower and of the leader, then SIGCONT;
//! - the coordinator gone: etcd SIGKILLed and restarted, or every Raft peer cut off;
//! - a reload that hangs past its timeout, and a full RAM disk (a 64 KiB tmpfs): the member
//!   blocks rotation, status names it, the files stay as they were;
//! - malformed records written into the store.
//!
//! Judged all along: a watcher reads every healthy box's files every 50 ms and checks I1 and
//! I2 between them (a key encrypts only once every healthy box had it; no box lacks another's
//! encrypting key for long); after every fault the cluster must converge and pass the full
//! invariant checker; the files of a box cut off from the store must not change (I4); the
//! resumption client judges every attempt against the resuming box's files. The suite prints
//! and writes (`target/fault-results-<backend>.txt`) faults injected, violations and failed
//! resumptions inside the window; the last two must be 0.
//!
//! `STEK_FAULT_ROUNDS=N` runs the list N times in a shuffled order (the long version); CI runs
//! one round. `STEK_FAULTS=HungReload,FullRamDisk` runs only the faults named.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // test harness code: a panic is the failure report

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cluster_tests::cluster::{check_invariants, Backend, Cluster, History, LEASE_TTL};
use cluster_tests::resumption::{Clients, Endpoint, Judging, Keys, Tally};
use cluster_tests::servers::Nginx;
use cluster_tests::watcher::Watcher;
use cluster_tests::{require_binary, self_signed_cert, wait_until, SmallDisk, TestDir};
use serde_json::Value;
use stek_raft::tls::PeerTls;
use stek_raft::wire::{call, Reply, Request};
use stek_store::keyspace::{Applied, Command as RaftCommand};
use stek_store::{CoordError, Coordinator, RingSlot, Term};
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

/// One suite at a time: each runs a cluster, three nginx and the clients on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn fault_suite_on_etcd() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run(Backend::Etcd);
}

#[test]
fn fault_suite_on_raft() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run(Backend::Raft);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    PartitionFollower,
    PartitionLeader,
    KillFollower,
    KillLeader,
    StopFollower,
    StopLeader,
    CoordinatorOutage,
    HungReload,
    FullRamDisk,
    MalformedRecords,
    RestartAfterAck,
    KillTwoTogether,
    PowerLoss,
    PartitionRaftLeader,
}

const ALL: [Fault; 14] = [
    Fault::PartitionFollower,
    Fault::PartitionLeader,
    Fault::KillFollower,
    Fault::KillLeader,
    Fault::StopFollower,
    Fault::StopLeader,
    Fault::CoordinatorOutage,
    Fault::HungReload,
    Fault::FullRamDisk,
    Fault::MalformedRecords,
    Fault::RestartAfterAck,
    Fault::KillTwoTogether,
    Fault::PowerLoss,
    Fault::PartitionRaftLeader,
];

/// The box whose key directory is the small RAM disk.
const SMALL: usize = 2;

fn run(backend: Backend) {
    for b in ["nginx", "openssl", "ip", "mount"] {
        require_binary(b);
    }
    let rounds: usize = std::env::var("STEK_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let only: Option<Vec<String>> = std::env::var("STEK_FAULTS")
        .ok()
        .map(|v| v.split(',').map(|f| f.trim().to_owned()).collect());
    let mut s = Suite::new(backend);
    let started = Instant::now();
    for round in 0..rounds {
        let mut order: Vec<Fault> = ALL
            .into_iter()
            // etcd's own leader is not stek's to cut off.
            .filter(|f| backend == Backend::Raft || *f != Fault::PartitionRaftLeader)
            .filter(|f| only.as_ref().is_none_or(|o| o.contains(&format!("{f:?}"))))
            .collect();
        if round > 0 {
            // Fisher-Yates with the test's randomness: later rounds mix the order.
            for i in (1..order.len()).rev() {
                order.swap(i, rand::random::<usize>() % (i + 1));
            }
        }
        for fault in order {
            s.inject(fault);
        }
    }
    s.finish(backend, started.elapsed());
}

/// One fault's line in the report.
struct Row {
    fault: Fault,
    secs: f64,
    tally: Tally,
    violations: usize,
    what: String,
}

struct Suite {
    // Unmounted before the cluster's directory goes.
    small: SmallDisk,
    c: Cluster,
    _nginx: Vec<Nginx>,
    hang: Vec<PathBuf>,
    history: History,
    watcher: Watcher,
    clients: Option<Clients>,
    _client_dir: TestDir,
    rows: Vec<Row>,
    violations: Vec<String>,
    /// The last activated epoch before each power loss (the new keys' epochs follow a gap).
    rekeyed_after: Vec<u64>,
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

impl Suite {
    fn new(backend: Backend) -> Self {
        let tag = match backend {
            Backend::Etcd => "faults-etcd",
            Backend::Raft => "faults-raft",
        };
        let mut c = Cluster::in_network(BIN, tag, 3, backend);
        let small = SmallDisk::mount(c.nodes[SMALL].dir.join("ramdisk"), 64 << 10);
        c.nodes[SMALL].keys = small.mount.join("nginx");
        std::fs::create_dir_all(&c.nodes[SMALL].keys).unwrap();
        std::fs::set_permissions(
            &c.nodes[SMALL].keys,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let (cert, key, _) = self_signed_cert(c.root.path());
        let mut nginx = Vec::new();
        let mut hang = Vec::new();
        for n in &mut c.nodes {
            let server = Nginx::new(n.dir.join("nginx-server"), &n.keys, &cert, &key, 1);
            // While the flag exists the reload hangs (and is killed at its 5 s timeout).
            let flag = n.dir.join("hang-reload");
            let mut reload = server.reload_once_running();
            reload[2] = format!(
                "while [ -e {} ]; do sleep 0.1; done; {}",
                flag.display(),
                reload[2]
            );
            n.reload = reload;
            hang.push(flag);
            nginx.push(server);
        }
        c.start_all();
        info!("--- the nodes write the first ring; then the servers start");
        wait_until(
            Duration::from_secs(60),
            "first key files on every box",
            || c.nodes.iter().all(|n| n.keys.join("0.key").exists()),
        );
        for n in &mut nginx {
            n.start();
        }
        let status = c.wait_converged(Duration::from_secs(60));
        let mut history = History::default();
        check_invariants(&c, &status, &mut history);
        let watcher = Watcher::start(
            c.nodes
                .iter()
                .map(|n| (n.id.clone(), n.keys.clone()))
                .collect(),
        );
        let client_dir = TestDir::new("faults-client");
        let fleet = vec![c
            .nodes
            .iter()
            .zip(&nginx)
            .map(|(n, s)| Endpoint {
                port: s.port,
                keys: Keys::NginxDir(n.keys.clone()),
            })
            .collect()];
        let clients = Clients::start(
            client_dir.path(),
            fleet,
            Some(Judging {
                // nginx -s reload returns before the workers switch.
                settle: Duration::from_secs(1),
                gone: Duration::from_millis(1500),
            }),
        );
        Self {
            small,
            c,
            _nginx: nginx,
            hang,
            history,
            watcher,
            clients: Some(clients),
            _client_dir: client_dir,
            rows: Vec::new(),
            violations: Vec::new(),
            rekeyed_after: Vec::new(),
        }
    }

    fn clients(&self) -> &Clients {
        self.clients.as_ref().unwrap()
    }

    /// `stek status --json` through node `via`, waiting out an election.
    fn status(&self, via: usize) -> Value {
        let mut last = None;
        wait_until(Duration::from_secs(30), "the store to answer", || {
            last = self.c.try_status(via);
            last.is_some()
        });
        last.unwrap()
    }

    fn leader(&self, via: usize) -> Option<usize> {
        let s = self.status(via);
        let id = s["leader"].as_str()?;
        self.c.nodes.iter().position(|n| n.id == id)
    }

    /// The current leader, once there is one.
    fn wait_leader(&self, via: usize, not: Option<usize>) -> usize {
        let mut found = None;
        wait_until(
            LEASE_TTL * 5,
            "a leader (another one than the faulty node)",
            || {
                found = self.leader(via).filter(|l| Some(*l) != not);
                found.is_some()
            },
        );
        found.unwrap()
    }

    /// A node that is not `i`.
    fn other(&self, i: usize) -> usize {
        (i + 1) % self.c.nodes.len()
    }

    /// A follower, picked at random.
    fn follower(&self) -> (usize, usize) {
        let l = self.wait_leader(0, None);
        let f = (l + 1 + rand::random::<usize>() % 2) % 3;
        (l, f)
    }

    /// The node a fault hits (the leader, or a random follower) and a healthy node to go
    /// through while it lasts.
    fn victim(&self, leader: bool) -> (usize, usize) {
        let (l, f) = self.follower();
        let victim = if leader { l } else { f };
        (victim, self.other(victim))
    }

    /// Records a violation (it does not stop the suite).
    fn violation(&mut self, what: String) {
        tracing::error!("VIOLATION: {what}");
        self.violations.push(what);
    }

    /// Runs `check`; a panic inside it is a violation named `what`.
    fn checked(&mut self, what: &str, check: impl FnOnce(&mut Self)) {
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| check(self))) {
            self.violation(format!("{what}: {}", panic_text(&*p)));
        }
    }

    /// `stek rotate --wait` through `via`, which must succeed while the fault lasts.
    fn rotate_during(&mut self, via: usize, why: &str) {
        let out = self.c.rotate_wait(via, "30s");
        if !out.status.success() {
            self.violation(format!(
                "{why}: rotate --wait failed: {}",
                text(&out).trim()
            ));
        }
    }

    /// Node `i`'s key files must stay as they are while it cannot reach the store (I4).
    fn files_unchanged(
        &mut self,
        i: usize,
        before: &BTreeMap<String, (Vec<u8>, i64, i64)>,
        why: &str,
    ) {
        if self.c.nodes[i].files_with_mtimes() != *before {
            let id = self.c.nodes[i].id.clone();
            self.violation(format!("I4: {id}'s key files changed {why}"));
        }
    }

    /// Waits until every running node applied the current ring and the leader has nothing
    /// left to do (no key drop pending, no request): a fault starts from a still cluster, so
    /// that what changes during it is the fault's doing.
    fn settle(&self) -> Value {
        let mut last = Value::Null;
        wait_until(
            Duration::from_secs(60),
            "the cluster to settle (converged, nothing pending)",
            || {
                let s = self.c.wait_converged(Duration::from_secs(30));
                let keys = s["keys"].as_array().map_or(0, Vec::len);
                let idle =
                    keys <= 3 && s["pending_requests"] == 0 && s["rotation"]["state"] == "idle";
                last = s;
                idle
            },
        );
        last
    }

    fn inject(&mut self, fault: Fault) {
        self.settle();
        info!("=== fault: {fault:?}");
        let t0 = Instant::now();
        let tally0 = self.clients().tally();
        let before = self.violations.len();
        let what = match fault {
            Fault::PartitionFollower => self.partition(false),
            Fault::PartitionLeader => self.partition(true),
            Fault::KillFollower => self.kill(false),
            Fault::KillLeader => self.kill(true),
            Fault::StopFollower => self.pause(false),
            Fault::StopLeader => self.pause(true),
            Fault::CoordinatorOutage => self.outage(),
            Fault::HungReload => self.blocked_member(Fault::HungReload),
            Fault::FullRamDisk => self.blocked_member(Fault::FullRamDisk),
            Fault::MalformedRecords => self.malformed(),
            Fault::RestartAfterAck => self.restart_after_ack(),
            Fault::KillTwoTogether => self.kill_two(),
            Fault::PowerLoss => self.power_loss(),
            Fault::PartitionRaftLeader => self.partition_raft_leader(),
        };
        self.after_fault(fault);
        let tally = self.clients().tally().since(&tally0);
        if tally.inside_failed > 0 {
            info!(
                "{fault:?}: {} resumptions failed inside the window",
                tally.inside_failed
            );
        }
        self.rows.push(Row {
            fault,
            secs: t0.elapsed().as_secs_f64(),
            tally,
            violations: self.violations.len() - before,
            what,
        });
    }

    /// After every fault: converge, the full checker, one more rotation, the checker again.
    fn after_fault(&mut self, fault: Fault) {
        let watched = self.watcher.take_violations();
        for v in watched {
            self.violation(format!("{fault:?}: {v}"));
        }
        self.checked("converge and check after the fault", |s| {
            let status = s.settle();
            // The fault's rotations were not checked one by one: the checker's step-by-step
            // epoch check starts again here, and the audit log must show every activation
            // once, in order.
            s.history.actives.clear();
            check_invariants(&s.c, &status, &mut s.history);
            let epochs = s.c.activated_epochs();
            // After a power loss the new keys take epochs after every old one, the old staged
            // key's included: the only gaps allowed.
            assert!(
                epochs
                    .windows(2)
                    .all(|w| w[1] == w[0] + 1 || (w[1] > w[0] && s.rekeyed_after.contains(&w[0]))),
                "I3: activations are not one epoch apart, each once: {epochs:?} (re-keys after {:?})",
                s.rekeyed_after
            );
            let active = cluster_tests::cluster::active_key(&status)["epoch"].as_u64();
            assert_eq!(
                active,
                epochs.last().copied(),
                "the store's active key is the last activated"
            );
        });
        // Every box is caught up again: watch them all.
        self.watcher.include_all();
        self.checked("rotate and check after the fault", |s| {
            let via = s.c.any_running();
            s.c.rotate_and_check(via, &mut s.history);
        });
        let watched = self.watcher.take_violations();
        for v in watched {
            self.violation(format!("after {fault:?}: {v}"));
        }
    }

    /// Cuts a follower's (or the leader's) cable for two rotations' worth of time.
    fn partition(&mut self, leader: bool) -> String {
        let (victim, via) = self.victim(leader);
        let term = self.status(via)["leader_term"].as_i64();
        let id = self.c.nodes[victim].id.clone();
        let files = self.c.nodes[victim].files_with_mtimes();
        self.watcher.exclude(victim);
        self.c.net().cut(&id);
        let mut what = format!("cut {id}");
        if leader {
            self.deposed(via, victim, term, &mut what);
        }
        // The first rotation may only need the staged key every box had; the second needs
        // the cut box's lease to have ended.
        self.rotate_during(via, "a box cut off");
        self.rotate_during(via, "a box cut off");
        self.files_unchanged(victim, &files, "while it was cut off from the store");
        self.c.net().heal(&id);
        if leader {
            self.logs_lost_leadership(victim);
        }
        what
    }

    /// With the leader `victim` cut off or frozen: another node must lead, and a write under
    /// the old leader's `term` must be refused.
    fn deposed(&mut self, via: usize, victim: usize, term: Option<i64>, what: &mut String) {
        let new = self.wait_leader(via, Some(victim));
        *what += &format!("; {} leads", self.c.nodes[new].id);
        self.refused_under(term.expect("a leader had a term"), what);
    }

    /// Once back, the deposed leader `victim` must say in its audit log that it lost the
    /// leadership.
    fn logs_lost_leadership(&mut self, victim: usize) {
        let c = &self.c;
        let lost = std::panic::catch_unwind(AssertUnwindSafe(|| {
            wait_until(LEASE_TTL * 10, "the old leader to log its loss", || {
                c.nodes[victim].log_text().contains("leadership lost")
            })
        }));
        if lost.is_err() {
            let id = &self.c.nodes[victim].id;
            self.violation(format!("{id} never logged that it lost the leadership"));
        }
    }

    /// A write under the deposed leader's `term`, sent to the store now: must be refused.
    fn refused_under(&mut self, term: i64, what: &mut String) {
        let name = self.c.name.clone();
        let endpoint = self.c.etcd.as_ref().map(|e| e.endpoint());
        let peers: Vec<String> = self.c.nodes.iter().map(|n| n.raft_addr.clone()).collect();
        let tls = outsider_tls(&self.c);
        let result = self.c.net().on_host("ctl", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match endpoint {
                    Some(e) => {
                        let store = stek_etcd::Etcd::connect(&[e], &name)
                            .await
                            .map_err(|e| e.to_string())?;
                        write_under(&store, term).await
                    }
                    None => {
                        let store =
                            stek_raft::client::RaftClient::new(&name, peers, None).with_tls(tls);
                        write_under(&store, term).await
                    }
                }
            })
        });
        match result {
            Ok(()) => *what += &format!("; a write under the old term {term} was refused"),
            Err(e) => self.violation(format!("I3: {e}")),
        }
    }

    /// SIGKILL of a follower or the leader, a rotation (or for the leader, the schedule
    /// check), then a restart.
    fn kill(&mut self, leader: bool) -> String {
        let (victim, via) = self.victim(leader);
        let id = self.c.nodes[victim].id.clone();
        let before = self.status(via);
        self.watcher.exclude(victim);
        self.c.kill(victim);
        let mut what = format!("SIGKILL {id}");
        if leader {
            let new = self.wait_leader(via, Some(victim));
            // I8: the new leader neither rotates at once nor moves the schedule.
            let after = self.status(via);
            let active = |s: &Value| cluster_tests::cluster::active_key(s)["epoch"].as_u64();
            if active(&after) != active(&before)
                || after["next_rotation_at"] != before["next_rotation_at"]
            {
                self.violation(format!(
                    "I8: the failover to {} changed the schedule or rotated: before {} / {}, after {} / {}",
                    self.c.nodes[new].id,
                    before["next_rotation_at"],
                    active(&before).unwrap_or(0),
                    after["next_rotation_at"],
                    active(&after).unwrap_or(0)
                ));
            }
            what += &format!("; {} leads, schedule kept", self.c.nodes[new].id);
        }
        self.rotate_during(via, "a member killed");
        self.c.start(victim);
        what + "; restarted"
    }

    /// SIGSTOP past the lease, then SIGCONT.
    fn pause(&mut self, leader: bool) -> String {
        let (victim, via) = self.victim(leader);
        let term = self.status(via)["leader_term"].as_i64();
        let id = self.c.nodes[victim].id.clone();
        self.watcher.exclude(victim);
        self.c.pause(victim, true);
        let mut what = format!("SIGSTOP {id}");
        if leader {
            self.deposed(via, victim, term, &mut what);
        }
        self.rotate_during(via, "a member frozen");
        self.c.pause(victim, false);
        if leader {
            self.logs_lost_leadership(victim);
        }
        what + "; SIGCONT"
    }

    /// The store gone for a while: nothing on any box may change (I4), and a rotation
    /// request fails with a clear error.
    fn outage(&mut self) -> String {
        let files: Vec<_> = self.c.nodes.iter().map(|n| n.files_with_mtimes()).collect();
        let what = match self.c.backend {
            Backend::Etcd => {
                self.c.etcd().kill();
                "etcd SIGKILLed for 8 s, then restarted"
            }
            Backend::Raft => {
                for n in 0..self.c.nodes.len() {
                    let id = self.c.nodes[n].id.clone();
                    self.c.net().cut(&id);
                }
                "every Raft peer cut off for 8 s, then healed"
            }
        };
        let out = self.c.rotate_wait(0, "3s");
        if out.status.success() {
            self.violation("rotate succeeded with the store gone".into());
        } else if !text(&out).contains("unreachable") && !text(&out).contains("did not answer") {
            info!("rotate without a store said: {}", text(&out).trim());
        }
        std::thread::sleep(Duration::from_secs(8));
        for (i, f) in files.iter().enumerate() {
            self.files_unchanged(i, f, "while the store was gone");
        }
        match self.c.backend {
            Backend::Etcd => self.c.etcd().restart(),
            Backend::Raft => {
                for n in 0..self.c.nodes.len() {
                    let id = self.c.nodes[n].id.clone();
                    self.c.net().heal(&id);
                }
            }
        }
        what.into()
    }

    /// A follower SIGKILLed and restarted right after it acknowledged a rotation, then the
    /// leader SIGKILLed: the follower comes back with what it had (its Raft log on disk, its
    /// sealing key on its RAM disk) and the acknowledged ring is never lost or rolled back.
    fn restart_after_ack(&mut self) -> String {
        let (leader, follower) = self.follower();
        let (lid, fid) = (
            self.c.nodes[leader].id.clone(),
            self.c.nodes[follower].id.clone(),
        );
        // --wait returns once every member, the follower included, acknowledged.
        self.rotate_during(follower, "before the restarts");
        let acked = self.status(leader)["generation"].as_u64();
        self.watcher.exclude(follower);
        self.c.kill(follower);
        self.c.start(follower);
        self.watcher.exclude(leader);
        self.c.kill(leader);
        let via = follower;
        let new = self.wait_leader(via, Some(leader));
        let now = self.status(via)["generation"].as_u64();
        if now < acked {
            self.violation(format!(
                "the ring went back from generation {acked:?} to {now:?} after {fid} restarted and {lid} died"
            ));
        }
        self.rotate_during(via, "the old leader dead, the follower restarted");
        self.c.start(leader);
        format!(
            "{fid} SIGKILLed and restarted after acking generation {}; {lid} (leader) SIGKILLed; {} leads; restarted",
            acked.unwrap_or(0),
            self.c.nodes[new].id
        )
    }

    /// Two of the three boxes SIGKILLed together while the third lives, then both started
    /// together: on the embedded coordinator the group has no quorum meanwhile (the third box
    /// must change nothing), and the two come back with their state, never a new history.
    fn kill_two(&mut self) -> String {
        let survivor = rand::random::<usize>() % 3;
        let victims: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
        let before = self.status(survivor);
        let files = self.c.nodes[survivor].files_with_mtimes();
        for &v in &victims {
            self.watcher.exclude(v);
            self.c.kill(v);
        }
        std::thread::sleep(LEASE_TTL * 2);
        if self.c.backend == Backend::Raft {
            self.files_unchanged(survivor, &files, "while the group had no quorum");
        }
        for &v in &victims {
            self.c.start(v);
        }
        let after = self.status(survivor);
        let fps = |s: &Value| -> Vec<String> {
            s["keys"]
                .as_array()
                .map(|k| {
                    k.iter()
                        .filter_map(|k| k["fingerprint"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        if after["generation"].as_u64() < before["generation"].as_u64()
            || fps(&after).iter().all(|f| !fps(&before).contains(f))
        {
            self.violation(format!(
                "KillTwoTogether: the restarted pair started another history: before {before}, after {after}"
            ));
        }
        self.rotate_during(survivor, "after two restarted together");
        let ids: Vec<&str> = victims
            .iter()
            .map(|v| self.c.nodes[*v].id.as_str())
            .collect();
        format!(
            "{} SIGKILLed together, {} alive; both restarted, same ring",
            ids.join(" and "),
            self.c.nodes[survivor].id
        )
    }

    /// Every box stops at once and comes back with an empty RAM disk (no key files, no
    /// sealing key): the store still holds the ring, sealed, which nobody can open; the new
    /// keys continue the generation and the epoch numbering. The servers are marked stale
    /// meanwhile (they keep what they loaded while their files are gone).
    fn power_loss(&mut self) -> String {
        let before = self.status(0);
        let last_epoch = before["keys"]
            .as_array()
            .map(|k| {
                k.iter()
                    .filter_map(|k| k["epoch"].as_u64())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let activated = self.c.activated_epochs().last().copied().unwrap_or(0);
        for i in 0..3 {
            self.watcher.exclude(i);
            self.clients().set_stale(i, true);
            self.c.kill(i);
        }
        for n in &self.c.nodes {
            n.wipe_ram_disk();
        }
        self.c.start_all();
        // The old members' records (and, until a leader expires them, their leases) still say
        // "applied": wait for the new keys before waiting for the cluster to settle.
        let c = &self.c;
        let old = before["generation"].as_u64();
        let moved_on = std::panic::catch_unwind(AssertUnwindSafe(|| {
            wait_until(
                Duration::from_secs(60),
                "new keys after the power loss",
                || {
                    c.try_status(0)
                        .is_some_and(|s| s["generation"].as_u64() > old)
                },
            );
        }));
        if let Err(p) = moved_on {
            self.violation(format!("PowerLoss: {}", panic_text(&*p)));
        }
        let after = self.settle();
        // `nginx -s reload` returns before the old workers (holding the lost keys) are gone:
        // the servers stay stale for the judge's settle time and a margin.
        std::thread::sleep(Duration::from_secs(3));
        for i in 0..3 {
            self.clients().set_stale(i, false);
        }
        let epochs: Vec<u64> = after["keys"]
            .as_array()
            .map(|k| k.iter().filter_map(|k| k["epoch"].as_u64()).collect())
            .unwrap_or_default();
        if epochs.iter().any(|e| *e <= last_epoch)
            || after["generation"].as_u64() <= before["generation"].as_u64()
        {
            self.violation(format!(
                "PowerLoss: the new keys do not continue the numbering: before {before}, after {after}"
            ));
        }
        self.rekeyed_after.push(activated);
        format!(
            "every box SIGKILLed, RAM disks wiped, restarted: generation {} -> {}, epochs after {last_epoch}",
            before["generation"], after["generation"]
        )
    }

    /// The Raft leader's box cut off from the other two: the majority elects another Raft
    /// leader and rotates on; the cut-off box must say the store is down (stek_store_up 0)
    /// instead of serving what it last knew, and change no file.
    fn partition_raft_leader(&mut self) -> String {
        let via = self.c.any_running();
        let out = self.c.cli_sub(via, &["peers", "list"]);
        let listing = text(&out);
        let raft_leader = listing
            .lines()
            .find(|l| l.contains("(leader)"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|name| self.c.nodes.iter().position(|n| n.id == name));
        let Some(victim) = raft_leader else {
            self.violation(format!(
                "PartitionRaftLeader: no Raft leader listed: {listing}"
            ));
            return "no Raft leader found".into();
        };
        let id = self.c.nodes[victim].id.clone();
        let via = self.other(victim);
        let files = self.c.nodes[victim].files_with_mtimes();
        self.watcher.exclude(victim);
        let cut = Instant::now();
        self.c.net().cut(&id);
        let mut down_after = None;
        let c = &self.c;
        let seen = std::panic::catch_unwind(AssertUnwindSafe(|| {
            wait_until(
                LEASE_TTL * 4,
                "the cut-off box to report the store down",
                || c.metric(victim, "stek_store_up") == Some(0.0),
            );
        }));
        match seen {
            Ok(()) => down_after = Some(cut.elapsed()),
            Err(p) => self.violation(format!(
                "PartitionRaftLeader: {id} cut off as the Raft leader: {}",
                panic_text(&*p)
            )),
        }
        self.rotate_during(via, "the Raft leader cut off");
        self.files_unchanged(victim, &files, "while it was cut off as the Raft leader");
        self.c.net().heal(&id);
        format!(
            "cut {id} (the Raft leader); its box reported stek_store_up 0 after {:.1} s (lease TTL {} s); the majority rotated on",
            down_after.map_or(f64::NAN, |d| d.as_secs_f64()),
            LEASE_TTL.as_secs()
        )
    }

    /// A member alive but unable to apply: its reload hangs past the timeout, or its RAM disk
    /// is full. It must block the rotation, status must name it, and its files must stay.
    fn blocked_member(&mut self, fault: Fault) -> String {
        let victim = match fault {
            Fault::FullRamDisk => SMALL,
            _ => self.follower().1,
        };
        let via = self.other(victim);
        let id = self.c.nodes[victim].id.clone();
        let (what, expect) = match fault {
            Fault::FullRamDisk => {
                self.small.fill();
                (format!("{id}'s RAM disk full"), "No space left")
            }
            _ => {
                std::fs::write(&self.hang[victim], b"").unwrap();
                // nginx keeps the keys it loaded last; its files move on without it.
                self.clients().set_stale(victim, true);
                (format!("{id}'s reload hangs"), "did not finish within")
            }
        };
        let files = self.c.nodes[victim].files_with_mtimes();
        let out = self.c.rotate_wait(via, "12s");
        let said = text(&out);
        if out.status.success() {
            self.violation(format!("rotate --wait succeeded while {what}: {said}"));
        } else if !said.contains(&id) {
            self.violation(format!("rotate --wait did not name {id}: {said}"));
        }
        let status = self.status(via);
        let member = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node_id"] == id.as_str())
            .cloned()
            .unwrap_or_default();
        let err = member["last_error"].as_str().unwrap_or_default().to_owned();
        if !err.contains(expect) {
            self.violation(format!(
                "status does not say why {id} lags (want \"{expect}\"): {member}"
            ));
        }
        if fault == Fault::FullRamDisk {
            self.files_unchanged(victim, &files, "when the RAM disk was full");
        }
        // One more request: it must wait for the member, not pass it by.
        let out = self.c.cli(via, &["rotate"]);
        assert!(out.status.success(), "{}", text(&out));
        std::thread::sleep(Duration::from_secs(2));
        let status = self.status(via);
        let blocked: Vec<&str> = status["rotation"]["blocked_by"]
            .as_array()
            .map(|a| a.iter().filter_map(|b| b["node_id"].as_str()).collect())
            .unwrap_or_default();
        if !blocked.contains(&id.as_str()) {
            self.violation(format!(
                "I7: a rotation is not blocked by {id} while {what}: {}",
                status["rotation"]
            ));
        }
        match fault {
            Fault::FullRamDisk => self.small.empty(),
            _ => {
                std::fs::remove_file(&self.hang[victim]).unwrap();
                // Its next reload must succeed before its files say what nginx holds.
                self.settle();
                self.clients().set_stale(victim, false);
            }
        }
        format!("{what}; blocked, named with \"{expect}\"")
    }

    /// Malformed records in the store: rejected, logged, never applied; the leader restores a
    /// malformed ring; no box's files change.
    fn malformed(&mut self) -> String {
        let files: Vec<_> = self.c.nodes.iter().map(|n| n.files_with_mtimes()).collect();
        let prefix = format!("/stek/{}/", self.c.name);
        let what = match self.c.backend {
            Backend::Etcd => {
                let etcd = self.c.etcd();
                for (k, v) in [
                    ("ring", "garbage"),
                    ("members/zz-garbage", "{\"version\":"),
                    ("requests/zz-garbage", "\u{1}\u{2}"),
                ] {
                    etcd.put(&format!("{prefix}{k}"), v.as_bytes());
                }
                "garbage in the ring, a member record and a request"
            }
            Backend::Raft => {
                let term = self.status(0)["leader_term"].as_i64().unwrap();
                let peers: Vec<String> = self.c.nodes.iter().map(|n| n.raft_addr.clone()).collect();
                let key = format!("{prefix}requests/zz-garbage");
                let tls = outsider_tls(&self.c);
                let ring_reply = self
                    .c
                    .net()
                    .on_host("ctl", move || raft_writes(&peers, term, key, tls.as_ref()));
                match ring_reply {
                    Ok(()) => {}
                    Err(e) => self.violation(e),
                }
                "a garbage ring under the leader's term (refused), a garbage member record, \
                 a garbage request and garbage frames to every peer"
            }
        };
        // The leader sees the garbage at once and repairs the ring. (A follower reads other
        // members' records, and so logs theirs, only at its full read every 30 s.)
        let leader = self.wait_leader(0, None);
        let c = &self.c;
        let seen = std::panic::catch_unwind(AssertUnwindSafe(|| {
            wait_until(
                Duration::from_secs(20),
                "the leader to reject the garbage",
                || {
                    c.nodes[leader]
                        .log_text()
                        .contains("rejected a record from the store")
                },
            );
        }));
        if seen.is_err() {
            self.violation("the leader did not log the malformed records".into());
        }
        let status = self.status(0);
        let rejected = status["rejected_records"].as_array().map_or(0, Vec::len);
        if rejected == 0 {
            self.violation(format!("status lists no rejected record: {status}"));
        }
        // Same keys: the restored ring changes no file.
        let _ = self.c.wait_converged(Duration::from_secs(30));
        for (i, f) in files.iter().enumerate() {
            self.files_unchanged(i, f, "after malformed records");
        }
        if self.c.backend == Backend::Etcd {
            for k in ["members/zz-garbage", "requests/zz-garbage"] {
                let out = self.c.etcd().ctl(&["del", &format!("{prefix}{k}")]);
                assert!(out.status.success(), "{}", text(&out));
            }
        }
        what.into()
    }

    fn finish(mut self, backend: Backend, took: Duration) {
        let tally = self.clients.take().unwrap().stop();
        let samples = self.watcher.stop();
        // I3 over the whole run: no epoch was activated twice.
        let epochs = self.c.activated_epochs();
        let mut unique = epochs.clone();
        unique.dedup();
        if unique != epochs {
            self.violation(format!("I3: an epoch was activated twice: {epochs:?}"));
        }
        let (history, applies) = self.c.applied_history_violations();
        for v in history {
            self.violation(format!("history: {v}"));
        }
        self.checked("I6: no key bytes in any log", |s| {
            cluster_tests::cluster::assert_no_key_bytes_in_logs(&s.c, &s.history);
        });
        let mut report = format!(
            "fault suite on {backend:?}: 3 nodes{} and the CLI on hosts of their own (network \
             namespaces), nginx per box, resumption client throughout ({:.0} s)\n\n\
             {:<20} {:>6} {:>7} {:>7} {:>7} {:>5}  what\n",
            if backend == Backend::Etcd {
                ", etcd"
            } else {
                ""
            },
            took.as_secs_f64(),
            "fault",
            "secs",
            "inside",
            "failed",
            "outside",
            "viol."
        );
        for r in &self.rows {
            report += &format!(
                "{:<20} {:>6.1} {:>7} {:>7} {:>7} {:>5}  {}\n",
                format!("{:?}", r.fault),
                r.secs,
                r.tally.inside,
                r.tally.inside_failed,
                r.tally.outside,
                r.violations,
                r.what
            );
        }
        report += &format!(
            "\nfaults injected: {}\ninvariant violations: {} (must be 0)\n\
             failed resumptions inside the window: {} of {} (must be 0)\n\
             resumed outside the window: {} of {} (must be 0)\n\
             on a box whose reload hung, resumed with a key its files had dropped: {} of {} \
             (nginx keeps what it loaded last)\n\
             fresh cross-box resumptions: {} of {}; watcher samples: {samples}; rotations: {}\n\
             history: {applies} ring applies read from every node's logs; a generation applied \
             as two rings, or a node's generation going down, is a violation above\n",
            self.rows.len(),
            self.violations.len(),
            tally.inside_failed,
            tally.inside,
            tally.outside_resumed,
            tally.outside,
            tally.stale_outside_resumed,
            tally.stale_outside,
            tally.resumed,
            tally.attempts,
            epochs.len(),
        );
        for v in &self.violations {
            report += &format!("  violation: {v}\n");
        }
        println!("{report}");
        let name = match backend {
            Backend::Etcd => "etcd",
            Backend::Raft => "raft",
        };
        let results = PathBuf::from(format!(
            "{}/../target/fault-results-{name}.txt",
            env!("CARGO_MANIFEST_DIR")
        ));
        std::fs::write(&results, &report).unwrap();
        info!("written to {}", results.display());
        assert!(self.violations.is_empty(), "{report}");
        assert_eq!(tally.inside_failed, 0, "{report}");
        assert_eq!(tally.outside_resumed, 0, "{report}");
        assert!(
            tally.inside >= 20,
            "the client judged too few attempts: {report}"
        );
        assert!(samples >= 100, "the watcher hardly ran: {report}");
    }
}

/// Writes the stored ring again under `term`; `Ok` if the store refuses it as fenced.
async fn write_under<C: Coordinator>(store: &C, term: i64) -> Result<(), String> {
    let snap = store.snapshot().await.map_err(|e| e.to_string())?;
    let RingSlot::Valid(stored) = snap.ring else {
        return Err("no valid ring to write again".into());
    };
    match store
        .write_ring(Term(term), snap.ring_revision, &stored, &[])
        .await
    {
        Err(CoordError::Fenced(_)) => Ok(()),
        Ok(_) => Err(format!(
            "a write under the deposed term {term} was accepted"
        )),
        Err(e) => Err(format!(
            "a write under the deposed term {term} failed otherwise: {e}"
        )),
    }
}

/// Mutual TLS as member "zz-garbage": a valid certificate of the cluster's CA for a member that
/// is no Raft peer (the Raft faults' writer: it may write as itself, and the ring write is the
/// store's to refuse). `None` when the cluster runs insecure.
fn outsider_tls(c: &Cluster) -> Option<PeerTls> {
    let ca = c.ca.as_ref()?;
    let dir = c.root.subdir("zz-garbage");
    if !dir.join("zz-garbage.pem").exists() {
        ca.issue_member("zz-garbage", "127.0.0.1", &dir);
    }
    let pem = |n: &str| std::fs::read(dir.join(n)).unwrap();
    Some(
        PeerTls::from_pem(
            &std::fs::read(ca.cert()).unwrap(),
            &pem("zz-garbage.pem"),
            &pem("zz-garbage.key"),
        )
        .unwrap(),
    )
}

/// The Raft backend's malformed input: a garbage ring under the leader's own term (the group
/// must refuse it), a garbage member record and request (accepted by the log, rejected by
/// every reader), and frames that are not JSON to every peer.
fn raft_writes(
    peers: &[String],
    term: i64,
    request_key: String,
    tls: Option<&PeerTls>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let write = |cmd: RaftCommand| async move {
            // Any peer; follow its redirect to the leader.
            for p in peers {
                let mut target = p.clone();
                for _ in 0..3 {
                    match call(
                        &target,
                        &Request::Write(cmd.clone()),
                        Duration::from_secs(3),
                        tls,
                    )
                    .await
                    {
                        Ok(Reply::NotLeader(Some(l))) => target = l,
                        // Refused before the log (a fence), or applied (with its revision).
                        Ok(Reply::Applied(a)) => return Ok(a),
                        Ok(Reply::Written(o)) => return Ok(o.applied),
                        _ => break,
                    }
                }
            }
            Err("no Raft peer took the write".to_owned())
        };
        let ring = write(RaftCommand::WriteRing {
            term: u64::try_from(term).unwrap(),
            value: b"garbage".to_vec(),
            served: vec![],
            expected: None,
            copies: Default::default(),
        })
        .await?;
        // Stale: refused by the store (not newer); Fenced: refused before it, because the
        // writer's certificate names a member that does not lead ([identity]).
        if !matches!(ring, Applied::Stale | Applied::Fenced) {
            return Err(format!("a garbage ring was not refused: {ring:?}"));
        }
        write(RaftCommand::PutMember {
            node_id: "zz-garbage".into(),
            value: b"{\"version\":".to_vec(),
        })
        .await?;
        write(RaftCommand::PutRequest {
            key: request_key,
            value: vec![1, 2],
            by: None,
        })
        .await?;
        for p in peers {
            use tokio::io::AsyncWriteExt;
            if let Ok(mut s) = tokio::net::TcpStream::connect(p.as_str()).await {
                let _ = stek_raft::wire::write_frame(&mut s, b"\x00not json\xff").await;
                let _ = s.write_all(&[0xff; 64]).await;
            }
        }
        Ok(())
    })
}
