//! Fuzzes the one duration parser (daemon flags, `refresh-interval`): it never panics, what it
//! accepts is within the range asked for, and an error names the field and quotes at most a
//! short prefix of the input.
#![no_main]

use std::time::Duration;

use kvmount_vault::duration::parse_duration_within;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (min, max) = (Duration::from_secs(1), Duration::from_secs(86_400));
    match parse_duration_within("refresh-interval", text, min, max) {
        Ok(d) => assert!((min..=max).contains(&d), "{d:?} out of range"),
        Err(e) => {
            assert!(e.starts_with("refresh-interval: "), "{e}");
            if text.chars().count() > 40 {
                assert!(!e.contains(text), "the whole input echoed");
            }
        }
    }
});
