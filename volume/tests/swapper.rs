//! A concurrent attacker keeps swapping links in the target for links to a canary outside
//! while the writer publishes 200 times and the volume is torn down.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use kvmount_volume::{AtomicWriter, Ownership, mount_tmpfs, teardown};

/// Replaces `victim` by a symlink to `to`, atomically (rename over it), like an attacker would.
fn swap(dir: &Path, victim: &str, to: &Path, n: usize) -> bool {
    let tmp = dir.join(format!(".swap{n}"));
    if symlink(to, &tmp).is_err() {
        return false;
    }
    if fs::rename(&tmp, dir.join(victim)).is_ok() {
        true
    } else {
        let _ = fs::remove_file(&tmp);
        false
    }
}

fn swapper(
    target: PathBuf,
    canary: PathBuf,
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let ok = match n % 6 {
                0 => swap(&target, "a", &canary, n),
                1 => swap(&target, "..data", &canary, n),
                2 => swap(&target, "..data_tmp", &canary, n),
                3 => swap(&target, "sub", &canary, n),
                4 => {
                    // Inside the current payload: swap a file, and try the subdirectory.
                    match fs::read_link(target.join("..data")) {
                        Ok(p) if p.starts_with("..2") => {
                            let payload = target.join(p);
                            let a = swap(&payload, "a", &canary.join("file"), n);
                            let b = swap(&payload, "sub", &canary, n);
                            a || b
                        }
                        _ => false,
                    }
                }
                _ => swap(&target, "..data", &canary.join("sub"), n),
            };
            if ok {
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[test]
fn concurrent_symlink_swapper_during_writes_and_teardown() {
    let root = TestRoot::new();
    let vol = root.path().join("vol");
    fs::create_dir(&vol).unwrap();
    mount_tmpfs(&vol, &small_tmpfs_opts()).unwrap();
    let canaries = [
        Canary::new(&root.path().join("canary")),
        Canary::new(&vol.join("..canary-beside")),
    ];
    let target = vol.join("target");
    fs::create_dir(&target).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let attacker = swapper(
        target.clone(),
        canaries[0].dir.clone(),
        stop.clone(),
        swaps.clone(),
    );

    let w = AtomicWriter::open(&target).unwrap();
    let (mut ok, mut failed) = (0, 0);
    for i in 0..200u32 {
        let v = format!("value-{}", i / 2); // every other write is identical to the previous one
        let files = [
            spec("a", 0o644, v.as_bytes()),
            spec("sub/0", 0o600, v.as_bytes()),
            spec("b", 0o400, b"b"),
        ];
        match w.write(&files, &Ownership::default()) {
            Ok(_) => ok += 1,
            Err(e) => {
                // Allowed: a clear refusal (e.g. the attacker put something in the way).
                assert!(!e.to_string().contains("value-"), "contents in error: {e}");
                eprintln!("refused: {e}");
                failed += 1;
            }
        }
        if i % 20 == 0 {
            check_all(&canaries);
        }
    }
    drop(w);
    check_all(&canaries);

    // Teardown while the attacker is still running: it may fail (the attacker keeps adding
    // entries), but must never touch anything outside.
    let _ = teardown(&vol.join("target"));
    check_all(&canaries);
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    assert!(
        swaps.load(Ordering::Relaxed) > 0,
        "the attacker never got a swap in"
    );
    teardown(&target).unwrap();
    assert!(!target.exists());
    check_all(&canaries);
    eprintln!(
        "writes ok {ok}, refused {failed}, swaps {}",
        swaps.load(Ordering::Relaxed)
    );
    assert!(ok > 0);

    // Teardown of the whole mount while an attacker swaps links at its top.
    fs::create_dir(&target).unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    w.write(&[spec("a", 0o644, b"x")], &Ownership::default())
        .unwrap();
    drop(w);
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = swapper(
        target.clone(),
        canaries[0].dir.clone(),
        stop.clone(),
        swaps.clone(),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = teardown(&vol);
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    canaries[0].check();
    if r.is_err() {
        teardown(&vol).unwrap();
    }
    assert!(!vol.exists());
    assert!(mounts_below(root.path()).is_empty());
    canaries[0].check();
}
