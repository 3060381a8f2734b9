//! The rotation loop: at each tick a rotation pass of the node cache (each entry decides
//! whether it is due: its interval, or its backoff), then the published volumes are brought up
//! to date with it, and the counts go to the metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::NodeCache;
use crate::metrics::Metrics;
use crate::volumes::Volumes;

/// Runs rotation passes every `interval / 10` (100 ms to 5 s) until `stop` completes.
pub async fn run(
    cache: Arc<NodeCache>,
    volumes: Option<Arc<Volumes>>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(
        (interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(5)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Volumes that could not be brought up to date in the last pass (busy, or a failed
    // write): compared with the cache again at the next tick.
    let mut pending = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return Ok(()),
        }
        let report = cache.rotate(interval).await;
        if report.checked == 0 && pending == 0 {
            continue;
        }
        let unchanged = report.checked - report.changed.len() - report.failed.len();
        metrics.rotation_checks("unchanged", unchanged);
        metrics.rotation_checks("changed", report.changed.len());
        metrics.rotation_checks("failed", report.failed.len());
        if let Some(volumes) = &volumes {
            let (rewritten, failed, still_pending) = volumes.apply_rotation(&report.failed).await;
            pending = still_pending;
            metrics.rotation_volume_updates("ok", rewritten);
            metrics.rotation_volume_updates("failed", failed);
        }
        crate::hardening::scrub_stack();
    }
}
