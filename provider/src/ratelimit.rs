//! Client-side limits on Key Vault traffic: a token bucket per vault (`--vault-qps`,
//! `--vault-burst`) applied to every HTTP try the SDK makes (its own retries included), and
//! request metrics by vault, operation and status. Installed as an SDK per-try policy.
//!
//! The defaults are derived from Key Vault's service limit, so the arithmetic can be checked:
//! - `--vault-burst` [`DEFAULT_VAULT_BURST`] = 401: the Key Vault requests of the first mount
//!   of the largest class the daemon accepts ([`LARGEST_FIRST_MOUNT`]: 200 files, each a
//!   history slot costing a version-list page and a GET, plus the one 401 challenge that opens
//!   the vault's connection), so no accepted class waits on this limiter on its first mount.
//! - `--vault-qps` [`DEFAULT_VAULT_QPS`] = 4,000 / 10 s / 20 = 20 per second: the sustained
//!   ceilings of [`NODES_SHARING_A_VAULT`] (20) nodes together make the vault's limit.
//! - One node's worst 10 s window is then 401 + 10 x 20 = 601 requests, 15% of the vault's
//!   4,000 ([`node_worst_window`]); its ceiling at a 2-minute rotation interval is
//!   20 x 120 = 2,400 objects in use per vault.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use kvmount_vault::client::next_policy;

use kvmount_vault::params::MAX_SLOTS;

use crate::metrics::Metrics;

/// Key Vault's service limit: GET (and other secret) transactions per vault per 10 s.
pub const KEY_VAULT_GETS_PER_10S: u32 = 4_000;

/// How many nodes may each read one vault at the sustained ceiling (`--vault-qps`) before
/// they reach its limit together: what the default `--vault-qps` is derived from.
pub const NODES_SHARING_A_VAULT: u32 = 20;

/// Key Vault requests of a first mount of `slots` files, of which `history` are version-history
/// slots: a GET per file, a version-list page per history slot (one page holds 25 versions;
/// an object with more versions costs a page per 25), and the one 401 challenge that opens
/// the vault's connection for a new identity.
pub const fn first_mount_requests(slots: usize, history: usize) -> usize {
    slots + history + 1
}

/// The most Key Vault requests the first mount of any class the daemon accepts makes: every
/// one of [`MAX_SLOTS`] files a history slot (e.g. 100 objects with `objectVersionHistory: 2`,
/// or 4 with 50). Without history, [`MAX_OBJECTS`](kvmount_vault::params::MAX_OBJECTS)
/// objects cost 101.
pub const LARGEST_FIRST_MOUNT: usize = first_mount_requests(MAX_SLOTS, MAX_SLOTS);

/// Default `--vault-burst`: the largest first mount, so none waits on this limiter.
pub const DEFAULT_VAULT_BURST: u32 = LARGEST_FIRST_MOUNT as u32;

/// Default `--vault-qps`: the vault's limit shared evenly by [`NODES_SHARING_A_VAULT`] nodes.
pub const DEFAULT_VAULT_QPS: f64 =
    KEY_VAULT_GETS_PER_10S as f64 / 10.0 / NODES_SHARING_A_VAULT as f64;

/// The most requests one node sends one vault in any 10 s: a full burst, then 10 s of refill.
pub fn node_worst_window(qps: f64, burst: u32) -> f64 {
    f64::from(burst) + 10.0 * qps
}

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

/// Makes the per-vault policy of the daemon's vault clients.
pub struct VaultPolicies {
    /// The shared limiter.
    pub limiter: Arc<RateLimiter>,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
}

impl VaultPolicies {
    /// The policy every HTTP try to `vault` passes (the SDK's own retries included).
    pub fn policy(&self, vault: &str) -> Arc<dyn Policy> {
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
    use kvmount_vault::params::MAX_OBJECTS;

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

    /// The requests of a class's first mount, from its parsed `objects` parameter.
    fn class_requests(objects: &str) -> usize {
        let specs = kvmount_vault::params::parse_objects(objects).expect("an accepted class");
        let history = specs.iter().filter(|s| s.history.is_some()).count();
        first_mount_requests(specs.len(), history)
    }

    fn class(objects: usize, history: usize) -> String {
        let mut yaml = String::from("array:\n");
        for i in 0..objects {
            yaml.push_str(&format!(
                "  - |\n    objectName: s{i}\n    objectType: secret\n"
            ));
            if history > 1 {
                yaml.push_str(&format!("    objectVersionHistory: {history}\n"));
            }
        }
        yaml
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_burst_covers_every_accepted_class() {
        // The largest classes the daemon accepts: the most objects, the most files with the
        // most list calls, and the longest histories.
        for (objects, history) in [(MAX_OBJECTS, 1), (MAX_OBJECTS, 2), (4, 50), (1, 50)] {
            let requests = class_requests(&class(objects, history));
            assert!(requests <= LARGEST_FIRST_MOUNT, "{objects} x {history}");
            // The limiter lets all of them go at once, from a fresh bucket.
            let limiter = RateLimiter::new(DEFAULT_VAULT_QPS, DEFAULT_VAULT_BURST);
            for _ in 0..requests {
                assert!(limiter.reserve("v").is_zero(), "{objects} x {history}");
            }
        }
        assert_eq!(class_requests(&class(MAX_OBJECTS, 2)), 401);
        assert!(kvmount_vault::params::parse_objects(&class(MAX_OBJECTS + 1, 1)).is_err());
        assert!(kvmount_vault::params::parse_objects(&class(MAX_OBJECTS, 3)).is_err());
        assert_eq!((DEFAULT_VAULT_BURST, DEFAULT_VAULT_QPS), (401, 20.0));
        // One node stays far under the vault's limit: 601 of 4,000 in its worst 10 s.
        let worst = node_worst_window(DEFAULT_VAULT_QPS, DEFAULT_VAULT_BURST);
        assert_eq!(worst, 601.0);
        assert!(worst / f64::from(KEY_VAULT_GETS_PER_10S) < 0.151);
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
