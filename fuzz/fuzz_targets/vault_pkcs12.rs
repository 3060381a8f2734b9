//! PKCS#12 (PFX) reading and conversion to PEM: an error, never a panic, on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kvmount_vault::pem::pkcs12_to_pem(data);
});
