//! A global allocator that zeroes every block before it is freed (and the old block of every
//! reallocation), so secret bytes do not survive in freed heap memory: in buffers of the HTTP
//! and TLS stacks or the JSON decoder that our own `Zeroizing` types never see.
//!
//! This crate is all the `unsafe` code of kvmount. The binaries that handle secret values
//! (`kvmount-provider`, `kvmount-agent`, `kvmount-sidecar`) install it with `#[global_allocator]`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

mod stack;
pub use stack::{scrub_stack, stack_depth_below};

use zeroize::Zeroize;

/// The system allocator, zeroing on free.
pub struct ZeroingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is the system allocator's. The only addition is in `dealloc`: before the
// block goes back, its `layout.size()` bytes are overwritten. The caller guarantees `ptr` was
// returned by this allocator with this `layout` and is not used afterwards, so the block is
// valid for writes of that many bytes and nobody else observes them.
unsafe impl GlobalAlloc for ZeroingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded; the caller upholds `alloc`'s contract (non-zero size).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded, as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` points to a live block of `layout.size()` bytes owned by the caller
        // (GlobalAlloc contract), so a mutable slice over it is valid until we free it.
        let block = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
        // Volatile writes: the compiler may not drop them as dead stores before the free.
        block.zeroize();
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    // `realloc` keeps the default: allocate, copy, then `dealloc` (which zeroes) the old block.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip() {
        let a = ZeroingAllocator;
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
