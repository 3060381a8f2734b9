//! The cache's tuning and counters, and the lock helper its parts share.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Tuning of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// An entry for the newest version is refetched when it is older than this (the rotation
    /// interval). Pinned versions are never refetched.
    pub refresh_after: Duration,
    /// Entries that no published volume uses (the upstream-driver path) are erased after this
    /// long without use.
    pub idle_ttl: Duration,
}

/// Counters for tests, status and metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Objects served from the cache.
    pub hits: AtomicU64,
    /// Objects read from Key Vault.
    pub misses: AtomicU64,
    /// Entries erased.
    pub erased: AtomicU64,
}

/// Locks `m`; a panic elsewhere while it was held leaves data that is still whole (every
/// change under these locks is one insert, remove or field write).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
