//! What [`super::identity::Identities`] needs of the way to Key Vault, as a trait: the daemon's
//! is [`VaultAccess`] (the vault crate's [`Connector`] with the node's per-vault rate limit
//! and metrics); the unit tests' issues tokens itself, so proofs are tested without Entra ID.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use kvmount_vault::client::VaultClient;
use kvmount_vault::cloud::Cloud;
use kvmount_vault::{Connector, MountParams, VaultError};

use crate::ratelimit::VaultPolicies;

/// Credentials and clients for the identities of mounts.
pub trait Connect: Send + Sync {
    /// The SDK credential made from the mount's own credentials, in its cloud.
    fn credential(&self, params: &MountParams) -> Result<Arc<dyn TokenCredential>, VaultError>;

    /// The OAuth scope of Key Vault tokens in the mount's cloud.
    fn token_scope(&self, params: &MountParams) -> String;

    /// The clients of `vault` in `cloud` (`None`: the daemon's), reading with `credential`.
    fn client(
        &self,
        cloud: Option<&Cloud>,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<VaultClient, VaultError>;

    /// Drops the connections of `vault` once no request uses them.
    fn forget_vault(&self, vault: &str);
}

/// The daemon's [`Connect`]: every request of the clients it makes passes `policies` (the
/// node's rate limit and metrics), when there are any.
pub struct VaultAccess {
    connector: Connector,
    policies: Option<VaultPolicies>,
}

impl VaultAccess {
    /// Clients made by `connector`, their requests passing `policies`.
    pub fn new(connector: Connector, policies: Option<VaultPolicies>) -> Self {
        Self {
            connector,
            policies,
        }
    }
}

impl Connect for VaultAccess {
    fn credential(&self, params: &MountParams) -> Result<Arc<dyn TokenCredential>, VaultError> {
        self.connector.credential_for(params)
    }

    fn token_scope(&self, params: &MountParams) -> String {
        self.connector.token_scope_for(params)
    }

    fn client(
        &self,
        cloud: Option<&Cloud>,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<VaultClient, VaultError> {
        let policy = self.policies.as_ref().map(|p| p.policy(vault));
        self.connector
            .vault_client_in(cloud, vault, credential, policy)
    }

    fn forget_vault(&self, vault: &str) {
        self.connector.forget_vault(vault);
    }
}
