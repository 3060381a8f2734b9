//! Fuzzes `stack_depth_below`, which reads the `[stack]` line of `/proc/self/maps` for the
//! stack scrub: the first 8 bytes are the stack pointer, the rest the maps text. A depth it
//! gives never reaches below address 0, and starts at a mapping the text names.
#![no_main]

use kvmount_alloc::stack_depth_below;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (sp, text) = data.split_at(8);
    let sp = u64::from_le_bytes(sp.try_into().expect("8 bytes")) as usize;
    let Ok(maps) = std::str::from_utf8(text) else {
        return;
    };
    if let Some(depth) = stack_depth_below(maps, sp) {
        assert!(depth <= sp);
        let start = format!("{:x}-", sp - depth);
        assert!(
            maps.to_ascii_lowercase().contains(&start),
            "{start} not in the maps"
        );
    }
});
