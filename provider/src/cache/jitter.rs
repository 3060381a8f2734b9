//! When to read again: the rotation phase of each entry (so nodes and objects that mounted
//! together spread their reads evenly over the interval, and the vault sees one read per
//! object per interval on average) and the backoff of failed rotation reads.

use std::time::Duration;

use tokio::time::Instant;

/// A pseudo-random number in 0..1 (spreads nodes' and objects' reads; not for security).
fn noise() -> f64 {
    rand::random::<f64>()
}

/// `d` plus or minus up to 10%.
pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + noise() / 5.0)
}

/// The first rotation check of an entry read at `now`: `interval` times a uniform 0.1..1.0,
/// so entries read together (a node's mount, a whole cluster's rollout) get phases spread
/// evenly over the last nine tenths of one interval, and a change in the vault reaches a volume
/// within one interval of it, the first interval included (not at once: a read just made is
/// not made again). With the first tenth empty, the rest of the interval sees about 1.11x the
/// mean rate (`bench/run.sh cluster-budget`); phases over the whole interval would cost a
/// second read, soon after the first, of a tenth of the entries, in the mount wave where
/// requests peak anyway.
pub(super) fn first_check(now: Instant, interval: Duration) -> Instant {
    first_check_at(now, interval, noise())
}

fn first_check_at(now: Instant, interval: Duration, u: f64) -> Instant {
    now + interval.mul_f64(0.1 + 0.9 * u)
}

/// The check after a successful rotation read that was due at `due` and ended at `now`: one
/// interval after `due`, keeping the entry's phase, so a read that waited for the rotation
/// loop's tick does not push the next ones later (one read per interval on average, not
/// slightly less). A read that ended more than an interval late starts from `now`.
pub(super) fn next_check(due: Instant, now: Instant, interval: Duration) -> Instant {
    let next = due + interval;
    if next > now { next } else { now + interval }
}

/// The wait after `failures` consecutive failed reads (before jitter): 4 s, 8 s, 16 s, ...
/// never more than `interval`.
pub(super) fn backoff(failures: u32, interval: Duration) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << failures.min(10))
        .min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_spread_over_one_interval() {
        let (now, interval) = (Instant::now(), Duration::from_secs(120));
        assert_eq!(first_check_at(now, interval, 0.0), now + interval / 10);
        assert_eq!(
            first_check_at(now, interval, 0.5),
            now + interval * 55 / 100
        );
        assert_eq!(first_check_at(now, interval, 1.0), now + interval);
        let later = first_check(now, interval);
        assert!(later >= now + interval / 10 && later <= now + interval);
    }

    #[test]
    fn rotation_keeps_its_phase() {
        let (due, interval) = (Instant::now(), Duration::from_secs(120));
        // Read at the loop's next tick, 5 s late: the next check is still due + interval.
        let tick = Duration::from_secs(5);
        assert_eq!(next_check(due, due + tick, interval), due + interval);
        // Fell more than an interval behind: from now.
        let late = due + interval * 2;
        assert_eq!(next_check(due, late, interval), late + interval);
    }
}
