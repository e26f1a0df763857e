//! HAProxy 2.6: two real instances on loopback (master-worker mode) sharing one
//! tls-ticket-keys file written by stek. Once applied by reload (format `haproxy`, SIGUSR2 to
//! the master), once through the stats socket without any reload (format `haproxy-runtime`).

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration;

use cluster_tests::scenario::{ticket_sharing, wait_for_encrypting_key, TargetPool, BOTH};
use cluster_tests::servers::Haproxy;
use cluster_tests::tls::{resume, take_ticket, ticket_key_name, Handshake, Tls};
use cluster_tests::{
    apply_all, hex, init_logging, require_binary, self_signed_cert, write_first_ring, RingDriver,
    TestDir,
};
use stek_core::KeyRing;
use stek_node::haproxy_runtime::RuntimeTarget;

fn setup(tag: &str) -> (TestDir, PathBuf, Haproxy, Haproxy) {
    init_logging();
    require_binary("haproxy");
    require_binary("openssl");
    let root = TestDir::new(tag);
    let (_, _, combined) = self_signed_cert(root.path());
    let keys_dir = root.subdir("keys");
    let keys = keys_dir.join("haproxy.keys");
    let a = Haproxy::new(root.subdir("a"), &combined, &keys);
    let b = Haproxy::new(root.subdir("b"), &combined, &keys);
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
    let target = |i: &Haproxy| {
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
        !a.log_text().contains("Reloading HAProxy"),
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
            a.log_text().contains("Loading success.\n")
                && a.log_text().contains("Reloading HAProxy")
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

/// The soak's lost HAProxy (issue 12): its TLS port was also given to another listener, so
/// HAProxy exited ("cannot bind socket") leaving a stats socket file with no process behind
/// it, while a check that the port accepts was answered by the other listener. The harness
/// now requires the port to be HAProxy's own and reports its exit status and log.
#[test]
fn an_haproxy_whose_port_is_taken_fails_to_start_with_its_exit_status_and_log() {
    let (root, keys, mut a, _) = setup("haproxy-taken");
    write_first_ring(
        &root,
        &format!(
            "{ROTATION}[[target]]\nformat = \"haproxy\"\npath = \"{}\"\n",
            keys.display()
        ),
    );
    let squatter = std::net::TcpListener::bind(("127.0.0.1", a.port)).unwrap();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.start()))
        .expect_err("HAProxy cannot be up: another process holds its port");
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("haproxy (pid"), "{message}");
    assert!(message.contains("exited with exit status: 1"), "{message}");
    assert!(message.contains("cannot bind socket"), "{message}");
    assert!(
        a.socket().exists() && !cluster_tests::process::socket_accepts(&a.socket()),
        "the soak's symptom: a stats socket file with nobody behind it"
    );
    drop(squatter);
}
