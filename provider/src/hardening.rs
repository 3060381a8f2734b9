//! Process hardening applied before anything secret is held.

/// Disables core dumps and ptrace attach by other users (PR_SET_DUMPABLE 0) and sets the core
/// size limit to zero. Failures are logged later by the caller's logger only as warnings: the
/// daemon still works, with weaker guarantees.
pub fn harden_process() {
    if let Err(err) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
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
