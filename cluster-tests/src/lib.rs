//! Harness for tests that run real TLS servers on loopback and check session tickets with a
//! real TLS client (`openssl s_client`).
//!
//! Every directory lives under /dev/shm (a tmpfs, as stek requires for key files) and is removed
//! on drop; every server process runs in its own process group, killed on drop; every wait is
//! bounded. Nothing here listens on or connects to anything but 127.0.0.1, except inside the
//! network namespaces a test makes itself (`netns`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
use stek_node::{Config, Target};

pub mod cluster;
pub mod conformance;
pub mod horizon;
pub mod leaks;
pub mod netns;
pub mod ports;
pub mod process;
pub mod resumption;
pub mod scenario;
pub mod servers;
pub mod soak;
pub mod tls;
pub mod watcher;

pub use ports::free_port;
pub use process::Server;

/// Logs test phases so a failure reads as a story.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Fails the test with a clear message when a server binary is missing. Tests are never
/// skipped: `.ci/run` installs every server.
pub fn require_binary(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; run .ci/run (or apt-get install the server) first"
    );
}

/// A private directory on /dev/shm, mode 0700, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `/dev/shm/stek-test-<tag>-<random>`.
    pub fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!(
            "/dev/shm/stek-test-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// A private subdirectory (0700).
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("STEK_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body). Panics if nothing answers in 5 s.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|| panic!("nothing listens on {addr}"))
}

/// [`http_get`], or `None` when nothing listens on `addr` (yet).
pub fn try_http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send the request");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from {addr}: {head}"));
    Some((status, body.to_owned()))
}

/// Polls `check` every 100 ms until it is true; panics after `within` naming `what`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}{}",
            process::exited_note()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A self-signed certificate for CN=localhost: (cert.pem, key.pem, combined.pem).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
    let combined = dir.join("combined.pem");
    let mut both = fs::read(&cert).unwrap();
    both.extend(fs::read(&key).unwrap());
    fs::write(&combined, both).unwrap();
    (cert, key, combined)
}

/// A sequence of rings as the leader would produce them, starting from a fresh bootstrap.
#[derive(Debug)]
pub struct RingDriver {
    /// The rotation policy.
    pub policy: Policy,
    ring: KeyRing,
}

impl RingDriver {
    /// Bootstraps a ring with OS-random keys.
    pub fn new(retain: usize) -> Self {
        let policy = Policy {
            interval: Duration::from_secs(3600),
            retain,
        };
        let ring = KeyRing::bootstrap(
            std::time::SystemTime::now(),
            &policy,
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
        Self { policy, ring }
    }

    /// The current ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Rotates once and returns the new ring.
    pub fn rotate(&mut self) -> &KeyRing {
        self.ring = self
            .ring
            .rotated(
                std::time::SystemTime::now(),
                &self.policy,
                &mut OsKeySource,
                &KeyHistory::new(),
            )
            .unwrap();
        self.ring.check(&self.policy).unwrap();
        &self.ring
    }

    /// The active key's name.
    pub fn active_name(&self) -> [u8; 16] {
        *self.ring.active().key.name()
    }
}

/// Loads targets through the real config parser from TOML text written into `dir`.
pub fn targets_from_toml(dir: &Path, toml: &str) -> Vec<Target> {
    let path = dir.join("stek.toml");
    fs::write(&path, toml).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    config.targets
}

/// Servers refuse to start without their key files: writes a freshly bootstrapped ring with
/// the targets in `toml` (usually without reload commands, nothing runs yet).
pub fn write_first_ring(dir: &TestDir, toml: &str) {
    apply_all(
        &targets_from_toml(dir.path(), toml),
        RingDriver::new(1).ring(),
    );
}

/// Applies a ring to every target (writer + reload runner + verify), in order.
pub fn apply_all(targets: &[Target], ring: &KeyRing) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for t in targets {
        rt.block_on(t.apply(ring))
            .unwrap_or_else(|e| panic!("applying generation {}: {e}", ring.generation()));
    }
}

/// The server configuration lines stek prints for a `format` target at `path`.
pub fn snippet(format: &str, path: &Path, retain: usize) -> String {
    stek_core::formats::build(
        format,
        &stek_core::FormatOptions {
            key_size: None,
            slots: None,
            retain,
        },
    )
    .unwrap()
    .snippet(&path.display().to_string())
}

/// TOML for a quoted argv.
pub fn argv_toml(argv: &[&str]) -> String {
    let items: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", items.join(", "))
}

/// Hex of a key name, for messages (key names are public: they lead every ticket).
pub fn hex(name: &[u8]) -> String {
    name.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small tmpfs (a RAM disk that fills up), mounted for a test; unmounted on drop. Needs root.
#[derive(Debug)]
pub struct SmallDisk {
    /// Where it is mounted.
    pub mount: PathBuf,
    size: usize,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` bytes (mode 0700) at `at`, creating the directory.
    pub fn mount(at: PathBuf, size: usize) -> Self {
        fs::create_dir_all(&at).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a small tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { mount: at, size }
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Fills every free byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = fs::File::create(self.filler()).unwrap();
        let block = [0u8; 4096];
        // Bounded: twice the disk's size in blocks.
        for _ in 0..(self.size / 4096 + 1) * 2 {
            if f.write_all(&block).and_then(|()| f.flush()).is_err() {
                return;
            }
        }
        panic!("the small RAM disk did not fill up");
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn empty(&self) {
        fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .output();
    }
}
