//! Fuzzes the MountRequest attribute and secret maps through the whole parameter model:
//! any input either parses or fails with an error that names a field and never repeats the
//! input's secret-looking content.
#![no_main]

use kvmount_vault::params::{mount_params, parse_string_map};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Split the input into attributes and secrets JSON at the first NUL.
    let (attributes, secrets) = text.split_once('\0').unwrap_or((text, "{}"));
    let attributes = match parse_string_map("attributes", attributes) {
        Ok(map) => map,
        Err(err) => {
            assert_eq!(err.field, "attributes");
            assert!(!err.problem.contains(attributes) || attributes.len() < 8);
            return;
        }
    };
    let Ok(secrets) = parse_string_map("secrets", secrets) else {
        return;
    };
    match mount_params(
        &attributes,
        &secrets,
        0o644,
        kvmount_vault::cloud::EnvFile::Beneath(None),
    ) {
        Ok(params) => {
            assert!(!params.objects.is_empty());
            for object in &params.objects {
                assert!(kvmount_volume::validate_relative_path(object.file_name()).is_ok());
                assert!(object.file_mode.is_none_or(|m| m <= 0o777));
            }
        }
        Err(err) => {
            assert!(!err.field.is_empty());
            for value in secrets.values().filter(|v| v.len() >= 8) {
                assert!(!err.to_string().contains(value.as_str()), "secret echoed");
            }
        }
    }
});
