//! Low-level directory-fd operations that never follow a symbolic link.
//!
//! Every helper works relative to an open directory fd and names a single path element, so
//! the only path resolution the kernel does is one lookup in a directory we already hold. The
//! final element is never followed: `openat(O_NOFOLLOW)`, `unlinkat`, `readlinkat`, `renameat`
//! and `statat(AT_SYMLINK_NOFOLLOW)` all act on a link itself, not on what it points at.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::{Errno, Result};

/// Deepest directory nesting the writer's walk over its own payload descends into (one open
/// directory per level; aliases are at most 16 levels, see kvmount-vault's params).
pub(crate) const MAX_DEPTH: usize = 64;
/// How often removal retries one entry that keeps changing under it.
const MAX_RETRIES: usize = 16;
/// Most steps (a directory listed, entered or left) one removal takes: far beyond any tree a
/// volume's tmpfs holds, a bound for one that keeps changing.
const MAX_STEPS: usize = 4_000_000;

/// The statfs magic of tmpfs.
pub(crate) const TMPFS_MAGIC: u64 = 0x0102_1994;
/// The statfs magic of ramfs.
pub(crate) const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Which mounted filesystem an fd is on: the device, and the mount id where the kernel tells
/// it (Linux 5.8+), which also tells apart a bind mount of the same filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsId {
    dev: u64,
    mnt_id: Option<u64>,
}

/// The [`FsId`] of `fd`.
pub(crate) fn fs_id(fd: BorrowedFd<'_>) -> Result<FsId> {
    let dev = fs::fstat(fd)?.st_dev;
    let mnt_id = match fs::statx(fd, c"", AtFlags::EMPTY_PATH, fs::StatxFlags::MNT_ID) {
        Ok(stx)
            if fs::StatxFlags::from_bits_retain(stx.stx_mask).contains(fs::StatxFlags::MNT_ID) =>
        {
            Some(stx.stx_mnt_id)
        }
        _ => None,
    };
    Ok(FsId { dev, mnt_id })
}

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
/// A symlink or file is unlinked; a directory is emptied ([`clear_dir`]) and then removed. A
/// directory on another mount than `mount` (a nested mount, a bind mount too) is not entered:
/// the error is `EXDEV`. A missing entry is fine. If the entry is swapped while we work on it
/// (file to directory or back), the removal is retried.
pub(crate) fn remove_entry_at(dir: BorrowedFd<'_>, name: &CStr, mount: FsId) -> Result<()> {
    for _ in 0..MAX_RETRIES {
        match fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR) | Err(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
        let child = match open_subdir(dir, name, mount) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for a symlink or a file since the unlink attempt: unlink it next round.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => continue,
            Err(e) => return Err(e),
        };
        clear_dir(child.as_fd(), mount)?;
        match remove_empty_dir(dir, name)? {
            true => return Ok(()),
            // Something was added meanwhile, or the entry was swapped: go again.
            false => continue,
        }
    }
    Err(Errno::AGAIN)
}

/// Opens the subdirectory `name` of `dir` without following a link, refusing one on another
/// mount than `mount` (`EXDEV`).
fn open_subdir(dir: BorrowedFd<'_>, name: &CStr, mount: FsId) -> Result<OwnedFd> {
    let child = fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if fs_id(child.as_fd())? != mount {
        return Err(Errno::XDEV);
    }
    Ok(child)
}

/// `rmdir` of `name` in `dir`: `true` when it is gone, `false` when it was not empty (or was
/// swapped) and must be looked at again.
fn remove_empty_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(Errno::NOTEMPTY) | Err(Errno::NOTDIR) => Ok(false),
        Err(Errno::BUSY) => Err(Errno::XDEV),
        Err(e) => Err(e),
    }
}

/// Removes everything inside the open directory `root`, at any depth, with at most two more
/// directories open at once: a tree nested deeper than the open-file limit (an objectAlias of
/// 2,047 levels, as published before aliases had a depth limit, with a soft limit of 1,024
/// files) goes as well as a flat one. It goes down into one subdirectory at a time and back
/// up through `..`, keeping only the names on the way down; it never leaves `mount` (a
/// directory on another mount is `EXDEV`). A tree that keeps changing under it ends it with
/// `EAGAIN` after a bounded number of steps.
pub(crate) fn clear_dir(root: BorrowedFd<'_>, mount: FsId) -> Result<()> {
    // Names from `root` down to the directory being emptied; `here` is its fd (None: root).
    let mut names: Vec<CString> = Vec::new();
    let mut here: Option<OwnedFd> = None;
    for _ in 0..MAX_STEPS {
        let dir = here.as_ref().map_or(root, |fd| fd.as_fd());
        if let Some(sub) = unlink_all_but_a_dir(dir)? {
            match open_subdir(dir, &sub, mount) {
                Ok(child) => {
                    names.push(sub);
                    here = Some(child);
                }
                // Swapped or gone since the listing: list again.
                Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NOTDIR) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // `dir` is empty: remove it from its parent and carry on there.
        let Some(name) = names.pop() else {
            return Ok(());
        };
        let parent = if names.is_empty() {
            None
        } else {
            Some(open_subdir(dir, c"..", mount)?)
        };
        remove_empty_dir(parent.as_ref().map_or(root, |fd| fd.as_fd()), &name)?;
        here = parent;
    }
    Err(Errno::AGAIN)
}

/// Unlinks every entry of `dir` that is not a directory; returns the first directory found
/// (the rest are left for later rounds).
fn unlink_all_but_a_dir(dir: BorrowedFd<'_>) -> Result<Option<CString>> {
    for name in list_raw_names(dir)? {
        match fs::unlinkat(dir, &name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) | Err(Errno::PERM) => return Ok(Some(name)),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Directories (device, inode) a writer of this process is writing now.
static WRITING: std::sync::Mutex<std::collections::BTreeSet<(u64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Marks a directory as being written by this process for as long as it lives: a lock that no
/// pod can reach. (The writer used to take an exclusive `flock` on the target directory, and a
/// pod holding a `flock` of its own on its read-only volume, which needs no write access, froze
/// every rewrite behind it, and the daemon's one runtime thread with it.) A second writer of
/// the same directory is refused with `EAGAIN` instead of waiting.
pub(crate) struct WriteClaim {
    id: (u64, u64),
}

impl WriteClaim {
    /// Claims `fd`'s directory, or `EAGAIN` when it is being written.
    pub(crate) fn take(fd: BorrowedFd<'_>) -> Result<Self> {
        let st = fs::fstat(fd)?;
        let id = (st.st_dev, st.st_ino);
        let mut writing = WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !writing.insert(id) {
            return Err(Errno::AGAIN);
        }
        Ok(Self { id })
    }
}

impl Drop for WriteClaim {
    fn drop(&mut self) {
        WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}
