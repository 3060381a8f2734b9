//! The token endpoint's form parser must not panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kvmount_mock_vault::fuzzing::token_form(data);
});
