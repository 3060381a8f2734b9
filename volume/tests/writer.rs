//! The atomic writer on a real tmpfs.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use kvmount_volume::{AtomicWriter, ErrorKind, FsKind, Ownership, VolumeError, WriteOutcome};

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn first_write_publishes_files_links_and_modes() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    assert_eq!(w.fs_kind(), FsKind::Tmpfs);
    let files = [
        spec("a", 0o400, b"alpha"),
        spec("b.txt", 0o644, b"bravo"),
        spec("c", 0o600, b""),
        spec("alias/0", 0o644, b"zero"),
        spec("alias/1", 0o644, b"one"),
        spec("ключ", 0o644, b"unicode"),
    ];
    let out = w.write(&files, &Ownership::default()).unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            changed: true,
            files_written: 6
        }
    );

    let data = data_link(&target).unwrap();
    let payloads = payload_dirs(&target);
    assert_eq!(payloads.len(), 1);
    assert_eq!(data.to_str().unwrap(), payloads[0]);
    assert_eq!(
        names(&target),
        [
            payloads[0].as_str(),
            "..data",
            "a",
            "alias",
            "b.txt",
            "c",
            "ключ"
        ]
    );
    for top in ["a", "alias", "b.txt", "c", "ключ"] {
        assert_eq!(
            fs::read_link(target.join(top)).unwrap(),
            Path::new("..data").join(top),
            "{top}"
        );
    }
    assert_eq!(fs::read(target.join("a")).unwrap(), b"alpha");
    assert_eq!(fs::read(target.join("alias/1")).unwrap(), b"one");
    assert_eq!(fs::read(target.join("c")).unwrap(), b"");
    assert_eq!(mode_of(&target.join("a")), 0o400);
    assert_eq!(mode_of(&target.join("b.txt")), 0o644);
    assert_eq!(mode_of(&target.join("c")), 0o600);
    assert_eq!(mode_of(&target.join(&payloads[0])), 0o755);
    assert_eq!(mode_of(&target.join(&payloads[0]).join("alias")), 0o755);
    assert_eq!(
        w.current_files().unwrap(),
        ["a", "alias/0", "alias/1", "b.txt", "c", "ключ"]
    );
    check_all(&canaries);
}

#[test]
fn identical_rewrite_writes_nothing() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    let files = [spec("a", 0o644, b"alpha"), spec("d/x", 0o600, b"x")];
    w.write(&files, &Ownership::default()).unwrap();
    let data = data_link(&target).unwrap();
    let file_ino = fs::metadata(target.join("d/x")).unwrap().ino();
    // A missing visible link is restored even when the payload is unchanged.
    fs::remove_file(target.join("a")).unwrap();
    let out = w.write(&files, &Ownership::default()).unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            changed: false,
            files_written: 0
        }
    );
    assert_eq!(data_link(&target).unwrap(), data);
    assert_eq!(fs::metadata(target.join("d/x")).unwrap().ino(), file_ino);
    assert_eq!(fs::read(target.join("a")).unwrap(), b"alpha");
    // A second writer on the same target sees the same thing.
    let w2 = AtomicWriter::open(&target).unwrap();
    assert!(!w2.write(&files, &Ownership::default()).unwrap().changed);
    check_all(&canaries);
}

#[test]
fn changed_content_or_mode_switches_data_and_removes_old_dir() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    w.write(&[spec("a", 0o644, b"v1")], &Ownership::default())
        .unwrap();
    let first = data_link(&target).unwrap();
    let out = w
        .write(&[spec("a", 0o644, b"v2")], &Ownership::default())
        .unwrap();
    assert!(out.changed);
    let second = data_link(&target).unwrap();
    assert_ne!(first, second);
    assert_eq!(payload_dirs(&target), [second.to_str().unwrap()]);
    assert_eq!(fs::read(target.join("a")).unwrap(), b"v2");
    // Same bytes, other mode: a change too.
    assert!(
        w.write(&[spec("a", 0o600, b"v2")], &Ownership::default())
            .unwrap()
            .changed
    );
    assert_eq!(mode_of(&target.join("a")), 0o600);
    // Same length, other bytes.
    assert!(
        w.write(&[spec("a", 0o600, b"v3")], &Ownership::default())
            .unwrap()
            .changed
    );
    assert_eq!(fs::read(target.join("a")).unwrap(), b"v3");
    assert_eq!(payload_dirs(&target).len(), 1);
    check_all(&canaries);
}

#[test]
fn removed_files_and_their_links_disappear() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    let o = Ownership::default();
    w.write(
        &[
            spec("a", 0o644, b"1"),
            spec("b", 0o644, b"2"),
            spec("alias/0", 0o644, b"0"),
            spec("alias/1", 0o644, b"1"),
        ],
        &o,
    )
    .unwrap();
    // Dropping a nested file keeps the top-level link; dropping a file removes its link.
    let out = w
        .write(&[spec("a", 0o644, b"1"), spec("alias/0", 0o644, b"0")], &o)
        .unwrap();
    assert!(out.changed);
    assert_eq!(
        names(&target)
            .iter()
            .filter(|n| !n.starts_with(".."))
            .collect::<Vec<_>>(),
        ["a", "alias"]
    );
    assert!(!target.join("alias/1").exists());
    assert_eq!(w.current_files().unwrap(), ["a", "alias/0"]);
    // Dropping every nested file removes the directory link.
    w.write(&[spec("a", 0o644, b"1")], &o).unwrap();
    assert!(fs::symlink_metadata(target.join("alias")).is_err());
    assert!(fs::symlink_metadata(target.join("b")).is_err());
    // A foreign symlink that does not point into ..data is never removed.
    std::os::unix::fs::symlink("elsewhere", target.join("foreign")).unwrap();
    w.write(&[spec("a", 0o644, b"2")], &o).unwrap();
    assert_eq!(
        fs::read_link(target.join("foreign")).unwrap(),
        Path::new("elsewhere")
    );
    // An empty set publishes an empty payload.
    w.write(&[], &o).unwrap();
    assert!(w.current_files().unwrap().is_empty());
    assert!(fs::symlink_metadata(target.join("a")).is_err());
    check_all(&canaries);
}

#[test]
fn modes_are_exact_regardless_of_umask() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    for umask in [0o077, 0o000, 0o777] {
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
        let r = w.write(
            &[
                spec("r", 0o400, format!("{umask}").as_bytes()),
                spec("p", 0o644, b"p"),
                spec("s", 0o600, b"s"),
                spec("all/x", 0o777, b"x"),
                spec("none", 0o000, b"n"),
            ],
            &Ownership::default(),
        );
        rustix::process::umask(old);
        r.unwrap();
        assert_eq!(mode_of(&target.join("r")), 0o400);
        assert_eq!(mode_of(&target.join("p")), 0o644);
        assert_eq!(mode_of(&target.join("s")), 0o600);
        assert_eq!(mode_of(&target.join("all/x")), 0o777);
        assert_eq!(mode_of(&target.join("all")), 0o755);
        assert_eq!(mode_of(&target.join("none")), 0o000);
        assert_eq!(mode_of(&target.join(data_link(&target).unwrap())), 0o755);
    }
    check_all(&canaries);
}

#[test]
fn ownership_applies_to_files_and_dirs() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    let owner = Ownership {
        uid: Some(65534),
        gid: Some(65533),
    };
    let files = [spec("a", 0o400, b"1"), spec("d/e/f", 0o600, b"2")];
    w.write(&files, &owner).unwrap();
    let payload = target.join(data_link(&target).unwrap());
    for p in [
        payload.join("a"),
        payload.join("d/e/f"),
        payload.join("d"),
        payload.join("d/e"),
        payload.clone(),
    ] {
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65533), "{p:?}");
    }
    // fsGroup semantics: group read added.
    assert_eq!(mode_of(&payload.join("a")), 0o440);
    assert_eq!(mode_of(&payload.join("d/e/f")), 0o640);
    // Same request again: unchanged. Other owner: rewritten.
    assert!(!w.write(&files, &owner).unwrap().changed);
    let only_uid = Ownership {
        uid: Some(65534),
        gid: None,
    };
    assert!(w.write(&files, &only_uid).unwrap().changed);
    let md = fs::metadata(target.join("a")).unwrap();
    assert_eq!(md.uid(), 65534);
    assert_eq!(mode_of(&target.join("a")), 0o400);
    check_all(&canaries);
}

#[test]
fn refuses_targets_that_are_not_memory_backed_or_not_real_dirs() {
    let root = TestRoot::new();
    let disk = root.path().join("disk");
    fs::create_dir(&disk).unwrap();
    let err = AtomicWriter::open(&disk).unwrap_err();
    assert!(
        matches!(
            err,
            VolumeError::NotMemoryBacked {
                fs_magic: 0xef53,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(kvmount_volume::memory_fs_kind(&disk).is_err());

    let (target, canaries) = root.volume();
    let link = target.parent().unwrap().join("link-to-target");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = AtomicWriter::open(&link).unwrap_err();
    assert!(matches!(err, VolumeError::NotADirectory { .. }), "{err}");
    let file = target.parent().unwrap().join("file");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        AtomicWriter::open(&file).unwrap_err(),
        VolumeError::NotADirectory { .. }
    ));
    let missing = AtomicWriter::open(&target.join("missing")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(
        kvmount_volume::memory_fs_kind(&target).unwrap(),
        FsKind::Tmpfs
    );
    check_all(&canaries);
}

#[test]
fn refuses_bad_requests_and_writes_nothing() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    let o = Ownership::default();
    let bad: Vec<Vec<kvmount_volume::FileSpec<'_>>> = vec![
        vec![spec("a", 0o644, b"1"), spec("a", 0o644, b"2")],
        vec![spec("a", 0o644, b"1"), spec("a/b", 0o644, b"2")],
        vec![spec("x/y/z", 0o644, b"1"), spec("x/y", 0o644, b"2")],
        vec![spec("ok", 0o644, b"1"), spec("../escape", 0o644, b"2")],
        vec![spec("ok", 0o644, b"1"), spec("/etc/passwd", 0o644, b"2")],
        vec![spec("..data", 0o644, b"1")],
        vec![spec("ok", 0o4755, b"1")],
    ];
    for files in &bad {
        let err = w.write(files, &o).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(names(&target).is_empty(), "{files:?} wrote something");
    }
    // Also with content already published: the old content stays.
    w.write(&[spec("keep", 0o644, b"old")], &o).unwrap();
    let data = data_link(&target).unwrap();
    for files in &bad {
        w.write(files, &o).unwrap_err();
        assert_eq!(data_link(&target).unwrap(), data);
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"old");
    }
    check_all(&canaries);
}

#[test]
fn failure_midway_keeps_old_content_and_cleans_up() {
    let root = TestRoot::new();
    let m = root.tmpfs("small", "64k");
    let target = m.join("target");
    fs::create_dir(&target).unwrap();
    let canary = Canary::new(&root.path().join("canary"));
    let w = AtomicWriter::open(&target).unwrap();
    let o = Ownership::default();
    w.write(
        &[spec("a", 0o644, b"old-a"), spec("b", 0o644, b"old-b")],
        &o,
    )
    .unwrap();
    let data = data_link(&target).unwrap();
    let before = names(&target);
    let big = vec![7u8; 256 * 1024];
    let err = w
        .write(&[spec("a", 0o644, b"new-a"), spec("b", 0o644, &big)], &o)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VolumeError::Io {
                operation: "write",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("new-a"));
    assert_eq!(data_link(&target).unwrap(), data);
    assert_eq!(names(&target), before, "half-built payload left behind");
    assert_eq!(fs::read(target.join("a")).unwrap(), b"old-a");
    assert_eq!(fs::read(target.join("b")).unwrap(), b"old-b");
    // And the volume still works afterwards.
    assert!(w.write(&[spec("a", 0o644, b"new-a")], &o).unwrap().changed);
    assert_eq!(fs::read(target.join("a")).unwrap(), b"new-a");
    canary.check();
}

#[test]
fn a_reader_never_sees_a_mix() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    let o = Ownership::default();
    w.write(&[spec("a", 0o644, b"0"), spec("n/b", 0o644, b"0")], &o)
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let target = target.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Read both through one resolution of ..data, as a consumer of the volume would
                // when it opens the files via the data dir.
                let Ok(dir) = fs::read_link(target.join("..data")) else {
                    continue;
                };
                let (Ok(a), Ok(b)) = (
                    fs::read(target.join(&dir).join("a")),
                    fs::read(target.join(&dir).join("n/b")),
                ) else {
                    continue;
                };
                assert_eq!(a, b, "mixed payload");
                seen += 1;
            }
            seen
        })
    };
    for i in 1..100u32 {
        let v = i.to_string();
        w.write(
            &[
                spec("a", 0o644, v.as_bytes()),
                spec("n/b", 0o644, v.as_bytes()),
            ],
            &o,
        )
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    check_all(&canaries);
}
