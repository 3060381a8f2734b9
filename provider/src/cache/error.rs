//! The cache's errors.

use std::time::Duration;

use kvmount_vault::{ErrorKind, ObjectError, VaultError};

/// Why [`super::NodeCache::fetch_within`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Key Vault or Entra ID failed for an object.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The objects were not all fetched within the deadline.
    #[error("fetching the objects did not finish within {0:?}")]
    Deadline(Duration),
}

/// Why the rotation read of an entry failed (its last good value is kept).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RotationError {
    /// The entry's identity has no clients: none of its pods' credentials is proved (after a
    /// restart, until the next publish brings them).
    #[error("no valid credential for this identity yet; waiting for the next publish")]
    NoCredential,
    /// Entra ID or Key Vault refused the identity's credential.
    #[error(
        "{0} (the service-account token may have expired; kubelet's next republish brings a new one)"
    )]
    Unauthenticated(VaultError),
    /// Any other failed read.
    #[error(transparent)]
    Read(VaultError),
}

impl From<VaultError> for RotationError {
    fn from(error: VaultError) -> Self {
        if error.kind == ErrorKind::Unauthenticated {
            Self::Unauthenticated(error)
        } else {
            Self::Read(error)
        }
    }
}
