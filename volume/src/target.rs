//! A volume target reached through its parent directory, held open.
//!
//! kubelet makes the target's parent (`.../volumes/kubernetes.io~csi/<volume>/`) and hands the
//! plugin a path. Every later use of that path would resolve it again, so a symlink swapped in
//! at the parent between two calls would send a `mkdir`, a mount or a cleanup somewhere else
//! (CVE-2017-1002101 and CVE-2021-25741 were such swaps). [`PinnedTarget`] opens the parent
//! once, refusing a symlink there, and names the target as `/proc/self/fd/<parent fd>/<name>`
//! from then on: the kernel resolves that through the open directory, whatever is renamed or
//! swapped on the way to it afterwards. The path above the parent (kubelet's root directory,
//! which may itself be a symlink, as with `--root-dir` on another disk) is followed once, at the
//! open.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self, Mode, OFlags};
use rustix::io::Errno;

use crate::error::VolumeError;

/// A target whose parent directory is held open; see the module docs.
#[derive(Debug)]
pub struct PinnedTarget {
    _parent: OwnedFd,
    /// `/proc/self/fd/<parent fd>`.
    via: PathBuf,
    /// `via` joined with the target's name.
    path: PathBuf,
    /// The parent as the caller named it (for messages).
    parent: PathBuf,
}

impl PinnedTarget {
    /// Opens `target`'s parent (`O_PATH | O_DIRECTORY | O_NOFOLLOW`). `Ok(None)` when the parent
    /// does not exist; [`VolumeError::NotADirectory`] when it is a symlink or not a directory.
    pub fn open(target: &Path) -> Result<Option<Self>, VolumeError> {
        const OP: &str = "open the target's parent";
        let (Some(parent), Some(Component::Normal(name))) =
            (target.parent(), target.components().next_back())
        else {
            return Err(VolumeError::NotADirectory {
                operation: OP,
                path: target.to_path_buf(),
            });
        };
        let fd = match fs::openat(
            fs::CWD,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(VolumeError::NotADirectory {
                    operation: OP,
                    path: parent.to_path_buf(),
                });
            }
            Err(e) => return Err(VolumeError::io(OP, parent, e)),
        };
        let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(Some(Self {
            path: via.join(name),
            via,
            _parent: fd,
            parent: parent.to_path_buf(),
        }))
    }

    /// The target, through the open parent: use it for every operation on the target.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `err` with the `/proc/self/fd/N` prefix put back to the parent the caller named, so
    /// messages show the path kubelet sent.
    pub fn explain(&self, err: VolumeError) -> VolumeError {
        err.map_path(|p| match p.strip_prefix(&self.via) {
            Ok(rest) => self.parent.join(rest),
            Err(_) => p,
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_held_and_never_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = dir.path().join("volume");
        std::fs::create_dir(&parent).expect("parent");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("elsewhere");

        let pinned = PinnedTarget::open(&parent.join("mount"))
            .expect("open")
            .expect("parent exists");
        std::fs::create_dir(pinned.path()).expect("mkdir through the pin");
        // The parent is swapped for a symlink afterwards: the pin still names the real one.
        std::fs::rename(&parent, dir.path().join("moved")).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &parent).expect("plant");
        std::fs::write(pinned.path().join("f"), "x").expect("write through the pin");
        assert!(dir.path().join("moved/mount/f").exists());
        assert_eq!(std::fs::read_dir(&elsewhere).expect("list").count(), 0);

        // A symlink at the parent is refused; a missing parent is None.
        let err = PinnedTarget::open(&parent.join("mount")).expect_err("symlinked parent");
        assert!(matches!(err, VolumeError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains(&parent.display().to_string()));
        assert!(
            PinnedTarget::open(&dir.path().join("gone/mount"))
                .expect("open")
                .is_none()
        );
        // Messages name the path the caller gave, not /proc/self/fd.
        let err = pinned.explain(VolumeError::NotADirectory {
            operation: "x",
            path: pinned.path().join("f"),
        });
        assert!(
            err.to_string()
                .contains(&parent.join("mount/f").display().to_string()),
            "{err}"
        );
    }
}
