//! The crate's error type. Errors name the operation and the path; they never hold file contents.

use std::path::PathBuf;

use crate::path::PathError;

/// Broad class of a [`VolumeError`], for mapping to gRPC status codes in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input is wrong (`INVALID_ARGUMENT`).
    InvalidArgument,
    /// The system is not in a state where the operation can run (`FAILED_PRECONDITION`).
    FailedPrecondition,
    /// The operation was not permitted (`PERMISSION_DENIED`).
    PermissionDenied,
    /// Something the operation needs does not exist (`NOT_FOUND`).
    NotFound,
    /// Any other failure of the system (`INTERNAL`).
    Internal,
}

/// Everything that can go wrong in `kvmount-volume`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// A file path in a write request broke a path rule; nothing was written.
    #[error("invalid file path: {source}")]
    InvalidPath {
        /// The rule that was broken.
        #[from]
        source: PathError,
    },
    /// Two files of one write request collide (the same path twice, or one path is a directory of
    /// another, like `a` and `a/b`); nothing was written.
    #[error(
        "file paths {first:?} and {second:?} conflict: {reason}; each path must be unique and no file may be a directory of another"
    )]
    ConflictingPaths {
        /// The first of the two paths.
        first: String,
        /// The second of the two paths.
        second: String,
        /// How they collide.
        reason: &'static str,
    },
    /// A file mode is outside `0..=0o777`; nothing was written.
    #[error(
        "file {path:?}: mode {mode:#o} is not accepted; modes are 0 to 0o777 (no setuid, setgid or sticky bits)"
    )]
    InvalidMode {
        /// The file's relative path.
        path: String,
        /// The refused mode.
        mode: u32,
    },
    /// An option passed to an operation is out of range.
    #[error("{operation} {path:?}: option {option} is not accepted: {accepted}")]
    InvalidOption {
        /// The operation (`mount_tmpfs`, ...).
        operation: &'static str,
        /// The path it was called on.
        path: PathBuf,
        /// The option's name.
        option: &'static str,
        /// What is accepted instead.
        accepted: &'static str,
    },
    /// The directory is not on tmpfs or ramfs, so secrets written there could reach durable storage.
    #[error(
        "{operation} {path:?}: not on tmpfs or ramfs (filesystem magic {fs_magic:#x}); secrets are only written to memory-backed filesystems"
    )]
    NotMemoryBacked {
        /// The operation that refused.
        operation: &'static str,
        /// The directory.
        path: PathBuf,
        /// `f_type` from `statfs`.
        fs_magic: u64,
    },
    /// The path is not a real directory (it is a symbolic link, which is never followed, or a file).
    #[error("{operation} {path:?}: not a directory (symbolic links are never followed)")]
    NotADirectory {
        /// The operation that refused.
        operation: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// An entry inside the target is of a kind the writer never creates there (for example a
    /// directory where a visible symlink belongs, or a file named `..data`); it was left untouched.
    #[error(
        "{operation} {path:?}: found {found} where the writer keeps {expected}; left untouched"
    )]
    UnexpectedEntry {
        /// The operation that refused.
        operation: &'static str,
        /// The entry.
        path: PathBuf,
        /// What was found.
        found: &'static str,
        /// What belongs there.
        expected: &'static str,
    },
    /// Removal found another filesystem mounted inside the target and refused to descend into it.
    #[error(
        "{operation} {path:?}: another filesystem is mounted here; refusing to remove anything in it"
    )]
    CrossesMount {
        /// The operation that refused.
        operation: &'static str,
        /// The nested mount point.
        path: PathBuf,
    },
    /// The target is already a mount point, so a new tmpfs is not stacked on it.
    #[error("{operation} {path:?}: already a mount point; not mounting another filesystem over it")]
    AlreadyMounted {
        /// The operation that refused.
        operation: &'static str,
        /// The target.
        path: PathBuf,
    },
    /// The target was still a mount point after repeated unmounts.
    #[error("{operation} {path:?}: still mounted after {attempts} unmounts")]
    StillMounted {
        /// The operation that gave up.
        operation: &'static str,
        /// The target.
        path: PathBuf,
        /// How many unmounts were tried.
        attempts: u32,
    },
    /// A system call failed.
    #[error("{operation} {path:?}: {source}")]
    Io {
        /// The operation or system call (`openat`, `renameat`, ...).
        operation: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// The class of this error, for mapping to a gRPC status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidPath { .. }
            | Self::ConflictingPaths { .. }
            | Self::InvalidMode { .. }
            | Self::InvalidOption { .. } => ErrorKind::InvalidArgument,
            Self::NotMemoryBacked { .. }
            | Self::NotADirectory { .. }
            | Self::UnexpectedEntry { .. }
            | Self::CrossesMount { .. }
            | Self::AlreadyMounted { .. } => ErrorKind::FailedPrecondition,
            Self::StillMounted { .. } => ErrorKind::Internal,
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// The error with its path changed by `f` (a variant without a path is returned as is).
    pub(crate) fn map_path(mut self, f: impl FnOnce(PathBuf) -> PathBuf) -> Self {
        match &mut self {
            Self::InvalidOption { path, .. }
            | Self::NotMemoryBacked { path, .. }
            | Self::NotADirectory { path, .. }
            | Self::UnexpectedEntry { path, .. }
            | Self::CrossesMount { path, .. }
            | Self::AlreadyMounted { path, .. }
            | Self::StillMounted { path, .. }
            | Self::Io { path, .. } => *path = f(std::mem::take(path)),
            Self::InvalidPath { .. } | Self::ConflictingPaths { .. } | Self::InvalidMode { .. } => {
            }
        }
        self
    }

    /// An [`VolumeError::Io`] from a rustix error.
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        errno: rustix::io::Errno,
    ) -> Self {
        Self::Io {
            operation,
            path: path.into(),
            source: errno.into(),
        }
    }

    /// An [`VolumeError::Io`] from a std error.
    pub(crate) fn std_io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let e: VolumeError = PathError::Empty.into();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = VolumeError::NotMemoryBacked {
            operation: "open",
            path: "/x".into(),
            fs_magic: 0xef53,
        };
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("0xef53"), "{e}");
        let e = VolumeError::io("openat", "/x", rustix::io::Errno::IO);
        assert_eq!(e.kind(), ErrorKind::Internal);
        let e = VolumeError::io("openat", "/x", rustix::io::Errno::NOENT);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = VolumeError::io("openat", "/x", rustix::io::Errno::ACCESS);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }
}
