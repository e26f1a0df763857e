//! Process-level protection of key bytes in memory: no core dumps, and key pages kept out of
//! swap where the process may lock memory without risking allocation failures.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::unistd::Uid;

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

fn lock_memory() -> Result<(), String> {
    // With a finite RLIMIT_MEMLOCK and no CAP_IPC_LOCK, MCL_FUTURE would make later
    // allocations fail once the limit is reached: only lock when the limit cannot bite.
    let (soft, _) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(|e| e.to_string())?;
    if soft != RLIM_INFINITY && !Uid::effective().is_root() {
        return Err(format!(
            "RLIMIT_MEMLOCK is {soft} bytes and stek is not root; give it CAP_IPC_LOCK and LimitMEMLOCK=infinity (systemd) so key pages cannot be swapped out"
        ));
    }
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE)
        .map_err(|e| format!("mlockall failed: {e}; key pages may be swapped out"))
}
