//! Overwriting the dead part of the main thread's stack.
#![deny(unsafe_code)]

/// Overwrites are done in nested frames of this many zeroed bytes.
const CHUNK: usize = 1024;

/// At most this much more than `CHUNK` per frame (return address, saved registers).
const FRAME_SLACK: usize = 256;

/// Where the stack is not the main thread's (whose mapping shows how deep it has grown), this
/// much below the caller is overwritten.
const FALLBACK_DEPTH: usize = 256 * 1024;

/// Never more than this (the default stack limit is 8 MiB).
const MAX_DEPTH: usize = 4 * 1024 * 1024;

/// Overwrites the dead part of this thread's stack below the caller with zeros, so values that
/// finished frames left behind (TLS decryption, JSON decoding) do not linger.
///
/// On the main thread the kernel grows the `[stack]` mapping as the stack is first used, so
/// its lower end is as deep as the stack has ever been (or the 128 KiB the kernel maps at
/// exec): everything from there to the caller is overwritten (but the last frame's worth, at
/// most `CHUNK + FRAME_SLACK` bytes at the very bottom), however deep a round went. Nothing is
/// written below that end, so the scrub itself never grows the stack and no page is touched
/// that was never used. On another thread (a fixed-size stack whose mapping says nothing
/// about its use) a fixed [`FALLBACK_DEPTH`] below the caller is overwritten.
#[inline(never)]
pub fn scrub_stack() {
    let here = 0u8;
    let sp = std::hint::black_box(std::ptr::addr_of!(here)) as usize;
    let depth = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| stack_depth_below(&maps, sp))
        .unwrap_or(FALLBACK_DEPTH)
        .min(MAX_DEPTH);
    overwrite_down_to(sp.saturating_sub(depth));
}

/// How far the `[stack]` mapping in `maps` (`/proc/self/maps`) reaches below `sp`, when `sp`
/// is inside it. Public for its fuzz target (`fuzz/fuzz_targets/alloc_stack_maps.rs`).
pub fn stack_depth_below(maps: &str, sp: usize) -> Option<usize> {
    let line = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let (start, rest) = line.split_once('-')?;
    let end = rest.split_whitespace().next()?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (start..end).contains(&sp).then(|| sp - start)
}

/// Nested frames of [`CHUNK`] zeroed bytes, each below the last, while another one fits
/// above `floor`.
#[inline(never)]
fn overwrite_down_to(floor: usize) {
    let mut area = [0u8; CHUNK];
    std::hint::black_box(&mut area);
    let at = area.as_ptr() as usize;
    if at >= floor + CHUNK + FRAME_SLACK {
        overwrite_down_to(floor);
    }
    // Used after the call, so the frame cannot be reused for it.
    std::hint::black_box(&area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_mapping_gives_the_depth_below_the_caller() {
        let maps = "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
                    7ffc8a3bf000-7ffc8a406000 rw-p 00000000 00:00 0                          [stack]\n\
                    7ffc8a4f5000-7ffc8a4f7000 r-xp 00000000 00:00 0                          [vdso]\n";
        assert_eq!(
            stack_depth_below(maps, 0x7ffc8a400000),
            Some(0x7ffc8a400000 - 0x7ffc8a3bf000)
        );
        // Another thread's stack is not inside `[stack]`.
        assert_eq!(stack_depth_below(maps, 0x7f0000001000), None);
        assert_eq!(stack_depth_below("garbage", 1), None);
    }

    const CANARY: &[u8] = b"kvmount-stack-canary-0123456789";

    /// Leaves `CANARY` in a frame about 64 KiB below the caller (deeper than the reads of
    /// `holds` go) and returns its address.
    #[inline(never)]
    fn leave_canary_deep(pad: usize) -> usize {
        let mut area = [0u8; 4096];
        std::hint::black_box(&mut area);
        let at = if pad > 1 {
            leave_canary_deep(pad - 1)
        } else {
            area[..CANARY.len()].copy_from_slice(CANARY);
            std::hint::black_box(&mut area);
            area.as_ptr() as usize
        };
        std::hint::black_box(&area);
        at
    }

    /// Whether this process's memory at `at` holds `CANARY` (read through /proc/self/mem).
    fn holds(at: usize) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let mut mem = std::fs::File::open("/proc/self/mem").expect("mem");
        mem.seek(SeekFrom::Start(at as u64)).expect("seek");
        let mut buf = vec![0u8; CANARY.len()];
        mem.read_exact(&mut buf).expect("read");
        buf == CANARY
    }

    #[test]
    fn nothing_below_the_floor_is_written() {
        std::thread::spawn(|| {
            let deep = leave_canary_deep(16);
            let shallow = leave_canary_deep(8);
            assert!(holds(deep) && holds(shallow));
            overwrite_down_to(deep + CANARY.len() + 64);
            assert!(!holds(shallow), "above the floor: overwritten");
            assert!(holds(deep), "below the floor: untouched");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_value_left_in_a_finished_frame_is_overwritten() {
        // Test threads are not the main thread: the fixed depth below the caller.
        std::thread::spawn(|| {
            let at = leave_canary_deep(16);
            assert!(holds(at), "the canary is on the stack before the scrub");
            scrub_stack();
            assert!(!holds(at), "the scrub overwrote it");
        })
        .join()
        .expect("thread");
    }
}
