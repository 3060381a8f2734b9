//! A global allocator that zeroes every block before it is freed (and the old block of every
//! reallocation), so secret bytes do not survive in freed heap memory: in buffers of the HTTP
//! and TLS stacks or the JSON decoder that our own `Zeroizing` types never see.
//!
//! Underneath is mimalloc ([`Mimalloc`]) for the daemon and the webhook, not the C library's
//! allocator: the shipped binaries are static musl, whose allocator made a warm Mount of 10
//! secrets take twice as long as the same source on glibc (p50 1.10-1.22 ms against 0.55 ms,
//! `socket-bench`, 2026-12-07; the `dist` profile's `opt-level = "s"` made no difference). With
//! mimalloc the musl build measured p50 0.66 ms. One option is changed from mimalloc's
//! defaults, at its first allocation: arenas are not committed eagerly ([`tune`]). The agent,
//! whose rounds are seconds apart and whose footprint every injected pod pays, keeps the C
//! library's ([`std::alloc::System`]): with mimalloc its steady-state RSS rose from 4.7 to
//! 5.4 MiB (0.9 to 1.6 MiB anonymous; full `bench/run.sh`, 2026-12-07).
//!
//! This crate is all the `unsafe` code of kvmount. The binaries that handle secret values
//! (`kvmount-provider`, `kvmount-agent`, `kvmount-sidecar`) install it with `#[global_allocator]`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

mod stack;
pub use stack::{scrub_stack, stack_depth_below};

use zeroize::Zeroize;

/// `A` (by default [`Mimalloc`]), zeroing on free.
pub struct ZeroingAllocator<A = Mimalloc>(A);

impl ZeroingAllocator<Mimalloc> {
    /// Over mimalloc (the daemon, the webhook).
    pub const fn mimalloc() -> Self {
        Self(Mimalloc)
    }
}

impl ZeroingAllocator<std::alloc::System> {
    /// Over the C library's allocator (the agent).
    pub const fn system() -> Self {
        Self(std::alloc::System)
    }
}

/// mimalloc with kvmount's options ([`tune`]), set at its first allocation.
pub struct Mimalloc;

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments unchanged; `tune`
// only sets an option and changes no contract.
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        tune();
        // SAFETY: forwarded; the caller upholds `alloc`'s contract (non-zero size).
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        tune();
        // SAFETY: forwarded, as above.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
}

/// mimalloc's `mi_option_arena_eager_commit` (its index in `mi_option_e`, mimalloc.h of the
/// v3 sources that libmimalloc-sys 0.1.49 builds; the Rust bindings name no constant for it).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Whether [`tune`] has run.
static TUNED: AtomicBool = AtomicBool::new(false);

/// Sets the mimalloc options that differ from its defaults, once, at the first allocation
/// through [`Mimalloc`] (mimalloc reads its options, and the `MIMALLOC_*` environment,
/// in a constructor before `main`; these are set over that).
///
/// Arenas are committed on demand: mimalloc's default on Linux commits each arena eagerly, and
/// the daemon locks its memory (`mlockall` with `MCL_ONFAULT`), under which the pages of an
/// eagerly committed arena that it purges stay resident. Measured with 1,000 pods mounted
/// (provider-bench, static musl `dist` build): 15.8 MiB RSS with the default, 9.2 MiB with
/// eager commit off (the C library's allocator: 8.5 MiB).
#[inline]
pub fn tune() {
    // A plain load on every allocation; the read-modify-write only until the first has run.
    if !TUNED.load(Ordering::Relaxed) && !TUNED.swap(true, Ordering::Relaxed) {
        // SAFETY: sets one entry of mimalloc's option table by its valid index; the call takes
        // no pointer and allocates nothing.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
}

// SAFETY: every method forwards to `A` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is `A`'s. The only addition is in `dealloc`: before the block goes
// back, its `layout.size()` bytes are overwritten. The caller guarantees `ptr` was returned by
// this allocator with this `layout` and is not used afterwards, so the block is valid for
// writes of that many bytes and nobody else observes them.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ZeroingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded; the caller upholds `alloc`'s contract (non-zero size).
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded, as above.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` points to a live block of `layout.size()` bytes owned by the caller
        // (GlobalAlloc contract), so a mutable slice over it is valid until we free it.
        let block = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
        // Volatile writes: the compiler may not drop them as dead stores before the free.
        block.zeroize();
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    // `realloc` keeps the default: allocate, copy, then `dealloc` (which zeroes) the old block.
}

#[cfg(test)]
mod tests {
    use super::*;

    // mimalloc's own listing of its options, name and value, one line each; not in the Rust
    // bindings.
    unsafe extern "C" {
        fn mi_options_print_out(out: libmimalloc_sys::mi_output_fun, arg: *mut std::ffi::c_void);
    }

    /// Appends one piece of mimalloc's output to the `String` that `arg` points to.
    unsafe extern "C" fn collect(text: *const std::ffi::c_char, arg: *mut std::ffi::c_void) {
        // SAFETY: mimalloc passes a NUL-terminated string, and `arg` is the `String` that
        // `options_listing` lends it for the duration of the call.
        unsafe {
            let text = std::ffi::CStr::from_ptr(text).to_string_lossy();
            (*arg.cast::<String>()).push_str(&text);
        }
    }

    fn options_listing() -> String {
        let mut out = String::new();
        // SAFETY: `collect` matches mimalloc's output callback and only uses `out`, which
        // lives until the call returns.
        unsafe { mi_options_print_out(Some(collect), (&raw mut out).cast()) };
        out
    }

    #[test]
    fn arenas_are_committed_on_demand() {
        tune();
        let listing = options_listing();
        assert!(
            listing.contains("option 'arena_eager_commit': 0"),
            "{listing}"
        );
    }

    #[test]
    fn blocks_round_trip() {
        round_trip(&ZeroingAllocator::mimalloc());
        round_trip(&ZeroingAllocator::system());
    }

    fn round_trip(a: &impl GlobalAlloc) {
        let layout = Layout::from_size_align(64, 8).expect("layout");
        // SAFETY: a fresh block of the layout, written within bounds, freed once with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xAB, 64);
            a.dealloc(p, layout);
            let z = a.alloc_zeroed(layout);
            assert!(std::slice::from_raw_parts(z, 64).iter().all(|b| *b == 0));
            a.dealloc(z, layout);
        }
    }
}
