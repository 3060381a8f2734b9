//! Low-level directory-fd operations that never follow a symbolic link.
//!
//! Every helper works relative to an open directory fd and names a single path element, so
//! the only path resolution the kernel does is one lookup in a directory we already hold. The
//! final element is never followed: `openat(O_NOFOLLOW)`, `unlinkat`, `readlinkat`, `renameat`
//! and `statat(AT_SYMLINK_NOFOLLOW)` all act on a link itself, not on what it points at.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self, AtFlags, Dir, FileType, FlockOperation, Mode, OFlags};
use rustix::io::{Errno, Result};

/// Deepest directory nesting that removal descends into.
pub(crate) const MAX_DEPTH: usize = 2100;
/// How often removal retries one entry that keeps changing under it.
const MAX_RETRIES: usize = 16;

/// The statfs magic of tmpfs.
pub(crate) const TMPFS_MAGIC: u64 = 0x0102_1994;
/// The statfs magic of ramfs.
pub(crate) const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Opens the directory `name` in `dir` without following a symlink (`ELOOP`/`ENOTDIR` otherwise).
pub(crate) fn open_dir_at<Fd: AsFd>(dir: Fd, name: &str) -> Result<OwnedFd> {
    fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The file type of `name` in `dir`, of the entry itself (a symlink is reported as a symlink).
pub(crate) fn entry_type<Fd: AsFd>(dir: Fd, name: &str) -> Result<FileType> {
    let st = fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(st.st_mode))
}

/// Reads the symlink `name` in `dir`. `EINVAL` means the entry exists but is not a symlink.
pub(crate) fn read_link_at<Fd: AsFd>(dir: Fd, name: &str) -> Result<CString> {
    fs::readlinkat(dir, name, Vec::new())
}

/// The statfs magic of the filesystem holding `fd`.
pub(crate) fn fs_magic(fd: BorrowedFd<'_>) -> Result<u64> {
    let st = fs::fstatfs(fd)?;
    // `f_type` is a signed word on some targets; the magics are all below 2^32.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// The names in directory `dir`, without `.` and `..`. Names that are not UTF-8 are returned
/// lossily converted, flagged `false`, so callers can tell they are not ours.
pub(crate) fn list_names(dir: BorrowedFd<'_>) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name: &CStr = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => out.push((s.to_owned(), true)),
            Err(_) => out.push((String::from_utf8_lossy(bytes).into_owned(), false)),
        }
    }
    Ok(out)
}

/// The raw names in `dir` (for removal, which must also handle names that are not UTF-8).
fn list_raw_names(dir: BorrowedFd<'_>) -> Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        out.push(entry.file_name().to_owned());
    }
    Ok(out)
}

/// Removes the entry `name` in `dir`, whatever it is, without following a symlink.
///
/// A symlink or file is unlinked; a directory is emptied recursively (each level opened with
/// `O_NOFOLLOW | O_DIRECTORY`) and then removed. A directory on another filesystem than `dev`
/// (a nested mount) is not entered: the error is `EXDEV`. A missing entry is fine. If the entry is
/// swapped while we work on it (file to directory or back), the removal is retried.
pub(crate) fn remove_entry_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    dev: u64,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Errno::LOOP);
    }
    for _ in 0..MAX_RETRIES {
        match fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR) | Err(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
        let child = match fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for a symlink or a file since the unlink attempt: unlink it next round.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => continue,
            Err(e) => return Err(e),
        };
        if fs::fstat(&child)?.st_dev != dev {
            return Err(Errno::XDEV);
        }
        clear_dir(child.as_fd(), dev, depth + 1)?;
        match fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            // Something was added meanwhile, or the entry was swapped: go again.
            Err(Errno::NOTEMPTY) | Err(Errno::NOTDIR) => continue,
            Err(Errno::BUSY) => return Err(Errno::XDEV),
            Err(e) => return Err(e),
        }
    }
    Err(Errno::AGAIN)
}

/// Removes everything inside the open directory `dir` (see [`remove_entry_at`]).
pub(crate) fn clear_dir(dir: BorrowedFd<'_>, dev: u64, depth: usize) -> Result<()> {
    for _ in 0..MAX_RETRIES {
        let names = list_raw_names(dir)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in &names {
            remove_entry_at(dir, name, dev, depth)?;
        }
    }
    Err(Errno::AGAIN)
}

/// Holds an exclusive `flock` on a directory fd for as long as it lives.
pub(crate) struct DirLock<'a> {
    fd: BorrowedFd<'a>,
}

impl<'a> DirLock<'a> {
    /// Blocks until the exclusive lock on `fd` is held.
    pub(crate) fn exclusive(fd: BorrowedFd<'a>) -> Result<Self> {
        fs::flock(fd, FlockOperation::LockExclusive)?;
        Ok(Self { fd })
    }
}

impl Drop for DirLock<'_> {
    fn drop(&mut self) {
        // Closing the fd would release it too; an unlock failure leaves nothing to do.
        let _ = fs::flock(self.fd, FlockOperation::Unlock);
    }
}
