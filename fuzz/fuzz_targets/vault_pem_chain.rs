//! PEM parsing and chain ordering of certificate secrets: an error or a permutation of the
//! input's blocks, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(blocks) = kvmount_vault::pem::parse_pem(data) else {
        return;
    };
    if let Ok(out) = kvmount_vault::pem::normalize_pem_chain(data) {
        let again = kvmount_vault::pem::parse_pem(out.expose()).expect("our output parses");
        assert_eq!(again.len(), blocks.len());
    }
    let ders: Vec<&[u8]> = blocks.iter().map(|b| b.der.as_slice()).collect();
    if let Ok(order) = kvmount_vault::pem::chain_order(&ders) {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..ders.len()).collect::<Vec<_>>());
    }
});
