//! HAProxy 2.6: two real instances on loopback (master-worker mode) sharing one
//! tls-ticket-keys file written by stek. Once applied by reload (format `haproxy`, SIGUSR2 to
//! the master), once through the stats socket without any reload (format `haproxy-runtime`).

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::scenario::{ticket_sharing, wait_for_encrypting_key, TargetPool, BOTH};
use cluster_tests::tls::{resume, take_ticket, ticket_key_name, Handshake, Tls};
use cluster_tests::{
    apply_all, free_port, hex, init_logging, require_binary, self_signed_cert, wait_for_port,
    write_first_ring, RingDriver, Server, TestDir,
};
use stek_core::KeyRing;
use stek_node::haproxy_runtime::RuntimeTarget;

struct Instance {
    dir: PathBuf,
    port: u16,
    server: Option<Server>,
}

impl Instance {
    fn new(root: &TestDir, tag: &str, combined: &Path, keys: &Path) -> Self {
        let dir = root.subdir(tag);
        let port = free_port();
        let d = dir.display();
        let cfg = format!(
            "global\n  pidfile {d}/haproxy.pid\n  stats socket {d}/admin.sock mode 600 level admin\n\
             tune.ssl.cachesize 0\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\n\
             frontend fe\n  bind 127.0.0.1:{port} ssl crt {crt} tls-ticket-keys {keys}\n\
             http-request return status 200 content-type text/plain string ok\n",
            crt = combined.display(),
            keys = keys.display(),
        );
        std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
        Self {
            dir,
            port,
            server: None,
        }
    }

    fn start(&mut self) {
        let mut cmd = Command::new("haproxy");
        cmd.args(["-W", "-db", "-f"])
            .arg(self.dir.join("haproxy.cfg"));
        self.server = Some(Server::spawn("haproxy", cmd, self.dir.join("haproxy.log")));
        wait_for_port(self.port, Duration::from_secs(10));
        self.server.as_mut().unwrap().assert_running();
    }

    fn pid(&self) -> u32 {
        self.server.as_ref().expect("started").pid()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
}

fn setup(tag: &str) -> (TestDir, PathBuf, Instance, Instance) {
    init_logging();
    require_binary("haproxy");
    require_binary("openssl");
    let root = TestDir::new(tag);
    let (_, _, combined) = self_signed_cert(root.path());
    let keys_dir = root.subdir("keys");
    let keys = keys_dir.join("haproxy.keys");
    let a = Instance::new(&root, "a", &combined, &keys);
    let b = Instance::new(&root, "b", &combined, &keys);
    (root, keys, a, b)
}

const ROTATION: &str = "[rotation]\nretain = 1\n";

#[test]
fn haproxy_file_and_reload_share_tickets_through_rotations() {
    let (root, keys, mut a, mut b) = setup("haproxy");
    // HAProxy refuses to start without its key file: write a first ring, then start.
    let initial = format!(
        "{ROTATION}[[target]]\nformat = \"haproxy\"\npath = \"{}\"\n",
        keys.display()
    );
    write_first_ring(&root, &initial);
    a.start();
    b.start();
    // Both servers read one file here, so one target writes it and reloads both.
    let live = format!(
        "{ROTATION}[[target]]\nformat = \"haproxy\"\npath = \"{k}\"\nreload = [\"sh\", \"-c\", \"kill -USR2 {pa} {pb}\"]\nreload_timeout = \"5s\"\n",
        k = keys.display(),
        pa = a.pid(),
        pb = b.pid(),
    );
    let mut pool = TargetPool::from_toml("haproxy", (a.port, b.port), &root, &live);
    ticket_sharing(&root, &mut pool, BOTH, Duration::from_secs(20));
}

#[test]
fn haproxy_runtime_api_applies_rings_without_reload() {
    let (root, keys, mut a, mut b) = setup("haproxy-rt");
    let initial = format!(
        "{ROTATION}[[target]]\nformat = \"haproxy\"\npath = \"{}\"\n",
        keys.display()
    );
    write_first_ring(&root, &initial);
    a.start();
    b.start();
    let target = |i: &Instance| {
        format!(
            "[[target]]\nformat = \"haproxy-runtime\"\npath = \"{}\"\nsocket = \"{}\"\n",
            keys.display(),
            i.socket().display()
        )
    };
    let live = format!("{ROTATION}{}{}", target(&a), target(&b));
    let mut pool = TargetPool::from_toml("haproxy-runtime", (a.port, b.port), &root, &live);
    let (pid_a, pid_b) = (a.pid(), b.pid());
    ticket_sharing(&root, &mut pool, BOTH, Duration::from_secs(5));
    assert_eq!((a.pid(), b.pid()), (pid_a, pid_b), "no restart happened");
    assert!(
        !a.server
            .as_ref()
            .unwrap()
            .log_text()
            .contains("Reloading HAProxy"),
        "the runtime target must not reload HAProxy"
    );

    tracing::info!(
        "--- haproxy-runtime: one rotation is exactly one push; a re-apply pushes nothing"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime_a = RuntimeTarget {
        socket: a.socket(),
        id: keys.display().to_string(),
    };
    let mut driver = RingDriver::new(1);
    let format = stek_core::formats::build(
        "haproxy-runtime",
        &stek_core::FormatOptions {
            key_size: None,
            slots: None,
            retain: 1,
        },
    )
    .unwrap();
    let wanted = |r: &KeyRing| format.runtime_ring(r).unwrap();
    rt.block_on(runtime_a.apply(&wanted(driver.ring())))
        .unwrap();
    assert_eq!(
        rt.block_on(runtime_a.apply(&wanted(driver.ring())))
            .unwrap(),
        0
    );
    driver.rotate();
    assert_eq!(
        rt.block_on(runtime_a.apply(&wanted(driver.ring())))
            .unwrap(),
        1
    );

    tracing::info!("--- haproxy-runtime: a reload re-reads the file, which holds the same ring");
    apply_all(&pool.targets, driver.ring());
    let active = driver.active_name();
    let before = take_ticket(a.port, Tls::V12, &root.join("before-reload.pem"));
    assert_eq!(hex(&ticket_key_name(&before)), hex(&active));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    // The same log marker the no-reload assertion above relies on must appear now.
    cluster_tests::wait_until(
        Duration::from_secs(10),
        "HAProxy A to log its reload",
        || {
            a.server
                .as_ref()
                .unwrap()
                .log_text()
                .contains("Loading success.\n")
                && a.server
                    .as_ref()
                    .unwrap()
                    .log_text()
                    .contains("Reloading HAProxy")
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = rt.block_on(runtime_a.show()).unwrap();
    let want = wanted(driver.ring());
    assert!(
        after == want,
        "after a reload HAProxy must hold the same ring it was pushed"
    );
    wait_for_encrypting_key(&root, a.port, Tls::V12, active, Duration::from_secs(10));
    assert_eq!(resume(b.port, &before), Handshake::Reused);
}
