//! The real `stek` binary, run as a user would.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn stek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(args)
        .output()
        .expect("stek runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// The cluster tests' port reservations (this crate cannot depend on cluster-tests): ports no
// other test or outgoing connection can take before the node binds them.
#[path = "../../../cluster-tests/src/ports.rs"]
mod ports;
use ports::free_port;

// Skips with a printed reason where a program is missing, fails under CI (shared with stek-node).
#[path = "../../stek-node/src/test_support.rs"]
#[allow(dead_code)]
mod test_support;
use test_support::{needs_root, require};

/// A private directory on the build disk: persistent storage, not a RAM disk.
fn disk_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("stek-cli-disk-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn shm_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("stek-cli-")
        .tempdir_in("/dev/shm")
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Writes `body` as `dir`/stek.toml, with the node's state directory in `dir` (on /dev/shm)
/// unless `body` names one.
fn write_config(dir: &Path, body: &str) -> String {
    let p = dir.join("stek.toml");
    let state = if body.contains("state_dir") {
        String::new()
    } else {
        format!("state_dir = \"{}/state\"\n", dir.display())
    };
    fs::write(&p, format!("{state}{body}")).unwrap();
    p.display().to_string()
}

#[test]
fn check_accepts_a_good_config_and_prints_httpd_warning() {
    let d = shm_dir();
    let cfg = write_config(
        d.path(),
        &format!(
            "node_id = \"a\"\n[[target]]\nformat = \"httpd\"\npath = \"{}/httpd.key\"\nreload = [\"true\"]\n",
            d.path().display()
        ),
    );
    let out = stek(&["check", "--config", &cfg]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("on tmpfs"), "{t}");
    assert!(t.contains("every key activation"), "{t}");
    // Debian's apache2 is 2.4.x: the cross-instance bug must be named.
    if require(
        on_path("apache2") || on_path("httpd"),
        "the httpd version check: neither apache2 nor httpd on PATH",
        "apt-get install apache2",
    ) {
        assert!(t.contains("NEVER resume on another"), "{t}");
    } else {
        assert!(t.contains("could not run apache2"), "{t}");
    }
}

#[test]
fn check_reports_persistent_storage_and_exits_1() {
    let disk = disk_dir();
    let cfg = write_config(
        disk.path(),
        &format!(
            "node_id = \"a\"\n[[target]]\nformat = \"dnsdist\"\npath = \"{}/d.keys\"\nreload = [\"stek-no-such-reload\"]\n",
            disk.path().display()
        ),
    );
    let out = stek(&["check", "--config", &cfg]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("not on a RAM disk"), "{t}");
    assert!(t.contains("mount -t tmpfs"), "{t}");
    assert!(
        t.contains("\"stek-no-such-reload\" is not installed"),
        "{t}"
    );
}

#[test]
fn bad_config_exits_2_naming_file_key_and_fix() {
    let d = shm_dir();
    for (body, expect) in [
        (
            "[[target]]\nformat = \"iis\"\npath = \"/run/x\"\n",
            "target[0].format: unknown format \"iis\"",
        ),
        (
            "[[target]]\nformat = \"envoy\"\npath = \"/run/x\"\nkey_size = 48\n",
            "set key_size to 80",
        ),
        (
            "[[target]]\nformat = \"nginx\"\npath = \"/run/x\"\nslots = 0\n",
            "target[0].slots",
        ),
        ("[rotation]\nretain = 0\n", "rotation.retain"),
    ] {
        let cfg = write_config(d.path(), body);
        let out = stek(&["check", "--config", &cfg]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(&cfg), "message names the file: {t}");
        assert!(t.contains(expect), "expected {expect:?} in: {t}");
    }
}

#[test]
fn snippet_prints_directives_for_every_target() {
    let d = shm_dir();
    let cfg = write_config(
        d.path(),
        "[rotation]\nretain = 1\n[[target]]\nformat = \"nginx\"\npath = \"/run/stek/nginx\"\n[[target]]\nformat = \"haproxy\"\npath = \"/run/stek/h.keys\"\n",
    );
    let out = stek(&["snippet", "--config", &cfg]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("ssl_session_ticket_key /run/stek/nginx/2.key;"),
        "{t}"
    );
    assert!(!t.contains("3.key"), "{t}");
    assert!(t.contains("tls-ticket-keys /run/stek/h.keys"), "{t}");
}

fn demo_dir(first_line: &str) -> String {
    first_line.rsplit(' ').next().unwrap().trim().to_owned()
}

/// The README's first command, bounded: three peers on the embedded coordinator, at least three
/// rotations applied by every peer, real cross-box resumption through nginx when installed.
#[test]
fn demo_runs_a_local_cluster_with_real_rotations_and_cleans_up() {
    let tls = require(
        on_path("nginx") && on_path("openssl"),
        "cross-box resumption through nginx: nginx or openssl not on PATH",
        "apt-get install nginx openssl",
    );
    let out = stek(&["demo", "--rotations", "3", "--interval", "1s"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("3 peers on the embedded coordinator"), "{t}");
    // The demo stops at the first pass that sees more than 3 applied by every peer; the
    // cluster rotates on its own every second, so a pass that comes late (a slow resumption
    // check on a loaded machine) sees the fourth or fifth already.
    let rotations: u64 = t
        .lines()
        .find_map(|l| l.split_once(" rotation(s) applied by every peer"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rotation count in: {t}"));
    assert!(rotations >= 3, "at least the 3 rotations asked for: {t}");
    let dir = demo_dir(t.lines().next().unwrap());
    assert!(!Path::new(&dir).exists(), "{dir} left behind");
    assert_eq!(t.contains("nginx per peer"), tls, "{t}");
    if tls {
        assert!(t.contains(", 0 failed"), "{t}");
        assert!(t.matches(": yes").count() >= 3, "{t}");
    }
}

#[test]
fn demo_keep_leaves_configs_logs_and_key_files() {
    let out = stek(&[
        "demo",
        "--rotations",
        "1",
        "--interval",
        "1s",
        "--no-nginx",
        "--keep",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let dir = demo_dir(t.lines().next().unwrap());
    let n1 = Path::new(&dir).join("n1");
    for (file, len) in [("keys/0.key", 80), ("keys/2.key", 80)] {
        let m = fs::metadata(n1.join(file)).unwrap();
        assert_eq!(m.len(), len, "{file}");
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{file}");
    }
    assert_eq!(
        fs::read_to_string(n1.join("keys/haproxy.keys"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(fs::read_to_string(n1.join("node.log"))
        .unwrap()
        .contains("applied ring"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_explains_each_command() {
    let t = text(&stek(&["--help"]));
    for cmd in ["check", "snippet", "formats", "demo"] {
        assert!(t.contains(cmd), "{t}");
    }
    let t = text(&stek(&["formats"]));
    assert!(t.contains("haproxy-runtime"), "{t}");
}

/// `stek demo | head` used to panic on the closed pipe, and the panic inside the cleanup
/// aborted the process with the key files still on /dev/shm.
#[test]
fn regression_demo_with_closed_stdout_still_removes_its_key_files() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args([
            "demo",
            "--rotations",
            "50",
            "--interval",
            "1s",
            "--no-nginx",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let dir = demo_dir(&first);
    assert!(dir.starts_with("/dev/shm/stek-demo-"), "{first}");
    // Wait until the peers have written keys, then go away like `head` does.
    let keys = Path::new(&dir).join("n1/keys/0.key");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !keys.exists() {
        assert!(std::time::Instant::now() < deadline, "no keys written");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "demo did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.code().is_some(), "demo died from a signal: {status}");
    assert!(
        !Path::new(&dir).exists(),
        "{dir} left behind with key files"
    );
}

#[test]
fn node_refuses_to_start_on_a_target_that_is_not_a_ram_disk() {
    let disk = disk_dir();
    let cfg = write_config(
        disk.path(),
        &format!(
            "node_id = \"a\"\ninsecure = true\n[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n[[target]]\nformat = \"httpd\"\npath = \"{}/httpd.key\"\n",
            disk.path().display()
        ),
    );
    let out = stek(&["node", "--config", &cfg]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("not on a RAM disk"), "{t}");
    assert!(!disk.path().join("httpd.key").exists());
}

#[test]
fn node_with_unreachable_etcd_names_the_endpoints_and_writes_nothing() {
    let d = shm_dir();
    let keys = d.path().join("keys");
    fs::create_dir(&keys).unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
    // Port 9 (discard) on loopback: nothing listens there.
    let cfg = write_config(
        d.path(),
        &format!(
            "node_id = \"a\"\ninsecure = true\n[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n[[target]]\nformat = \"dnsdist\"\npath = \"{}/d.keys\"\n",
            free_port(),
            keys.display()
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["node", "--config", &cfg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node keeps retrying"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("http://127.0.0.1:9"), "{log}");
    assert!(log.contains("retrying"), "{log}");
    assert_eq!(
        fs::read_dir(&keys).unwrap().count(),
        0,
        "no key invented without the store (I4)"
    );
    let status = stek(&["status", "--config", &cfg]);
    assert_eq!(status.status.code(), Some(1));
    assert!(
        text(&status).contains("tried [http://127.0.0.1:9]"),
        "{}",
        text(&status)
    );
}

#[test]
fn without_etcd_the_cli_uses_the_embedded_group_and_names_the_peers_it_tried() {
    let d = shm_dir();
    let port = free_port();
    let cfg = write_config(
        d.path(),
        &format!("node_id = \"a\"\ninsecure = true\n[raft]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = stek(&["status", "--config", &cfg]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("raft peers [127.0.0.1:{port}]")), "{t}");
}

/// TCP ports process `pid` listens on (its socket inodes against /proc/net/tcp{,6}).
fn tcp_listen_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// Single-box mode: no [etcd], no peers: a one-node Raft group that bootstraps and rotates,
/// reached only through a Unix socket in a directory only root can enter. No TCP port is
/// open but the admin listener, and an unprivileged local user (nobody) reaches nothing.
#[test]
fn a_node_without_etcd_or_peers_runs_a_one_node_group() {
    let d = shm_dir();
    let keys = d.path().join("keys");
    fs::create_dir(&keys).unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
    let admin = free_port();
    let socket = d.path().join("run").join("solo.sock");
    let body = format!(
        "node_id = \"solo\"\nstate_dir = \"{state}\"\n[raft]\nlisten = \"unix:{}\"\ndata_dir = \"{data}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[rotation]\nlease_ttl = \"2s\"\n[[target]]\nformat = \"httpd\"\npath = \"{}/httpd.key\"\n",
        socket.display(),
        keys.display(),
        state = d.path().join("state").display(),
        data = d.path().join("raft").display(),
    );
    let cfg = write_config(d.path(), &body);
    let mut node = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["node", "--config", &cfg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = stek(&["rotate", "--config", &cfg, "--wait", "--timeout", "20s"]);
    let status = stek(&["status", "--config", &cfg, "--json"]);
    let listening = tcp_listen_ports(node.id());
    let socket_mode = fs::metadata(&socket).map(|m| m.permissions().mode() & 0o777);
    let dir_mode = fs::metadata(socket.parent().unwrap()).map(|m| m.permissions().mode() & 0o777);
    // An unprivileged local user with the same config (a world-readable copy) reaches nothing.
    let as_nobody = if nix_is_root() {
        let open = tempfile::Builder::new()
            .prefix("stek-cli-open-")
            .tempdir_in("/dev/shm")
            .unwrap();
        fs::set_permissions(open.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let copy = open.path().join("stek.toml");
        fs::write(&copy, &body).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
        // A copy of the binary nobody can run: the build tree may sit in a directory only
        // root can enter (CI's clone does).
        let bin = open.path().join("stek");
        fs::copy(env!("CARGO_BIN_EXE_stek"), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let out = std::os::unix::process::CommandExt::uid(
            std::os::unix::process::CommandExt::gid(&mut Command::new(&bin), nobody.gid.as_raw()),
            nobody.uid.as_raw(),
        )
        .args(["rotate", "--config", copy.to_str().unwrap()])
        .current_dir("/")
        .output()
        .unwrap();
        Some(out)
    } else {
        None
    };
    let after = stek(&["status", "--config", &cfg, "--json"]);
    // Memory hygiene: no core dumps, and (as root, as CI runs) memory locked.
    let limits = fs::read_to_string(format!("/proc/{}/limits", node.id())).unwrap();
    let proc_status = fs::read_to_string(format!("/proc/{}/status", node.id())).unwrap();
    let key = fs::metadata(keys.join("httpd.key")).map(|m| m.len());
    let _ = terminate(node.id());
    let _ = node.wait();
    assert!(out.status.success(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["leader"], "solo");
    assert_eq!(s["generation"], 2, "bootstrap, then one rotation: {s}");
    assert_eq!(key.unwrap(), 48);
    assert_eq!(listening, vec![admin], "only the admin listener is on TCP");
    assert_eq!(socket_mode.unwrap(), 0o600);
    assert_eq!(dir_mode.unwrap(), 0o700);
    if let Some(out) = as_nobody {
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains("Permission denied"), "{t}");
        let a: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
        assert_eq!(a["pending_requests"], 0, "{a}");
        assert_eq!(
            a["generation"], 2,
            "nobody's request never reached the group: {a}"
        );
    } else {
        needs_root("run the CLI as nobody against the node's socket");
    }
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    if nix_is_root() {
        let locked = proc_status
            .lines()
            .find(|l| l.starts_with("VmLck:"))
            .unwrap();
        let kb: u64 = locked.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(kb > 0, "memory is not locked: {locked}");
    }
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// SIGTERM, as a service manager would stop the node.
fn terminate(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill").arg(pid.to_string()).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// Ctrl-C (SIGINT) stops the demo, its peers and nginx, and removes its directory.
#[test]
fn demo_stops_cleanly_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["demo", "--rotations", "50", "--interval", "1s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let dir = demo_dir(&line);
    // Until the first rotation is shown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.contains("generation 2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no rotation shown");
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(!Path::new(&dir).exists(), "{dir} left behind");
    let ps = Command::new("pgrep").args(["-f", &dir]).output().unwrap();
    assert!(
        ps.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
