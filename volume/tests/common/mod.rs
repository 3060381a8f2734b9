//! Shared helpers for the real-tmpfs tests: a temp root that unmounts everything below it on
//! drop (even when the test panics), and canaries that prove nothing outside a target changed.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kvmount_volume::{FileSpec, TmpfsOptions};

/// A temp dir on the root filesystem (ext4 here, not tmpfs). Mounts made below it are
/// detached on drop, then the directory is removed.
pub struct TestRoot {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestRoot {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-volume-test.")
            .tempdir_in("/tmp")
            .unwrap();
        let path = fs::canonicalize(dir.path()).unwrap();
        Self {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `<root>/<name>` and mounts a raw tmpfs there (not through the crate), returning it.
    pub fn tmpfs(&self, name: &str, size: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap();
        let data = std::ffi::CString::new(format!("size={size},mode=755")).unwrap();
        rustix::mount::mount(
            "kvmount-test",
            &p,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            data.as_c_str(),
        )
        .unwrap();
        p
    }

    /// A tmpfs with a `target` directory and a `canary` directory beside it (both on tmpfs),
    /// plus a canary directory on the root filesystem. Returns (target, canaries).
    pub fn volume(&self) -> (PathBuf, Vec<Canary>) {
        let m = self.tmpfs("mnt", "8m");
        let target = m.join("target");
        fs::create_dir(&target).unwrap();
        let c1 = Canary::new(&m.join("canary"));
        let c2 = Canary::new(&self.path.join("canary"));
        (target, vec![c1, c2])
    }

    /// Mount points at or below this root, deepest first.
    pub fn mounts_below(&self) -> Vec<PathBuf> {
        mounts_below(&self.path)
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        for _ in 0..8 {
            let mps = self.mounts_below();
            if mps.is_empty() {
                break;
            }
            for mp in mps {
                let _ = rustix::mount::unmount(
                    &mp,
                    rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
                );
            }
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// Unescapes a mountinfo path field.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// All mountinfo lines as (mount point, fs type, source, options).
pub fn mountinfo() -> Vec<(PathBuf, String, String, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((
                PathBuf::from(unescape(f[4])),
                f[sep + 1].to_string(),
                f[sep + 2].to_string(),
                f[5].to_string(),
            ))
        })
        .collect()
}

pub fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo()
        .into_iter()
        .map(|m| m.0)
        .filter(|p| p.starts_with(root))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v
}

/// Path -> (bytes, mtime, mtime_nsec, inode).
type Snapshot = BTreeMap<String, (Vec<u8>, i64, i64, u64)>;

/// A directory with known files. `check` asserts that no file changed, none appeared or
/// vanished, and the directory itself was not modified.
pub struct Canary {
    pub dir: PathBuf,
    snapshot: Snapshot,
    dir_mtime: (i64, i64),
}

pub const CANARY_BYTES: &[u8] = b"canary: must never change";

impl Canary {
    pub fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("file"), CANARY_BYTES).unwrap();
        fs::write(dir.join("a"), CANARY_BYTES).unwrap();
        fs::write(dir.join("..data"), CANARY_BYTES).unwrap();
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/0"), CANARY_BYTES).unwrap();
        // Let the clock move so a later modification would show in the mtimes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut c = Self {
            dir: dir.to_path_buf(),
            snapshot: BTreeMap::new(),
            dir_mtime: (0, 0),
        };
        (c.snapshot, c.dir_mtime) = c.take();
        c
    }

    fn take(&self) -> (Snapshot, (i64, i64)) {
        let mut snap = BTreeMap::new();
        walk(&self.dir, "", &mut snap);
        let md = fs::symlink_metadata(&self.dir).unwrap();
        (snap, (md.mtime(), md.mtime_nsec()))
    }

    pub fn check(&self) {
        let (snap, dir_mtime) = self.take();
        assert_eq!(snap, self.snapshot, "canary {:?} changed", self.dir);
        assert_eq!(
            dir_mtime, self.dir_mtime,
            "canary dir {:?} modified",
            self.dir
        );
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Snapshot) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let md = fs::symlink_metadata(e.path()).unwrap();
        if md.is_dir() {
            out.insert(
                format!("{name}/"),
                (Vec::new(), md.mtime(), md.mtime_nsec(), md.ino()),
            );
            walk(&e.path(), &format!("{name}/"), out);
        } else {
            let bytes = if md.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.insert(name, (bytes, md.mtime(), md.mtime_nsec(), md.ino()));
        }
    }
}

pub fn check_all(canaries: &[Canary]) {
    for c in canaries {
        c.check();
    }
}

pub fn spec<'a>(path: &'a str, mode: u32, contents: &'a [u8]) -> FileSpec<'a> {
    FileSpec {
        path,
        mode,
        contents,
    }
}

/// The target of `..data`, if it is a symlink.
pub fn data_link(target: &Path) -> Option<PathBuf> {
    fs::read_link(target.join("..data")).ok()
}

/// Names in `target` that look like payload dirs (`..2...`).
pub fn payload_dirs(target: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n.as_bytes().get(2).is_some_and(u8::is_ascii_digit))
        .collect();
    v.sort();
    v
}

/// All names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn small_tmpfs_opts() -> TmpfsOptions {
    TmpfsOptions {
        size_bytes: 4 << 20,
        mode: 0o755,
        uid: None,
        gid: None,
    }
}
