//! Every path of the crate at TRACE level, with a canary secret as file contents: the canary
//! never appears in a log line, an error message or an error's `Debug`.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::sync::{Arc, Mutex};

use common::*;
use kvmount_volume::{AtomicWriter, Ownership, mount_tmpfs, remove_contents, teardown};

const SECRET: &[u8] = b"CANARY-SECRET-7f3a9c";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn canary_secret_never_logged_or_in_errors() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _g = tracing::subscriber::set_default(subscriber);

    let root = TestRoot::new();
    let mut errors = Vec::new();
    let mut note = |r: Result<(), kvmount_volume::VolumeError>| {
        if let Err(e) = r {
            errors.push(format!("{e} {e:?}"));
        }
    };
    let small = root.tmpfs("small", "16k");
    let target = small.join("t");
    fs::create_dir(&target).unwrap();
    let w = AtomicWriter::open(&target).unwrap();
    let o = Ownership::default();
    let big = [SECRET.repeat(4096)].concat();
    note(w.write(&[spec("a", 0o644, SECRET)], &o).map(|_| ()));
    note(w.write(&[spec("a", 0o644, SECRET)], &o).map(|_| ()));
    note(w.write(&[spec("a", 0o644, &big)], &o).map(|_| ())); // ENOSPC
    note(
        w.write(&[spec("a", 0o644, SECRET), spec("a", 0o600, SECRET)], &o)
            .map(|_| ()),
    );
    note(w.write(&[spec("../x", 0o644, SECRET)], &o).map(|_| ()));
    note(w.write(&[spec("b", 0o7777, SECRET)], &o).map(|_| ()));
    fs::remove_file(target.join("..data")).unwrap();
    symlink("/nonexistent", target.join("..data")).unwrap();
    note(w.write(&[spec("a", 0o644, SECRET)], &o).map(|_| ()));
    fs::create_dir(target.join("dir")).unwrap();
    note(w.write(&[spec("dir", 0o644, SECRET)], &o).map(|_| ()));
    drop(w);
    note(remove_contents(&target));
    note(AtomicWriter::open(root.path()).map(|_| ()));
    let vol = root.path().join("vol");
    fs::create_dir(&vol).unwrap();
    note(mount_tmpfs(&vol, &small_tmpfs_opts()));
    note(mount_tmpfs(&vol, &small_tmpfs_opts()));
    let w = AtomicWriter::open(&vol).unwrap();
    note(w.write(&[spec("s", 0o400, SECRET)], &o).map(|_| ()));
    note(teardown(&vol)); // busy: lazy detach path, logs a warning
    drop(w);
    note(teardown(&vol));

    assert!(errors.len() >= 6, "{errors:?}");
    let logs = capture.0.lock().unwrap().clone();
    assert!(
        !logs.is_empty(),
        "nothing was logged; the test would prove nothing"
    );
    assert!(!contains(&logs, SECRET), "secret in logs");
    for e in &errors {
        assert!(!contains(e.as_bytes(), SECRET), "secret in error: {e}");
    }
}
