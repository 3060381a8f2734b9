//! `kvmount-provider dev` end to end: exit 0, the narrated steps, and nothing left behind.

use std::process::Command;

#[test]
fn dev_plays_the_life_cycle_and_leaves_nothing() {
    let tmp = tempfile::Builder::new()
        .prefix("kvmount-test-dev.")
        .tempdir()
        .expect("tempdir");
    let output = Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .arg("dev")
        .env("TMPDIR", tmp.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run dev");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dev failed:\n{stdout}\n{stderr}");
    for expected in [
        "[1]",
        "[8]",
        "pod-a",
        "pod-b",
        "0600",
        "db-password",
        "api-key",
        "\"rotated-value\"",
        "volume mounts left: 0",
        "volume directories left: 0",
        "cached objects on the node: 0",
        // pod B is served from the node cache: still two reads after it.
        "after pod B: Key Vault secret GETs 2,",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        kvmount_tests::mounts_under(tmp.path()).is_empty(),
        "mounts left"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("read").collect();
    assert!(left.is_empty(), "files left in TMPDIR: {left:?}");
}
