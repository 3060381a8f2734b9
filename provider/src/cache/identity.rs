//! Credential proofs and one set of Key Vault clients per identity: the only user of the
//! way to Key Vault ([`Connect`]). A pod's credentials are proved (they got a token for their identity at
//! Entra ID) before anything read for that identity is returned to it; the proof is kept by a
//! digest of the credentials (no credential kept) until shortly before that token expires.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use kvmount_vault::client::{SwappableCredential, VaultClient, check_credential};
use kvmount_vault::cloud::Cloud;
use kvmount_vault::params::Auth;
use kvmount_vault::{MountParams, VaultError};
use tokio::time::Instant;

use super::config::lock;
use super::connect::Connect;
use super::key::IdentityKey;

/// How long before its token expires a proof stops counting.
const PROOF_MARGIN: Duration = Duration::from_secs(120);

/// Proof that one set of credentials (a pod's service-account token, a client secret)
/// produced a token for its identity: valid until shortly before that token expires. Holds
/// no credential, only the time.
struct Proof {
    valid_until: Instant,
    last_used: Instant,
}

/// What reads one identity's objects from Key Vault: its clients, built once (one
/// connection pool however many pods use them), and the newest credential that proved valid
/// for the identity behind them.
struct IdentityEntry {
    credential: Arc<SwappableCredential>,
    valid_until: Instant,
    cloud: Option<Cloud>,
    client: Arc<VaultClient>,
}

/// How a pod may read: the answer of [`Identities::access`].
pub enum Access {
    /// A known identity, and the pod's credentials are proved: read with its clients.
    Known(Arc<VaultClient>),
    /// The first pod of an identity: new clients that read with the pod's own (not yet
    /// proved) credential; [`Identities::prove_new`] proves it alongside the reads and
    /// [`Identities::keep_new`] keeps the clients once the proof holds.
    New(NewIdentity),
}

/// New clients for an identity, reading with a credential that is being proved.
pub struct NewIdentity {
    credential: Arc<dyn TokenCredential>,
    shared: Arc<SwappableCredential>,
    /// The clients to read with.
    pub client: Arc<VaultClient>,
}

/// Proofs and per-identity clients.
pub struct Identities {
    connector: Box<dyn Connect>,
    /// Credentials that proved valid, by [`fingerprint`].
    proofs: Mutex<HashMap<[u8; 32], Proof>>,
    /// Per identity, the clients publishes and rotation read with.
    entries: Mutex<HashMap<IdentityKey, IdentityEntry>>,
}

impl Identities {
    /// No proofs and no clients yet; credentials and clients are made by `connector`.
    pub fn new(connector: Box<dyn Connect>) -> Self {
        Self {
            connector,
            proofs: Mutex::default(),
            entries: Mutex::default(),
        }
    }

    /// How the pod of `params` reads: with its identity's clients once its credentials are
    /// proved (proving them first when needed: a pod with bad credentials makes no Key Vault
    /// read), or, for a new identity, with new clients while the proof runs.
    pub async fn access(&self, params: &MountParams, scrub: &[&str]) -> Result<Access, VaultError> {
        if let Some(valid_until) = self.valid_proof(params) {
            return self
                .identity_client(params, None, valid_until)
                .map(Access::Known);
        }
        let credential = self.connector.credential(params)?;
        if self.known_client(params).is_none() {
            let shared = Arc::new(SwappableCredential::new(Arc::clone(&credential)));
            let client = self.new_client(params, Arc::clone(&shared))?;
            return Ok(Access::New(NewIdentity {
                credential,
                shared,
                client,
            }));
        }
        let valid_until = self.prove(params, &credential, scrub).await?;
        self.identity_client(params, Some(credential), valid_until)
            .map(Access::Known)
    }

    /// Proves the credential of a new identity's first pod. Returns until when it holds.
    pub async fn prove_new(
        &self,
        params: &MountParams,
        new: &NewIdentity,
        scrub: &[&str],
    ) -> Result<Instant, VaultError> {
        self.prove(params, &new.credential, scrub).await
    }

    /// Keeps the clients of a new identity whose proof held (unless another pod of the same
    /// identity got there first: then its clients stay, with the newer credential).
    pub fn keep_new(&self, params: &MountParams, new: NewIdentity, valid_until: Instant) {
        let key = IdentityKey::of_mount(params);
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(&key)
            && entry.cloud == params.cloud
        {
            if valid_until > entry.valid_until {
                entry.credential.replace(new.credential);
                entry.valid_until = valid_until;
            }
            return;
        }
        entries.insert(
            key,
            IdentityEntry {
                credential: new.shared,
                valid_until,
                cloud: params.cloud.clone(),
                client: new.client,
            },
        );
    }

    /// The clients of `identity`, if it has any (for rotation).
    pub fn client_of(&self, identity: &IdentityKey) -> Option<Arc<VaultClient>> {
        lock(&self.entries)
            .get(identity)
            .map(|entry| Arc::clone(&entry.client))
    }

    /// After entries of `vaults` were erased: forgets the clients and credentials of
    /// identities that are not `live` any more, and closes the connections of every such
    /// vault. A vault still in use gets new connections for its identities (the old ones close
    /// once their last request is done): the erased values may still sit in an open
    /// connection's TLS and HTTP/2 buffers, and only closing it frees them.
    pub fn close_vaults(&self, vaults: HashSet<String>, live: &HashSet<IdentityKey>) {
        let mut entries = lock(&self.entries);
        entries.retain(|identity, _| live.contains(identity));
        for vault in vaults {
            self.connector.forget_vault(&vault);
            for (identity, entry) in entries.iter_mut().filter(|(i, _)| i.vault == vault) {
                let credential = Arc::clone(&entry.credential) as Arc<dyn TokenCredential>;
                match self
                    .connector
                    .client(entry.cloud.as_ref(), &identity.vault, credential)
                {
                    Ok(client) => entry.client = Arc::new(client),
                    Err(error) => {
                        tracing::warn!(vault = %vault, error = %error, "cannot reconnect a vault after an erase; its connection stays open")
                    }
                }
            }
        }
    }

    /// Forgets proofs that expired or were not used for `ttl`.
    pub fn sweep(&self, ttl: Duration) {
        let now = Instant::now();
        lock(&self.proofs).retain(|_, p| p.valid_until > now && p.last_used.elapsed() < ttl);
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
        let scope = self.connector.token_scope(params);
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
        lock(&self.entries)
            .get(&IdentityKey::of_mount(params))
            .filter(|entry| entry.cloud == params.cloud)
            .map(|entry| Arc::clone(&entry.client))
    }

    /// New clients for the identity of `params`, reading with `shared`.
    fn new_client(
        &self,
        params: &MountParams,
        shared: Arc<SwappableCredential>,
    ) -> Result<Arc<VaultClient>, VaultError> {
        let client = self.connector.client(
            params.cloud.as_ref(),
            &params.keyvault_name,
            shared as Arc<dyn TokenCredential>,
        )?;
        Ok(Arc::new(client))
    }

    /// The clients of a proved `params`' identity, kept for its later pods. An identity
    /// without clients (in this cloud) gets new ones. A credential that has just proved
    /// valid replaces the identity's credential when its token lasts longer.
    fn identity_client(
        &self,
        params: &MountParams,
        fresh: Option<Arc<dyn TokenCredential>>,
        valid_until: Instant,
    ) -> Result<Arc<VaultClient>, VaultError> {
        let key = IdentityKey::of_mount(params);
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(&key)
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
        // Proved earlier, but the identity's clients were dropped since (its entries were
        // erased): a new SDK credential from the same, still valid, credentials.
        let credential = match fresh {
            Some(credential) => credential,
            None => self.connector.credential(params)?,
        };
        let shared = Arc::new(SwappableCredential::new(credential));
        let client = self.new_client(params, Arc::clone(&shared))?;
        entries.insert(
            key,
            IdentityEntry {
                credential: shared,
                valid_until,
                cloud: params.cloud.clone(),
                client: Arc::clone(&client),
            },
        );
        Ok(client)
    }
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
