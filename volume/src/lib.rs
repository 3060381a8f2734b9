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

mod dir;
mod error;
mod fsops;
mod mount;
mod path;
mod target;
mod writer;

pub use dir::{FsKind, memory_fs_kind, remove_contents};
pub use error::{ErrorKind, VolumeError};
pub use mount::{TmpfsOptions, is_mount_point, mount_tmpfs, mounts_under, teardown, unmount};
pub use path::{MAX_ELEMENT_BYTES, MAX_PATH_BYTES, PathError, validate_relative_path};
pub use target::PinnedTarget;
pub use writer::{
    AtomicWriter, DATA_DIR_NAME, DATA_DIR_TMP_NAME, FileSpec, Ownership, WriteOutcome,
};
