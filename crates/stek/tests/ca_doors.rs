//! `stek ca` against directories and CA keys another local user could have reached: the real
//! binary, real files. Each test plays that user and shows what they can no longer do.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

// Skips with a printed reason where root is missing, fails under CI (shared with stek-node).
#[path = "../../stek-node/src/test_support.rs"]
#[allow(dead_code)]
mod test_support;
use test_support::needs_root;

/// The uid of `nobody`, the other user these tests give files to.
const NOBODY: u32 = 65534;

fn stek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(args)
        .output()
        .expect("stek runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(out: &Path) -> Output {
    stek(&[
        "ca",
        "init",
        "--cluster",
        "c1",
        "--out",
        out.to_str().unwrap(),
    ])
}

fn issue(ca: &Path, out: &Path) -> Output {
    stek(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--node",
        "n1",
        "--host",
        "127.0.0.1",
        "--out",
        out.to_str().unwrap(),
    ])
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A CA made the ordinary way in `<tmp>/ca`.
fn made_ca(tmp: &Path) -> std::path::PathBuf {
    let ca = tmp.join("ca");
    let out = init(&ca);
    assert!(out.status.success(), "{}", stderr(&out));
    ca
}

/// The default still works: a missing directory is made 0700 (with its parents), the CA key
/// 0600, and a certificate is issued from it into another new directory.
#[test]
fn ca_makes_missing_directories_private_and_issues_from_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("new/ca");
    let out = init(&ca);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = fs::metadata(&ca).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (me(), 0o700));
    let key = fs::metadata(ca.join("ca.key")).unwrap();
    assert_eq!((key.uid(), key.mode() & 0o7777), (me(), 0o600));
    let n1 = tmp.path().join("n1");
    let out = issue(&ca, &n1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::metadata(&n1).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        fs::metadata(n1.join("n1.key")).unwrap().mode() & 0o7777,
        0o600
    );
}

/// Any local user can write a 0777 directory: they could swap `ca.key` for theirs or plant a
/// link where it is written. `stek ca init` and `stek ca issue` refuse it, writing nothing.
#[test]
fn a_directory_others_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let out = init(&open);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {d} has mode 0777: group or others can write in it and could swap the files stek ca writes or reads there; run `chmod 700 {d}` (or at least `chmod go-w {d}`), or use another directory",
            d = open.display()
        )
    );
    assert_eq!(fs::read_dir(&open).unwrap().count(), 0, "nothing written");

    // A CA directory opened up after the fact is not read from, and an output directory
    // others can write is not written to.
    let ca = made_ca(tmp.path());
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o770)).unwrap();
    let e = stderr(&issue(&ca, &tmp.path().join("n1")));
    assert!(
        e.contains(&format!("{} has mode 0770", ca.display())),
        "{e}"
    );
    assert!(!tmp.path().join("n1").exists(), "nothing written: {e}");
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o700)).unwrap();
    let e = stderr(&issue(&ca, &open));
    assert!(
        e.contains(&format!("{} has mode 0777", open.display())),
        "{e}"
    );
    assert_eq!(fs::read_dir(&open).unwrap().count(), 0, "nothing written");
}

/// A CA key group or others can read is refused before it is read: the message says to
/// chmod it and, since someone may have read it, to make a new CA.
#[test]
fn a_ca_key_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = made_ca(tmp.path());
    let key = ca.join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = issue(&ca, &tmp.path().join("n1"));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {k} has mode 0644: group or others can read or change the cluster CA's key; run `chmod 600 {k}`, and if anyone else may have read it, make a new CA (`stek ca init`): whoever holds it can issue certificates for this cluster",
            k = key.display()
        )
    );
    assert!(!e.contains("PRIVATE KEY"), "never the key: {e}");
    assert!(!tmp.path().join("n1").exists(), "nothing issued");
}

/// A `ca.key` that is a link (to a key file elsewhere, perhaps another user's) is not
/// followed.
#[test]
fn a_ca_key_that_is_a_link_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = made_ca(tmp.path());
    let key = ca.join("ca.key");
    let elsewhere = tmp.path().join("elsewhere.key");
    fs::rename(&key, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let e = stderr(&issue(&ca, &tmp.path().join("n1")));
    assert!(
        e.contains(&format!("{} is a symbolic link", key.display())),
        "{e}"
    );
    assert!(!tmp.path().join("n1").exists(), "nothing issued");
}

/// A CA key another user wrote (here given to nobody) is not signed with, even by root.
#[test]
fn a_ca_key_of_another_user_is_refused() {
    if !needs_root("give ca.key to another user (nobody)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = made_ca(tmp.path());
    let key = ca.join("ca.key");
    std::os::unix::fs::chown(&key, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = issue(&ca, &tmp.path().join("n1"));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {k} belongs to uid 65534, not to uid 0 who runs stek ca: stek ca signs only with a CA key of its own user; if the key is yours, `chown 0 {k}`, otherwise do not use it",
            k = key.display()
        )
    );
    assert!(!tmp.path().join("n1").exists(), "nothing issued");
}

/// A directory another user owns, closed to everyone else (0700), is still theirs: they could
/// swap files in it. Root, the usual operator, refuses it both as output and as CA directory.
#[test]
fn a_directory_of_another_user_is_refused_even_to_root() {
    if !needs_root("give a directory to another user (nobody)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = init(&theirs);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {d} belongs to uid 65534, not to uid 0 who runs stek ca: its owner could swap the files stek ca writes or reads there; use a directory of your own, or `chown 0 {d}` if it should be yours",
            d = theirs.display()
        )
    );
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0, "nothing written");

    // A CA directory handed to another user after `stek ca init`: not read from.
    let ca = made_ca(tmp.path());
    std::os::unix::fs::chown(&ca, Some(NOBODY), Some(NOBODY)).unwrap();
    let e = stderr(&issue(&ca, &tmp.path().join("n1")));
    assert!(
        e.contains(&format!(
            "{} belongs to uid 65534, not to uid 0",
            ca.display()
        )),
        "{e}"
    );
    assert!(!tmp.path().join("n1").exists(), "nothing issued");
}
