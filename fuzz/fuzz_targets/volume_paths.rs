//! Fuzzes `validate_relative_path`: whatever it accepts must be a plain relative path that
//! stays inside the volume and cannot collide with the writer's reserved names.
#![no_main]

use std::path::{Component, Path};

use kvmount_volume::validate_relative_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match validate_relative_path(s) {
        Ok(()) => {
            assert!(!s.is_empty() && s.len() <= 4096);
            assert!(!s.starts_with('/') && !s.starts_with(".."));
            assert!(!s.ends_with('/'));
            assert!(!s.contains('\\') && !s.contains('\0'));
            assert!(!s.chars().any(char::is_control));
            let mut n = 0;
            for c in Path::new(s).components() {
                match c {
                    Component::Normal(name) => assert!(name.len() <= 255 && !name.is_empty()),
                    other => panic!("accepted {s:?} with component {other:?}"),
                }
                n += 1;
            }
            // Components match the '/'-split exactly (no '.', no empty elements elided).
            assert_eq!(n, s.split('/').count(), "{s:?}");
        }
        Err(e) => {
            // Messages stay short even for huge inputs.
            assert!(e.to_string().len() < 1024);
        }
    }
});
