//! `kvmount-volume`: puts a set of secret files into a memory-backed directory, safely.
//!
//! - [`validate_relative_path`]: the path rules every published name must pass.
//! - [`AtomicWriter`]: the kubelet-style atomic writer (`..data` switch, visible links).
//! - [`memory_fs_kind`]: refuses anything that is not tmpfs or ramfs.
//! - [`remove_contents`], [`mount_tmpfs`], [`is_mount_point`], [`unmount`], [`teardown`]:
//!   the publish/unpublish helpers; [`PinnedTarget`]: a target reached through its parent held
//!   open, so a symlink swapped in at the parent is never followed.
//!
//! Invariants this crate keeps:
//! - secret bytes are only written below a directory on tmpfs or ramfs;
//! - no operation follows a symbolic link found inside a target, the target itself, or (through
//!   [`PinnedTarget`]) its parent;
//! - removal never leaves the target's filesystem (nested mounts are not entered);
//! - file contents never appear in an error, a log line or a `Debug` output.
#![forbid(unsafe_code)]

mod error;
mod fsops;
mod mount;
mod path;
mod target;
mod writer;

use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{self, Mode, OFlags};
use rustix::io::Errno;

pub use error::{ErrorKind, VolumeError};
pub use mount::{TmpfsOptions, is_mount_point, mount_tmpfs, mounts_under, teardown, unmount};
pub use path::{MAX_ELEMENT_BYTES, MAX_PATH_BYTES, PathError, validate_relative_path};
pub use target::PinnedTarget;
pub use writer::{
    AtomicWriter, DATA_DIR_NAME, DATA_DIR_TMP_NAME, FileSpec, Ownership, WriteOutcome,
};

/// A memory-backed filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// tmpfs (`TMPFS_MAGIC` 0x01021994).
    Tmpfs,
    /// ramfs (`RAMFS_MAGIC` 0x858458f6).
    Ramfs,
}

pub(crate) fn fs_kind_from_magic(magic: u64) -> Option<FsKind> {
    match magic {
        fsops::TMPFS_MAGIC => Some(FsKind::Tmpfs),
        fsops::RAMFS_MAGIC => Some(FsKind::Ramfs),
        _ => None,
    }
}

/// The memory-backed filesystem `path` is on, or [`VolumeError::NotMemoryBacked`].
///
/// `path` itself is not followed if it is a symlink: the answer is about the filesystem that
/// holds the link.
pub fn memory_fs_kind(path: &Path) -> Result<FsKind, VolumeError> {
    const OP: &str = "check filesystem";
    let fd = fs::openat(
        fs::CWD,
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| VolumeError::io(OP, path, e))?;
    let magic = fsops::fs_magic(fd.as_fd()).map_err(|e| VolumeError::io("fstatfs", path, e))?;
    fs_kind_from_magic(magic).ok_or_else(|| VolumeError::NotMemoryBacked {
        operation: OP,
        path: path.to_path_buf(),
        fs_magic: magic,
    })
}

/// Removes everything inside `target` (visible links, `..data`, `..data_tmp`, payload
/// directories, and anything else in it), keeping `target` itself.
///
/// `target` must be a real directory on tmpfs or ramfs (anything else is refused: secrets are
/// never written elsewhere, so there is nothing to remove there). No symlink is followed: links
/// are unlinked, directories are entered with `O_NOFOLLOW | O_DIRECTORY` only. A directory on
/// another filesystem mounted inside the target is not entered ([`VolumeError::CrossesMount`]).
/// Everything in the volume directory is removed, not only names the writer made, so that the
/// directory can be removed afterwards (a leftover file must not make unpublish fail forever).
pub fn remove_contents(target: &Path) -> Result<(), VolumeError> {
    const OP: &str = "remove volume contents";
    let dir = fs::openat(
        fs::CWD,
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => VolumeError::NotADirectory {
            operation: OP,
            path: target.to_path_buf(),
        },
        e => VolumeError::io(OP, target, e),
    })?;
    let magic = fsops::fs_magic(dir.as_fd()).map_err(|e| VolumeError::io("fstatfs", target, e))?;
    if fs_kind_from_magic(magic).is_none() {
        return Err(VolumeError::NotMemoryBacked {
            operation: OP,
            path: target.to_path_buf(),
            fs_magic: magic,
        });
    }
    let _claim = fsops::WriteClaim::take(dir.as_fd())
        .map_err(|e| VolumeError::io("claim for writing", target, e))?;
    let mount = fsops::fs_id(dir.as_fd()).map_err(|e| VolumeError::io("fstat", target, e))?;
    fsops::clear_dir(dir.as_fd(), mount).map_err(|e| match e {
        Errno::XDEV => VolumeError::CrossesMount {
            operation: OP,
            path: target.to_path_buf(),
        },
        e => VolumeError::io(OP, target, e),
    })
}
