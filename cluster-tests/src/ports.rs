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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{Flock, FlockArg};

/// Where the port reservations live (a tmpfs: they vanish with the machine).
const PORT_LOCKS: &str = "/dev/shm/stek-test-ports";

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

/// A TCP port on 127.0.0.1 that no other test (in this process or another) is given, that
/// nothing listened on when it was picked, and that is outside the kernel's ephemeral range.
/// The caller's server binds it next.
pub fn free_port() -> u16 {
    let (lo, hi) = port_range();
    if fs::create_dir(PORT_LOCKS).is_ok() {
        // Shared by every user's tests, like /tmp.
        let _ = fs::set_permissions(PORT_LOCKS, fs::Permissions::from_mode(0o1777));
    }
    for _ in 0..1000 {
        let port = lo + (random() % u64::from(hi - lo + 1)) as u16;
        if let Some(lock) = reserve(port) {
            RESERVED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lock);
            return port;
        }
    }
    panic!("no free port in {lo}..={hi} after 1000 tries (reservations in {PORT_LOCKS})");
}

/// The lock on `port`, if no other test holds it and nothing listens on it now.
fn reserve(port: u16) -> Option<Flock<fs::File>> {
    let path = format!("{PORT_LOCKS}/{port}");
    // flock needs only a readable descriptor: a file another user created is still usable.
    // The directory is shared: never follow a link someone else put there.
    let open = |write: bool| {
        fs::OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(false)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
    };
    let file = open(true).or_else(|_| open(false)).ok()?;
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
        let port = ports[0];
        let file = fs::OpenOptions::new()
            .write(true)
            .open(format!("{PORT_LOCKS}/{port}"))
            .unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err());
    }

    #[test]
    fn a_link_planted_in_the_shared_directory_is_never_followed() {
        let _ = free_port(); // makes the directory
        let (lo, hi) = port_range();
        // A port nobody holds (its lock is released at once).
        let port = (lo..=hi).find(|&p| reserve(p).is_some()).unwrap();
        let lock_path = format!("{PORT_LOCKS}/{port}");
        let target = std::env::temp_dir().join(format!("stek-port-link-{}", std::process::id()));
        // What another user could do: replace the lock file with a link to a file of theirs.
        fs::remove_file(&lock_path).unwrap();
        std::os::unix::fs::symlink(&target, &lock_path).unwrap();
        assert!(reserve(port).is_none(), "a planted link was used as a lock");
        assert!(!target.exists(), "the link was followed");
        fs::remove_file(&lock_path).unwrap();
        assert!(reserve(port).is_some(), "the port itself is free");
    }
}
