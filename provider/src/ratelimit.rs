//! Client-side limits on Key Vault traffic: a token bucket per vault (`--vault-qps`,
//! `--vault-burst`) applied to every HTTP try the SDK makes (its own retries included), and
//! request metrics by vault, operation and status. Installed as an SDK per-try policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use kvmount_vault::client::{VaultPolicyFactory, next_policy};

use crate::metrics::Metrics;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets, one per vault.
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `qps` requests per second per vault on average, bursts of up to `burst`.
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            qps: qps.max(0.001),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// How long to wait before a request to `vault` may go; takes the token when it is 0.
    fn reserve(&self, vault: &str) -> Duration {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let bucket = buckets.entry(vault.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * self.qps;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - bucket.tokens) / self.qps)
        }
    }

    /// Waits until a request to `vault` may go.
    pub async fn acquire(&self, vault: &str) {
        loop {
            let wait = self.reserve(vault);
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// The operation a Key Vault request performs, for metrics: `get`, `list_versions`, `list`, ...
fn operation(request: &Request) -> &'static str {
    let path = request.url().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method().as_str(), segments.as_slice()) {
        ("GET", [_, _, "versions"]) => "list_versions",
        ("GET", [_]) => "list",
        ("GET", _) => "get",
        ("PUT", _) => "set",
        ("DELETE", _) => "delete",
        _ => "other",
    }
}

/// The per-try policy of one vault.
#[derive(Debug)]
struct VaultPolicy {
    vault: String,
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("qps", &self.qps)
            .field("burst", &self.burst)
            .finish()
    }
}

#[async_trait::async_trait]
impl Policy for VaultPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let (first, rest) = next_policy("vault", next)?;
        // Every try counts, a 401 challenge included: it is not a Key Vault transaction
        // against the service limit, but it is still traffic.
        self.limiter.acquire(&self.vault).await;
        let operation = operation(request);
        let started = Instant::now();
        let result = first.send(ctx, request, rest).await;
        let status = result.as_ref().ok().map(|r| u16::from(r.status()));
        self.metrics
            .keyvault_request(&self.vault, operation, status, started.elapsed());
        result
    }
}

/// Makes the per-vault policy for the connector.
pub struct VaultPolicies {
    /// The shared limiter.
    pub limiter: Arc<RateLimiter>,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
}

impl VaultPolicyFactory for VaultPolicies {
    fn policy(&self, vault: &str) -> Arc<dyn Policy> {
        Arc::new(VaultPolicy {
            vault: vault.to_owned(),
            limiter: Arc::clone(&self.limiter),
            metrics: Arc::clone(&self.metrics),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let limiter = RateLimiter::new(10.0, 3);
        assert!(limiter.reserve("a").is_zero());
        assert!(limiter.reserve("a").is_zero());
        assert!(limiter.reserve("a").is_zero());
        let wait = limiter.reserve("a");
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limiter.reserve("b").is_zero(), "buckets are per vault");
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_paces_requests() {
        let limiter = RateLimiter::new(5.0, 1);
        let start = tokio::time::Instant::now();
        for _ in 0..6 {
            limiter.acquire("v").await;
        }
        // 1 immediately, then 5 more at 5 per second: about 1 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    }
}
