//! The daemon's way to Key Vault: the vault crate's [`Connector`], every request of its clients
//! passing the node's per-vault rate limit and metrics ([`VaultPolicies`]).

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use kvmount_vault::client::VaultClient;
use kvmount_vault::cloud::Cloud;
use kvmount_vault::{Connector, MountParams, VaultError};

use crate::cache::Connect;
use crate::ratelimit::VaultPolicies;

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
