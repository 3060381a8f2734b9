//! The credentials of a mount's identity: the service-account token as a client assertion,
//! the proof that a credential works ([`check_credential`]), and the credential an identity's
//! clients share while its pods come and go ([`SwappableCredential`]).

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::ClientMethodOptions;
use azure_identity::ClientAssertion;

use crate::error::VaultError;
use crate::secret::SecretString;

/// The service-account token, handed to Entra as the client assertion.
pub(crate) struct StaticAssertion(pub(crate) SecretString);

impl std::fmt::Debug for StaticAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticAssertion(<redacted>)")
    }
}

#[async_trait::async_trait]
impl ClientAssertion for StaticAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        Ok(self.0.expose().to_owned())
    }
}

/// Asks `credential` for a Key Vault token: proof that these credentials are valid for their
/// identity right now. Returns how long the token has left (the SDK credential caches it
/// until shortly before then).
pub async fn check_credential(
    credential: &Arc<dyn TokenCredential>,
    scope: &str,
    scrub: &[&str],
) -> Result<Duration, VaultError> {
    let token = credential
        .get_token(&[scope], None)
        .await
        .map_err(|e| VaultError::from_sdk(&e, scrub))?;
    let left = token.expires_on - time::OffsetDateTime::now_utc();
    Ok(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// A credential whose inner credential can be replaced while clients hold it, so the clients
/// of one identity (their connections and token cache) outlive the pod whose
/// credentials they were first built with.
pub struct SwappableCredential(std::sync::RwLock<Arc<dyn TokenCredential>>);

impl SwappableCredential {
    /// Starts with `inner`.
    pub fn new(inner: Arc<dyn TokenCredential>) -> Self {
        Self(std::sync::RwLock::new(inner))
    }

    /// Every later token comes from `inner`.
    pub fn replace(&self, inner: Arc<dyn TokenCredential>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = inner;
    }
}

impl std::fmt::Debug for SwappableCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwappableCredential")
    }
}

#[async_trait::async_trait]
impl TokenCredential for SwappableCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let inner = Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        inner.get_token(scopes, options).await
    }
}
