//! Fuzzes `AtomicWriter::write` with arbitrary file sets on a real tmpfs (needs root).
//!
//! Input: records separated by 0xff; in each record the first byte is the mode (times 2, so
//! it covers 0..=0o777 and beyond), then the path up to the first 0x00, then the contents.
//! After each write: on success the published files are exactly the requested ones with the
//! requested bytes; on error the previously published set is unchanged. A canary beside the
//! target never changes.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use kvmount_volume::{AtomicWriter, FileSpec, Ownership, TmpfsOptions, mount_tmpfs};
use libfuzzer_sys::fuzz_target;

struct Env {
    target: PathBuf,
    canary: PathBuf,
    writer: AtomicWriter,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("kvmount-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("create base");
        let opts = TmpfsOptions { size_bytes: 16 << 20, mode: 0o755, uid: None, gid: None };
        mount_tmpfs(&base, &opts).expect("mount tmpfs (run as root)");
        let target = base.join("target");
        std::fs::create_dir(&target).expect("create target");
        let canary = base.join("canary");
        std::fs::write(&canary, b"canary").expect("canary");
        let writer = AtomicWriter::open(&target).expect("open writer");
        Env { target, canary, writer }
    })
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let mut specs = Vec::new();
    for record in data.split(|b| *b == 0xff).take(32) {
        let Some((&mode, rest)) = record.split_first() else { continue };
        let (path, contents) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let Ok(path) = std::str::from_utf8(path) else { return };
        specs.push(FileSpec { path, mode: u32::from(mode) * 2, contents });
    }
    let before = env.writer.current_files().expect("list");
    match env.writer.write(&specs, &Ownership::default()) {
        Ok(_) => {
            let want: BTreeMap<&str, &[u8]> = specs.iter().map(|s| (s.path, s.contents)).collect();
            let got = env.writer.current_files().expect("list");
            assert_eq!(got, want.keys().map(|p| p.to_string()).collect::<Vec<_>>());
            for (p, c) in want {
                assert_eq!(std::fs::read(env.target.join(p)).expect("read back"), c, "{p:?}");
            }
        }
        Err(_) => {
            assert_eq!(env.writer.current_files().expect("list"), before);
        }
    }
    assert_eq!(std::fs::read(&env.canary).expect("canary"), b"canary");
});
