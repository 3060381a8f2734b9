//! The node daemon's metrics: every name, type and label set it exports, registered once at
//! start in a `kvmount_telemetry::metrics` registry (which also encodes them and serves
//! `/metrics`, `/healthz`, `/readyz` on `--metrics-addr`).
//!
//! Labels are bounded and never secret: `path` (provider, csi), `outcome` (ok, error), `code`
//! (a gRPC code name, [`GRPC_CODES`]), vault and object names (not secrets: they are in the
//! classes), Key Vault `operation` (a fixed word) and HTTP `status`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvmount_telemetry::metrics::{
    Counter, Family, HistogramFamily, Registry, Scrape, buckets, collector, histogram_family,
};

use crate::cache::NodeCache;
use crate::grpc::registration::{Outcome, RegistrationState};
use crate::volumes::Volumes;

/// Every value the `code` label takes: the gRPC status code names (`OK` for a success).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Which entry point served a mount: the provider API's Mount or CSI NodePublishVolume.
#[derive(Debug, Clone, Copy)]
pub enum MountPath {
    /// `v1alpha1.CSIDriverProvider/Mount` (the upstream driver).
    Provider,
    /// `csi.v1.Node/NodePublishVolume` (standalone mode).
    Csi,
}

impl MountPath {
    fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Csi => "csi",
        }
    }
}

/// Most vault names the Key Vault request metrics name one by one: a class author chooses the
/// vault, so a node could be sent to any number of them over its life, and each name would
/// stay in these families (a histogram is 14 series per operation). Requests to vaults past
/// the first this many are counted under [`OTHER_VAULTS`].
pub const MAX_VAULT_LABELS: usize = 100;
/// The `vault` label of requests to vaults past [`MAX_VAULT_LABELS`] (no vault name has `_`).
pub const OTHER_VAULTS: &str = "_other";

type StaticLabels<const N: usize> = [(&'static str, &'static str); N];
/// `vault`, `operation`, `status`: the vault name is the one label value not fixed in code.
type RequestLabels = [(&'static str, String); 3];
type RequestLatencyLabels = [(&'static str, String); 2];

/// The metrics the daemon updates as it works (scrape-time values are in [`register_live`]).
#[derive(Debug)]
pub struct Metrics {
    mounts: Family<StaticLabels<3>, Counter>,
    mount_seconds: HistogramFamily<StaticLabels<1>>,
    keyvault_requests: Family<RequestLabels, Counter>,
    keyvault_request_seconds: HistogramFamily<RequestLatencyLabels>,
    rotation_checks: Family<StaticLabels<1>, Counter>,
    rotation_volume_updates: Family<StaticLabels<1>, Counter>,
    /// The vault names the request metrics name (at most [`MAX_VAULT_LABELS`]).
    vaults: Mutex<HashSet<String>>,
}

impl Metrics {
    /// Registers the daemon's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            mounts: Family::default(),
            mount_seconds: histogram_family(buckets::MOUNT),
            keyvault_requests: Family::default(),
            keyvault_request_seconds: histogram_family(buckets::KEYVAULT_REQUEST),
            rotation_checks: Family::default(),
            rotation_volume_updates: Family::default(),
            vaults: Mutex::default(),
        };
        registry.register(
            "kvmount_mounts",
            "Mount (path=provider) and NodePublishVolume (path=csi) calls, by outcome and gRPC code",
            metrics.mounts.clone(),
        );
        registry.register(
            "kvmount_mount_seconds",
            "Mount (path=provider) and NodePublishVolume (path=csi) latency, failures included",
            metrics.mount_seconds.clone(),
        );
        registry.register(
            "kvmount_keyvault_requests",
            "Key Vault HTTP requests (every try, challenges and retries included), by vault, operation and HTTP status (error: no answer)",
            metrics.keyvault_requests.clone(),
        );
        registry.register(
            "kvmount_keyvault_request_seconds",
            "Key Vault HTTP request latency (one try), by vault and operation",
            metrics.keyvault_request_seconds.clone(),
        );
        registry.register(
            "kvmount_rotation_checks",
            "Rotation reads of cached objects, by outcome (unchanged, changed, failed)",
            metrics.rotation_checks.clone(),
        );
        registry.register(
            "kvmount_rotation_volume_updates",
            "Volumes rewritten after a rotation, by outcome (ok, failed)",
            metrics.rotation_volume_updates.clone(),
        );
        // The fixed outcomes start at 0, so every series exists (and rate() works) from the
        // first scrape on.
        for outcome in ["unchanged", "changed", "failed"] {
            metrics
                .rotation_checks
                .get_or_create_owned(&[("outcome", outcome)]);
        }
        for outcome in ["ok", "failed"] {
            metrics
                .rotation_volume_updates
                .get_or_create_owned(&[("outcome", outcome)]);
        }
        metrics
    }

    /// One Mount or NodePublishVolume ended with gRPC `code` (one of [`GRPC_CODES`]).
    pub fn mount(&self, path: MountPath, code: &'static str, took: Duration) {
        debug_assert!(GRPC_CODES.contains(&code), "{code}");
        let outcome = if code == "OK" { "ok" } else { "error" };
        self.mounts
            .get_or_create(&[
                ("path", path.as_str()),
                ("outcome", outcome),
                ("code", code),
            ])
            .inc();
        self.mount_seconds
            .get_or_create(&[("path", path.as_str())])
            .observe(took.as_secs_f64());
    }

    /// One Key Vault HTTP try to `vault`; `status` is `None` when no answer came.
    pub fn keyvault_request(
        &self,
        vault: &str,
        operation: &'static str,
        status: Option<u16>,
        took: Duration,
    ) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        let vault = self.vault_label(vault);
        self.keyvault_requests
            .get_or_create(&[
                ("vault", vault.clone()),
                ("operation", operation.to_owned()),
                ("status", status),
            ])
            .inc();
        self.keyvault_request_seconds
            .get_or_create(&[("vault", vault), ("operation", operation.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// `vault` as the request metrics name it: itself while fewer than [`MAX_VAULT_LABELS`]
    /// vaults are named, else [`OTHER_VAULTS`].
    fn vault_label(&self, vault: &str) -> String {
        let mut vaults = self.vaults.lock().unwrap_or_else(PoisonError::into_inner);
        if vaults.contains(vault) {
            return vault.to_owned();
        }
        if vaults.len() < MAX_VAULT_LABELS {
            vaults.insert(vault.to_owned());
            return vault.to_owned();
        }
        OTHER_VAULTS.to_owned()
    }

    /// `n` rotation reads ended with `outcome` (`unchanged`, `changed`, `failed`).
    pub fn rotation_checks(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.rotation_checks
                .get_or_create(&[("outcome", outcome)])
                .inc_by(n as u64);
        }
    }

    /// `n` volumes were rewritten (`ok`) or could not be (`failed`) after a rotation.
    pub fn rotation_volume_updates(&self, outcome: &'static str, n: usize) {
        if n > 0 {
            self.rotation_volume_updates
                .get_or_create(&[("outcome", outcome)])
                .inc_by(n as u64);
        }
    }
}

/// Registers the values read at each scrape: the cache's counters and size, each cached
/// object's time since its last good read, the published volumes, the kubelet registration.
pub fn register_live(
    registry: &mut Registry,
    cache: Arc<NodeCache>,
    volumes: Option<Arc<Volumes>>,
    registration: Option<Arc<RegistrationState>>,
) {
    registry.register_collector(collector(move |scrape: &mut Scrape<'_>| {
        let counters = &cache.counters;
        scrape.counter(
            "kvmount_cache_hits",
            "Objects served from the node cache.",
            counters.hits.load(Ordering::Relaxed),
        );
        scrape.counter(
            "kvmount_cache_misses",
            "Objects read from Key Vault (publishes and rotation).",
            counters.misses.load(Ordering::Relaxed),
        );
        scrape.counter(
            "kvmount_cache_erased",
            "Cache entries erased (zeroed and dropped): at the last unpublish, after the idle time, or revoked.",
            counters.erased.load(Ordering::Relaxed),
        );
        scrape.gauge(
            "kvmount_cached_objects",
            "Objects held in the node cache.",
            cache.len() as i64,
        );
        // One series per object the cache holds a good value of (or held, until it is erased):
        // at most what the daemon's limits let the published volumes and the provider-mode
        // entries of the last idle time use, and gone with the entry; entries of one object
        // read by several identities or in several renderings are one series, the oldest.
        // A per-vault maximum alone would not say which object to look at, and a histogram
        // of ages cannot be alerted on per object; vault and object names are not secrets.
        scrape.gauges(
            "kvmount_object_refresh_age_seconds",
            "Seconds since the last good Key Vault read of each cached object (alert when it passes a few rotation intervals).",
            cache
                .refresh_ages()
                .into_iter()
                .map(|(vault, object, age)| ([("vault", vault), ("object", object)], age.as_secs_f64())),
        );
        if let Some(volumes) = &volumes {
            scrape.gauge(
                "kvmount_published_volumes",
                "Volumes published by the CSI node plugin.",
                volumes.list().len() as i64,
            );
        }
        if let Some(registration) = &registration {
            scrape.gauge(
                "kvmount_kubelet_registered",
                "1 once the kubelet has registered the CSI driver on the current socket.",
                i64::from(registration.outcome() == Outcome::Registered),
            );
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_labels_are_bounded() {
        let metrics = Metrics::register(&mut Registry::default());
        for n in 0..MAX_VAULT_LABELS {
            assert_eq!(metrics.vault_label(&format!("v{n}")), format!("v{n}"));
        }
        assert_eq!(metrics.vault_label("one-more"), OTHER_VAULTS);
        assert_eq!(
            metrics.vault_label("v0"),
            "v0",
            "a named vault keeps its name"
        );
        metrics.keyvault_request("one-more", "get", Some(200), Duration::from_millis(3));
        let other = [
            ("vault", OTHER_VAULTS.to_owned()),
            ("operation", "get".to_owned()),
            ("status", "200".to_owned()),
        ];
        assert_eq!(
            metrics.keyvault_requests.get(&other).map(|c| c.get()),
            Some(1)
        );
    }
}
