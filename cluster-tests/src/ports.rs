//! Loopback ports for test servers that no other process can take between the pick and the
//! bind.
//!
//! [`free_port`] hands out loopback ports from 20000 up to the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), so no outgoing connection and no `bind(0)` of any process
//! (a node's Raft client, an `openssl s_client`) can be given one; `stek demo` keeps below
//! 20000. Each port is reserved by an exclusive `flock` on `/dev/shm/stek-test-ports/<port>`,
//! held until the test process exits: two picks never return the same port, in one test binary
//! or across the binaries and nextest processes of one machine. A port that another program
//! already binds is skipped (a bind on 127.0.0.1 is tried before it is handed out).
//!
//! Used by the cluster tests and, through `#[path]`, by the `stek` crate's CLI tests (which
//! cannot depend on this crate): std and nix only.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{Flock, FlockArg};

/// Where the port reservations of every user's tests live (a tmpfs: they vanish with the
/// machine), when it is safe to share; see [`lock_dir`].
const SHARED_LOCKS: &str = "/dev/shm/stek-test-ports";

/// The reservations this process holds (the locks are released when it exits).
static RESERVED: Mutex<Vec<Flock<fs::File>>> = Mutex::new(Vec::new());

/// The ports [`free_port`] draws from: below the ephemeral range when there is room for it.
fn port_range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        match ephemeral {
            // 10000-19999 is left to `stek demo` (which the CLI tests run), which picks its
            // ports by a bind check alone and cannot see these reservations.
            (lo, _) if lo >= 22000 => (20000, lo - 1),
            (_, hi) if hi <= 55000 => (hi + 1, 65535),
            // An unusual kernel setting leaves no room outside it: the reservation and the
            // bind check still keep picks apart, only outgoing connections are not excluded.
            _ => (10000, 65535),
        }
    })
}

/// The directory of port locks: the shared one when it is a real directory that only root or
/// this user owns (root's must be sticky and open to all, like /tmp, so nobody deletes another's
/// locks); otherwise, if another user made it first or planted a link there, a private one.
fn lock_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let me = nix::unistd::Uid::effective().as_raw();
        let trusted = |dir: &Path| {
            fs::symlink_metadata(dir).is_ok_and(|m| {
                m.is_dir()
                    && (m.uid() == me || (m.uid() == 0 && m.mode() & 0o7777 == 0o1777))
            })
        };
        let shared = PathBuf::from(SHARED_LOCKS);
        if fs::create_dir(&shared).is_ok() {
            let _ = fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777));
        }
        if trusted(&shared) {
            return shared;
        }
        let own = PathBuf::from(format!("{SHARED_LOCKS}-{me}"));
        let _ = fs::DirBuilder::new().mode(0o700).create(&own);
        assert!(
            trusted(&own),
            "neither {SHARED_LOCKS} nor {} is a directory owned by this user (or root): remove them",
            own.display()
        );
        own
    })
}

/// A TCP port on 127.0.0.1 that no other test (in this process or another) is given, that
/// nothing listened on when it was picked, and that is outside the kernel's ephemeral range.
/// The caller's server binds it next.
pub fn free_port() -> u16 {
    let (lo, hi) = port_range();
    let dir = lock_dir();
    for _ in 0..1000 {
        let port = lo + (random() % u64::from(hi - lo + 1)) as u16;
        if let Some(lock) = reserve_in(dir, port) {
            RESERVED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lock);
            return port;
        }
    }
    panic!(
        "no free port in {lo}..={hi} after 1000 tries (reservations in {})",
        dir.display()
    );
}

/// The lock on `port` in `dir`, if no other test holds it and nothing listens on it now.
fn reserve_in(dir: &Path, port: u16) -> Option<Flock<fs::File>> {
    let path = dir.join(port.to_string());
    // flock needs only a readable descriptor: a file another user created is still usable.
    // Whatever else someone put there is refused: a link is not followed, a FIFO does not
    // block the open, and only a regular file is locked.
    let open = |write: bool| {
        fs::OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(false)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
    };
    let file = open(true).or_else(|_| open(false)).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    // Some other program may use it (the lock is dropped with this return).
    TcpListener::bind(("127.0.0.1", port)).ok()?;
    Some(lock)
}

/// A random number (std's randomly keyed hasher over a counter: no rand dependency).
fn random() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ports_are_never_handed_out_twice_and_lie_outside_the_ephemeral_range() {
        let (lo, hi) = port_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| (lo..=hi).contains(p)));
        // Another process cannot take a reserved port either: the lock is held.
        let file = fs::File::open(lock_dir().join(ports[0].to_string())).unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err());
    }

    /// What another local user could put in the shared directory: a link to a file of theirs
    /// (or one root would then create), or a FIFO that blocks whoever opens it. Neither is used
    /// as a lock, nothing is created through the link, and nothing hangs. In a private
    /// directory, so the shared one is never touched.
    #[test]
    fn planted_links_and_fifos_are_never_used_as_locks() {
        let dir = std::env::temp_dir().join(format!("stek-port-plant-{}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let port = (20000..30000)
            .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            .unwrap();
        let target = dir.join("target-of-the-link");
        std::os::unix::fs::symlink(&target, dir.join(port.to_string())).unwrap();
        assert!(reserve_in(&dir, port).is_none(), "a planted link was used");
        assert!(!target.exists(), "the link was followed");
        fs::remove_file(dir.join(port.to_string())).unwrap();

        nix::unistd::mkfifo(
            &dir.join(port.to_string()),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(reserve_in(&dir, port).is_none(), "a FIFO was used");
        fs::remove_file(dir.join(port.to_string())).unwrap();

        assert!(reserve_in(&dir, port).is_some(), "a plain lock file works");
        fs::remove_dir_all(&dir).unwrap();
    }
}
