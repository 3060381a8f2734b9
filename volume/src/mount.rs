//! tmpfs mount, mount-point detection, unmount and the full unpublish (`teardown`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self, AtFlags, FileType, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::dir::{memory_fs_kind, open_dir_nofollow, remove_contents};
use crate::error::VolumeError;

/// Source name shown for kvmount's tmpfs mounts in `/proc/self/mountinfo`.
pub const MOUNT_SOURCE: &str = "kvmount";
/// How many stacked mounts [`teardown`] removes before giving up.
const MAX_UNMOUNTS: u32 = 16;

/// Options of a kvmount tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmpfsOptions {
    /// Size limit in bytes (`size=`); must be greater than 0 (0 would mean unlimited).
    pub size_bytes: u64,
    /// Mode of the tmpfs root, `0..=0o777` (`mode=`).
    pub mode: u32,
    /// Owner of the tmpfs root (`uid=`).
    pub uid: Option<u32>,
    /// Group of the tmpfs root (`gid=`).
    pub gid: Option<u32>,
}

fn mount_data(opts: &TmpfsOptions, noswap: bool) -> String {
    let mut data = format!("size={},mode={:o}", opts.size_bytes, opts.mode);
    if let Some(uid) = opts.uid {
        data.push_str(&format!(",uid={uid}"));
    }
    if let Some(gid) = opts.gid {
        data.push_str(&format!(",gid={gid}"));
    }
    if noswap {
        data.push_str(",noswap");
    }
    data
}

/// Mounts a new tmpfs (source `kvmount`, `nosuid,nodev,noexec`, `size=`, `mode=`, `uid=`,
/// `gid=`, and `noswap` where the kernel supports it, Linux 6.4+) on `target`.
///
/// `target` must be an existing real directory (a symlink is refused, not followed: the mount
/// is made through `/proc/self/fd/N` of an `O_PATH | O_NOFOLLOW` fd) and not already a mount
/// point ([`VolumeError::AlreadyMounted`]; kvmount never stacks mounts).
pub fn mount_tmpfs(target: &Path, opts: &TmpfsOptions) -> Result<(), VolumeError> {
    const OP: &str = "mount tmpfs";
    if opts.size_bytes == 0 {
        return Err(VolumeError::InvalidOption {
            operation: OP,
            path: target.to_path_buf(),
            option: "size_bytes",
            accepted: "a size greater than 0 bytes",
        });
    }
    if opts.mode > 0o777 {
        return Err(VolumeError::InvalidOption {
            operation: OP,
            path: target.to_path_buf(),
            option: "mode",
            accepted: "a mode from 0 to 0o777",
        });
    }
    let fd = open_dir_nofollow(OP, target, OFlags::PATH)?;
    if is_mount_point(target)? {
        return Err(VolumeError::AlreadyMounted {
            operation: OP,
            path: target.to_path_buf(),
        });
    }
    let via = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let to_c = |s: String| CString::new(s).map_err(|_| VolumeError::io(OP, target, Errno::INVAL));
    let data = to_c(mount_data(opts, true))?;
    match rustix::mount::mount(MOUNT_SOURCE, via.as_str(), "tmpfs", flags, data.as_c_str()) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) => {
            // Kernels before 6.4 do not know `noswap`.
            tracing::warn!(target_dir = %target.display(), "tmpfs noswap not supported by this kernel; mounting without it (pages may be swapped)");
            let data = to_c(mount_data(opts, false))?;
            rustix::mount::mount(MOUNT_SOURCE, via.as_str(), "tmpfs", flags, data.as_c_str())
                .map_err(|e| VolumeError::io("mount", target, e))
        }
        Err(e) => Err(VolumeError::io("mount", target, e)),
    }
}

/// Undoes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash) of a
/// path field in `/proc/self/mountinfo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The mount points listed in a mountinfo text (field 5 of each line), unescaped.
fn mount_points(mountinfo: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(unescape_mountinfo))
}

/// The mount points at or below `root` (as given, not canonicalised), deepest first so they
/// can be unmounted in order, from `/proc/self/mountinfo`.
pub fn mounts_under(root: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    use std::os::unix::ffi::OsStringExt;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| VolumeError::std_io("list mounts", "/proc/self/mountinfo", e))?;
    let mut found: Vec<PathBuf> = mount_points(&info)
        .map(|raw| PathBuf::from(std::ffi::OsString::from_vec(raw)))
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// Whether `target` is a mount point: its device differs from its parent's, or
/// `/proc/self/mountinfo` lists it (which also catches bind mounts within one filesystem).
///
/// A missing `target` or a symlink at `target` is not a mount point (the link is not followed).
pub fn is_mount_point(target: &Path) -> Result<bool, VolumeError> {
    use std::os::unix::ffi::OsStrExt;
    const OP: &str = "check mount point";
    let st = match fs::statat(fs::CWD, target, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(VolumeError::io(OP, target, e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(false);
    }
    let absolute = std::path::absolute(target).map_err(|e| VolumeError::std_io(OP, target, e))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Ok(true); // "/" is always a mount point
    };
    let parent_st = fs::stat(parent).map_err(|e| VolumeError::io(OP, parent, e))?;
    if parent_st.st_dev != st.st_dev {
        return Ok(true);
    }
    let canonical: PathBuf = std::fs::canonicalize(parent)
        .map_err(|e| VolumeError::std_io(OP, parent, e))?
        .join(name);
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| VolumeError::std_io(OP, "/proc/self/mountinfo", e))?;
    let want = canonical.as_os_str().as_bytes();
    Ok(mount_points(&info).any(|mp| mp == want))
}

/// Unmounts the top mount at `target` with `UMOUNT_NOFOLLOW` (a symlink at `target` is never
/// followed). Returns `Ok(true)` if something was unmounted, `Ok(false)` if `target` was not a
/// mount point or does not exist.
pub fn unmount(target: &Path) -> Result<bool, VolumeError> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(e) => Err(VolumeError::io("umount", target, e)),
    }
}

/// The full unpublish of a volume target; idempotent.
///
/// - `target` missing: `Ok`.
/// - `target` is a symlink: the link is removed, never what it points at.
/// - otherwise, while `target` is a mount point: remove its contents if it is memory-backed (so
///   secrets are gone even if the unmount has to be lazy), unmount it (`UMOUNT_NOFOLLOW`; if the
///   mount is busy, lazily with `MNT_DETACH`), and repeat for stacked mounts. Then remove the
///   contents of the directory underneath if that is memory-backed, and `rmdir` it. A non-empty
///   directory on a disk filesystem is not emptied: the `rmdir` error is returned.
pub fn teardown(target: &Path) -> Result<(), VolumeError> {
    const OP: &str = "teardown";
    let st = match fs::statat(fs::CWD, target, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(VolumeError::io(OP, target, e)),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {}
        FileType::Symlink => {
            return match fs::unlinkat(fs::CWD, target, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(VolumeError::io("unlink", target, e)),
            };
        }
        _ => {
            return Err(VolumeError::NotADirectory {
                operation: OP,
                path: target.to_path_buf(),
            });
        }
    }
    let mut attempts = 0;
    while is_mount_point(target)? {
        if attempts == MAX_UNMOUNTS {
            return Err(VolumeError::StillMounted {
                operation: OP,
                path: target.to_path_buf(),
                attempts,
            });
        }
        attempts += 1;
        remove_if_memory_backed(target)?;
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
            Err(Errno::BUSY) => {
                tracing::warn!(target_dir = %target.display(), "mount busy; detaching it lazily (its contents were removed)");
                rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                    .map_err(|e| VolumeError::io("umount", target, e))?;
            }
            Err(e) => return Err(VolumeError::io("umount", target, e)),
        }
    }
    remove_if_memory_backed(target)?;
    match fs::unlinkat(fs::CWD, target, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(VolumeError::io("rmdir", target, e)),
    }
}

fn remove_if_memory_backed(target: &Path) -> Result<(), VolumeError> {
    match memory_fs_kind(target) {
        Ok(_) => match remove_contents(target) {
            Ok(()) => Ok(()),
            Err(VolumeError::NotMemoryBacked { .. }) => Ok(()),
            Err(VolumeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        },
        Err(VolumeError::NotMemoryBacked { .. }) => Ok(()),
        Err(VolumeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescapes_paths() {
        let info = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:40 / /a\\011tab\\134b\\012n rw - tmpfs kvmount rw\n\
                    38 35 0:41 / /plain rw - tmpfs x rw\n";
        let mps: Vec<Vec<u8>> = mount_points(info).collect();
        assert_eq!(mps[0], b"/mnt/with space");
        assert_eq!(mps[1], b"/a\ttab\\b\nn");
        assert_eq!(mps[2], b"/plain");
        assert_eq!(unescape_mountinfo("\\777x\\04"), b"\\777x\\04");
    }

    #[test]
    fn mount_data_format() {
        let o = TmpfsOptions {
            size_bytes: 1 << 20,
            mode: 0o750,
            uid: Some(0),
            gid: Some(65534),
        };
        assert_eq!(
            mount_data(&o, true),
            "size=1048576,mode=750,uid=0,gid=65534,noswap"
        );
        assert_eq!(
            mount_data(
                &TmpfsOptions {
                    uid: None,
                    gid: None,
                    ..o
                },
                false
            ),
            "size=1048576,mode=750"
        );
    }
}
