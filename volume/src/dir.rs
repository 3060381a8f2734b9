//! The volume's target directory: opened without following a symlink at it, checked to be
//! on tmpfs or ramfs, and emptied. Every open of a target goes through
//! [`open_dir_nofollow`] (and [`open_memory_dir`] where secrets are read or written).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self, Mode, OFlags};
use rustix::io::Errno;

use crate::error::VolumeError;
use crate::fsops;

/// A memory-backed filesystem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// tmpfs (`TMPFS_MAGIC` 0x01021994).
    Tmpfs,
    /// ramfs (`RAMFS_MAGIC` 0x858458f6).
    Ramfs,
}

/// The memory-backed filesystem of a `statfs` magic number, if it is one.
fn fs_kind_from_magic(magic: u64) -> Option<FsKind> {
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
    memory_fs_of(OP, path, fd.as_fd())
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
    let (dir, _) = open_memory_dir(OP, target)?;
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

/// Opens `target` as a directory (`O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC` and `flags`): a
/// symlink at `target`, or anything but a directory, is [`VolumeError::NotADirectory`] for
/// `operation`.
pub(crate) fn open_dir_nofollow(
    operation: &'static str,
    target: &Path,
    flags: OFlags,
) -> Result<OwnedFd, VolumeError> {
    fs::openat(
        fs::CWD,
        target,
        flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => VolumeError::NotADirectory {
            operation,
            path: target.to_path_buf(),
        },
        e => VolumeError::io(operation, target, e),
    })
}

/// [`open_dir_nofollow`] for reading, and the directory must be on tmpfs or ramfs
/// ([`VolumeError::NotMemoryBacked`] otherwise).
pub(crate) fn open_memory_dir(
    operation: &'static str,
    target: &Path,
) -> Result<(OwnedFd, FsKind), VolumeError> {
    let dir = open_dir_nofollow(operation, target, OFlags::RDONLY)?;
    let kind = memory_fs_of(operation, target, dir.as_fd())?;
    Ok((dir, kind))
}

/// The memory-backed filesystem of `fd` (opened at `path`), or
/// [`VolumeError::NotMemoryBacked`] for `operation`.
fn memory_fs_of(
    operation: &'static str,
    path: &Path,
    fd: BorrowedFd<'_>,
) -> Result<FsKind, VolumeError> {
    let magic = fsops::fs_magic(fd).map_err(|e| VolumeError::io("fstatfs", path, e))?;
    fs_kind_from_magic(magic).ok_or_else(|| VolumeError::NotMemoryBacked {
        operation,
        path: path.to_path_buf(),
        fs_magic: magic,
    })
}
