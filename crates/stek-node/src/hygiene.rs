//! Process-level protection of key bytes in memory: no core dumps, and key pages kept out of
//! swap where the process may lock memory without risking allocation failures.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What [`protect_process`] achieved, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// Core dumps are off (RLIMIT_CORE 0, not dumpable).
    pub core_dumps_disabled: bool,
    /// Memory is locked (mlockall), or why not.
    pub memory_locked: Result<(), String>,
}

/// Disables core dumps and locks memory when that is safe. Never fails: what could not be
/// done is reported so the node can say it at start-up.
pub fn protect_process() -> Protection {
    let core = setrlimit(Resource::RLIMIT_CORE, 0, 0).is_ok()
        && nix::sys::prctl::set_dumpable(false).is_ok();
    Protection {
        core_dumps_disabled: core,
        memory_locked: lock_memory(),
    }
}

/// Whether CAP_IPC_LOCK (bit 14) is in this process's effective capability set.
fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

fn lock_memory() -> Result<(), String> {
    // With a finite RLIMIT_MEMLOCK and no CAP_IPC_LOCK, MCL_FUTURE would make later
    // allocations fail once the limit is reached: only lock when the limit cannot bite.
    // Being root is not enough: root in a container or a sandboxed unit may lack the
    // capability, and then the limit applies to it too.
    let (soft, _) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| e.to_string())?;
    if soft != RLIM_INFINITY && !has_ipc_lock() {
        return Err(format!(
            "RLIMIT_MEMLOCK is {soft} bytes and stek lacks CAP_IPC_LOCK; give it CAP_IPC_LOCK and LimitMEMLOCK=infinity (systemd) so key pages cannot be swapped out"
        ));
    }
    // MCL_ONFAULT (Linux 4.4+) locks pages as they are touched instead of faulting in every
    // mapping at once: without it, thread stacks and reserved heap count fully in the RSS.
    let all = MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE;
    let on_fault = MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
    mlockall(all | on_fault)
        .or_else(|_| mlockall(all))
        .map_err(|e| format!("mlockall failed: {e}; key pages may be swapped out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_check_reads_this_process() {
        // Root in this test environment has every capability; a non-root run has none. Either
        // way the answer must match what the kernel reports for the effective set.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
        let caps = u64::from_str_radix(line["CapEff:".len()..].trim(), 16).unwrap();
        assert_eq!(has_ipc_lock(), caps & (1 << 14) != 0);
    }
}
