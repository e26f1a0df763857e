//! nginx 1.22: two real instances on loopback, each with its own slot directory written by
//! stek's writer from one ring and reloaded by stek's reload runner (`nginx -s reload`, then
//! `nginx -t` as verify). The nginx configuration includes stek's printed snippet verbatim.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster_tests::scenario::{ticket_sharing, TargetPool, BOTH};
use cluster_tests::servers::Nginx;
use cluster_tests::tls::Tls;
use cluster_tests::{
    apply_all, argv_toml, init_logging, require_binary, self_signed_cert, targets_from_toml,
    TestDir,
};

fn instance(root: &TestDir, tag: &str, cert: &Path, key: &Path) -> Nginx {
    instance_for_retain(root, tag, cert, key, 1)
}

/// An nginx whose slot directory is `<dir>/keys`.
fn instance_for_retain(root: &TestDir, tag: &str, cert: &Path, key: &Path, retain: usize) -> Nginx {
    let dir = root.subdir(tag);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    std::fs::set_permissions(dir.join("keys"), mode).unwrap();
    let keys = dir.join("keys");
    Nginx::new(dir, &keys, cert, key, retain)
}

fn target_toml(n: &Nginx, with_reload: bool) -> String {
    let reload = n.argv(&["-s", "reload"]);
    let verify = n.argv(&["-t", "-q"]);
    let refs = |v: &[String]| argv_toml(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let mut s = format!(
        "[[target]]\nformat = \"nginx\"\npath = \"{}/keys\"\n",
        n.dir.display()
    );
    if with_reload {
        s += &format!(
            "reload = {}\nverify = {}\nreload_timeout = \"10s\"\n",
            refs(&reload),
            refs(&verify)
        );
    }
    s
}

#[test]
fn nginx_instances_share_tickets_through_rotations() {
    init_logging();
    require_binary("nginx");
    require_binary("openssl");
    let root = TestDir::new("nginx");
    let (cert, key, _) = self_signed_cert(root.path());
    let mut a = instance(&root, "a", &cert, &key);
    let mut b = instance(&root, "b", &cert, &key);
    let rotation = "[rotation]\nretain = 1\n";

    // nginx cannot start without its key files: write a first ring without a reload.
    let mut pool = TargetPool {
        name: "nginx",
        ports: (a.port, b.port),
        targets: targets_from_toml(
            root.path(),
            &format!(
                "{rotation}{}{}",
                target_toml(&a, false),
                target_toml(&b, false)
            ),
        ),
    };
    apply_all(&pool.targets, cluster_tests::RingDriver::new(1).ring());
    a.start();
    b.start();
    pool.targets = targets_from_toml(
        root.path(),
        &format!(
            "{rotation}{}{}",
            target_toml(&a, true),
            target_toml(&b, true)
        ),
    );
    ticket_sharing(&root, &mut pool, BOTH, Duration::from_secs(20));
}

/// The trap from key-formats.md: a reload whose exit status says nothing. An operator lowers
/// `retain` (so stek writes 3 slots and removes the stale 3.key) but nginx.conf still lists 4.
/// SIGHUP "succeeds", the master logs [emerg] and keeps its old workers and keys; only the
/// target's `verify` (`nginx -t`) turns that into an apply error. nginx keeps serving.
/// (On nginx 1.22, `nginx -s reload` parses the config itself and does exit 1 here; a plain
/// SIGHUP, as systemd's ExecReload=kill -HUP does, exits 0.)
#[test]
fn regression_nginx_reload_exit_status_lies_and_verify_catches_it() {
    init_logging();
    require_binary("nginx");
    let root = TestDir::new("nginx-verify");
    let (cert, key, _) = self_signed_cert(root.path());
    let mut a = instance_for_retain(&root, "a", &cert, &key, 2);
    let mut driver = cluster_tests::RingDriver::new(1);
    apply_all(
        &targets_from_toml(
            root.path(),
            &format!("[rotation]\nretain = 2\n{}", target_toml(&a, false)),
        ),
        driver.ring(),
    );
    a.start();
    let before = driver.active_name();
    let pid = a.pid().to_string();
    let verify = a.argv(&["-t", "-q"]);
    let refs = |v: &[String]| argv_toml(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let lowered = format!(
        "[rotation]\nretain = 1\n[[target]]\nformat = \"nginx\"\npath = \"{}/keys\"\n\
         reload = {}\nverify = {}\nreload_attempts = 1\n",
        a.dir.display(),
        argv_toml(&["kill", "-HUP", &pid]),
        refs(&verify),
    );
    let live = targets_from_toml(root.path(), &lowered);

    tracing::info!("--- stek now writes 3 slots; nginx.conf still reads 4");
    driver.rotate();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(live[0].apply(driver.ring())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("target[0] (nginx): verify command"),
        "the reload (SIGHUP) succeeded, so verify must be what failed: {msg}"
    );
    assert!(
        msg.contains("3.key"),
        "nginx -t's stderr names the file: {msg}"
    );
    assert!(
        !a.dir.join("keys/3.key").exists(),
        "the stale slot's key bytes must be gone"
    );
    let signal_reload = Command::new("nginx")
        .args(&a.argv(&["-s", "reload"])[1..])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !signal_reload.success(),
        "nginx 1.22's -s reload parses the config and fails here"
    );

    tracing::info!("--- nginx logged [emerg] and still serves the keys it had");
    cluster_tests::wait_until(
        Duration::from_secs(10),
        "nginx to log the failed reload",
        || {
            std::fs::read_to_string(a.dir.join("error.log"))
                .map(|l| l.contains("[emerg]") && l.contains("3.key"))
                .unwrap_or(false)
        },
    );
    a.assert_running();
    let s = cluster_tests::tls::take_ticket(a.port, Tls::V12, &root.join("after.pem"));
    assert_eq!(
        cluster_tests::hex(&cluster_tests::tls::ticket_key_name(&s)),
        cluster_tests::hex(&before)
    );
}
