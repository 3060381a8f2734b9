//! Fuzzes the `objects` YAML parser: no panic, accepted objects have safe, distinct file paths.
#![no_main]

use std::collections::HashSet;

use kvmount_vault::params::parse_objects;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_objects(text) {
        Ok(objects) => {
            let mut seen = HashSet::new();
            for object in &objects {
                let path = object.file_name();
                assert!(
                    kvmount_volume::validate_relative_path(path).is_ok(),
                    "{path:?}"
                );
                assert!(seen.insert(path.to_owned()), "duplicate {path:?}");
            }
        }
        Err(err) => assert!(err.field.starts_with("objects")),
    }
});
