//! Process hardening applied before anything secret is held.

/// Disables core dumps and ptrace attach by other users (PR_SET_DUMPABLE 0) and sets the core
/// size limit to zero. Failures are logged later by the caller's logger only as warnings: the
/// daemon still works, with weaker guarantees.
pub fn harden_process() {
    if let Err(err) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("kvmount: warning: cannot mark the process non-dumpable: {err}");
    }
    let zero = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(err) = rustix::process::setrlimit(rustix::process::Resource::Core, zero) {
        eprintln!("kvmount: warning: cannot disable core dumps: {err}");
    }
}

/// Locks the daemon's memory so secrets are never swapped out: raises RLIMIT_MEMLOCK to
/// unlimited where the process may (root), then `mlockall(CURRENT | FUTURE | ONFAULT)` (pages are
/// locked as they are touched, so thread stacks are not populated up front). Without an
/// unlimited limit, nothing is locked: locking future mappings under a finite limit would make
/// allocations fail later. Returns a warning to log once when memory is not locked.
pub fn lock_memory() -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    if getrlimit(Resource::Memlock).current.is_some() {
        let _ = setrlimit(
            Resource::Memlock,
            Rlimit {
                current: None,
                maximum: None,
            },
        );
    }
    if let Some(limit) = getrlimit(Resource::Memlock).current {
        return Err(format!(
            "the memlock limit is {limit} bytes and cannot be raised; memory is not locked and secrets could be swapped (give the daemon CAP_IPC_LOCK or CAP_SYS_RESOURCE)"
        ));
    }
    use rustix::mm::MlockAllFlags;
    rustix::mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
        .map_err(|e| format!("mlockall failed ({e}); secrets could be swapped"))
}

/// The stack scrub the daemon runs after each publish, unpublish and rotation (shared with
/// the agent).
pub use kvmount_alloc::scrub_stack;
