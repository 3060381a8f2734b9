//! Symlink hostility: things planted in the target must never make the writer or the removal
//! read, write or delete anything outside it.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use kvmount_volume::{AtomicWriter, ErrorKind, Ownership, VolumeError, remove_contents};

fn o() -> Ownership {
    Ownership::default()
}

/// After the hostile setup: write twice (new content, then identical), check, remove, check.
fn write_then_remove_safely(target: &Path, canaries: &[Canary]) {
    let w = AtomicWriter::open(target).unwrap();
    let files = [
        spec("a", 0o644, b"secret-a"),
        spec("sub/0", 0o600, b"secret-0"),
    ];
    w.write(&files, &o()).unwrap();
    check_all(canaries);
    assert_eq!(fs::read(target.join("a")).unwrap(), b"secret-a");
    assert_eq!(fs::read(target.join("sub/0")).unwrap(), b"secret-0");
    assert_eq!(w.current_files().unwrap(), ["a", "sub/0"]);
    assert!(!w.write(&files, &o()).unwrap().changed);
    check_all(canaries);
    drop(w);
    remove_contents(target).unwrap();
    assert!(names(target).is_empty());
    check_all(canaries);
}

#[test]
fn data_link_pointing_outside() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    symlink(&canaries[1].dir, target.join("..data")).unwrap();
    symlink("..data/a", target.join("a")).unwrap();
    symlink("..data/sub", target.join("sub")).unwrap();
    // The writer must not treat the foreign dir as a published payload.
    let w = AtomicWriter::open(&target).unwrap();
    assert!(w.current_files().unwrap().is_empty());
    drop(w);
    write_then_remove_safely(&target, &canaries);
}

#[test]
fn data_link_relative_escape_and_payload_name_that_is_a_link() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    symlink("../canary", target.join("..data")).unwrap();
    write_then_remove_safely(&target, &canaries);

    // A payload-looking name that is itself a symlink to the canary, referenced by ..data.
    let fake = "..2024_01_01_00_00_00.abc";
    symlink(&canaries[1].dir, target.join(fake)).unwrap();
    symlink(fake, target.join("..data")).unwrap();
    write_then_remove_safely(&target, &canaries);
}

#[test]
fn visible_names_pointing_outside() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    symlink(canaries[1].dir.join("file"), target.join("a")).unwrap();
    symlink(&canaries[0].dir, target.join("sub")).unwrap();
    // Stale-looking links (not in the new set) that point outside through ..data.
    symlink("..data/../../canary/file", target.join("stale")).unwrap();
    symlink(canaries[0].dir.join("a"), target.join("foreign")).unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    w.write(&[spec("a", 0o644, b"x"), spec("sub/0", 0o644, b"y")], &o())
        .unwrap();
    check_all(&canaries);
    assert_eq!(
        fs::read_link(target.join("a")).unwrap(),
        Path::new("..data/a")
    );
    assert!(
        fs::symlink_metadata(target.join("stale")).is_err(),
        "link into ..data not removed"
    );
    assert_eq!(
        fs::read_link(target.join("foreign")).unwrap(),
        canaries[0].dir.join("a")
    );
    drop(w);
    write_then_remove_safely(&target, &canaries);
}

#[test]
fn symlink_loops_and_dangling_links() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    symlink("loop2", target.join("loop1")).unwrap();
    symlink("loop1", target.join("loop2")).unwrap();
    symlink("a", target.join("a")).unwrap(); // self loop where a visible link belongs
    symlink("..data", target.join("..data")).unwrap();
    symlink("/nonexistent/kvmount/x", target.join("sub")).unwrap();
    symlink("/nonexistent/kvmount/y", target.join("..data_tmp")).unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    w.write(
        &[
            spec("a", 0o644, b"x"),
            spec("sub/0", 0o644, b"y"),
            spec("loop1", 0o644, b"z"),
        ],
        &o(),
    )
    .unwrap();
    assert_eq!(fs::read(target.join("loop1")).unwrap(), b"z");
    assert!(fs::symlink_metadata(target.join("..data_tmp")).is_err());
    check_all(&canaries);
    drop(w);
    remove_contents(&target).unwrap();
    assert!(names(&target).is_empty());
    check_all(&canaries);
    assert!(!Path::new("/nonexistent/kvmount").exists());
}

#[test]
fn regular_file_or_dir_named_data_tmp_in_the_way() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    fs::write(target.join("..data_tmp"), b"junk").unwrap();
    write_then_remove_safely(&target, &canaries);
    fs::create_dir(target.join("..data_tmp")).unwrap();
    symlink(&canaries[1].dir, target.join("..data_tmp/escape")).unwrap();
    write_then_remove_safely(&target, &canaries);
}

#[test]
fn directory_in_place_of_a_visible_link_is_refused_untouched() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    fs::create_dir(target.join("a")).unwrap();
    fs::write(target.join("a/planted"), b"p").unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    for files in [
        vec![spec("a", 0o644, b"x")],
        vec![spec("a/0", 0o644, b"x"), spec("b", 0o644, b"y")],
    ] {
        let err = w.write(&files, &o()).unwrap_err();
        assert!(matches!(err, VolumeError::UnexpectedEntry { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(names(&target), ["a"], "something was written");
        assert_eq!(fs::read(target.join("a/planted")).unwrap(), b"p");
    }
    // A regular file in the way too.
    fs::write(target.join("b"), b"file").unwrap();
    assert!(w.write(&[spec("b", 0o644, b"x")], &o()).is_err());
    assert_eq!(fs::read(target.join("b")).unwrap(), b"file");
    check_all(&canaries);
    drop(w);
    remove_contents(&target).unwrap();
    check_all(&canaries);
}

#[test]
fn data_as_a_real_file_or_dir_is_refused() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    fs::create_dir(target.join("..data")).unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    let err = w.write(&[spec("a", 0o644, b"x")], &o()).unwrap_err();
    assert!(matches!(err, VolumeError::UnexpectedEntry { .. }), "{err}");
    assert_eq!(names(&target), ["..data"]);
    assert!(w.current_files().is_err());
    check_all(&canaries);
}

#[test]
fn links_planted_inside_the_payload() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    let w = AtomicWriter::open(&target).unwrap();
    let files = [spec("a", 0o644, b"x"), spec("sub/0", 0o644, b"y")];
    w.write(&files, &o()).unwrap();
    let payload = target.join(data_link(&target).unwrap());
    // Replace the file `a` and the dir `sub` inside the payload by links to the canaries.
    fs::remove_file(payload.join("a")).unwrap();
    symlink(canaries[1].dir.join("file"), payload.join("a")).unwrap();
    fs::remove_dir_all(payload.join("sub")).unwrap();
    symlink(canaries[1].dir.join("sub"), payload.join("sub")).unwrap();
    // The identical-content check must not read through them, and rewrites.
    assert!(w.write(&files, &o()).unwrap().changed);
    check_all(&canaries);
    assert!(!payload.exists(), "old payload not removed");
    assert_eq!(fs::read(target.join("a")).unwrap(), b"x");
    drop(w);
    remove_contents(&target).unwrap();
    check_all(&canaries);
}

#[test]
fn remove_contents_stays_inside() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    symlink(&canaries[1].dir, target.join("dirlink")).unwrap();
    symlink(canaries[1].dir.join("file"), target.join("filelink")).unwrap();
    fs::create_dir_all(target.join("deep/er/still")).unwrap();
    symlink(&canaries[0].dir, target.join("deep/er/still/link")).unwrap();
    fs::write(target.join("deep/er/f"), b"f").unwrap();
    remove_contents(&target).unwrap();
    assert!(names(&target).is_empty());
    assert!(target.is_dir());
    check_all(&canaries);

    // The target itself as a symlink: refused, destination untouched.
    let link = root.path().join("target-link");
    symlink(&canaries[0].dir, &link).unwrap();
    assert!(matches!(
        remove_contents(&link).unwrap_err(),
        VolumeError::NotADirectory { .. }
    ));
    // A disk directory: refused.
    assert!(matches!(
        remove_contents(&canaries[1].dir).unwrap_err(),
        VolumeError::NotMemoryBacked { .. }
    ));
    check_all(&canaries);
}

#[test]
fn remove_contents_does_not_enter_a_nested_mount() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    fs::create_dir(target.join("nested")).unwrap();
    let data = std::ffi::CString::new("size=1m").unwrap();
    rustix::mount::mount(
        "kvmount-test",
        target.join("nested").as_path(),
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .unwrap();
    fs::write(target.join("nested/host-file"), b"keep").unwrap();
    let err = remove_contents(&target).unwrap_err();
    assert!(matches!(err, VolumeError::CrossesMount { .. }), "{err}");
    assert_eq!(fs::read(target.join("nested/host-file")).unwrap(), b"keep");
    check_all(&canaries);
}

/// The canary itself notices a change (so the checks above can fail).
#[test]
#[should_panic(expected = "changed")]
fn canary_detects_a_write() {
    let root = TestRoot::new();
    let c = Canary::new(&root.path().join("c"));
    fs::write(c.dir.join("sub/0"), b"tampered").unwrap();
    c.check();
}

#[test]
#[should_panic(expected = "canary")]
fn canary_detects_a_new_entry() {
    let root = TestRoot::new();
    let c = Canary::new(&root.path().join("c"));
    fs::write(c.dir.join("new"), b"").unwrap();
    c.check();
}

#[test]
fn remove_contents_does_not_enter_a_bind_mount_of_the_same_filesystem() {
    let root = TestRoot::new();
    let (target, canaries) = root.volume();
    // canaries[0] lives on the same tmpfs as the target: same st_dev, other mount.
    fs::create_dir(target.join("bind")).unwrap();
    rustix::mount::mount_bind(&canaries[0].dir, target.join("bind")).unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    w.write(&[spec("a", 0o644, b"x")], &o()).unwrap();
    drop(w);
    let err = remove_contents(&target).unwrap_err();
    assert!(matches!(err, VolumeError::CrossesMount { .. }), "{err}");
    rustix::mount::unmount(target.join("bind"), rustix::mount::UnmountFlags::empty()).unwrap();
    check_all(&canaries);
    remove_contents(&target).unwrap();
    assert!(names(&target).is_empty());
    check_all(&canaries);
}

/// ... and a read of a canary file (atime, strictatime on the test tmpfs).
#[test]
#[should_panic(expected = "changed")]
fn canary_detects_a_read() {
    let root = TestRoot::new();
    let (_target, canaries) = root.volume();
    std::thread::sleep(std::time::Duration::from_millis(10));
    let _ = fs::read(canaries[0].dir.join("file")).unwrap();
    canaries[0].check();
}
