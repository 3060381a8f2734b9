//! The node cache: one rendered object per (vault, identity, object, version, rendering),
//! shared by every volume on the node that needs it, fetched once however many pods ask at the
//! same time, and erased as soon as the last volume that uses it is unpublished.
//!
//! A pod is served from the cache only after its own credentials produced a valid token for
//! the identity in the key: the identity is part of the key, so a pod whose identity may not
//! read an object never reaches another identity's entry.
//!
//! - [`key`]: what makes two objects one entry (typed, built from the parsed parameters);
//! - [`identity`]: credential proofs and one set of clients per identity, the only user of
//!   [`connect`] (the way to Key Vault, a trait so proofs are unit-tested without Entra ID;
//!   the daemon's is `crate::access`);
//! - [`entries`]: the shared entries, their users, erase and idle sweep, reading through a
//!   [`entries::Reader`];
//! - [`rotation`]: one refresh pass, revocation;
//! - [`config`]: tuning, counters, the lock helper;
//! - [`error`]: `FetchError`, `RotationError`; `jitter`: read spreading and backoff.

pub mod config;
pub mod connect;
pub mod entries;
pub mod error;
pub mod identity;
mod jitter;
pub mod key;
pub mod rotation;

#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvmount_vault::client::VaultClient;
use kvmount_vault::fetch::scrub_list;
use kvmount_vault::{
    FetchedObject, MountParams, ObjectError, ObjectSpec, RenderedObject, VaultError, fetch_object,
    rendered_object,
};
use tokio::time::Instant;

pub use config::{CacheConfig, CacheCounters};
pub use connect::Connect;
use entries::{Entries, Erased, Reader};
pub use error::{FetchError, RotationError};
use identity::{Access, Identities};
pub use key::{IdentityKey, ObjectKey};
pub use rotation::RotationReport;

/// The node cache.
pub struct NodeCache {
    identities: Identities,
    entries: Entries,
    /// Counters.
    pub counters: Arc<CacheCounters>,
}

/// Reads with one identity's clients, scrubbing `scrub` from errors.
struct ClientReader<'a> {
    client: Arc<VaultClient>,
    scrub: &'a [&'a str],
}

#[async_trait::async_trait]
impl Reader for ClientReader<'_> {
    async fn read(&self, spec: &ObjectSpec) -> Result<FetchedObject, VaultError> {
        fetch_object(&self.client, spec, self.scrub).await
    }
}

impl NodeCache {
    /// An empty cache that reads through `connector`.
    pub fn new(connector: impl Connect + 'static, config: CacheConfig) -> Self {
        let counters = Arc::new(CacheCounters::default());
        Self {
            identities: Identities::new(Box::new(connector)),
            entries: Entries::new(config, Arc::clone(&counters)),
            counters,
        }
    }

    /// [`Self::fetch`] within `deadline`: the one fetch rule of both entry points (the
    /// provider API's Mount and the CSI publish, `--mount-timeout-seconds`).
    pub async fn fetch_within(
        &self,
        params: &MountParams,
        deadline: Duration,
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), FetchError> {
        tokio::time::timeout(deadline, self.fetch(params))
            .await
            .map_err(|_| FetchError::Deadline(deadline))?
            .map_err(FetchError::Object)
    }

    /// Renders every object of `params` once the pod's own credentials proved valid for its
    /// identity, from the cache where fresh, else from Key Vault (one read per entry however
    /// many callers wait). All or nothing. Returns the objects and the keys they came from.
    ///
    /// For the first pod of an identity the proof and the reads start together: the new
    /// clients read with this pod's own credential, so every read waits for a token and their
    /// token requests join the proof's (one exchange at Entra ID); bad credentials get no
    /// token and read nothing. Nothing is returned, and the clients are not kept, unless the
    /// proof holds.
    pub async fn fetch(
        &self,
        params: &MountParams,
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), ObjectError> {
        let vault_failure = |error| ObjectError::of_vault(params, error);
        let scrub = scrub_list(&params.auth);
        let new = match self
            .identities
            .access(params, &scrub)
            .await
            .map_err(vault_failure)?
        {
            Access::Known(client) => return self.read_all(params, client, &scrub).await,
            Access::New(new) => new,
        };
        let (valid_until, read) = {
            let proof = self.identities.prove_new(params, &new, &scrub);
            let read = self.read_all(params, Arc::clone(&new.client), &scrub);
            tokio::pin!(proof, read);
            tokio::select! {
                // The proof goes first, so its token request is the one the reads' joins.
                biased;
                // A failed proof ends the publish at once.
                proof = &mut proof => (proof.map_err(vault_failure)?, read.await?),
                // So does a failed read: it failed before any token, or Key Vault answered a
                // token of this pod's own credential. Reads that succeed wait for the proof
                // (some may have been cache hits).
                read = &mut read => (proof.await.map_err(vault_failure)?, read?),
            }
        };
        self.identities.keep_new(params, new, valid_until);
        Ok(read)
    }

    /// Every object of `params` through `client`, in the class's order. Callers return the
    /// result only to a pod whose credentials are proved.
    async fn read_all(
        &self,
        params: &MountParams,
        client: Arc<VaultClient>,
        scrub: &[&str],
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), ObjectError> {
        let reader = ClientReader { client, scrub };
        let lookups = params.objects.iter().map(|spec| {
            let reader = &reader;
            async move {
                let render =
                    |object: &FetchedObject| rendered_object(spec, object, params.default_mode);
                let (key, rendered) = self
                    .entries
                    .get(ObjectKey::new(params, spec), spec, reader, render)
                    .await
                    .map_err(|error| ObjectError {
                        object: spec.id(),
                        error,
                    })?;
                Ok::<_, ObjectError>((rendered, key))
            }
        });
        let results = futures::future::try_join_all(lookups).await?;
        Ok(results.into_iter().unzip())
    }

    /// Records that `volume` (a target path) uses `keys`, replacing what it used before.
    pub fn retain(&self, volume: &str, keys: Vec<ObjectKey>) {
        let erased = self.entries.retain(volume, keys);
        self.after_erase(erased);
    }

    /// `volume` is gone: entries no other volume uses are erased now. Returns how many.
    pub fn release(&self, volume: &str) -> usize {
        let erased = self.entries.release(volume);
        self.after_erase(erased)
    }

    /// Erases entries that no volume uses and that were idle longer than the idle TTL, and
    /// credentials idle that long. Returns how many entries were erased.
    pub fn sweep(&self) -> usize {
        let erased = self.entries.sweep();
        self.identities.sweep(self.entries.idle_ttl());
        self.after_erase(erased)
    }

    /// Closes the erased entries' vaults and forgets identities left without entries.
    fn after_erase(&self, erased: Erased) -> usize {
        let live = self.entries.live_identities();
        self.identities.close_vaults(erased.vaults, &live);
        erased.count
    }

    /// The cached value of `key`, if any (for rewriting volumes after a rotation).
    pub async fn peek(&self, key: &ObjectKey) -> Option<FetchedObject> {
        let slot = self.entries.slot(key)?;
        let value = slot.value.lock().await;
        value.as_ref().map(|c| c.object.clone())
    }

    /// The cached version of `key` without waiting: `None` when there is no value or a read
    /// holds the entry right now.
    pub fn cached_version(&self, key: &ObjectKey) -> Option<String> {
        let slot = self.entries.slot(key)?;
        let value = slot.value.try_lock().ok()?;
        value.as_ref().map(|c| c.object.version.clone())
    }

    /// The last rotation error of `key`, if its last read failed.
    pub fn last_error(&self, key: &ObjectKey) -> Option<RotationError> {
        self.entries.slot(key)?.users().last_error.clone()
    }

    /// One rotation pass (see [`rotation`]): every entry in use and due is read once with
    /// the clients of its identity, whose credential is the newest proved one.
    pub async fn rotate(&self, interval: Duration) -> RotationReport {
        rotation::pass(&self.entries, interval, |identity| {
            let client = self.identities.client_of(identity)?;
            Some(Box::new(ClientReader { client, scrub: &[] }) as Box<dyn Reader>)
        })
        .await
    }

    /// For each object the cache holds (or held until a revocation) a good value of: its vault,
    /// `type/name`, and the time since the last good read; entries of one object for several
    /// identities, versions or renderings count once, with the oldest read.
    pub fn refresh_ages(&self) -> Vec<(String, String, Duration)> {
        let now = Instant::now();
        let mut ages: HashMap<(String, String), Duration> = HashMap::new();
        for (key, slot) in self.entries.all() {
            let Some(refreshed) = slot.users().refreshed else {
                continue;
            };
            let age = now.saturating_duration_since(refreshed);
            let oldest = ages.entry((key.vault().to_owned(), key.id())).or_default();
            *oldest = (*oldest).max(age);
        }
        let mut ages: Vec<_> = ages.into_iter().map(|((v, o), age)| (v, o, age)).collect();
        ages.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        ages
    }

    /// Number of entries (with or without a value).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of volumes registered.
    pub fn volume_count(&self) -> usize {
        self.entries.volume_count()
    }

    #[cfg(test)]
    fn interned(&self, key: ObjectKey) -> ObjectKey {
        self.entries.interned(key).0
    }
}
