//! `stek check` as an operator runs it, against a real etcd and on the embedded coordinator: a
//! good config passes, and each broken setting fails the check with a line that names it and
//! says what to do. Loopback addresses only.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::cluster::{Backend, Cluster, ClusterCa, EtcdServer};
use cluster_tests::{free_port, init_logging, TestDir};
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

/// Runs `stek check --config <config>`: exit code and stdout + stderr.
fn check(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn problems(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains(": PROBLEM: ")).collect()
}

/// Asserts exit 1 with exactly one problem line, which starts with `label` and holds every
/// part of `expected` and a fix.
fn assert_one_problem(
    case: &str,
    (code, text): &(Option<i32>, String),
    label: &str,
    expected: &[&str],
) {
    assert_eq!(*code, Some(1), "{case}: exit code\n{text}");
    let found = problems(text);
    assert_eq!(found.len(), 1, "{case}: exactly one problem\n{text}");
    let line = found[0];
    assert!(
        line.starts_with(&format!("{label}: PROBLEM: ")),
        "{case}: label {label:?}\n{text}"
    );
    assert!(line.contains("; fix: "), "{case}: says what to do\n{text}");
    for e in expected {
        assert!(
            line.contains(e),
            "{case}: expected {e:?} in the problem line\n{text}"
        );
    }
}

fn write(path: &Path, text: &str) -> PathBuf {
    fs::write(path, text).unwrap();
    path.to_owned()
}

fn private_dir(p: PathBuf) -> PathBuf {
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    p
}

/// A private directory on the build disk (the cargo target dir), removed on drop.
struct DiskDir(PathBuf);

impl DiskDir {
    fn new() -> Self {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "stek-check-disk-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self(private_dir(p))
    }

    /// tmpfs or ramfs (0x858458f6; nix names no constant for it).
    fn is_ram_disk(&self) -> bool {
        let t = nix::sys::statfs::statfs(&self.0).unwrap().filesystem_type();
        #[allow(clippy::useless_conversion)] // f_type's width differs between platforms
        let raw = i64::from(t.0);
        t == nix::sys::statfs::TMPFS_MAGIC || raw == 0x8584_58f6
    }
}

impl Drop for DiskDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An `[identity]` section for node "a" of cluster "check", from a CA made in `dir`; and the
/// path of its key.
fn identity(dir: &Path) -> (String, PathBuf) {
    let ca = ClusterCa::new(&private_dir(dir.join("ca")), "check");
    let out = private_dir(dir.join("a"));
    ca.issue_member("a", "127.0.0.1", &out);
    (ca.identity_section("a", &out), out.join("a.key"))
}

/// A config with one nginx target writing into `keys`; `target_extra` goes into the target.
fn config(store: &str, keys: &Path, target_extra: &str) -> String {
    format!(
        "cluster = \"check\"\nnode_id = \"a\"\nstate_dir = \"{}/state\"\n{store}\
         [[target]]\nformat = \"nginx\"\npath = \"{}\"\n{target_extra}",
        // On a RAM disk whatever the test does with the key directory; never created by
        // `stek check`.
        std::path::Path::new("/dev/shm/stek-test-check-state").display(),
        keys.display()
    )
}

#[test]
fn check_passes_a_good_config_on_etcd_and_names_each_broken_setting() {
    let mut c = Cluster::new(BIN, "check", 1);
    let etcd = c.etcd.as_ref().unwrap();
    let id = identity(&c.root.subdir("pki")).0;
    let section = etcd.config_section() + &id;
    let endpoint = etcd.endpoint();
    let keys = private_dir(c.root.join("keys"));
    let good_target = "reload = [\"true\"]\nowner = \"root\"\ngroup = \"root\"\n";
    let path = c.root.join("check.toml");

    info!("--- a good config, no node running yet");
    write(&path, &config(&section, &keys, good_target));
    let (code, text) = check(&path);
    assert_eq!(code, Some(0), "{text}");
    assert!(problems(&text).is_empty(), "{text}");
    for line in [
        format!("directory {} is private, on tmpfs", keys.display()),
        "files get owner root (uid 0), group root (gid 0)".to_owned(),
        "reload program true is ".to_owned(),
        format!("etcd {endpoint}: ok (answered: no leader"),
        "no ring yet".to_owned(),
    ] {
        assert!(text.contains(&line), "expected {line:?} in\n{text}");
    }

    info!("--- target directory on persistent storage");
    let disk = DiskDir::new();
    if disk.is_ram_disk() {
        println!(
            "skipped the persistent-storage case: {} is on a RAM disk here, so no disk directory is at hand",
            disk.0.display()
        );
    } else {
        write(&path, &config(&section, &disk.0, good_target));
        assert_one_problem(
            "not a RAM disk",
            &check(&path),
            &format!("target[0] nginx {}", disk.0.display()),
            &[
                "not on a RAM disk",
                "mount -t tmpfs",
                "allow_persistent_storage = true",
            ],
        );
    }

    info!("--- target directory readable by others");
    let open = private_dir(c.root.join("open"));
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
    write(&path, &config(&section, &open, good_target));
    assert_one_problem(
        "open directory",
        &check(&path),
        &format!("target[0] nginx {}", open.display()),
        &[
            "has mode 755",
            &format!("fix: chmod o-rwx {}", open.display()),
        ],
    );

    info!("--- target directory missing");
    let absent = c.root.join("absent");
    write(&path, &config(&section, &absent, good_target));
    assert_one_problem(
        "missing directory",
        &check(&path),
        &format!("target[0] nginx {}", absent.display()),
        &[
            "does not exist",
            &format!("fix: mkdir -p {}", absent.display()),
        ],
    );

    info!("--- reload and verify programs missing");
    write(
        &path,
        &config(
            &section,
            &keys,
            "reload = [\"stek-no-such-reload\", \"-s\"]\n",
        ),
    );
    assert_one_problem(
        "missing reload program",
        &check(&path),
        &format!("target[0] nginx {}", keys.display()),
        &[
            "reload program \"stek-no-such-reload\" is not installed or not in PATH",
            "target[0].reload",
        ],
    );
    write(
        &path,
        &config(
            &section,
            &keys,
            "reload = [\"true\"]\nverify = [\"/nonexistent/stek-verify\"]\n",
        ),
    );
    assert_one_problem(
        "missing verify program",
        &check(&path),
        &format!("target[0] nginx {}", keys.display()),
        &["verify program \"/nonexistent/stek-verify\" is not installed"],
    );

    info!("--- unknown owner and group: the config itself is refused (exit 2)");
    for (key, extra, expected) in [
        (
            "owner",
            "owner = \"stek-no-such-user\"\n",
            "target[0].owner: user \"stek-no-such-user\" does not exist on this machine",
        ),
        (
            "group",
            "group = \"stek-no-such-group\"\n",
            "target[0].group: group \"stek-no-such-group\" does not exist on this machine",
        ),
    ] {
        write(&path, &config(&section, &keys, extra));
        let (code, text) = check(&path);
        assert_eq!(code, Some(2), "unknown {key}\n{text}");
        assert!(
            text.contains(&path.display().to_string()),
            "names the file\n{text}"
        );
        assert!(
            text.contains(expected),
            "unknown {key}: expected {expected:?}\n{text}"
        );
    }

    info!("--- etcd unreachable (a loopback port nothing listens on)");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    write(
        &path,
        &config(
            &format!("[etcd]\nendpoints = [\"{nobody}\"]\n{id}"),
            &keys,
            good_target,
        ),
    );
    assert_one_problem(
        "etcd unreachable",
        &check(&path),
        &format!("etcd {nobody}"),
        &["the coordination store is unreachable", "start etcd"],
    );

    info!("--- a running node: check shows its leadership and ring");
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let generation = status["generation"].as_u64().unwrap();
    let out = c.cli(0, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "leader n1, ring generation {generation}, 1 member(s), 1 live"
        )),
        "{text}"
    );
}

#[test]
fn check_reaches_etcd_over_tls_with_auth_and_refuses_secret_files_readable_by_others() {
    init_logging();
    let root = TestDir::new("check-tls");
    let etcd = EtcdServer::start_secured(&root);
    let tls = etcd.tls.clone().unwrap();
    let keys = private_dir(root.join("keys"));
    let path = write(
        &root.join("check.toml"),
        &config(
            &(etcd.config_section() + &identity(&root.subdir("pki")).0),
            &keys,
            "reload = [\"true\"]\n",
        ),
    );

    info!("--- TLS, client certificate and etcd auth all in use");
    let (code, text) = check(&path);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "etcd cert_file, key_file: ok (".to_owned(),
        "etcd user, password_file: ok (user root".to_owned(),
        format!("etcd {}: ok (answered: no leader", etcd.endpoint()),
    ] {
        assert!(text.contains(&line), "expected {line:?} in\n{text}");
    }

    let key_pem = fs::read_to_string(&tls.key).unwrap();
    let password = fs::read_to_string(&tls.password_file).unwrap();
    for (case, file, mode, label, key) in [
        (
            "client key readable by others",
            &tls.key,
            0o644,
            "etcd cert_file, key_file",
            "etcd.key_file",
        ),
        (
            "password readable by others",
            &tls.password_file,
            0o640,
            "etcd user, password_file",
            "etcd.password_file",
        ),
    ] {
        info!("--- {case}");
        fs::set_permissions(file, fs::Permissions::from_mode(mode)).unwrap();
        let result = check(&path);
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).unwrap();
        assert_one_problem(
            case,
            &result,
            label,
            &[
                &format!(
                    "{key}: {} is readable by other users (mode {mode:o})",
                    file.display()
                ),
                &format!("fix: chmod 600 {}", file.display()),
            ],
        );
        let text = &result.1;
        assert!(
            text.contains("not contacted until the files above are fixed"),
            "{text}"
        );
        assert!(
            !text.contains(password.trim()),
            "the password leaked:\n{text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "the key leaked:\n{text}");
        for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "the key leaked:\n{text}");
        }
    }
}

/// Whether this node's etcd user may compact, asked against a real etcd with auth: a per-node
/// user whose role covers only the cluster's prefix (docs/security.md) may, since etcd checks
/// no permission for compaction (the docs once said it takes the root role). The question
/// removes nothing, and still says yes once the history was compacted past revision 1. With
/// `compact_history = false`, `stek check` shows the warning a node logs at every start.
#[test]
fn check_says_whether_a_prefix_limited_etcd_user_may_compact() {
    use stek_etcd::{CompactionRight, Etcd, EtcdSecurity};
    init_logging();
    let root = TestDir::new("check-compact");
    let mut etcd = EtcdServer::start_secured(&root);
    etcd.use_prefix_user("stek-check", "/stek/check/");
    let tls = etcd.tls.clone().unwrap();
    info!("--- the user may not read outside the cluster's prefix");
    let outside = etcd.ctl(&["--user", "stek-check:stek-check-pw", "get", "/elsewhere"]);
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("permission denied"),
        "{outside:?}"
    );
    for i in 0..3 {
        etcd.put("/stek/check/probe", format!("v{i}").as_bytes());
    }
    let newest = etcd.revision();

    info!("--- asked as that user: it may compact, and the question removes nothing");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let right = || {
        rt.block_on(async {
            let security = EtcdSecurity {
                ca_pem: Some(fs::read(&tls.ca).unwrap()),
                identity: Some((fs::read(&tls.cert).unwrap(), fs::read(&tls.key).unwrap())),
                user: Some(("stek-check".into(), "stek-check-pw".into())),
            };
            let client = Etcd::connect_secured(&[etcd.endpoint()], "check", security)
                .await
                .unwrap();
            client.compaction_right().await.unwrap()
        })
    };
    assert_eq!(right(), CompactionRight::Granted);
    assert!(
        etcd.dump_at("/stek/check/", newest - 2).is_some(),
        "the question compacted nothing"
    );
    let out = etcd.ctl(&["compact", &newest.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        right(),
        CompactionRight::Granted,
        "compacted past revision 1: etcd answers \"compacted\" to an allowed request"
    );

    let keys = private_dir(root.join("keys"));
    let identity = identity(&root.subdir("pki")).0;
    let on = write(
        &root.join("on.toml"),
        &config(
            &(etcd.config_section() + &identity),
            &keys,
            "reload = [\"true\"]\n",
        ),
    );
    info!("--- stek check, compaction on (the default)");
    let (code, text) = check(&on);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("etcd user, password_file: ok (user stek-check")
            && text
                .contains("etcd history: ok (compact_history: this node's etcd user may compact"),
        "{text}"
    );

    info!("--- stek check, compaction off with a reason: a warning, not a problem");
    let reason = "etcd runs --auto-compaction-mode=revision";
    let off = write(
        &root.join("off.toml"),
        &config(
            &(etcd.config_section()
                + &format!("compact_history = false\ncompact_history_off_reason = \"{reason}\"\n")
                + &identity),
            &keys,
            "reload = [\"true\"]\n",
        ),
    );
    let (code, text) = check(&off);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "etcd history: warning: [etcd] compact_history = false (reason given: \"{reason}\")"
        )),
        "{text}"
    );

    info!("--- compaction off without a reason: the config is refused");
    let bare = write(
        &root.join("bare.toml"),
        &config(
            &(etcd.config_section() + "compact_history = false\n" + &identity),
            &keys,
            "",
        ),
    );
    let (code, text) = check(&bare);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "config {}: etcd.compact_history_off_reason: compact_history = false keeps",
            bare.display()
        )),
        "{text}"
    );
}

#[test]
fn check_on_the_embedded_coordinator_probes_each_peer() {
    init_logging();
    let root = TestDir::new("check-raft");
    let keys = private_dir(root.join("keys"));
    let path = root.join("check.toml");
    let this = format!("127.0.0.1:{}", free_port());
    let silent = format!("127.0.0.1:{}", free_port());
    // A peer that accepts TCP connections (and says nothing: the group query only warns).
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap().to_string();
    let peers = format!("peers = {{ a = \"{this}\", b = \"{up_addr}\", c = \"{silent}\" }}\n");

    info!("--- peers on TCP without [identity]: refused, saying what to do");
    write(
        &path,
        &config(
            &format!("[raft]\nlisten = \"{this}\"\n{peers}"),
            &keys,
            "reload = [\"true\"]\n",
        ),
    );
    let (code, text) = check(&path);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("a Raft listener on TCP needs [identity]") && text.contains("stek ca init"),
        "{text}"
    );

    info!("--- three peers: this one not started, one answering, one silent");
    let (id, key) = identity(&root.subdir("pki"));
    let store = format!("[raft]\nlisten = \"{this}\"\n{peers}{id}");
    write(&path, &config(&store, &keys, "reload = [\"true\"]\n"));
    let (code, text) = check(&path);
    assert_eq!(code, Some(0), "peers not started yet are warnings\n{text}");
    for line in [
        format!("raft peer a (this node): warning: {this} does not answer"),
        "this node is not running yet".to_owned(),
        format!("raft peer b: ok ({up_addr} answers)"),
        format!("raft peer c: warning: {silent} does not answer"),
        format!("raft listen: ok (this node can listen on {this})"),
        "identity: ok (".to_owned(),
        "is member a's certificate (serial ".to_owned(),
        "raft group: warning: peers answer, but the group".to_owned(),
    ] {
        assert!(text.contains(&line), "expected {line:?} in\n{text}");
    }

    info!("--- this node's listen address is taken by another program");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    write(
        &path,
        &config(
            &format!("insecure = true\n[raft]\nlisten = \"{taken_addr}\"\npeers = {{ a = \"{this}\" }}\n"),
            &keys,
            "reload = [\"true\"]\n",
        ),
    );
    assert_one_problem(
        "listen address in use",
        &check(&path),
        "raft listen",
        &[&format!("{taken_addr} is in use by another program")],
    );
    drop(taken);

    info!("--- [identity]: the key readable by others");
    write(&path, &config(&store, &keys, "reload = [\"true\"]\n"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let result = check(&path);
    assert_one_problem(
        "identity key readable by others",
        &result,
        "identity",
        &[
            &format!(
                "identity.key_file: {} is readable by other users (mode 644)",
                key.display()
            ),
            &format!("fix: chmod 600 {}", key.display()),
        ],
    );
    assert!(!result.1.contains("PRIVATE KEY"), "{}", result.1);
    drop(up);

    info!("--- a running one-node group: check shows its leader and ring");
    let mut c = Cluster::with_backend(BIN, "check-raft-node", 1, Backend::Raft);
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let generation = status["generation"].as_u64().unwrap();
    let out = c.cli(0, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("raft peer n1 (this node): ok ("), "{text}");
    assert!(
        text.contains(&format!(
            "raft group: ok (answered: leader n1, ring generation {generation}"
        )),
        "{text}"
    );
}
