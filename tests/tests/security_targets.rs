//! Where the node plugin writes, against the real daemon, real mounts and a concurrent attacker:
//!
//! - a target that is already a mount of a disk directory (a bind mount, as kubelet or an
//!   operator could leave) is refused with FAILED_PRECONDITION, at publish, at kubelet's
//!   republish and at rotation, and nothing is written to the disk directory;
//! - a thread that keeps swapping the target's parent, the target and the entries inside it
//!   (`..data`, `..data_tmp`, the visible names, a payload-named link) with symlinks to a
//!   canary directory during publish, rotation and unpublish: the canary directory (on tmpfs,
//!   where a cleanup that followed a link would delete it) is never opened, read, written or
//!   removed (inotify), and nothing is mounted in it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_tests::{NodeDaemon, Vault, mounts_under, object, objects, publish_request, tree};
use rustix::fs::{AtFlags, RenameFlags};
use tonic::Code;

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";

fn context(vault: &Vault, pod: &str) -> HashMap<String, String> {
    let token = vault.sa_token("team-a", "app");
    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}});
    HashMap::from([
        ("keyvaultName".to_owned(), "demo".to_owned()),
        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
        ("clientID".to_owned(), APP_A.to_owned()),
        (
            "objects".to_owned(),
            objects(&[object("db-password", ""), object("api-key", "")]),
        ),
        ("csi.storage.k8s.io/pod.name".to_owned(), pod.to_owned()),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            "team-a".to_owned(),
        ),
        (
            "csi.storage.k8s.io/pod.uid".to_owned(),
            format!("uid-{pod}"),
        ),
        (
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            tokens.to_string(),
        ),
    ])
}

fn unpublish(volume: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    }
}

/// Every file below `root` with its bytes (not following links).
fn contents(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    tree(root)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

/// A bind mount of `source` on `target`; lazily unmounted on drop (also when a test fails).
struct BindMount {
    target: PathBuf,
}

impl BindMount {
    fn new(source: &Path, target: &Path) -> Self {
        std::fs::create_dir_all(target).expect("bind target");
        rustix::mount::mount_bind(source, target).expect("bind mount");
        Self {
            target: target.to_owned(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        while kvmount_volume::is_mount_point(&self.target).unwrap_or(false)
            && rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH).is_ok()
        {
        }
    }
}

/// A directory on a disk filesystem (under the cargo target dir), with a canary file.
fn disk_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kvmount-disk.")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("disk dir");
    assert!(
        kvmount_volume::memory_fs_kind(dir.path()).is_err(),
        "{} must be on a disk filesystem for this test to mean anything",
        dir.path().display()
    );
    std::fs::write(dir.path().join("canary"), "disk-canary").expect("canary");
    dir
}

#[tokio::test]
async fn a_target_that_is_a_mount_of_a_disk_directory_gets_nothing() {
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "1s".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let disk = disk_dir();
    let before = contents(disk.path());

    // (a) The target is already a mount point, of a disk directory: the plugin does not mount
    // its own tmpfs over a mount, so the only question is whether it writes into this one.
    let target = daemon.target("bind");
    let bind = BindMount::new(disk.path(), &target);
    let status = node
        .node_publish_volume(publish_request(
            &target,
            "vol-bind",
            &context(&vault, "bind"),
        ))
        .await
        .expect_err("a disk mount at the target");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("not on tmpfs or ramfs"),
        "{status:?}"
    );
    assert_eq!(contents(disk.path()), before, "nothing written to the disk");
    assert_eq!(tree(disk.path()).len(), 1, "nothing created on the disk");
    assert!(
        kvmount_volume::is_mount_point(&target).expect("mount check"),
        "the refused publish left the existing mount alone"
    );
    assert_eq!(mounts_under(&target).len(), 1, "and stacked nothing on it");
    drop(bind);

    // (b) A published volume whose tmpfs is replaced by a disk mount (unmounted under us):
    // neither rotation nor kubelet's republish writes into it.
    let ctx = context(&vault, "swap-mount");
    let target = daemon.target("swap-mount");
    node.node_publish_volume(publish_request(&target, "vol-sm", &ctx))
        .await
        .expect("publish on a plain directory mounts a tmpfs");
    assert!(kvmount_volume::memory_fs_kind(&target.join("db-password")).is_ok());
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).expect("umount");
    let bind = BindMount::new(disk.path(), &target);
    vault
        .set_secret(
            "demo",
            APP_A,
            "app-a-password",
            "db-password",
            "rotated-onto-disk",
        )
        .await;
    // Three rotation intervals: the pass reads the new version and tries the volume.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !daemon.output().contains("no longer mounted")
        && !daemon.output().contains("not on tmpfs or ramfs")
    {
        assert!(
            Instant::now() < deadline,
            "no rotation attempt:\n{}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A rotation pass still working on the volume answers ABORTED ("already running;
    // retry"); kubelet retries, and so does this test, until the republish is decided.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = node
            .node_publish_volume(publish_request(&target, "vol-sm", &ctx))
            .await
            .expect_err("republish onto a disk mount");
        if status.code() != Code::Aborted || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        contents(disk.path()),
        before,
        "rotation and republish wrote nothing to the disk"
    );
    assert_eq!(tree(disk.path()).len(), 1);
    // Unpublish removes the mount kubelet asked about, never the disk's files.
    node.node_unpublish_volume(unpublish("vol-sm", &target))
        .await
        .expect("unpublish");
    drop(bind);
    assert_eq!(contents(disk.path()), before, "unpublish removed nothing");
    assert!(!daemon.output().contains("rotated-onto-disk"));
}

/// Watches a directory tree with inotify for anything but a `stat`: open, read, write, create,
/// delete, rename, attribute change.
struct Watch {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
}

impl Watch {
    fn new(dirs: &[&Path]) -> Self {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).expect("inotify");
        let mut map = HashMap::new();
        for dir in dirs {
            let wd = inotify::add_watch(
                &fd,
                *dir,
                WatchFlags::ACCESS
                    | WatchFlags::MODIFY
                    | WatchFlags::ATTRIB
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::CLOSE_NOWRITE
                    | WatchFlags::OPEN
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::MOVED_TO
                    | WatchFlags::CREATE
                    | WatchFlags::DELETE
                    | WatchFlags::DELETE_SELF
                    | WatchFlags::MOVE_SELF,
            )
            .expect("watch");
            map.insert(wd, dir.to_path_buf());
        }
        Self { fd, dirs: map }
    }

    /// The events so far, as "dir/name: FLAGS".
    fn events(&self) -> Vec<String> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = rustix::fs::inotify::Reader::new(&self.fd, &mut buf);
        let mut out = Vec::new();
        while let Ok(event) = reader.next() {
            let dir = self
                .dirs
                .get(&event.wd())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let name = event
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(format!("{dir}/{name}: {:?}", event.events()));
        }
        out
    }
}

/// The attacker: swaps the target's parent, the target, and entries inside the target with
/// symlinks into the canary directory, each swap undone after a moment. The lock is held while
/// a swap is in place, so the test can look at a clean tree by taking it.
struct Swapper {
    stop: Arc<AtomicBool>,
    lock: Arc<Mutex<()>>,
    swaps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    parent: PathBuf,
}

/// Names inside the target the swapper plants or exchanges.
const INSIDE: [&str; 5] = [
    "db-password",
    "api-key",
    "..data",
    "..data_tmp",
    "..2020_01_01_00_00_00.c0ffee",
];

impl Swapper {
    fn start(target: &Path, canary: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let lock = Arc::new(Mutex::new(()));
        let swaps = Arc::new(AtomicU64::new(0));
        let parent = target.parent().expect("parent").to_owned();
        let name = target.file_name().expect("name").to_owned();
        let thread = {
            let (stop, lock, swaps) = (stop.clone(), lock.clone(), swaps.clone());
            let (parent, canary) = (parent.clone(), canary.to_owned());
            std::thread::spawn(move || {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    {
                        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                        if swap_once(&parent, &name, &canary, n >> 33) {
                            swaps.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_micros(300 + (n >> 50) % 700));
                }
            })
        };
        Self {
            stop,
            lock,
            swaps,
            thread: Some(thread),
            parent,
        }
    }

    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.swaps.load(Ordering::Relaxed)
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop();
        // A panic mid-swap cannot leave one in place (each swap is undone before the lock is
        // released), but leave nothing of ours behind either way.
        let _ = std::fs::remove_file(sibling(&self.parent, ".swap"));
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().expect("name").to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Exchanges `path` with a fresh symlink to `to` (or plants the link where `path` is absent),
/// keeps it for a moment, and puts everything back. Returns whether a swap happened.
fn swap_with_link(path: &Path, to: &Path, hold: Duration) -> bool {
    let link = sibling(path, ".swap");
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(to, &link).is_err() {
        return false;
    }
    let exchanged = rustix::fs::renameat_with(
        rustix::fs::CWD,
        &link,
        rustix::fs::CWD,
        path,
        RenameFlags::EXCHANGE,
    );
    let swapped = match exchanged {
        Ok(()) => {
            std::thread::sleep(hold);
            // Put the original back; if the daemon replaced our link meanwhile, this puts its
            // entry aside and ours goes too.
            let _ = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &link,
                rustix::fs::CWD,
                path,
                RenameFlags::EXCHANGE,
            );
            true
        }
        Err(rustix::io::Errno::NOENT) => {
            // Nothing there: plant the link, then take it away (if it is still ours).
            if rustix::fs::renameat_with(
                rustix::fs::CWD,
                &link,
                rustix::fs::CWD,
                path,
                RenameFlags::NOREPLACE,
            )
            .is_err()
            {
                let _ = std::fs::remove_file(&link);
                return false;
            }
            std::thread::sleep(hold);
            if std::fs::read_link(path).is_ok_and(|t| t == to) {
                let _ = rustix::fs::unlinkat(rustix::fs::CWD, path, AtFlags::empty());
            }
            return true;
        }
        Err(_) => false, // a mount point (EBUSY), or gone meanwhile
    };
    // Whatever sits at `.swap` now is either our link or an entry the daemon made during the
    // swap; ours is removed, theirs left for the daemon's cleanup.
    if std::fs::read_link(&link).is_ok_and(|t| t == to) {
        let _ = std::fs::remove_file(&link);
    }
    swapped
}

fn swap_once(parent: &Path, name: &std::ffi::OsStr, canary: &Path, pick: u64) -> bool {
    let target = parent.join(name);
    let hold = Duration::from_micros(200 + pick % 1500);
    match pick % 8 {
        // The target's parent becomes a link to the canary dir, which has a `mount` directory.
        0 | 1 => swap_with_link(parent, canary, hold),
        // The target itself (EBUSY while it is a mount point; a link while it is not).
        2 => swap_with_link(&target, &canary.join("mount"), hold),
        // Entries inside the target.
        k => {
            let entry = INSIDE[(k as usize - 3) % INSIDE.len()];
            let to = if entry.starts_with("..") {
                canary.to_owned()
            } else {
                canary.join(entry)
            };
            if entry == "..data" && pick % 16 >= 8 {
                // `..data` names a payload-looking entry that is a link to the canary dir.
                let fake = target.join(INSIDE[4]);
                let planted = std::os::unix::fs::symlink(canary, &fake).is_ok();
                let swapped = swap_with_link(&target.join("..data"), Path::new(INSIDE[4]), hold);
                if planted {
                    let _ = std::fs::remove_file(&fake);
                }
                return swapped;
            }
            swap_with_link(&target.join(entry), &to, hold)
        }
    }
}

/// Canary files the daemon must never touch, with the names it writes and a `mount` directory
/// (where a target resolved through a swapped parent would land).
fn canary_dir() -> tempfile::TempDir {
    let shm = std::env::var_os("KVMOUNT_TEST_SHM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let dir = tempfile::Builder::new()
        .prefix("kvmount-canary.")
        .tempdir_in(shm)
        .expect("canary dir");
    for (name, value) in [
        ("db-password", "canary-db"),
        ("api-key", "canary-key"),
        ("mount/db-password", "canary-mount-db"),
        ("mount/keep", "canary-keep"),
    ] {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, value).expect("canary");
    }
    dir
}

/// Removes the links the swapper planted in the plain directory kubelet made while it was not
/// mounted, which the tmpfs then covered: unpublish never empties a directory on disk (it
/// answers "Directory not empty"), so they are the planter's to remove, here the test's.
fn remove_planted(target: &Path, status: &tonic::Status) {
    assert!(
        status.message().contains("Directory not empty"),
        "{status:?}"
    );
    if kvmount_volume::is_mount_point(target).unwrap_or(true) {
        return;
    }
    for entry in std::fs::read_dir(target).expect("list").flatten() {
        let planted = entry.file_type().is_ok_and(|t| t.is_symlink());
        assert!(planted, "only planted links are left: {:?}", entry.path());
        std::fs::remove_file(entry.path()).expect("remove a planted link");
    }
}

/// Unmounts anything a bug mounted inside the canary directory before it is removed.
struct NoMountsLeft(PathBuf);

impl Drop for NoMountsLeft {
    fn drop(&mut self) {
        for mount in mounts_under(&self.0) {
            let _ = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

#[tokio::test]
async fn a_symlink_swapper_never_reaches_outside_the_target() {
    const ROUNDS: usize = 10;
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "1s".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let canary = canary_dir();
    let _unmount = NoMountsLeft(canary.path().to_owned());
    let before = contents(canary.path());
    let before_tree = tree(canary.path());
    let watch = Watch::new(&[canary.path(), &canary.path().join("mount")]);
    let target = daemon.target("swapped");
    let ctx = context(&vault, "swapped");
    let mut swapper = Swapper::start(&target, canary.path());

    let (mut published, mut refused, mut unpublish_retries) = (0u64, 0u64, 0u64);
    for round in 0..ROUNDS {
        // Publish, retrying like kubelet while the swapper makes it refuse.
        let mut ok = false;
        for _ in 0..60 {
            match node
                .node_publish_volume(publish_request(&target, "vol-swap", &ctx))
                .await
            {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(status) => {
                    assert_ne!(status.code(), Code::Unknown, "{status:?}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if ok {
            published += 1;
            // A new version: the rotation pass rewrites the volume while the swaps go on.
            vault
                .set_secret(
                    "demo",
                    APP_A,
                    "app-a-password",
                    "db-password",
                    &format!("swap-rotated-{round}"),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(1300)).await;
        }
        // Unpublish, retrying until it succeeds (a refusal is fine, a stuck volume is not).
        let mut last = None;
        for attempt in 0..200 {
            match node
                .node_unpublish_volume(unpublish("vol-swap", &target))
                .await
            {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(status) => {
                    assert_ne!(status.code(), Code::Unknown, "{status:?}");
                    unpublish_retries += 1;
                    if attempt % 20 == 19 && status.message().contains("Directory not empty") {
                        let _clean = swapper.lock.lock().unwrap_or_else(|e| e.into_inner());
                        remove_planted(&target, &status);
                    }
                    last = Some(status);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        assert!(
            last.is_none(),
            "round {round}: unpublish never succeeded: {last:?}"
        );
        let _clean = swapper.lock.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            mounts_under(canary.path()).is_empty(),
            "round {round}: something was mounted in the canary dir"
        );
    }
    let swaps = swapper.stop();
    // With the swapper gone, the volume works normally and goes away whole.
    node.node_publish_volume(publish_request(&target, "vol-swap", &ctx))
        .await
        .expect("publish without the swapper");
    assert!(
        std::fs::read_to_string(target.join("db-password"))
            .expect("read")
            .starts_with("swap-rotated-")
    );
    if let Err(status) = node
        .node_unpublish_volume(unpublish("vol-swap", &target))
        .await
    {
        remove_planted(&target, &status);
        node.node_unpublish_volume(unpublish("vol-swap", &target))
            .await
            .expect("unpublish");
    }
    assert!(!target.exists(), "target removed");
    // A known limit: when the swapper renames the target directory between the daemon's
    // checks and its mount(2) (which goes through an fd of the directory), the tmpfs lands on
    // the directory under the swapper's name, and renaming it back fails (EBUSY). The daemon
    // then finds a symlink at the target and writes nothing; the empty tmpfs stays at the
    // swapper's name (kubelet's pod cleanup meets it). It must be empty and only there.
    let mut stray = 0;
    for mount in mounts_under(daemon.dir()) {
        assert!(
            mount.to_string_lossy().ends_with(".swap"),
            "a mount left at {}",
            mount.display()
        );
        assert_eq!(
            std::fs::read_dir(&mount).expect("list").count(),
            0,
            "nothing was written into {}",
            mount.display()
        );
        rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH).expect("umount");
        stray += 1;
    }

    let events = watch.events();
    let rotated = daemon.output().matches("rotated volume rewritten").count();
    kvmount_tests::record_summary(
        "swaps",
        &[
            ("swaps", swaps),
            ("rounds", ROUNDS as u64),
            ("rotations", rotated as u64),
            ("leaks", events.len() as u64),
        ],
    );
    assert!(
        events.is_empty(),
        "the canary dir was touched:\n{}",
        events.join("\n")
    );
    assert!(mounts_under(canary.path()).is_empty());
    assert_eq!(
        tree(canary.path()),
        before_tree,
        "nothing created or removed"
    );
    assert_eq!(contents(canary.path()), before, "nothing written");
    println!(
        "swapper: {swaps} swaps; {published}/{ROUNDS} rounds published ({refused} refusals), {rotated} rotations written, {unpublish_retries} unpublish retries, {stray} empty tmpfs left at a swapped name"
    );
    assert!(swaps > 1000, "the swapper ran ({swaps} swaps)");
    assert!(
        published as usize >= ROUNDS / 2,
        "too few publishes got through: {published}"
    );
    assert!(rotated > 0, "no rotation ran during the swaps");
    assert!(!daemon.output().contains("panicked"), "{}", daemon.output());
}
