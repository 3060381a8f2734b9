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
use kvmount_vault::client::{SwappableCredential, VaultClient, check_credential};
use kvmount_vault::cloud::Cloud;
use kvmount_vault::fetch::scrub_list;
use kvmount_vault::params::{Auth, ObjectEncoding, ObjectFormat, ObjectType};
use kvmount_vault::{
    Connector, FetchedObject, MountParams, ObjectError, ObjectSpec, RenderedObject, VaultError,
    fetch_object, rendered_object,
};
use serde::{Deserialize, Serialize};

/// What makes two objects the same entry. Cheap to clone: the cache hands out the one copy it
/// keeps for each entry, so the volumes that use an entry share it (1,000 volumes of a 10-object
/// class hold 10 keys, not 10,000).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectKey(Arc<ObjectKeyFields>);

impl std::ops::Deref for ObjectKey {
    type Target = ObjectKeyFields;
    fn deref(&self) -> &ObjectKeyFields {
        &self.0
    }
}

/// The fields of an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectKeyFields {
    /// Vault name.
    pub vault: String,
    /// The Key Vault DNS suffix of the class's cloud (`cloudName`, `cloudEnvFileName`), or
    /// empty for the daemon's own cloud: vaults of the same name in two clouds are two vaults.
    #[serde(default)]
    pub cloud: String,
    /// The Entra authority of the class's cloud, or empty for the daemon's own
    /// (`--authority-host`). An entry is served only to credentials proved at the authority
    /// that read it: a class that pairs a vault's DNS suffix with another authority (its own
    /// Entra endpoint, which would vouch for any client ID) has keys of its own.
    #[serde(default)]
    pub authority: String,
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
        Self(Arc::new(ObjectKeyFields {
            vault: params.keyvault_name.to_ascii_lowercase(),
            cloud: cloud_of(params),
            authority: authority_of(params),
            tenant: params.tenant_id.to_ascii_lowercase(),
            client_id: params.auth.client_id().to_ascii_lowercase(),
            object_type: spec.object_type.as_str().to_owned(),
            name: spec.name.to_ascii_lowercase(),
            version: spec.version.clone(),
            encoding: encoding_name(spec.encoding).to_owned(),
            format: format_name(spec.format).to_owned(),
            variant: spec.cache_variant(),
        }))
    }

    /// `secret/name` for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.object_type, self.name)
    }

    /// The object spec that reads and renders this entry (file name and mode are the volume's).
    fn spec(&self) -> Option<ObjectSpec> {
        Some(ObjectSpec {
            index: 0,
            name: self.name.clone(),
            object_type: NodeCache::object_type(self)?,
            version: self.version.clone(),
            alias: None,
            encoding: match self.encoding.as_str() {
                "base64" => ObjectEncoding::Base64,
                "hex" => ObjectEncoding::Hex,
                _ => ObjectEncoding::Utf8,
            },
            format: match self.format.as_str() {
                "pfx" => ObjectFormat::Pfx,
                _ => ObjectFormat::Pem,
            },
            file_mode: None,
            history: self.variant.split(',').find_map(|part| {
                let (index, count) = part.strip_prefix("history=")?.split_once('/')?;
                Some(kvmount_vault::params::HistorySlot {
                    index: index.parse().ok()?,
                    count: count.parse().ok()?,
                })
            }),
            cert_key_files: self.variant.split(',').any(|part| part == "cert-key-files"),
        })
    }
}

/// [`ObjectKey::cloud`] of a mount.
fn cloud_of(params: &MountParams) -> String {
    params
        .cloud
        .as_ref()
        .map(|c| c.keyvault_dns_suffix.to_ascii_lowercase())
        .unwrap_or_default()
}

/// [`ObjectKey::authority`] of a mount.
fn authority_of(params: &MountParams) -> String {
    params
        .cloud
        .as_ref()
        .map(|c| c.authority_host.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The Entra identity of an entry, at one vault, proved at one authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IdentityKey {
    vault: String,
    cloud: String,
    authority: String,
    tenant: String,
    client_id: String,
}

impl IdentityKey {
    fn of(key: &ObjectKey) -> Self {
        Self {
            vault: key.vault.clone(),
            cloud: key.cloud.clone(),
            authority: key.authority.clone(),
            tenant: key.tenant.clone(),
            client_id: key.client_id.clone(),
        }
    }

    fn of_mount(params: &MountParams) -> Self {
        Self {
            vault: params.keyvault_name.to_ascii_lowercase(),
            cloud: cloud_of(params),
            authority: authority_of(params),
            tenant: params.tenant_id.to_ascii_lowercase(),
            client_id: params.auth.client_id().to_ascii_lowercase(),
        }
    }
}

/// The result of one rotation pass.
#[derive(Debug, Default)]
pub struct RotationReport {
    /// Entries read (one Key Vault read each).
    pub checked: usize,
    /// Entries whose version changed: the volumes that use them must be rewritten.
    pub changed: Vec<ObjectKey>,
    /// Entries whose read failed, with the error (their last good value is kept).
    pub failed: Vec<(ObjectKey, String)>,
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

/// Why [`NodeCache::fetch_within`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Key Vault or Entra ID failed for an object.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The objects were not all fetched within the deadline.
    #[error("fetching the objects did not finish within {0:?}")]
    Deadline(Duration),
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
    volumes: HashSet<Arc<str>>,
    last_used: Instant,
    /// Consecutive failed rotation reads, and when to try again.
    failures: u32,
    next_check: Instant,
    last_error: Option<String>,
    /// When the value was last read from Key Vault successfully; kept when a revoked value is
    /// erased (the volumes still hold it), so its age keeps growing.
    refreshed: Option<Instant>,
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

    fn users(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Proof that one set of credentials (a pod's service-account token, a client secret)
/// produced a token for its identity: valid until shortly before that token expires. Holds
/// no credential, only the time.
struct Proof {
    valid_until: Instant,
    last_used: Instant,
}

/// How long before its token expires a proof stops counting.
const PROOF_MARGIN: Duration = Duration::from_secs(120);

/// What reads one identity's objects from Key Vault: its clients, built once (one
/// connection pool however many pods use them), and the newest
/// credential that proved valid for the identity behind them.
struct IdentityEntry {
    credential: Arc<SwappableCredential>,
    valid_until: Instant,
    cloud: Option<Cloud>,
    client: Arc<VaultClient>,
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
    volumes: Mutex<HashMap<Arc<str>, Vec<ObjectKey>>>,
    /// Credentials that proved valid, by [`fingerprint`].
    proofs: Mutex<HashMap<[u8; 32], Proof>>,
    /// Per identity, the clients publishes and rotation read with.
    identities: Mutex<HashMap<IdentityKey, IdentityEntry>>,
    /// Counters.
    pub counters: CacheCounters,
}

/// A pseudo-random number in 0..1000 (spreads nodes' and objects' reads; not for security).
fn noise() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_micros())
        .unwrap_or(0)
        % 1000
}

/// `d` plus or minus up to 10%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.9 + f64::from(noise()) / 5000.0)
}

/// `d` plus up to 10%.
fn late_jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + f64::from(noise()) / 10_000.0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A digest of everything that makes a credential, so a proof is found again for the same
/// credentials without the cache keeping the secret itself.
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
            proofs: Mutex::default(),
            identities: Mutex::default(),
            counters: CacheCounters::default(),
        }
    }

    /// When `params`' own credentials were proved and the proof is still valid: until when.
    fn valid_proof(&self, params: &MountParams) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.proofs)
            .get_mut(&fingerprint(params))
            .filter(|proof| proof.valid_until > now)
            .map(|proof| {
                proof.last_used = now;
                proof.valid_until
            })
    }

    /// Proves that `credential` (made from `params`' own credentials) gets a token for its
    /// identity at Entra ID, and records the proof. Returns until when it holds.
    async fn prove(
        &self,
        params: &MountParams,
        credential: &Arc<dyn TokenCredential>,
        scrub: &[&str],
    ) -> Result<Instant, VaultError> {
        let scope = self.connector.token_scope_for(params);
        let left = check_credential(credential, &scope, scrub).await?;
        let now = Instant::now();
        let mut valid_until = now + left.saturating_sub(PROOF_MARGIN);
        // A proof lasts no longer than the credential it proved: a service-account token
        // that has expired is proved again (and refused) even while its Entra token is valid.
        if let Some(expiry) = params.auth.credential_expiry() {
            let left = expiry
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            valid_until = valid_until.min(now + left);
        }
        lock(&self.proofs).insert(
            fingerprint(params),
            Proof {
                valid_until,
                last_used: Instant::now(),
            },
        );
        Ok(valid_until)
    }

    /// The clients the identity of `params` has (in its cloud), if any.
    fn known_client(&self, params: &MountParams) -> Option<Arc<VaultClient>> {
        lock(&self.identities)
            .get(&IdentityKey::of_mount(params))
            .filter(|entry| entry.cloud == params.cloud)
            .map(|entry| Arc::clone(&entry.client))
    }

    /// New clients for the identity of `params`, reading with `credential`.
    fn new_client(
        &self,
        params: &MountParams,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<(Arc<SwappableCredential>, Arc<VaultClient>), VaultError> {
        let shared = Arc::new(SwappableCredential::new(credential));
        let client = self
            .connector
            .vault_client_for(params, Arc::clone(&shared) as Arc<dyn TokenCredential>)?;
        Ok((shared, Arc::new(client)))
    }

    /// The clients of `params`' identity, kept for its later pods. An identity with none yet
    /// (or with clients of another cloud) keeps `built` when given, else new ones. A
    /// credential that has just proved valid replaces the identity's credential when its
    /// token lasts longer.
    fn identity_client(
        &self,
        params: &MountParams,
        fresh: Option<Arc<dyn TokenCredential>>,
        built: Option<(Arc<SwappableCredential>, Arc<VaultClient>)>,
        valid_until: Instant,
    ) -> Result<Arc<VaultClient>, VaultError> {
        let key = IdentityKey::of_mount(params);
        let mut identities = lock(&self.identities);
        if let Some(entry) = identities.get_mut(&key)
            && entry.cloud == params.cloud
        {
            if let Some(credential) = fresh
                && valid_until > entry.valid_until
            {
                entry.credential.replace(credential);
                entry.valid_until = valid_until;
            }
            return Ok(Arc::clone(&entry.client));
        }
        let (credential, client) = match built {
            Some(built) => built,
            // Proved earlier, but the identity's clients were dropped since (its entries
            // were erased): a new SDK credential from the same, still valid, credentials.
            None => {
                let credential = match fresh {
                    Some(credential) => credential,
                    None => self.connector.credential_for(params)?,
                };
                self.new_client(params, credential)?
            }
        };
        identities.insert(
            key,
            IdentityEntry {
                credential,
                valid_until,
                cloud: params.cloud.clone(),
                client: Arc::clone(&client),
            },
        );
        Ok(client)
    }

    fn slot(&self, key: &ObjectKey) -> Arc<Slot> {
        self.interned(key.clone()).1
    }

    /// The entry of `key`, created when there is none, and the cache's own copy of the key.
    fn interned(&self, key: ObjectKey) -> (ObjectKey, Arc<Slot>) {
        let mut slots = lock(&self.slots);
        if let Some((kept, slot)) = slots.get_key_value(&key) {
            return (kept.clone(), Arc::clone(slot));
        }
        let slot = Arc::new(Slot::new());
        slots.insert(key.clone(), Arc::clone(&slot));
        (key, slot)
    }

    /// Renders every object of `params` once the pod's own credentials proved valid for its
    /// identity (for a new identity the proof and the reads overlap), from the cache where
    /// fresh, else from Key Vault (one read per entry however many callers wait). All or
    /// nothing. Returns the objects and the keys they came from.
    pub async fn fetch(
        &self,
        params: &MountParams,
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), ObjectError> {
        let vault_failure = |error| ObjectError::of_vault(params, error);
        let scrub = scrub_list(&params.auth);
        let (fresh, valid_until) = match self.valid_proof(params) {
            Some(valid_until) => (None, valid_until),
            None => {
                let credential = self
                    .connector
                    .credential_for(params)
                    .map_err(vault_failure)?;
                if self.known_client(params).is_none() {
                    return self.fetch_new_identity(params, credential, &scrub).await;
                }
                // The identity's clients read with a credential proved earlier, so this pod's
                // proof comes first: a pod with bad credentials makes no Key Vault read.
                let valid_until = self
                    .prove(params, &credential, &scrub)
                    .await
                    .map_err(vault_failure)?;
                (Some(credential), valid_until)
            }
        };
        let client = self
            .identity_client(params, fresh, None, valid_until)
            .map_err(vault_failure)?;
        self.read_all(params, &client, &scrub).await
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

    /// [`Self::fetch`] for the first pod of an identity (no clients yet), with its unproved
    /// `credential`. The new clients read with this pod's own credential, so the proof and the
    /// reads start together: every read waits for a token, and their token requests join the
    /// proof's (one exchange at Entra ID), so bad credentials get no token and read nothing.
    /// Nothing is returned, and the clients are not kept, unless the proof holds.
    async fn fetch_new_identity(
        &self,
        params: &MountParams,
        credential: Arc<dyn TokenCredential>,
        scrub: &[&str],
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), ObjectError> {
        let vault_failure = |error| ObjectError::of_vault(params, error);
        let (shared, client) = self
            .new_client(params, Arc::clone(&credential))
            .map_err(vault_failure)?;
        let (valid_until, read) = {
            let proof = self.prove(params, &credential, scrub);
            let read = self.read_all(params, &client, scrub);
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
        self.identity_client(
            params,
            Some(credential),
            Some((shared, client)),
            valid_until,
        )
        .map_err(vault_failure)?;
        Ok(read)
    }

    /// Every object of `params` through `client`: from the cache where fresh, else from Key
    /// Vault (one read per entry however many callers wait), in the class's order. Callers
    /// return the result only to a pod whose credentials are proved.
    async fn read_all(
        &self,
        params: &MountParams,
        client: &VaultClient,
        scrub: &[&str],
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>), ObjectError> {
        let lookups = params.objects.iter().map(|spec| {
            async move {
                let (key, slot) = self.interned(ObjectKey::new(params, spec));
                let mut value = slot.value.lock().await;
                let fresh = value.as_ref().is_some_and(|c| {
                    // The rotation loop keeps entries in use fresh (pinned versions too: they
                    // can be revoked); a publish reads again only when that fell behind (a
                    // failing vault, a recovered entry).
                    c.fetched_at.elapsed() < self.config.refresh_after * 2
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
                    {
                        let mut users = slot.users();
                        users.next_check = Instant::now() + late_jitter(self.config.refresh_after);
                        users.refreshed = Some(Instant::now());
                    }
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
        let results = futures::future::try_join_all(lookups).await?;
        Ok(results.into_iter().unzip())
    }

    /// Records that `volume` (a target path) uses `keys`, replacing what it used before.
    pub fn retain(&self, volume: &str, keys: Vec<ObjectKey>) {
        let volume: Arc<str> = Arc::from(volume);
        let previous = lock(&self.volumes).insert(Arc::clone(&volume), keys.clone());
        for key in &keys {
            self.slot(key).users().volumes.insert(Arc::clone(&volume));
        }
        if let Some(previous) = previous {
            let stale: Vec<ObjectKey> =
                previous.into_iter().filter(|k| !keys.contains(k)).collect();
            self.drop_users(&volume, &stale);
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
        self.close_erased_vaults(vaults);
        erased
    }

    /// After entries of `candidates` were erased: closes the connections of every such vault
    /// and forgets the clients and credentials of identities without entries. A vault still in
    /// use by other entries gets new connections for its identities (the old ones close once
    /// their last request is done): the erased values may still sit in an open connection's TLS
    /// and HTTP/2 buffers, and only closing it frees them.
    fn close_erased_vaults(&self, candidates: HashSet<String>) {
        let slots = lock(&self.slots);
        let mut identities = lock(&self.identities);
        identities.retain(|identity, _| slots.keys().any(|k| IdentityKey::of(k) == *identity));
        for vault in candidates {
            self.connector.forget_vault(&vault);
            for (identity, entry) in identities.iter_mut().filter(|(i, _)| i.vault == vault) {
                let credential = Arc::clone(&entry.credential) as Arc<dyn TokenCredential>;
                match self.connector.vault_client_in(
                    entry.cloud.as_ref(),
                    &identity.vault,
                    credential,
                ) {
                    Ok(client) => entry.client = Arc::new(client),
                    Err(error) => {
                        tracing::warn!(vault = %vault, error = %error, "cannot reconnect a vault after an erase; its connection stays open")
                    }
                }
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
                let in_flight = slot.value.try_lock().is_err();
                let users = slot.users();
                let keep =
                    in_flight || !users.volumes.is_empty() || users.last_used.elapsed() < ttl;
                if !keep {
                    vaults.insert(key.vault.clone());
                    tracing::info!(object = %key.id(), vault = %key.vault, "erased: idle");
                }
                keep
            });
            before - slots.len()
        };
        let now = Instant::now();
        lock(&self.proofs).retain(|_, p| p.valid_until > now && p.last_used.elapsed() < ttl);
        self.counters
            .erased
            .fetch_add(erased as u64, Ordering::Relaxed);
        self.close_erased_vaults(vaults);
        erased
    }

    /// The cached value of `key`, if any (for rewriting volumes after a rotation).
    pub async fn peek(&self, key: &ObjectKey) -> Option<FetchedObject> {
        let slot = lock(&self.slots).get(key).cloned()?;
        let value = slot.value.lock().await;
        value.as_ref().map(|c| c.object.clone())
    }

    /// The cached version of `key` without waiting: `None` when there is no value or a read
    /// holds the entry right now.
    pub fn cached_version(&self, key: &ObjectKey) -> Option<String> {
        let slot = lock(&self.slots).get(key).cloned()?;
        let value = slot.value.try_lock().ok()?;
        value.as_ref().map(|c| c.object.version.clone())
    }

    /// The last rotation error of `key`, if its last read failed.
    pub fn last_error(&self, key: &ObjectKey) -> Option<String> {
        let slot = lock(&self.slots).get(key).cloned()?;
        slot.users().last_error.clone()
    }

    /// One rotation pass: every entry of the newest version that is in use (by a volume, or
    /// by the upstream driver within the idle time) and due is read once from Key Vault with
    /// the newest valid credential of its identity. A failed read keeps the last good value and
    /// backs off exponentially (with jitter, capped at `interval`).
    pub async fn rotate(&self, interval: Duration) -> RotationReport {
        let now = Instant::now();
        let due: Vec<(ObjectKey, Arc<Slot>)> = lock(&self.slots)
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
                    !users.volumes.is_empty() || users.last_used.elapsed() < self.config.idle_ttl
                };
                wanted && users.next_check <= now
            })
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect();
        let mut report = RotationReport::default();
        let checks = due.into_iter().map(|(key, slot)| async move {
            let outcome = self.check_one(&key, &slot).await;
            let mut users = slot.users();
            match &outcome {
                Ok(_) => {
                    users.failures = 0;
                    users.last_error = None;
                    // Never sooner than one interval: at most one read per object per interval.
                    users.next_check = Instant::now() + late_jitter(interval);
                }
                Err(error) => {
                    users.failures = users.failures.saturating_add(1);
                    users.last_error = Some(error.clone());
                    let backoff = Duration::from_secs(2)
                        .saturating_mul(1 << users.failures.min(10))
                        .min(interval);
                    users.next_check = Instant::now() + jitter(backoff);
                }
            }
            (key, outcome)
        });
        for (key, outcome) in futures::future::join_all(checks).await {
            report.checked += 1;
            match outcome {
                Ok(true) => report.changed.push(key),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(object = %key.id(), vault = %key.vault, error = %error, "rotation read failed; keeping the last good content");
                    report.failed.push((key, error));
                }
            }
        }
        report
    }

    /// Reads `key` again; Ok(true) when the version changed.
    async fn check_one(&self, key: &ObjectKey, slot: &Slot) -> Result<bool, String> {
        let client = lock(&self.identities)
            .get(&IdentityKey::of(key))
            .map(|entry| Arc::clone(&entry.client))
            .ok_or_else(|| {
                "no valid credential for this identity yet; waiting for the next publish".to_owned()
            })?;
        let spec = key
            .spec()
            .ok_or_else(|| format!("unknown object type {}", key.object_type))?;
        let fetched = match fetch_object(&client, &spec, &[]).await {
            Ok(fetched) => fetched,
            Err(e) => {
                if matches!(
                    e.kind,
                    kvmount_vault::ErrorKind::PermissionDenied | kvmount_vault::ErrorKind::NotFound
                ) && slot.value.lock().await.take().is_some()
                {
                    // Revoked (disabled, expired, deleted, or no longer readable by this
                    // identity): the value is erased, so no new mount is served from it (each
                    // reads Key Vault and is refused); published volumes keep their last
                    // content and report the error, as for any failed refresh.
                    tracing::warn!(object = %key.id(), vault = %key.vault, error = %e, "revoked in Key Vault: erased from the cache");
                }
                return Err(if e.kind == kvmount_vault::ErrorKind::Unauthenticated {
                    format!(
                        "{e} (the service-account token may have expired; kubelet's next republish brings a new one)"
                    )
                } else {
                    e.to_string()
                });
            }
        };
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let mut value = slot.value.lock().await;
        let changed = value
            .as_ref()
            .is_none_or(|c| c.object.version != fetched.version);
        if changed {
            tracing::info!(object = %key.id(), vault = %key.vault, version = %fetched.version, "rotated: new version");
        }
        *value = Some(Cached {
            object: fetched,
            fetched_at: Instant::now(),
        });
        slot.users().refreshed = Some(Instant::now());
        Ok(changed)
    }

    /// For each object the cache holds (or held until a revocation) a good value of: its vault,
    /// `type/name`, and the time since the last good read; entries of one object for several
    /// identities, versions or renderings count once, with the oldest read.
    pub fn refresh_ages(&self) -> Vec<(String, String, Duration)> {
        let now = Instant::now();
        let mut ages: HashMap<(String, String), Duration> = HashMap::new();
        for (key, slot) in lock(&self.slots).iter() {
            let Some(refreshed) = slot.users().refreshed else {
                continue;
            };
            let age = now.saturating_duration_since(refreshed);
            let oldest = ages.entry((key.vault.clone(), key.id())).or_default();
            *oldest = (*oldest).max(age);
        }
        let mut ages: Vec<_> = ages.into_iter().map(|((v, o), age)| (v, o, age)).collect();
        ages.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        ages
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &[(&str, &str)]) -> MountParams {
        let attributes: HashMap<String, String> = [
            ("keyvaultName", "Demo"),
            ("tenantID", "tenant"),
            (
                "objects",
                "array:\n  - |\n    objectName: db-password\n    objectType: secret\n",
            ),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let secrets = HashMap::from([
            ("clientid".to_owned(), "app".to_owned()),
            ("clientsecret".to_owned(), "s".to_owned()),
        ]);
        kvmount_vault::params::mount_params(&attributes, &secrets, 0o644, None).expect("valid")
    }

    #[test]
    fn volumes_share_the_cache_copy_of_a_key() {
        let cache = NodeCache::new(
            Connector::new(kvmount_vault::ConnectorConfig::default()).expect("connector"),
            CacheConfig {
                refresh_after: Duration::from_secs(60),
                idle_ttl: Duration::from_secs(60),
            },
        );
        let p = params(&[]);
        let (first, _) = cache.interned(ObjectKey::new(&p, &p.objects[0]));
        let (second, _) = cache.interned(ObjectKey::new(&p, &p.objects[0]));
        assert!(Arc::ptr_eq(&first.0, &second.0), "one copy per entry");
        cache.retain("/pods/a", vec![first.clone()]);
        cache.retain("/pods/b", vec![second]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.release("/pods/a"), 0, "b still uses it");
        assert_eq!(cache.release("/pods/b"), 1, "erased with the last volume");
        assert!(cache.is_empty());
    }

    #[test]
    fn vaults_of_the_same_name_in_two_clouds_are_two_entries() {
        let public = params(&[]);
        let china = params(&[("cloudName", "AzureChinaCloud")]);
        let public_key = ObjectKey::new(&public, &public.objects[0]);
        let china_key = ObjectKey::new(&china, &china.objects[0]);
        assert_eq!(public_key.vault, "demo");
        assert_eq!(public_key.cloud, "");
        assert_eq!(china_key.cloud, "vault.azure.cn");
        assert_ne!(public_key, china_key);
        assert_ne!(IdentityKey::of(&public_key), IdentityKey::of(&china_key));
        assert_eq!(IdentityKey::of(&china_key), IdentityKey::of_mount(&china));
        // Keys written by a release without the field read back as the daemon's cloud.
        let mut old = serde_json::to_value(&public_key).expect("json");
        old.as_object_mut().expect("object").remove("cloud");
        let read: ObjectKey = serde_json::from_value(old).expect("old key");
        assert_eq!(read, public_key);
    }
}
