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

/// The memory limit of the daemon's own cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), if it has one.
pub fn memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (file, path) = memory_cgroup(&cgroups)?;
    let text = limit_files(file, &path)
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())?;
    parse_limit(&text)
}

/// Where the limit file may be, in order: under the cgroup's full path (a process on the host,
/// or a container whose cgroup namespace makes `/proc/self/cgroup` relative), else at the top
/// of the mount. In a pod on a cgroup v1 node the runtime mounts the container's own cgroup at
/// `/sys/fs/cgroup/memory` while `/proc/self/cgroup` still names the host's path (no cgroup
/// namespace), so only the top holds the pod's limit. On the host the top is the root cgroup,
/// which has no limit (v1: a page-rounded 2^63; v2: no `memory.max` there).
fn limit_files(file: &str, path: &str) -> [String; 2] {
    let top = if file == "memory.limit_in_bytes" {
        "/memory"
    } else {
        ""
    };
    [
        format!("/sys/fs/cgroup{path}/{file}"),
        format!("/sys/fs/cgroup{top}/{file}"),
    ]
}

/// Which file holds the limit and under which path, from `/proc/self/cgroup`: the v1 memory
/// controller's line when there is one, else the v2 line.
fn memory_cgroup(cgroups: &str) -> Option<(&'static str, String)> {
    let mut v2 = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some((
                "memory.limit_in_bytes",
                format!("/memory{}", path.trim_end_matches('/')),
            ));
        }
        if controllers.is_empty() {
            v2 = Some(("memory.max", path.trim_end_matches('/').to_owned()));
        }
    }
    v2
}

/// A limit file's value: `max` and v1's "unlimited" (a page-rounded 2^63) are no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&n| n < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_is_found_in_v1_and_v2() {
        let v1 = "12:memory:/kubepods/pod1/abc\n11:cpu,cpuacct:/kubepods/pod1/abc\n0::/\n";
        assert_eq!(
            memory_cgroup(v1),
            Some((
                "memory.limit_in_bytes",
                "/memory/kubepods/pod1/abc".to_owned()
            ))
        );
        assert_eq!(
            memory_cgroup("0::/kubepods.slice/x\n"),
            Some(("memory.max", "/kubepods.slice/x".to_owned()))
        );
        assert_eq!(memory_cgroup("0::/\n"), Some(("memory.max", String::new())));
        // A pod on a cgroup v1 node (seen under kubelet 1.34 and containerd 1.6): the host's
        // path in /proc/self/cgroup, the container's own cgroup mounted at the top.
        assert_eq!(
            limit_files(
                "memory.limit_in_bytes",
                "/memory/kubepods/burstable/pod1/abc"
            ),
            [
                "/sys/fs/cgroup/memory/kubepods/burstable/pod1/abc/memory.limit_in_bytes"
                    .to_owned(),
                "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_owned()
            ]
        );
        assert_eq!(
            limit_files("memory.max", "/kubepods.slice/x"),
            [
                "/sys/fs/cgroup/kubepods.slice/x/memory.max".to_owned(),
                "/sys/fs/cgroup/memory.max".to_owned()
            ]
        );
        assert_eq!(parse_limit("134217728\n"), Some(128 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
    }
}
