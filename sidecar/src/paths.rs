//! The container paths a kvmount mount must keep clear of, and the rule for
//! `kvmount.io/mount-path`: the secrets volume is mounted at that path in the app containers
//! and in the agent, so it must not hide, or sit inside, anything either of them needs.
//!
//! - system trees (`/bin`, `/sbin`, `/lib*`, `/usr`, `/proc`, `/sys`, `/dev`,
//!   `/var/run/secrets`): neither the tree, anything in it, nor a directory above it;
//! - `/etc`: neither `/etc` nor a directory above it (a directory of the app's own inside is
//!   fine), and not the files and directories in it that containers need: the CA roots
//!   (`/etc/ssl`, `/etc/pki`; the agent reads `/etc/ssl/certs`) and what kubelet mounts
//!   (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`);
//! - what the injection itself mounts or runs: the token directories, `/kvmount/bin`, and the
//!   directory of the agent binary in its image.
//!
//! `/var/run` is a link to `/run` in most images, so paths are compared in both spellings.

use std::fmt;

/// How a mount path may relate to a reserved path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Not the path, not inside it, not above it.
    WholeTree,
    /// Not the path and not above it; inside is fine.
    NotAbove,
}

/// A path the secrets volume must keep clear of, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The path.
    pub path: String,
    /// What it holds.
    pub what: &'static str,
    reach: Reach,
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.what)
    }
}

const SYSTEM_TREES: &[(&str, &str)] = &[
    ("/bin", "the image's programs"),
    ("/sbin", "the image's programs"),
    ("/lib", "the image's libraries"),
    ("/lib32", "the image's libraries"),
    ("/lib64", "the image's libraries"),
    ("/libx32", "the image's libraries"),
    ("/usr", "the image's programs and libraries"),
    ("/proc", "the kernel's process filesystem"),
    ("/sys", "the kernel's sysfs"),
    ("/dev", "the container's devices"),
    (
        "/var/run/secrets",
        "the service-account and workload-identity tokens",
    ),
    ("/etc/ssl", "the CA roots the agent and most apps trust"),
    ("/etc/pki", "the CA roots of Red Hat-based images"),
    ("/etc/hosts", "mounted by kubelet"),
    ("/etc/hostname", "mounted by kubelet"),
    ("/etc/resolv.conf", "mounted by kubelet"),
];

/// The paths the secrets volume must keep clear of; `injected` lists the paths the injection
/// mounts or runs from (token directories, `/kvmount/bin`, the agent binary's directory).
pub fn reserved(injected: &[(&str, &'static str)]) -> Vec<Reserved> {
    let entry = |path: &str, what, reach| Reserved {
        path: path.to_owned(),
        what,
        reach,
    };
    // Most telling first: the injection's own paths (under /var/run/secrets and /usr), then
    // /etc as a whole (above /etc/ssl and the others), then the rest.
    let mut out: Vec<Reserved> = injected
        .iter()
        .map(|(path, what)| entry(path, what, Reach::WholeTree))
        .collect();
    out.push(entry(
        "/etc",
        "the containers' configuration",
        Reach::NotAbove,
    ));
    out.extend(
        SYSTEM_TREES
            .iter()
            .map(|(path, what)| entry(path, what, Reach::WholeTree)),
    );
    out
}

/// The directory of an absolute program path (`None` for a program at the root).
pub fn directory_of(program: &str) -> Option<&str> {
    program
        .rsplit_once('/')
        .map(|(dir, _)| dir)
        .filter(|dir| !dir.is_empty())
}

/// True when `inner` is `outer` or below it (both absolute, without a trailing `/`).
fn within(inner: &str, outer: &str) -> bool {
    inner == outer
        || outer == "/"
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `/var/run/...` spelled `/run/...`.
fn via_run(path: &str) -> String {
    match path.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => path.to_owned(),
    }
}

/// True when a mount at `mount` breaks `reserved`.
fn breaks(mount: &str, reserved: &Reserved) -> bool {
    let spellings = [
        (mount.to_owned(), reserved.path.clone()),
        (via_run(mount), via_run(&reserved.path)),
    ];
    spellings
        .iter()
        .any(|(m, r)| within(r, m) || (reserved.reach == Reach::WholeTree && within(m, r)))
}

/// The first reserved path a mount at `mount` would hide or sit inside.
pub fn conflict<'a>(mount: &str, reserved: &'a [Reserved]) -> Option<&'a Reserved> {
    reserved.iter().find(|r| breaks(mount, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mount: &str) -> Option<String> {
        let list = reserved(&[
            ("/var/run/secrets/kvmount.io/serviceaccount", "token"),
            ("/kvmount/bin", "exec"),
            ("/usr/local/bin", "agent"),
        ]);
        conflict(mount, &list).map(|r| r.path.clone())
    }

    #[test]
    fn system_paths_and_the_injections_own_are_refused() {
        for (mount, hit) in [
            ("/etc", "/etc"),
            ("/var", "/var/run/secrets/kvmount.io/serviceaccount"),
            ("/var/run", "/var/run/secrets/kvmount.io/serviceaccount"),
            ("/run", "/var/run/secrets/kvmount.io/serviceaccount"),
            (
                "/run/secrets/kvmount.io",
                "/var/run/secrets/kvmount.io/serviceaccount",
            ),
            ("/var/run/secrets/azure", "/var/run/secrets"),
            ("/usr/local/bin", "/usr/local/bin"),
            ("/usr/share/x", "/usr"),
            ("/lib64/x", "/lib64"),
            ("/etc/ssl/certs", "/etc/ssl"),
            ("/etc/hosts", "/etc/hosts"),
            ("/kvmount", "/kvmount/bin"),
            ("/kvmount/bin/x", "/kvmount/bin"),
        ] {
            assert_eq!(check(mount).as_deref(), Some(hit), "{mount}");
        }
        for mount in [
            "/mnt/secrets",
            "/etc/app/secrets",
            "/etc/sslx",
            "/data",
            "/run-data",
            "/variable",
            "/kvmountx",
        ] {
            assert_eq!(check(mount), None, "{mount}");
        }
    }

    #[test]
    fn program_directories() {
        assert_eq!(
            directory_of("/usr/local/bin/kvmount-agent"),
            Some("/usr/local/bin")
        );
        assert_eq!(directory_of("/app"), None);
    }
}
