//! The kubelet-style atomic writer.
//!
//! Layout of a published target (the same as a kubelet secret volume):
//!
//! ```text
//! target/
//!   ..2026_01_31_12_00_00.1f2e3d4c5b6a7988/   the payload: real files, mode per file
//!       alias/0
//!       tls.crt
//!   ..data -> ..2026_01_31_12_00_00.1f2e3d4c5b6a7988
//!   alias -> ..data/alias                     one visible link per top-level name
//!   tls.crt -> ..data/tls.crt
//! ```
//!
//! A change builds a complete new payload directory, then switches `..data` with one
//! `rename(2)`, so a reader sees either all old or all new files, never a mix.
//!
//! Nothing here follows a symbolic link: all work is relative to directory fds opened with
//! `O_DIRECTORY | O_NOFOLLOW`, and `..data` is only ever read with `readlinkat` and checked to
//! name a payload directory of ours before that directory is opened (again with `O_NOFOLLOW`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self, AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use zeroize::Zeroizing;

use crate::dir::{FsKind, open_memory_dir};
use crate::error::VolumeError;
use crate::fsops::{self, WriteClaim};
use crate::path::validate_relative_path;

/// Name of the symlink that points at the published payload directory.
pub const DATA_DIR_NAME: &str = "..data";
/// Name of the symlink built before it is renamed over [`DATA_DIR_NAME`].
pub const DATA_DIR_TMP_NAME: &str = "..data_tmp";
/// Prefix of the temporary names used to replace a visible link atomically.
const LINK_TMP_PREFIX: &str = "..link_tmp.";

/// One file to publish. `contents` is borrowed and written straight to the file; no copy is kept.
#[derive(Clone, Copy)]
pub struct FileSpec<'a> {
    /// Relative path inside the volume (see [`validate_relative_path`]).
    pub path: &'a str,
    /// Permission bits, `0..=0o777`.
    pub mode: u32,
    /// The file's bytes (secret: never logged, never in an error).
    pub contents: &'a [u8],
}

impl std::fmt::Debug for FileSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field(
                "contents",
                &format_args!("<{} bytes redacted>", self.contents.len()),
            )
            .finish()
    }
}

/// Ownership applied to every file and directory of a payload (fsGroup style).
///
/// `None` keeps what the creating process gets. When `gid` is set, files additionally get
/// group read permission (`mode | 0o040`), as kubelet's fsGroup makes secret files readable by
/// the pod's group; directories are always `0755`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Owner user id.
    pub uid: Option<u32>,
    /// Owner group id (the pod's fsGroup).
    pub gid: Option<u32>,
}

impl Ownership {
    /// The mode a file with requested mode `mode` gets under this ownership.
    pub fn effective_mode(&self, mode: u32) -> u32 {
        if self.gid.is_some() {
            mode | 0o040
        } else {
            mode
        }
    }
}

/// What a [`AtomicWriter::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Whether a new payload was published (`false`: every file was already identical).
    pub changed: bool,
    /// How many files were written (0 when unchanged).
    pub files_written: usize,
}

/// Writes file sets into one memory-backed target directory, atomically.
///
/// The writer holds an `O_DIRECTORY | O_NOFOLLOW` fd of the target, which keeps the filesystem
/// busy: drop the writer before unmounting. A second write to the same target while one runs
/// in this process is refused (`EAGAIN`); no lock is taken on anything a pod can reach.
#[derive(Debug)]
pub struct AtomicWriter {
    dir: OwnedFd,
    target: PathBuf,
    kind: FsKind,
}

/// A validated write request: paths sorted, top-level names collected.
struct Plan<'s, 'a> {
    files: Vec<&'s FileSpec<'a>>,
    paths: BTreeSet<&'a str>,
    top_level: BTreeSet<&'a str>,
}

impl<'s, 'a> Plan<'s, 'a> {
    fn new(specs: &'s [FileSpec<'a>]) -> Result<Self, VolumeError> {
        let mut paths = BTreeSet::new();
        for spec in specs {
            validate_relative_path(spec.path)?;
            if spec.mode > 0o777 {
                return Err(VolumeError::InvalidMode {
                    path: spec.path.to_owned(),
                    mode: spec.mode,
                });
            }
            if !paths.insert(spec.path) {
                return Err(VolumeError::ConflictingPaths {
                    first: spec.path.to_owned(),
                    second: spec.path.to_owned(),
                    reason: "the same path is given twice",
                });
            }
        }
        for path in &paths {
            for (i, _) in path.match_indices('/') {
                let dir = &path[..i];
                if paths.contains(dir) {
                    return Err(VolumeError::ConflictingPaths {
                        first: dir.to_owned(),
                        second: (*path).to_owned(),
                        reason: "the first is a file and also a directory of the second",
                    });
                }
            }
        }
        let top_level = paths.iter().map(|p| top_element(p)).collect();
        let mut files: Vec<&FileSpec<'a>> = specs.iter().collect();
        files.sort_by(|a, b| a.path.cmp(b.path));
        Ok(Self {
            files,
            paths,
            top_level,
        })
    }
}

fn top_element(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Whether `name` is a payload directory name this writer creates:
/// `..YYYY_MM_DD_HH_MM_SS.<1 to 32 of [0-9a-z]>`.
pub(crate) fn is_payload_dir_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("..") else {
        return false;
    };
    let b = rest.as_bytes();
    // "YYYY_MM_DD_HH_MM_SS" is 19 bytes, then '.', then the random part.
    if b.len() < 21 || b.len() > 19 + 1 + 32 {
        return false;
    }
    let stamp_ok = b[..19].iter().enumerate().all(|(i, c)| match i {
        4 | 7 | 10 | 13 | 16 => *c == b'_',
        _ => c.is_ascii_digit(),
    });
    stamp_ok
        && b[19] == b'.'
        && b[20..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

fn new_payload_dir_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:016x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        rand::random::<u64>()
    )
}

fn not_utf8_or_nul(name: &str) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| Errno::INVAL)
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "an entry of unknown type",
    }
}

/// Removes a half-built payload directory unless disarmed.
struct PayloadGuard<'a> {
    parent: BorrowedFd<'a>,
    name: &'a str,
    mount: fsops::FsId,
    armed: bool,
}

impl Drop for PayloadGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(name) = CString::new(self.name) else {
            return;
        };
        if let Err(e) = fsops::remove_entry_at(self.parent, &name, self.mount) {
            tracing::warn!(dir = self.name, error = %e, "could not remove a half-built payload directory");
        }
    }
}

impl AtomicWriter {
    /// Opens `target`, which must exist, be a real directory (not a symlink) and be on tmpfs or
    /// ramfs.
    pub fn open(target: &Path) -> Result<Self, VolumeError> {
        let (dir, kind) = open_memory_dir("open volume target", target)?;
        Ok(Self {
            dir,
            target: target.to_path_buf(),
            kind,
        })
    }

    /// The target directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The kind of memory-backed filesystem the target is on.
    pub fn fs_kind(&self) -> FsKind {
        self.kind
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }

    /// Publishes exactly `files` (files not in the set disappear), atomically.
    ///
    /// All paths and modes are checked first; on any error in the request nothing is written.
    /// If every file is already published byte-identical with the same mode and ownership, and
    /// no file must go, nothing is written (`changed == false`), only missing visible links are
    /// restored. Otherwise a new payload directory is built, switched in with one rename of
    /// `..data`, the visible links are updated and old payloads removed.
    ///
    /// If building the new payload fails, it is removed and the published content stays as it
    /// was. A failure after the switch (updating links, removing the old payload) is returned
    /// as an error although the new content is already published.
    pub fn write(
        &self,
        files: &[FileSpec<'_>],
        owner: &Ownership,
    ) -> Result<WriteOutcome, VolumeError> {
        let plan = Plan::new(files)?;
        let _claim = WriteClaim::take(self.dir.as_fd())
            .map_err(|e| VolumeError::io("claim for writing", &self.target, e))?;
        self.check_visible_names(&plan)?;
        let mount = fsops::fs_id(self.dir.as_fd())
            .map_err(|e| VolumeError::io("fstat", &self.target, e))?;

        let current = self.current_payload()?;
        if let Some(cur) = &current
            && self.payload_unchanged(cur, &plan, owner)?
        {
            self.reconcile_visible_links(&plan)?;
            tracing::debug!(target_dir = %self.target.display(), files = plan.files.len(), "payload unchanged");
            return Ok(WriteOutcome {
                changed: false,
                files_written: 0,
            });
        }

        let (name, payload) = self.create_payload_dir(owner)?;
        let mut guard = PayloadGuard {
            parent: self.dir.as_fd(),
            name: &name,
            mount,
            armed: true,
        };
        for spec in &plan.files {
            self.write_file(&name, payload.as_fd(), spec, owner)?;
        }
        drop(payload);
        self.switch_data_link(&name)?;
        guard.armed = false;

        self.reconcile_visible_links(&plan)?;
        self.remove_stale_payloads(&name, mount)?;
        tracing::debug!(target_dir = %self.target.display(), payload = %name, files = plan.files.len(), "payload published");
        Ok(WriteOutcome {
            changed: true,
            files_written: plan.files.len(),
        })
    }

    /// The relative paths of the regular files currently published, sorted.
    pub fn current_files(&self) -> Result<Vec<String>, VolumeError> {
        let Some(cur) = self.current_payload()? else {
            return Ok(Vec::new());
        };
        let payload = match fsops::open_dir_at(&self.dir, &cur) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(VolumeError::io("openat", self.at(&cur), e)),
        };
        let mut out = Vec::new();
        self.walk_payload(payload.as_fd(), &cur, "", &mut out, 0)?;
        out.sort();
        Ok(out)
    }

    /// Every top-level name must be absent or a symlink: refuse before writing anything
    /// if a real file or directory sits where a visible link belongs.
    fn check_visible_names(&self, plan: &Plan<'_, '_>) -> Result<(), VolumeError> {
        for name in &plan.top_level {
            match fsops::entry_type(&self.dir, name) {
                Ok(FileType::Symlink) | Err(Errno::NOENT) => {}
                Ok(other) => {
                    return Err(VolumeError::UnexpectedEntry {
                        operation: "write",
                        path: self.at(name),
                        found: type_name(other),
                        expected: "a symbolic link into ..data",
                    });
                }
                Err(e) => return Err(VolumeError::io("fstatat", self.at(name), e)),
            }
        }
        Ok(())
    }

    /// The payload directory `..data` names, if it names one of ours that exists.
    fn current_payload(&self) -> Result<Option<String>, VolumeError> {
        let link = match fsops::read_link_at(&self.dir, DATA_DIR_NAME) {
            Ok(link) => link,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::INVAL) => {
                let found = fsops::entry_type(&self.dir, DATA_DIR_NAME)
                    .map(type_name)
                    .unwrap_or("an entry of unknown type");
                return Err(VolumeError::UnexpectedEntry {
                    operation: "read ..data",
                    path: self.at(DATA_DIR_NAME),
                    found,
                    expected: "a symbolic link to a payload directory",
                });
            }
            Err(e) => return Err(VolumeError::io("readlinkat", self.at(DATA_DIR_NAME), e)),
        };
        let Ok(name) = link.into_string() else {
            tracing::warn!(target_dir = %self.target.display(), "..data points at a name the writer never creates; it will be replaced");
            return Ok(None);
        };
        if !is_payload_dir_name(&name) {
            tracing::warn!(target_dir = %self.target.display(), link = ?name, "..data points at a name the writer never creates; it will be replaced");
            return Ok(None);
        }
        match fsops::entry_type(&self.dir, &name) {
            Ok(FileType::Directory) => Ok(Some(name)),
            Ok(_) | Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(VolumeError::io("fstatat", self.at(&name), e)),
        }
    }

    /// Collects regular files below `dir` into `out`; returns `false` if anything that is
    /// neither a regular file nor a directory is there.
    fn walk_payload(
        &self,
        dir: BorrowedFd<'_>,
        payload: &str,
        prefix: &str,
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<bool, VolumeError> {
        if depth > fsops::MAX_DEPTH {
            return Ok(false);
        }
        let here = || self.at(payload).join(prefix);
        let names = fsops::list_names(dir).map_err(|e| VolumeError::io("readdir", here(), e))?;
        let mut clean = true;
        for (name, utf8) in names {
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if !utf8 {
                clean = false;
                continue;
            }
            match fsops::entry_type(dir, &name) {
                Ok(FileType::RegularFile) => out.push(rel),
                Ok(FileType::Directory) => match fsops::open_dir_at(dir, &name) {
                    Ok(sub) => {
                        clean &= self.walk_payload(sub.as_fd(), payload, &rel, out, depth + 1)?
                    }
                    Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => clean = false,
                    Err(e) => {
                        return Err(VolumeError::io("openat", self.at(payload).join(&rel), e));
                    }
                },
                Ok(_) => clean = false,
                Err(Errno::NOENT) => clean = false,
                Err(e) => return Err(VolumeError::io("fstatat", self.at(payload).join(&rel), e)),
            }
        }
        Ok(clean)
    }

    /// Whether the payload `cur` holds exactly the planned files, byte-identical, with the
    /// planned modes and ownership.
    fn payload_unchanged(
        &self,
        cur: &str,
        plan: &Plan<'_, '_>,
        owner: &Ownership,
    ) -> Result<bool, VolumeError> {
        let payload = match fsops::open_dir_at(&self.dir, cur) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(false),
            Err(e) => return Err(VolumeError::io("openat", self.at(cur), e)),
        };
        let mut existing = Vec::new();
        if !self.walk_payload(payload.as_fd(), cur, "", &mut existing, 0)? {
            return Ok(false);
        }
        if existing.len() != plan.paths.len()
            || !existing.iter().all(|p| plan.paths.contains(p.as_str()))
        {
            return Ok(false);
        }
        for spec in &plan.files {
            if !self.file_matches(payload.as_fd(), cur, spec, owner)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the published file for `spec` is identical. The read copy is zeroized on drop.
    fn file_matches(
        &self,
        payload: BorrowedFd<'_>,
        cur: &str,
        spec: &FileSpec<'_>,
        owner: &Ownership,
    ) -> Result<bool, VolumeError> {
        let path = || self.at(cur).join(spec.path);
        let mut elements: Vec<&str> = spec.path.split('/').collect();
        let Some(last) = elements.pop() else {
            return Ok(false);
        };
        let mut dir: Option<OwnedFd> = None;
        for e in elements {
            let parent = dir.as_ref().map_or(payload, |d| d.as_fd());
            match fsops::open_dir_at(parent, e) {
                Ok(fd) => dir = Some(fd),
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(false),
                Err(err) => return Err(VolumeError::io("openat", path(), err)),
            }
        }
        let parent = dir.as_ref().map_or(payload, |d| d.as_fd());
        let fd = match fs::openat(
            parent,
            last,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::LOOP) => return Ok(false),
            Err(e) => return Err(VolumeError::io("openat", path(), e)),
        };
        let st = fs::fstat(&fd).map_err(|e| VolumeError::io("fstat", path(), e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || st.st_mode & 0o7777 != owner.effective_mode(spec.mode)
            || owner.uid.is_some_and(|u| u != st.st_uid)
            || owner.gid.is_some_and(|g| g != st.st_gid)
            || u64::try_from(st.st_size).ok() != u64::try_from(spec.contents.len()).ok()
        {
            return Ok(false);
        }
        let mut file = File::from(fd);
        let mut buf = Zeroizing::new(vec![0u8; spec.contents.len()]);
        file.read_exact(&mut buf)
            .map_err(|e| VolumeError::std_io("read", path(), e))?;
        let mut extra = Zeroizing::new([0u8; 1]);
        let more = file
            .read(extra.as_mut_slice())
            .map_err(|e| VolumeError::std_io("read", path(), e))?;
        Ok(more == 0 && buf.as_slice() == spec.contents)
    }

    /// Creates a new, empty payload directory (0755, owned per `owner`) and opens it.
    fn create_payload_dir(&self, owner: &Ownership) -> Result<(String, OwnedFd), VolumeError> {
        let mut attempt = 0;
        let name = loop {
            let name = new_payload_dir_name();
            match fs::mkdirat(&self.dir, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => break name,
                Err(Errno::EXIST) if attempt < 8 => attempt += 1,
                Err(e) => return Err(VolumeError::io("mkdirat", self.at(&name), e)),
            }
        };
        let fd = fsops::open_dir_at(&self.dir, &name)
            .map_err(|e| VolumeError::io("openat", self.at(&name), e));
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                let _ = fs::unlinkat(&self.dir, name.as_str(), AtFlags::REMOVEDIR);
                return Err(e);
            }
        };
        let set = set_owner_and_mode(fd.as_fd(), owner, 0o755)
            .map_err(|e| VolumeError::io("fchown/fchmod", self.at(&name), e));
        if let Err(e) = set {
            let _ = fs::unlinkat(&self.dir, name.as_str(), AtFlags::REMOVEDIR);
            return Err(e);
        }
        Ok((name, fd))
    }

    /// Writes one file (and its parent directories) into the new payload.
    fn write_file(
        &self,
        payload_name: &str,
        payload: BorrowedFd<'_>,
        spec: &FileSpec<'_>,
        owner: &Ownership,
    ) -> Result<(), VolumeError> {
        let path = || self.at(payload_name).join(spec.path);
        let mut elements: Vec<&str> = spec.path.split('/').collect();
        let Some(last) = elements.pop() else {
            return Err(VolumeError::InvalidPath {
                source: crate::PathError::Empty,
            });
        };
        let mut dir: Option<OwnedFd> = None;
        for e in elements {
            let parent = dir.as_ref().map_or(payload, |d| d.as_fd());
            let created = match fs::mkdirat(parent, e, Mode::from_raw_mode(0o700)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(err) => return Err(VolumeError::io("mkdirat", path(), err)),
            };
            let fd = fsops::open_dir_at(parent, e)
                .map_err(|err| VolumeError::io("openat", path(), err))?;
            if created {
                set_owner_and_mode(fd.as_fd(), owner, 0o755)
                    .map_err(|err| VolumeError::io("fchown/fchmod", path(), err))?;
            }
            dir = Some(fd);
        }
        let parent = dir.as_ref().map_or(payload, |d| d.as_fd());
        let fd = fs::openat(
            parent,
            last,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| VolumeError::io("openat", path(), e))?;
        let mut file = File::from(fd);
        file.write_all(spec.contents)
            .map_err(|e| VolumeError::std_io("write", path(), e))?;
        set_owner_and_mode(file.as_fd(), owner, owner.effective_mode(spec.mode))
            .map_err(|e| VolumeError::io("fchown/fchmod", path(), e))?;
        Ok(())
    }

    /// `..data_tmp -> name`, then `rename(..data_tmp, ..data)`: the atomic switch.
    fn switch_data_link(&self, name: &str) -> Result<(), VolumeError> {
        let mount = fsops::fs_id(self.dir.as_fd())
            .map_err(|e| VolumeError::io("fstat", &self.target, e))?;
        let tmp = c"..data_tmp";
        // Whatever sits at ..data_tmp (a leftover link, a planted file) is ours to replace.
        // If something is put back in between, or ..data does not name our payload after the
        // rename (someone swapped ..data_tmp under us), go again.
        for _ in 0..8 {
            fsops::remove_entry_at(self.dir.as_fd(), tmp, mount)
                .map_err(|e| VolumeError::io("remove", self.at(DATA_DIR_TMP_NAME), e))?;
            match fs::symlinkat(name, &self.dir, DATA_DIR_TMP_NAME) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(VolumeError::io("symlinkat", self.at(DATA_DIR_TMP_NAME), e)),
            }
            if let Err(e) = fs::renameat(&self.dir, DATA_DIR_TMP_NAME, &self.dir, DATA_DIR_NAME) {
                let _ = fs::unlinkat(&self.dir, DATA_DIR_TMP_NAME, AtFlags::empty());
                return Err(VolumeError::io("renameat", self.at(DATA_DIR_NAME), e));
            }
            match fsops::read_link_at(&self.dir, DATA_DIR_NAME) {
                Ok(l) if l.as_bytes() == name.as_bytes() => return Ok(()),
                _ => {
                    tracing::warn!(target_dir = %self.target.display(), "..data changed under the writer; switching again")
                }
            }
        }
        Err(VolumeError::io(
            "switch ..data",
            self.at(DATA_DIR_NAME),
            Errno::AGAIN,
        ))
    }

    /// Makes every top-level name a link `name -> ..data/name`; removes visible links into
    /// `..data` for names no longer published. Never removes anything that is not a symlink, nor
    /// a symlink that does not point into `..data`.
    fn reconcile_visible_links(&self, plan: &Plan<'_, '_>) -> Result<(), VolumeError> {
        for name in &plan.top_level {
            let want = format!("{DATA_DIR_NAME}/{name}");
            match fsops::read_link_at(&self.dir, name) {
                Ok(l) if l.as_bytes() == want.as_bytes() => continue,
                Ok(_) => self.replace_link(name, &want)?,
                Err(Errno::NOENT) => match fs::symlinkat(want.as_str(), &self.dir, *name) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => self.replace_link(name, &want)?,
                    Err(e) => return Err(VolumeError::io("symlinkat", self.at(name), e)),
                },
                Err(Errno::INVAL) => {
                    let found = fsops::entry_type(&self.dir, name)
                        .map(type_name)
                        .unwrap_or("an entry of unknown type");
                    return Err(VolumeError::UnexpectedEntry {
                        operation: "write visible link",
                        path: self.at(name),
                        found,
                        expected: "a symbolic link into ..data",
                    });
                }
                Err(e) => return Err(VolumeError::io("readlinkat", self.at(name), e)),
            }
        }
        let names = fsops::list_names(self.dir.as_fd())
            .map_err(|e| VolumeError::io("readdir", &self.target, e))?;
        for (name, utf8) in names {
            if !utf8 || name.starts_with("..") || plan.top_level.contains(name.as_str()) {
                continue;
            }
            match fsops::read_link_at(&self.dir, &name) {
                Ok(l) if l.as_bytes().starts_with(b"..data/") => {
                    match fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(VolumeError::io("unlinkat", self.at(&name), e)),
                    }
                }
                // Not a link of ours (or gone): leave it.
                _ => {}
            }
        }
        Ok(())
    }

    /// Atomically replaces the symlink `name` by one to `want` (rename over it; a rename never
    /// replaces a directory with a symlink).
    fn replace_link(&self, name: &str, want: &str) -> Result<(), VolumeError> {
        let tmp = format!("{LINK_TMP_PREFIX}{:016x}", rand::random::<u64>());
        fs::symlinkat(want, &self.dir, tmp.as_str())
            .map_err(|e| VolumeError::io("symlinkat", self.at(&tmp), e))?;
        if let Err(e) = fs::renameat(&self.dir, tmp.as_str(), &self.dir, name) {
            let _ = fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            return Err(VolumeError::io("renameat", self.at(name), e));
        }
        Ok(())
    }

    /// Removes payload directories other than `keep` and leftover temporary links.
    fn remove_stale_payloads(&self, keep: &str, mount: fsops::FsId) -> Result<(), VolumeError> {
        let names = fsops::list_names(self.dir.as_fd())
            .map_err(|e| VolumeError::io("readdir", &self.target, e))?;
        for (name, utf8) in names {
            if !utf8 || name == keep {
                continue;
            }
            let ours = is_payload_dir_name(&name)
                || name.starts_with(LINK_TMP_PREFIX)
                || name == DATA_DIR_TMP_NAME;
            if !ours {
                continue;
            }
            let c =
                not_utf8_or_nul(&name).map_err(|e| VolumeError::io("remove", self.at(&name), e))?;
            fsops::remove_entry_at(self.dir.as_fd(), &c, mount).map_err(|e| match e {
                Errno::XDEV => VolumeError::CrossesMount {
                    operation: "remove old payload",
                    path: self.at(&name),
                },
                e => VolumeError::io("remove old payload", self.at(&name), e),
            })?;
        }
        Ok(())
    }
}

/// `fchown` per `owner` (if anything is set), then `fchmod` to `mode` (so the umask and the
/// chown's clearing of set-id bits do not matter).
fn set_owner_and_mode(fd: BorrowedFd<'_>, owner: &Ownership, mode: u32) -> rustix::io::Result<()> {
    if owner.uid.is_some() || owner.gid.is_some() {
        fs::fchown(
            fd,
            owner.uid.map(Uid::from_raw),
            owner.gid.map(Gid::from_raw),
        )?;
    }
    fs::fchmod(fd, Mode::from_raw_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(path: &'a str, contents: &'a [u8]) -> FileSpec<'a> {
        FileSpec {
            path,
            mode: 0o644,
            contents,
        }
    }

    #[test]
    fn payload_names_round_trip() {
        for _ in 0..100 {
            let n = new_payload_dir_name();
            assert!(is_payload_dir_name(&n), "{n}");
        }
        for bad in [
            "..data",
            "..data_tmp",
            "..2024_x",
            "/etc",
            "../x",
            "..2024_01_01_00_00_00.",
            "..2024_01_01_00_00_00.ABC",
            "..2024_01_01_00_00_00.abc/..",
            "2024_01_01_00_00_00.abc",
            "..2024-01_01_00_00_00.abc",
        ] {
            assert!(!is_payload_dir_name(bad), "{bad}");
        }
        assert!(is_payload_dir_name("..2024_01_01_00_00_00.12345"));
    }

    #[test]
    fn plan_refuses_conflicts_and_bad_modes() {
        let dup = [spec("a", b"1"), spec("a", b"2")];
        assert!(matches!(
            Plan::new(&dup),
            Err(VolumeError::ConflictingPaths { .. })
        ));
        let prefix = [spec("a/b/c", b"1"), spec("a/b", b"2")];
        assert!(matches!(
            Plan::new(&prefix),
            Err(VolumeError::ConflictingPaths { .. })
        ));
        let fine = [
            spec("a/b", b"1"),
            spec("a/c", b"2"),
            spec("ab", b"3"),
            spec("a.b/c", b""),
        ];
        let plan = Plan::new(&fine).expect("valid plan");
        assert_eq!(
            plan.top_level.iter().copied().collect::<Vec<_>>(),
            ["a", "a.b", "ab"]
        );
        let bad_mode = [FileSpec {
            path: "a",
            mode: 0o4755,
            contents: b"",
        }];
        assert!(matches!(
            Plan::new(&bad_mode),
            Err(VolumeError::InvalidMode { .. })
        ));
        let bad_path = [spec("ok", b""), spec("../x", b"")];
        assert!(matches!(
            Plan::new(&bad_path),
            Err(VolumeError::InvalidPath { .. })
        ));
    }

    #[test]
    fn debug_redacts_contents() {
        let s = spec("a", b"hunter2-secret");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("14 bytes"), "{shown}");
    }

    #[test]
    fn effective_mode_adds_group_read_only_with_gid() {
        assert_eq!(Ownership::default().effective_mode(0o400), 0o400);
        let o = Ownership {
            uid: None,
            gid: Some(1000),
        };
        assert_eq!(o.effective_mode(0o400), 0o440);
        assert_eq!(o.effective_mode(0o644), 0o644);
    }
}
