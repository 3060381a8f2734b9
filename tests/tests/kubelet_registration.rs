//! The daemon registers its CSI driver with the kubelet itself (`--plugin-registration-dir`):
//! it serves `pluginregistration.Registration` on `<dir>/<driver>-reg.sock`, answers GetInfo
//! with the CSI endpoint as the kubelet sees it, offers a new socket when the file vanishes or
//! after the kubelet refuses the driver, and removes the socket at SIGTERM. The real kubelet's
//! side of this is exercised by the cluster suite (tests/cluster/); here the daemon is driven
//! as a kubelet would drive it, with a gRPC client over the Unix socket.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kvmount_proto::pluginregistration::registration_client::RegistrationClient;
use kvmount_proto::pluginregistration::{InfoRequest, RegistrationStatus};
use kvmount_tests::{NodeDaemon, workspace_bin};

const KUBELET_ENDPOINT: &str = "/var/lib/kubelet/plugins/secrets.kvmount.io/csi.sock";

fn registration_dir(scratch: &Path) -> PathBuf {
    scratch.join("plugins_registry")
}

fn start(scratch: &Path) -> NodeDaemon {
    NodeDaemon::start(&[
        "--plugin-registration-dir".into(),
        registration_dir(scratch).display().to_string(),
        "--kubelet-csi-socket".into(),
        KUBELET_ENDPOINT.into(),
        "--log-level".into(),
        "info".into(),
    ])
}

fn socket(scratch: &Path) -> PathBuf {
    registration_dir(scratch).join("secrets.kvmount.io-reg.sock")
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Waits until the socket at `path` exists and is not the file `old`.
fn wait_for_new_socket(path: &Path, old: Option<u64>, daemon: &NodeDaemon) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(now) = inode(path).filter(|now| Some(*now) != old) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "no new registration socket at {}:\n{}",
            path.display(),
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the daemon has printed `needle` (its lines reach us through a pipe and a reader
/// thread, so after any answer it gave); fails with its output after `within`.
fn wait_for_line(daemon: &NodeDaemon, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !daemon.output().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?}:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn client(path: &Path) -> RegistrationClient<tonic::transport::Channel> {
    RegistrationClient::new(
        kvmount_provider::server::unix_channel(path)
            .await
            .expect("connect to the registration socket"),
    )
}

#[tokio::test]
async fn the_daemon_offers_its_csi_socket_to_the_kubelet() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let daemon = start(scratch.path());
    let path = socket(scratch.path());
    let first = wait_for_new_socket(&path, None, &daemon);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only root (the kubelet) may connect");

    let mut kubelet = client(&path).await;
    let info = kubelet
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "secrets.kvmount.io");
    assert_eq!(info.endpoint, KUBELET_ENDPOINT, "the path on the node");
    assert_eq!(info.supported_versions, ["1.0.0"]);
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("NotifyRegistrationStatus");
    wait_for_line(
        &daemon,
        "the kubelet registered the CSI driver",
        Duration::from_secs(5),
    );

    // A wiped plugins_registry (the kubelet's directory re-created): a new socket appears,
    // which is what the kubelet's watcher registers.
    std::fs::remove_dir_all(registration_dir(scratch.path())).expect("wipe the directory");
    let second = wait_for_new_socket(&path, Some(first), &daemon);
    let info = client(&path)
        .await
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo on the new socket")
        .into_inner();
    assert_eq!(info.endpoint, KUBELET_ENDPOINT);

    // A refusal: the daemon says why, keeps serving volumes, and offers itself again after a
    // pause (the upstream registrar exits instead).
    client(&path)
        .await
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: format!("version mismatch {}", "x".repeat(10_000)),
        })
        .await
        .expect("NotifyRegistrationStatus");
    let third = wait_for_new_socket(&path, Some(second), &daemon);
    assert_ne!(third, first);
    let output = daemon.output();
    assert!(
        output.contains("the kubelet refused the CSI driver"),
        "{output}"
    );
    assert!(
        !output.contains(&"x".repeat(600)),
        "the kubelet's error is cut short in the log"
    );
    let mut node =
        kvmount_proto::csi::identity_client::IdentityClient::new(daemon.csi_channel().await);
    node.probe(kvmount_proto::csi::ProbeRequest {})
        .await
        .expect("the CSI socket still serves");

    // SIGTERM: the socket goes, so the kubelet drops the driver until the next daemon.
    let status = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "registration socket left behind:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_file_that_took_the_sockets_place_is_left_alone() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let daemon = start(scratch.path());
    let path = socket(scratch.path());
    let ours = wait_for_new_socket(&path, None, &daemon);
    // Another daemon's socket (a rolling update with surge) at the same path: the newer one
    // registers; this one waits and never removes it.
    std::fs::remove_file(&path).expect("remove");
    let other = std::os::unix::net::UnixListener::bind(&path).expect("bind another socket");
    let theirs = inode(&path).expect("their socket");
    wait_for_line(&daemon, "another file took", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(inode(&path), Some(theirs), "their socket is left in place");
    // Once it is gone, the daemon offers its own again.
    drop(other);
    std::fs::remove_file(&path).expect("the other daemon removes its socket");
    let again = wait_for_new_socket(&path, Some(theirs), &daemon);
    assert_ne!(again, ours);
    // A file that is not a socket is never removed, not even at shutdown.
    std::fs::remove_file(&path).expect("remove");
    std::fs::write(&path, b"not a socket").expect("write");
    std::thread::sleep(Duration::from_secs(5));
    drop(daemon);
    assert_eq!(std::fs::read(&path).expect("still there"), b"not a socket");
}

#[test]
fn registration_needs_the_csi_socket_and_an_absolute_endpoint() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let shm = std::env::var_os("KVMOUNT_TEST_SHM").unwrap_or_else(|| "/dev/shm".into());
    let state = tempfile::tempdir_in(shm).expect("state dir on tmpfs");
    let run = |extra: &[&str]| {
        let out = Command::new(workspace_bin("kvmount-provider"))
            .arg("serve")
            .arg("--provider-socket")
            .arg(scratch.path().join("p.sock"))
            .arg("--state-dir")
            .arg(state.path())
            .args(extra)
            .output()
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = registration_dir(scratch.path()).display().to_string();
    let err = run(&["--plugin-registration-dir", &dir]);
    assert!(err.contains("--plugin-registration-dir"), "{err}");
    assert!(err.contains("--csi-socket"), "{err}");
    let csi = scratch.path().join("csi.sock").display().to_string();
    let err = run(&[
        "--plugin-registration-dir",
        &dir,
        "--csi-socket",
        &csi,
        "--node-id",
        "n",
        "--kubelet-csi-socket",
        "relative/csi.sock",
    ]);
    assert!(err.contains("--kubelet-csi-socket"), "{err}");
    assert!(err.contains("absolute"), "{err}");
    assert!(
        !registration_dir(scratch.path()).exists(),
        "nothing created"
    );
}
