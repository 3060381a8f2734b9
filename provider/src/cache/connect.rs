//! What [`super::identity::Identities`] needs of the way to Key Vault, as a trait: the daemon's
//! is `crate::access::VaultAccess` (the vault crate's `Connector` with the node's per-vault
//! rate limit and metrics); the unit tests' issues tokens itself, so proofs are tested without
//! Entra ID.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use kvmount_vault::client::VaultClient;
use kvmount_vault::cloud::Cloud;
use kvmount_vault::{MountParams, VaultError};

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
