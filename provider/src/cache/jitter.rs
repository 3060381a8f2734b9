//! When to read again: jitter (so nodes and objects spread their reads) and the backoff of
//! failed rotation reads.

use std::time::Duration;

/// A pseudo-random number in 0..1000 (spreads nodes' and objects' reads; not for security).
fn noise() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_micros())
        .unwrap_or(0)
        % 1000
}

/// `d` plus or minus up to 10%.
pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + f64::from(noise()) / 5000.0)
}

/// `d` plus up to 10%.
pub(super) fn late_jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + f64::from(noise()) / 10_000.0)
}

/// The wait after `failures` consecutive failed reads (before jitter): 4 s, 8 s, 16 s, ...
/// never more than `interval`.
pub(super) fn backoff(failures: u32, interval: Duration) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << failures.min(10))
        .min(interval)
}
