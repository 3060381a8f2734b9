//! The node cache: one rendered object per (vault, identity, object, version, rendering),
//! shared by every volume on the node that needs it, fetched once however many pods ask at the
//! same time, and erased as soon as the last volume that uses it is unpublished.
//!
//! A pod is served from the cache only after its own credentials produced a valid token for
//! the identity in the key: the identity is part of the key, so a pod whose identity may not
//! read an object never reaches another identity's entry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use futures::future::try_join_all;
use kvmount_vault::client::check_credential;
use kvmount_vault::fetch::scrub_list;
use kvmount_vault::params::{Auth, ObjectEncoding, ObjectFormat, ObjectType};
use kvmount_vault::{
    Connector, FetchedObject, MountParams, ObjectError, ObjectSpec, RenderedObject, VaultError,
    fetch_object, rendered_object,
};
use serde::{Deserialize, Serialize};

/// What makes two objects the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Vault name.
    pub vault: String,
    /// Entra tenant.
    pub tenant: String,
    /// Entra identity (client ID) whose token read the object.
    pub client_id: String,
    /// `secret`, `key`, `cert`.
    pub object_type: String,
    /// Object name.
    pub name: String,
    /// Pinned version, or `None` for the newest.
    pub version: Option<String>,
    /// Rendering choices that change the bytes.
    pub encoding: String,
    /// Rendering choices that change the bytes.
    pub format: String,
    /// Everything else that changes the bytes (version-history slot, side files); empty for
    /// a plain object.
    #[serde(default)]
    pub variant: String,
}

impl ObjectKey {
    /// The key of `spec` read by `params`'s identity.
    pub fn new(params: &MountParams, spec: &ObjectSpec) -> Self {
        Self {
            vault: params.keyvault_name.to_ascii_lowercase(),
            tenant: params.tenant_id.to_ascii_lowercase(),
            client_id: params.auth.client_id().to_ascii_lowercase(),
            object_type: spec.object_type.as_str().to_owned(),
            name: spec.name.to_ascii_lowercase(),
            version: spec.version.clone(),
            encoding: encoding_name(spec.encoding).to_owned(),
            format: format_name(spec.format).to_owned(),
            variant: spec.cache_variant(),
        }
    }

    /// `secret/name` for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.object_type, self.name)
    }
}

fn encoding_name(e: ObjectEncoding) -> &'static str {
    match e {
        ObjectEncoding::Utf8 => "utf-8",
        ObjectEncoding::Base64 => "base64",
        ObjectEncoding::Hex => "hex",
    }
}

fn format_name(f: ObjectFormat) -> &'static str {
    match f {
        ObjectFormat::Pem => "pem",
        ObjectFormat::Pfx => "pfx",
    }
}

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

/// A fetched value and when it was read.
struct Cached {
    object: FetchedObject,
    fetched_at: Instant,
}

/// One entry. `value` is locked across the fetch, so concurrent requests wait for one read.
struct Slot {
    value: tokio::sync::Mutex<Option<Cached>>,
    users: Mutex<Users>,
}

struct Users {
    volumes: HashSet<String>,
    last_used: Instant,
}

impl Slot {
    fn new() -> Self {
        Self {
            value: tokio::sync::Mutex::new(None),
            users: Mutex::new(Users {
                volumes: HashSet::new(),
                last_used: Instant::now(),
            }),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A credential and when it was last used.
struct CredentialEntry {
    credential: Arc<dyn TokenCredential>,
    last_used: Instant,
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

/// The node cache.
pub struct NodeCache {
    connector: Connector,
    config: CacheConfig,
    slots: Mutex<HashMap<ObjectKey, Arc<Slot>>>,
    volumes: Mutex<HashMap<String, Vec<ObjectKey>>>,
    credentials: Mutex<HashMap<[u8; 32], CredentialEntry>>,
    /// Counters.
    pub counters: CacheCounters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A digest of everything that makes a credential, so equal credentials share one SDK
/// credential object (and its token cache) without the cache keeping the secret itself.
fn fingerprint(params: &MountParams) -> [u8; 32] {
    let (tenant, auth) = (&params.tenant_id, &params.auth);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    if let Some(cloud) = &params.cloud {
        ctx.update(cloud.authority_host.as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(tenant.as_bytes());
    ctx.update(&[0]);
    ctx.update(auth.mode().as_bytes());
    ctx.update(&[0]);
    ctx.update(auth.client_id().as_bytes());
    ctx.update(&[0]);
    let material = match auth {
        Auth::WorkloadIdentity { token, .. } => token.expose(),
        Auth::ServicePrincipal { client_secret, .. } => client_secret.expose(),
        Auth::ManagedIdentity { .. } => "",
    };
    ctx.update(material.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl NodeCache {
    /// An empty cache that reads through `connector`.
    pub fn new(connector: Connector, config: CacheConfig) -> Self {
        Self {
            connector,
            config,
            slots: Mutex::default(),
            volumes: Mutex::default(),
            credentials: Mutex::default(),
            counters: CacheCounters::default(),
        }
    }

    /// The SDK credential for these credentials, shared while they are in use.
    fn credential(&self, params: &MountParams) -> Result<Arc<dyn TokenCredential>, VaultError> {
        let key = fingerprint(params);
        let mut credentials = lock(&self.credentials);
        if let Some(entry) = credentials.get_mut(&key) {
            entry.last_used = Instant::now();
            return Ok(Arc::clone(&entry.credential));
        }
        let credential = self.connector.credential_for(params)?;
        credentials.insert(
            key,
            CredentialEntry {
                credential: Arc::clone(&credential),
                last_used: Instant::now(),
            },
        );
        Ok(credential)
    }

    fn slot(&self, key: &ObjectKey) -> Arc<Slot> {
        Arc::clone(
            lock(&self.slots)
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Slot::new())),
        )
    }

    /// Renders every object of `params`: after the pod's own credentials proved valid for its
    /// identity, from the cache where fresh, else from Key Vault (one read per entry however
    /// many callers wait). All or nothing. Returns the objects and the keys they came from.
    pub async fn fetch(
        &self,
        params: &MountParams,
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), ObjectError> {
        let vault_failure = |error: VaultError| ObjectError {
            object: format!("vault {}", params.keyvault_name),
            error,
        };
        let scrub = scrub_list(&params.auth);
        let credential = self.credential(params).map_err(vault_failure)?;
        check_credential(&credential, &self.connector.token_scope_for(params), &scrub)
            .await
            .map_err(vault_failure)?;
        let client = self
            .connector
            .vault_client_for(params, credential)
            .map_err(vault_failure)?;
        let lookups = params.objects.iter().map(|spec| {
            let client = &client;
            let scrub = &scrub;
            async move {
                let key = ObjectKey::new(params, spec);
                let slot = self.slot(&key);
                let mut value = slot.value.lock().await;
                let fresh = value.as_ref().is_some_and(|c| {
                    spec.version.is_some() || c.fetched_at.elapsed() < self.config.refresh_after
                });
                if fresh {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                } else {
                    let object = fetch_object(client, spec, scrub)
                        .await
                        .map_err(|error| ObjectError {
                            object: spec.id(),
                            error,
                        })?;
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(object = %spec.id(), version = %object.version, vault = %key.vault, "read from Key Vault");
                    *value = Some(Cached {
                        object,
                        fetched_at: Instant::now(),
                    });
                }
                slot.users().last_used = Instant::now();
                let Some(cached) = value.as_ref() else {
                    // invariant: set just above or found fresh
                    return Err(ObjectError {
                        object: spec.id(),
                        error: VaultError::new(kvmount_vault::ErrorKind::Internal, "cache entry vanished"),
                    });
                };
                let rendered = rendered_object(spec, &cached.object, params.default_mode);
                drop(value);
                // Keep the slot in the map even if an erase raced with this read.
                lock(&self.slots).entry(key.clone()).or_insert(slot);
                Ok((rendered, key))
            }
        });
        let results = try_join_all(lookups).await?;
        Ok(results.into_iter().unzip())
    }

    /// Records that `volume` (a target path) uses `keys`, replacing what it used before.
    pub fn retain(&self, volume: &str, keys: Vec<ObjectKey>) {
        let previous = lock(&self.volumes).insert(volume.to_owned(), keys.clone());
        for key in &keys {
            self.slot(key).users().volumes.insert(volume.to_owned());
        }
        if let Some(previous) = previous {
            let stale: Vec<ObjectKey> =
                previous.into_iter().filter(|k| !keys.contains(k)).collect();
            self.drop_users(volume, &stale);
        }
    }

    /// `volume` is gone: entries no other volume uses are erased now. Returns how many.
    pub fn release(&self, volume: &str) -> usize {
        let keys = lock(&self.volumes).remove(volume).unwrap_or_default();
        self.drop_users(volume, &keys)
    }

    fn drop_users(&self, volume: &str, keys: &[ObjectKey]) -> usize {
        let mut erased = 0;
        let mut vaults = HashSet::new();
        {
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
                    vaults.insert(key.vault.clone());
                    erased += 1;
                    tracing::info!(object = %key.id(), vault = %key.vault, "erased: no volume uses it any more");
                }
            }
        }
        self.counters
            .erased
            .fetch_add(erased as u64, Ordering::Relaxed);
        self.forget_unused_vaults(vaults);
        erased
    }

    /// Closes the connections of vaults no entry refers to any more.
    fn forget_unused_vaults(&self, candidates: HashSet<String>) {
        let slots = lock(&self.slots);
        for vault in candidates {
            if !slots.keys().any(|k| k.vault == vault) {
                self.connector.forget_vault(&vault);
            }
        }
    }

    /// Erases entries that no volume uses and that were idle longer than the idle TTL, and
    /// credentials idle that long. Returns how many entries were erased.
    pub fn sweep(&self) -> usize {
        let ttl = self.config.idle_ttl;
        let mut vaults = HashSet::new();
        let erased = {
            let mut slots = lock(&self.slots);
            let before = slots.len();
            slots.retain(|key, slot| {
                let users = slot.users();
                let keep = !users.volumes.is_empty() || users.last_used.elapsed() < ttl;
                if !keep {
                    vaults.insert(key.vault.clone());
                    tracing::info!(object = %key.id(), vault = %key.vault, "erased: idle");
                }
                keep
            });
            before - slots.len()
        };
        lock(&self.credentials).retain(|_, c| c.last_used.elapsed() < ttl);
        self.counters
            .erased
            .fetch_add(erased as u64, Ordering::Relaxed);
        self.forget_unused_vaults(vaults);
        erased
    }

    /// Number of entries (with or without a value).
    pub fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of volumes registered.
    pub fn volume_count(&self) -> usize {
        lock(&self.volumes).len()
    }

    /// The object type of a key, parsed back.
    pub fn object_type(key: &ObjectKey) -> Option<ObjectType> {
        match key.object_type.as_str() {
            "secret" => Some(ObjectType::Secret),
            "key" => Some(ObjectType::Key),
            "cert" => Some(ObjectType::Cert),
            _ => None,
        }
    }
}
