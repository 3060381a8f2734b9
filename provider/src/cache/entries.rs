//! The shared entries: one rendered object per [`ObjectKey`], read once however many callers
//! wait, used by volumes (use counts), erased when the last volume that uses it is released or
//! after the idle time. Reads go through a [`Reader`], so this is tested with a fake one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvmount_vault::{FetchedObject, ObjectSpec, VaultError};
use tokio::time::Instant;

use super::config::{CacheConfig, CacheCounters, lock};
use super::error::RotationError;
use super::jitter::first_check;
use super::key::{IdentityKey, ObjectKey};

/// What reads one object from Key Vault (a client of the entry's identity in production).
#[async_trait::async_trait]
pub trait Reader: Send + Sync {
    /// Reads and renders `spec`.
    async fn read(&self, spec: &ObjectSpec) -> Result<FetchedObject, VaultError>;
}

#[async_trait::async_trait]
impl<T: Reader + ?Sized> Reader for &T {
    async fn read(&self, spec: &ObjectSpec) -> Result<FetchedObject, VaultError> {
        (**self).read(spec).await
    }
}

/// A fetched value and when it was read.
pub(super) struct Cached {
    pub(super) object: FetchedObject,
    pub(super) fetched_at: Instant,
}

/// One entry. `value` is locked across the read, so concurrent requests wait for one read.
pub(super) struct Slot {
    pub(super) value: tokio::sync::Mutex<Option<Cached>>,
    users: Mutex<Users>,
}

/// Who uses an entry, and its rotation state.
pub(super) struct Users {
    pub(super) volumes: HashSet<Arc<str>>,
    pub(super) last_used: Instant,
    /// Consecutive failed rotation reads, and when to try again.
    pub(super) failures: u32,
    pub(super) next_check: Instant,
    pub(super) last_error: Option<RotationError>,
    /// When the value was last read from Key Vault successfully; kept when a revoked value is
    /// erased (the volumes still hold it), so its age keeps growing.
    pub(super) refreshed: Option<Instant>,
}

impl Slot {
    fn new() -> Self {
        Self {
            value: tokio::sync::Mutex::new(None),
            users: Mutex::new(Users {
                volumes: HashSet::new(),
                last_used: Instant::now(),
                failures: 0,
                next_check: Instant::now(),
                last_error: None,
                refreshed: None,
            }),
        }
    }

    pub(super) fn users(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Entries erased by one call: how many, and the vaults and identities they leave.
#[derive(Debug, Default)]
pub(super) struct Erased {
    /// Entries erased.
    pub(super) count: usize,
    /// The vaults of the erased entries (their connections are closed).
    pub(super) vaults: HashSet<String>,
}

/// The entries and the volumes that use them.
pub(super) struct Entries {
    config: CacheConfig,
    slots: Mutex<HashMap<ObjectKey, Arc<Slot>>>,
    volumes: Mutex<HashMap<Arc<str>, Vec<ObjectKey>>>,
    pub(super) counters: Arc<CacheCounters>,
}

impl Entries {
    pub(super) fn new(config: CacheConfig, counters: Arc<CacheCounters>) -> Self {
        Self {
            config,
            slots: Mutex::default(),
            volumes: Mutex::default(),
            counters,
        }
    }

    /// The entry of `key`, created when there is none, and the cache's own copy of the key.
    pub(super) fn interned(&self, key: ObjectKey) -> (ObjectKey, Arc<Slot>) {
        let mut slots = lock(&self.slots);
        if let Some((kept, slot)) = slots.get_key_value(&key) {
            return (kept.clone(), Arc::clone(slot));
        }
        let slot = Arc::new(Slot::new());
        slots.insert(key.clone(), Arc::clone(&slot));
        (key, slot)
    }

    /// The value of `key` handed to `use_value`: from the entry when fresh, else read once
    /// through `reader` (callers for the same key wait for that one read). Returns the cache's
    /// copy of the key with what `use_value` made.
    pub(super) async fn get<R>(
        &self,
        key: ObjectKey,
        spec: &ObjectSpec,
        reader: &dyn Reader,
        use_value: impl FnOnce(&FetchedObject) -> R,
    ) -> Result<(ObjectKey, R), VaultError> {
        let (key, slot) = self.interned(key);
        let mut value = slot.value.lock().await;
        let fresh = value.as_ref().is_some_and(|c| {
            // The rotation loop keeps entries in use fresh (pinned versions too: they can be
            // revoked); a read happens here only when that fell behind (a failing vault, a
            // recovered entry).
            c.fetched_at.elapsed() < self.config.refresh_after * 2
        });
        if fresh {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            let object = reader.read(spec).await?;
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            {
                let mut users = slot.users();
                users.next_check = first_check(Instant::now(), self.config.refresh_after);
                users.refreshed = Some(Instant::now());
            }
            tracing::info!(object = %key.id(), version = %object.version, vault = %key.vault(), "read from Key Vault");
            *value = Some(Cached {
                object,
                fetched_at: Instant::now(),
            });
        }
        slot.users().last_used = Instant::now();
        let made = value.as_ref().map(|cached| use_value(&cached.object));
        drop(value);
        let Some(made) = made else {
            // invariant: set just above or found fresh
            return Err(VaultError::new(
                kvmount_vault::ErrorKind::Internal,
                "cache entry vanished",
            ));
        };
        // Keep the slot in the map even if an erase raced with this read.
        lock(&self.slots).entry(key.clone()).or_insert(slot);
        Ok((key, made))
    }

    /// Records that `volume` (a target path) uses `keys`, replacing what it used before.
    /// Returns what the keys it no longer uses left erased.
    pub(super) fn retain(&self, volume: &str, keys: Vec<ObjectKey>) -> Erased {
        let volume: Arc<str> = Arc::from(volume);
        let previous = lock(&self.volumes).insert(Arc::clone(&volume), keys.clone());
        for key in &keys {
            self.interned(key.clone())
                .1
                .users()
                .volumes
                .insert(Arc::clone(&volume));
        }
        let stale: Vec<ObjectKey> = previous
            .unwrap_or_default()
            .into_iter()
            .filter(|k| !keys.contains(k))
            .collect();
        self.drop_users(&volume, &stale)
    }

    /// `volume` is gone: entries no other volume uses are erased now.
    pub(super) fn release(&self, volume: &str) -> Erased {
        let keys = lock(&self.volumes).remove(volume).unwrap_or_default();
        self.drop_users(volume, &keys)
    }

    fn drop_users(&self, volume: &str, keys: &[ObjectKey]) -> Erased {
        let mut erased = Erased::default();
        let mut slots = lock(&self.slots);
        for key in keys {
            let Some(slot) = slots.get(key) else { continue };
            let empty = {
                let mut users = slot.users();
                users.volumes.remove(volume);
                users.volumes.is_empty()
            };
            if empty {
                slots.remove(key);
                erased.vaults.insert(key.vault().to_owned());
                erased.count += 1;
                tracing::info!(object = %key.id(), vault = %key.vault(), "erased: no volume uses it any more");
            }
        }
        drop(slots);
        self.count_erased(&erased);
        erased
    }

    /// Erases entries that no volume uses and that were idle longer than the idle time.
    pub(super) fn sweep(&self) -> Erased {
        let ttl = self.config.idle_ttl;
        let mut erased = Erased::default();
        lock(&self.slots).retain(|key, slot| {
            let in_flight = slot.value.try_lock().is_err();
            let users = slot.users();
            let keep = in_flight || !users.volumes.is_empty() || users.last_used.elapsed() < ttl;
            if !keep {
                erased.vaults.insert(key.vault().to_owned());
                erased.count += 1;
                tracing::info!(object = %key.id(), vault = %key.vault(), "erased: idle");
            }
            keep
        });
        self.count_erased(&erased);
        erased
    }

    fn count_erased(&self, erased: &Erased) {
        self.counters
            .erased
            .fetch_add(erased.count as u64, Ordering::Relaxed);
    }

    /// The identities that still have entries.
    pub(super) fn live_identities(&self) -> HashSet<IdentityKey> {
        lock(&self.slots)
            .keys()
            .map(|k| k.identity.clone())
            .collect()
    }

    /// The entry of `key`, if there is one.
    pub(super) fn slot(&self, key: &ObjectKey) -> Option<Arc<Slot>> {
        lock(&self.slots).get(key).cloned()
    }

    /// Every entry (for rotation and metrics).
    pub(super) fn all(&self) -> Vec<(ObjectKey, Arc<Slot>)> {
        lock(&self.slots)
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect()
    }

    /// Entries now due for a rotation read: in use (by a volume, or by the upstream driver
    /// within the idle time), no read in flight, and past their next check.
    pub(super) fn due(&self) -> Vec<(ObjectKey, Arc<Slot>)> {
        let now = Instant::now();
        let idle_ttl = self.config.idle_ttl;
        lock(&self.slots)
            .iter()
            .filter(|(_, slot)| {
                // A read in flight (a publish holds the value) is not doubled.
                let Ok(value) = slot.value.try_lock() else {
                    return false;
                };
                let empty = value.is_none();
                drop(value);
                let users = slot.users();
                let wanted = if empty {
                    // Re-adopted after a restart: filled once the identity has a credential.
                    !users.volumes.is_empty()
                } else {
                    // Pinned versions too: their value never changes, but a version can be
                    // disabled, expire or be deleted, and access can be taken away.
                    !users.volumes.is_empty() || users.last_used.elapsed() < idle_ttl
                };
                wanted && users.next_check <= now
            })
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect()
    }

    /// Number of entries (with or without a value).
    pub(super) fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Number of volumes registered.
    pub(super) fn volume_count(&self) -> usize {
        lock(&self.volumes).len()
    }

    /// Counts a read made outside [`Self::get`] (rotation).
    pub(super) fn count_miss(&self) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// How long entries stay without use.
    pub(super) fn idle_ttl(&self) -> Duration {
        self.config.idle_ttl
    }
}
