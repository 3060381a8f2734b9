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

/// Locks the daemon's memory (current and future) so secrets are never swapped out, when the
/// memlock limit allows it (unlimited, as for root with CAP_IPC_LOCK). Returns what happened,
/// for the caller to log once.
pub fn lock_memory() -> Result<(), String> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    if limit.current.is_some() {
        return Err(format!(
            "the memlock limit is {} bytes, not unlimited; memory is not locked and secrets could be swapped (run with CAP_IPC_LOCK and an unlimited RLIMIT_MEMLOCK)",
            limit.current.unwrap_or(0)
        ));
    }
    rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
        .map_err(|e| format!("mlockall failed ({e}); secrets could be swapped"))
}

/// Overwrites the dead part of this thread's stack below the caller with zeros, so values that
/// finished frames left behind (TLS decryption, JSON decoding) do not linger. The daemon runs on
/// one thread, so every Key Vault answer was decoded on this stack.
#[inline(never)]
pub fn scrub_stack() {
    let mut area = [0u8; 256 * 1024];
    std::hint::black_box(&mut area);
}
