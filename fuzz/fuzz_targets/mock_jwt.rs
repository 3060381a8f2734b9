//! JWT decoding, signature verification and public-key (PEM/DER) parsing must not panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kvmount_mock_vault::fuzzing::jwt(data);
});
