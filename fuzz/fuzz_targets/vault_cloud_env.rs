//! A cloudEnvFileName file (Azure SDK environment JSON) must parse or be refused, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kvmount_vault::cloud::parse_env_file(data);
});
