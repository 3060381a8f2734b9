//! tmpfs mount, mount-point detection and teardown.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use common::*;
use kvmount_volume::{
    AtomicWriter, ErrorKind, FsKind, Ownership, TmpfsOptions, VolumeError, is_mount_point,
    memory_fs_kind, mount_tmpfs, teardown, unmount,
};

#[test]
fn mount_write_teardown() {
    let root = TestRoot::new();
    let vol = root.path().join("vol");
    fs::create_dir(&vol).unwrap();
    assert!(!is_mount_point(&vol).unwrap());
    let opts = TmpfsOptions {
        size_bytes: 2 << 20,
        mode: 0o750,
        uid: Some(0),
        gid: Some(65534),
    };
    mount_tmpfs(&vol, &opts).unwrap();
    assert!(is_mount_point(&vol).unwrap());
    assert_eq!(memory_fs_kind(&vol).unwrap(), FsKind::Tmpfs);
    let info = mountinfo();
    let m = info.iter().find(|m| m.0 == vol).expect("mount listed");
    assert_eq!((m.1.as_str(), m.2.as_str()), ("tmpfs", "kvmount"));
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(
            m.3.split(',').any(|f| f == flag),
            "{flag} missing in {}",
            m.3
        );
    }
    let md = fs::metadata(&vol).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(md.permissions().mode() & 0o7777, 0o750);
    assert_eq!(md.gid(), 65534);
    // Refuses to stack a second tmpfs.
    let err = mount_tmpfs(&vol, &opts).unwrap_err();
    assert!(matches!(err, VolumeError::AlreadyMounted { .. }), "{err}");

    let w = AtomicWriter::open(&vol).unwrap();
    w.write(
        &[spec("a", 0o644, b"secret"), spec("d/b", 0o600, b"s2")],
        &Ownership::default(),
    )
    .unwrap();
    drop(w);
    teardown(&vol).unwrap();
    assert!(!vol.exists());
    assert!(mounts_below(root.path()).is_empty());
    teardown(&vol).unwrap();
    teardown(&vol).unwrap();
}

#[test]
fn teardown_never_mounted_missing_and_symlink() {
    let root = TestRoot::new();
    let plain = root.path().join("plain");
    fs::create_dir(&plain).unwrap();
    teardown(&plain).unwrap();
    assert!(!plain.exists());
    teardown(&root.path().join("does/not/exist")).unwrap();
    assert!(!unmount(&root.path().join("nope")).unwrap());

    // A symlink at the target: only the link goes.
    let canary = Canary::new(&root.path().join("canary"));
    let link = root.path().join("link");
    symlink(&canary.dir, &link).unwrap();
    teardown(&link).unwrap();
    assert!(fs::symlink_metadata(&link).is_err());
    canary.check();

    // A symlink to a mounted tmpfs: the link goes, the mount stays.
    let m = root.tmpfs("m", "1m");
    fs::write(m.join("keep"), b"k").unwrap();
    symlink(&m, &link).unwrap();
    teardown(&link).unwrap();
    assert!(is_mount_point(&m).unwrap());
    assert_eq!(fs::read(m.join("keep")).unwrap(), b"k");
    assert!(!unmount(&link).unwrap(), "unmount must not follow the link");

    // A non-empty directory on disk is not emptied.
    let disk = root.path().join("disk");
    fs::create_dir(&disk).unwrap();
    fs::write(disk.join("f"), b"f").unwrap();
    let err = teardown(&disk).unwrap_err();
    assert!(
        matches!(
            err,
            VolumeError::Io {
                operation: "rmdir",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read(disk.join("f")).unwrap(), b"f");
    // A file at the target is refused.
    assert!(matches!(
        teardown(&disk.join("f")).unwrap_err(),
        VolumeError::NotADirectory { .. }
    ));
}

#[test]
fn teardown_removes_stacked_mounts_and_busy_mounts() {
    let root = TestRoot::new();
    let vol = root.tmpfs("vol", "1m");
    let data = std::ffi::CString::new("size=1m").unwrap();
    rustix::mount::mount(
        "kvmount-test",
        &vol,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .unwrap();
    rustix::mount::mount(
        "kvmount-test",
        &vol,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .unwrap();
    assert_eq!(mounts_below(root.path()).len(), 3);
    let w = AtomicWriter::open(&vol).unwrap();
    w.write(&[spec("a", 0o644, b"x")], &Ownership::default())
        .unwrap();
    // The writer's fd keeps the top mount busy: teardown detaches it lazily after emptying it.
    teardown(&vol).unwrap();
    assert!(
        w.current_files().unwrap().is_empty(),
        "contents left in the detached mount"
    );
    drop(w);
    assert!(!vol.exists());
    assert!(mounts_below(root.path()).is_empty());
}

#[test]
fn mount_refusals() {
    let root = TestRoot::new();
    let vol = root.path().join("vol");
    fs::create_dir(&vol).unwrap();
    let zero = TmpfsOptions {
        size_bytes: 0,
        ..small_tmpfs_opts()
    };
    assert_eq!(
        mount_tmpfs(&vol, &zero).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let bad_mode = TmpfsOptions {
        mode: 0o1777,
        ..small_tmpfs_opts()
    };
    assert_eq!(
        mount_tmpfs(&vol, &bad_mode).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let link = root.path().join("link");
    symlink(&vol, &link).unwrap();
    assert!(matches!(
        mount_tmpfs(&link, &small_tmpfs_opts()).unwrap_err(),
        VolumeError::NotADirectory { .. }
    ));
    assert!(mounts_below(root.path()).is_empty());
    assert!(mount_tmpfs(&root.path().join("missing"), &small_tmpfs_opts()).is_err());
}

#[test]
fn mount_point_detection_handles_bind_mounts_and_escaped_names() {
    let root = TestRoot::new();
    let src = root.path().join("src");
    let dst = root.path().join("with space\tand tab");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    assert!(!is_mount_point(&dst).unwrap());
    // A bind mount inside one filesystem: same st_dev, found through mountinfo.
    rustix::mount::mount_bind(&src, &dst).unwrap();
    assert!(is_mount_point(&dst).unwrap());
    assert!(!is_mount_point(&src).unwrap());
    // Relative spelling of the same path.
    let rel = dst.strip_prefix("/").unwrap();
    let cwd_root = std::path::Path::new("/").join(rel);
    assert!(is_mount_point(&cwd_root).unwrap());
    assert!(unmount(&dst).unwrap());
    assert!(!is_mount_point(&dst).unwrap());
    assert!(!unmount(&dst).unwrap());
}
