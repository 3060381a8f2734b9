//! Fuzzes the two permission parsers: accepted modes are always within 0..=0o777.
#![no_main]

use kvmount_vault::params::{parse_default_mode, parse_file_permission};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mode) = parse_default_mode(text) {
        assert!(mode <= 0o777);
    }
    if let Ok(mode) = parse_file_permission("filePermission", text) {
        assert!(mode <= 0o777);
    }
});
