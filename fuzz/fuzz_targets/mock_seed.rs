//! Seed YAML parsing must return an error, never panic, on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kvmount_mock_vault::fuzzing::seed(data);
});
