//! The zero-on-free global allocator (the `kvmount-alloc` crate, shared with the sidecar agent);
//! `main.rs` installs it with `#[global_allocator]`.

pub use kvmount_alloc::ZeroingAllocator;
