//! The cross-box resumption soak's fleet: three boxes, each with a real nginx and a real
//! HAProxy fed through its runtime API, and a stek cluster on the embedded coordinator writing
//! their keys. The soak test (`tests/soak.rs`) runs stek on it and asserts that no valid ticket
//! is lost and no dropped key resumes; `stek-bench soak` runs stek and two baselines on it and
//! prints the three cross-box resumption rates side by side:
//!
//! - per-box independent keys (what servers do by default): nothing resumes across boxes;
//! - a naive rotation: every 2 s a new key pushed to every box at once, previous key kept, no
//!   staging, like a cron or Ansible push.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use stek_core::{KeyRing, KeyState, OsKeySource, Policy, RingKey, TicketKey};
use stek_node::Target;
use tracing::info;

use crate::cluster::{Backend, Cluster};
use crate::resumption::{clients_for, Endpoint, Fleet, Judging, Keys, Tally};
use crate::servers::{Haproxy, Nginx};
use crate::tls::{take_ticket_under, Tls};
use crate::{
    apply_all, argv_toml, require_binary, self_signed_cert, targets_from_toml, wait_until,
    RingDriver, TestDir,
};

/// One box: its two servers and where stek writes their keys.
struct Box_ {
    nginx: Nginx,
    haproxy: Haproxy,
    nginx_keys: PathBuf,
    haproxy_keys: PathBuf,
}

impl Box_ {
    /// The targets that feed this box's servers, outside stek's node (for the baselines).
    fn target_toml(&self) -> String {
        format!(
            "[rotation]\nretain = 1\n\
             [[target]]\nformat = \"nginx\"\npath = \"{}\"\nreload = {}\n\
             [[target]]\nformat = \"haproxy-runtime\"\npath = \"{}\"\nsocket = \"{}\"\n",
            self.nginx_keys.display(),
            argv_toml(
                &self
                    .nginx
                    .argv(&["-s", "reload"])
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            ),
            self.haproxy_keys.display(),
            self.haproxy.socket().display(),
        )
    }
}

/// What stek did during its part of the soak.
#[derive(Debug)]
pub struct StekRun {
    /// The resumption attempts and how they were judged.
    pub tally: Tally,
    /// Keys activated while the clients ran.
    pub rotations: usize,
    /// How long the clients ran.
    pub secs: u64,
}

/// Three boxes with their servers, and the stek cluster that feeds them.
#[derive(Debug)]
pub struct SoakFleet {
    /// The stek cluster (embedded coordinator, rotating every 2 s).
    pub cluster: Cluster,
    boxes: Vec<Box_>,
    dir: TestDir,
}

impl std::fmt::Debug for Box_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Box_")
            .field("nginx_keys", &self.nginx_keys)
            .field("haproxy_keys", &self.haproxy_keys)
            .finish_non_exhaustive()
    }
}

impl SoakFleet {
    /// Starts the cluster (`bin` is the stek-test-node binary), writes the first ring, then
    /// starts every box's nginx and HAProxy on it, and waits until every member applied it.
    pub fn start(bin: &str, tag: &str) -> Self {
        for b in ["nginx", "haproxy", "openssl"] {
            require_binary(b);
        }
        let mut c = Cluster::with_backend(bin, tag, 3, Backend::Raft);
        c.interval = "2s".into();
        let (cert, key, combined) = self_signed_cert(c.root.path());
        let mut boxes = Vec::new();
        for i in 0..3 {
            let n = &c.nodes[i];
            let nginx = Nginx::new(n.dir.join("nginx-server"), &n.keys, &cert, &key, 1);
            let hdir = n.dir.join("haproxy-keys");
            std::fs::create_dir_all(&hdir).expect("the HAProxy key directory");
            std::fs::set_permissions(&hdir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .expect("the HAProxy key directory's mode");
            let haproxy_keys = hdir.join("tls.keys");
            let haproxy = Haproxy::new(n.dir.join("haproxy-server"), &combined, &haproxy_keys);
            boxes.push(Box_ {
                nginx_keys: n.keys.clone(),
                haproxy_keys,
                nginx,
                haproxy,
            });
        }
        for (i, b) in boxes.iter().enumerate() {
            c.nodes[i].reload = b.nginx.reload_once_running();
            c.nodes[i].extra_toml = format!(
                "[[target]]\nformat = \"haproxy-runtime\"\npath = \"{}\"\nsocket = \"{}\"\nreload_timeout = \"5s\"\n",
                b.haproxy_keys.display(),
                b.haproxy.socket().display()
            );
        }
        c.start_all();
        info!("--- the nodes write the first ring; then the servers start");
        wait_until(
            Duration::from_secs(30),
            "first key files on every box",
            || {
                boxes
                    .iter()
                    .all(|b| b.nginx_keys.join("0.key").exists() && b.haproxy_keys.exists())
            },
        );
        for b in &mut boxes {
            b.nginx.start();
            b.haproxy.start();
        }
        c.wait_converged(Duration::from_secs(60));
        SoakFleet {
            cluster: c,
            boxes,
            dir: TestDir::new(&format!("{tag}-client")),
        }
    }

    /// The nginx of every box, then the HAProxy of every box.
    fn fleet(&self) -> Fleet {
        vec![
            self.boxes
                .iter()
                .map(|b| Endpoint {
                    port: b.nginx.port,
                    keys: Keys::NginxDir(b.nginx_keys.clone()),
                })
                .collect(),
            self.boxes
                .iter()
                .map(|b| Endpoint {
                    port: b.haproxy.port,
                    keys: Keys::HaproxyFile(b.haproxy_keys.clone()),
                })
                .collect(),
        ]
    }

    /// Clients take tickets from random boxes and resume them on others for `secs` while stek
    /// rotates every 2 s, judging every attempt against the resuming box's key files: inside
    /// the decrypt window (the key was there before and after) it must resume; outside it
    /// (gone for 1.5 s) it must not. Then the nodes stop; the servers keep running.
    pub fn run_stek(&mut self, secs: u64) -> StekRun {
        info!("--- stek: rotating every 2 s for {secs} s");
        let tally = clients_for(
            self.dir.path(),
            self.fleet(),
            Duration::from_secs(secs),
            Some(Judging {
                settle: Duration::ZERO,
                gone: Duration::from_millis(1500),
            }),
            || {},
        );
        let rotations = self.cluster.activated_epochs().len();
        info!("stek: {tally:?}; {rotations} rotations");
        for i in 0..3 {
            self.cluster.stop(i);
        }
        StekRun {
            tally,
            rotations,
            secs,
        }
    }

    /// Each box's servers fed by targets of their own, outside stek (after [`Self::run_stek`]).
    fn own_targets(&self) -> Vec<Vec<Target>> {
        self.boxes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let d = self.dir.subdir(&format!("targets-{i}"));
                targets_from_toml(&d, &b.target_toml())
            })
            .collect()
    }

    /// Baseline 1: every box with keys of its own, for `d` (after [`Self::run_stek`]).
    pub fn independent(&self, d: Duration) -> Tally {
        info!("--- baseline 1: per-box independent keys");
        for (t, b) in self.own_targets().iter().zip(&self.boxes) {
            let driver = RingDriver::new(1);
            let ring = driver.ring();
            apply_all(t, ring);
            // nginx's reload is asynchronous: until its worker of the previous configuration
            // stops accepting, it issues tickets under stek's shared key, which every box
            // still resumes. Start once each box issues tickets under its own key.
            let _ = take_ticket_under(
                b.nginx.port,
                Tls::V12,
                &self
                    .dir
                    .path()
                    .join(format!("independent-{}.pem", b.nginx.port)),
                *ring.active().key.name(),
                Duration::from_secs(10),
            );
        }
        let tally = clients_for(self.dir.path(), self.fleet(), d, None, || {});
        info!("independent: {tally:?}");
        tally
    }

    /// Baseline 2: every 2 s a new key pushed to every box at once, the previous one kept, no
    /// staging, for `d` (after [`Self::run_stek`]).
    pub fn naive(&self, d: Duration) -> Tally {
        info!("--- baseline 2: naive rotation every 2 s (new key everywhere at once, no staging)");
        let targets = self.own_targets();
        let mut previous = TicketKey::generate(&mut OsKeySource).expect("a key");
        let mut active = TicketKey::generate(&mut OsKeySource).expect("a key");
        let mut generation = 2;
        let push = |generation: u64, active: &TicketKey, previous: &TicketKey| {
            let ring = naive_ring(generation, active, previous);
            for t in &targets {
                apply_all(t, &ring);
            }
        };
        push(generation, &active, &previous);
        let mut last = Instant::now();
        let tally = clients_for(self.dir.path(), self.fleet(), d, None, || {
            if last.elapsed() >= Duration::from_secs(2) {
                last = Instant::now();
                previous = std::mem::replace(
                    &mut active,
                    TicketKey::generate(&mut OsKeySource).expect("a key"),
                );
                generation += 2;
                push(generation, &active, &previous);
            }
        });
        info!("naive: {tally:?}");
        tally
    }
}

/// A ring with only `active` encrypting and `previous` decrypting: no staged key.
fn naive_ring(generation: u64, active: &TicketKey, previous: &TicketKey) -> KeyRing {
    let now = SystemTime::now();
    let key = |epoch, state, key: &TicketKey, retired_in| RingKey {
        epoch,
        state,
        created_at: now,
        staged_in: generation.saturating_sub(1).max(1),
        retired_in,
        key: key.clone(),
    };
    KeyRing::from_parts(
        generation,
        vec![
            key(generation, KeyState::Retiring, previous, Some(generation)),
            key(generation + 1, KeyState::Active, active, None),
        ],
        generation + 1,
        now + Duration::from_secs(3600),
        &Policy {
            interval: Duration::from_secs(3600),
            retain: 1,
        },
    )
    .expect("a ring of two keys")
}

/// One line of the results table.
fn line(mode: &str, t: &Tally) -> String {
    format!(
        "{mode:<28} {:>8} {:>8} {:>6.1}%   {:>5} {:>5}\n",
        t.attempts,
        t.resumed,
        100.0 * t.rate(),
        t.aged_attempts,
        t.aged_resumed
    )
}

/// The results of a soak: stek's run, and the baselines that were measured.
pub fn report(stek: &StekRun, baselines: &[(&str, &Tally)]) -> String {
    let t = &stek.tally;
    let mut rows = line("stek (rotate every 2 s)", t);
    for (mode, tally) in baselines {
        rows.push_str(&line(mode, tally));
    }
    format!(
        "cross-box resumption, 3 boxes x (nginx + haproxy runtime API), TLS 1.2 and 1.3\n\
         fresh = a ticket resumed on another box right after it was issued; aged = a ticket\n\
         resumed seconds later (its key may have been dropped: expected to fail then)\n\n\
         {:<28} {:>8} {:>8} {:>7}   {:>5} {:>5}\n{rows}\n\
         stek: {} rotations in {} s; judged against the resuming box's key files:\n\
         inside the decrypt window {} (failed {}, must be 0); outside it {} (resumed {}, must be 0);\n\
         undecided (key arrived or left during the attempt) {}\n",
        "mode", "fresh", "resumed", "rate", "aged", "res.",
        stek.rotations, stek.secs,
        t.inside, t.inside_failed, t.outside, t.outside_resumed, t.undecided,
    )
}

/// Where the soak's results go: `target/soak-results.txt`.
pub fn results_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/soak-results.txt"
    ))
}
