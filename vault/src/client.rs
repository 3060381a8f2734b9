//! The daemon's way to Key Vault: the [`Connector`] makes a mount's credential (workload
//! identity, service principal, managed identity) and the [`VaultClient`] of its vault, on
//! that vault's own HTTP client, in the mount's cloud.
//!
//! The pieces live in their own modules ([`crate::http`], [`crate::credential`],
//! [`crate::read`], [`crate::validity`], [`crate::pipeline`]); their public names are
//! re-exported here too.

use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};
use azure_security_keyvault_certificates::{CertificateClient, CertificateClientOptions};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};

use crate::cloud::Cloud;
use crate::credential::StaticAssertion;
use crate::error::{ErrorKind, VaultError};
use crate::http::{VaultHttp, build_http, trusted_roots};
use crate::params::{Auth, MountParams};
use crate::preauth::{Opening, Preauthorize};

pub use crate::credential::{SwappableCredential, check_credential};
pub use crate::http::{
    ConfigError, ConnectorConfig, DEFAULT_AUTHORITY_HOST, DEFAULT_KEYVAULT_DNS_SUFFIX, ResolveRule,
    use_ring,
};
pub use crate::pipeline::{NextPolicies, next_policy};
pub use crate::read::{FetchedCertificate, FetchedKey, FetchedSecret, VaultClient, VersionInfo};
pub use crate::validity::Validity;

/// The daemon's way to Key Vault: one HTTP client shared by every mount (connection reuse),
/// credentials and clients made per mount.
///
/// Each vault gets its own HTTP client (its own connection pool), dropped by
/// [`Connector::forget_vault`] when nothing on the node uses the vault any more: closing those
/// connections frees the TLS buffers that held the vault's answers.
#[derive(Clone)]
pub struct Connector {
    /// The trusted roots: the system's (read once, here) and `--ca-file`'s.
    roots: Arc<Vec<reqwest::Certificate>>,
    /// For Entra ID token requests.
    auth_http: reqwest::Client,
    /// Per-vault clients, created on first use.
    vault_http: Arc<std::sync::Mutex<std::collections::HashMap<String, VaultHttp>>>,
    config: Arc<ConnectorConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("keyvault_dns_suffix", &self.config.keyvault_dns_suffix)
            .field("authority_host", &self.config.authority_host.as_str())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Checks the configuration and builds the Entra ID HTTP client.
    pub fn new(config: ConnectorConfig) -> Result<Self, ConfigError> {
        if config.authority_host.scheme() != "https" {
            return Err(ConfigError::AuthorityHost(
                config.authority_host.to_string(),
            ));
        }
        let roots = Arc::new(trusted_roots(&config)?);
        let auth_http = build_http(&config, &roots, None)?;
        Ok(Self {
            roots,
            auth_http,
            vault_http: Arc::default(),
            config: Arc::new(config),
        })
    }

    /// The HTTP client for `vault`, created on first use.
    fn vault_http(&self, vault: &str) -> Result<VaultHttp, ConfigError> {
        let mut clients = self
            .vault_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(vault) {
            return Ok(client.clone());
        }
        let opening = Opening::new();
        let client = VaultHttp {
            http: build_http(&self.config, &self.roots, Some(&opening))?,
            opening,
        };
        clients.insert(vault.to_owned(), client.clone());
        Ok(client)
    }

    /// Drops the HTTP clients of `vault` (in every cloud); their connections close once no
    /// request uses them.
    pub fn forget_vault(&self, vault: &str) {
        let prefix = format!("{}.", vault.to_ascii_lowercase());
        self.vault_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|host, _| !host.to_ascii_lowercase().starts_with(&prefix));
    }

    /// The OAuth scope for Key Vault tokens: `https://<dns suffix without port>/.default`.
    pub fn token_scope(&self) -> String {
        self.token_scope_in(None)
    }

    /// [`Connector::token_scope`] for `cloud`, or the daemon's cloud when `None`.
    fn token_scope_in(&self, cloud: Option<&Cloud>) -> String {
        let (_, suffix) = self.endpoints(cloud);
        let host = suffix.split(':').next().unwrap_or(suffix);
        format!("https://{host}/.default")
    }

    /// The configuration in use.
    pub fn config(&self) -> &ConnectorConfig {
        &self.config
    }

    /// `https://<vault>.<suffix>/`.
    pub fn vault_url(&self, vault: &str) -> String {
        format!("https://{vault}.{}/", self.config.keyvault_dns_suffix)
    }

    /// Authority and Key Vault suffix of `cloud`, or the daemon's when `None`.
    fn endpoints<'a>(&'a self, cloud: Option<&'a Cloud>) -> (&'a str, &'a str) {
        match cloud {
            Some(c) => (c.authority_host.as_str(), c.keyvault_dns_suffix.as_str()),
            None => (
                self.config.authority_host.as_str(),
                self.config.keyvault_dns_suffix.as_str(),
            ),
        }
    }

    /// [`Connector::token_scope`] for the mount's cloud.
    pub fn token_scope_for(&self, params: &MountParams) -> String {
        self.token_scope_in(params.cloud.as_ref())
    }

    /// [`Connector::credential`] for the mount's identity and cloud.
    pub fn credential_for(
        &self,
        params: &MountParams,
    ) -> Result<Arc<dyn TokenCredential>, VaultError> {
        self.credential_in(params.cloud.as_ref(), &params.tenant_id, &params.auth)
    }

    /// [`Connector::secret_client`] for the mount's vault in its cloud.
    pub fn vault_client_for(
        &self,
        params: &MountParams,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<VaultClient, VaultError> {
        self.vault_client_in(
            params.cloud.as_ref(),
            &params.keyvault_name,
            credential,
            None,
        )
    }

    /// Options of a data-plane client: the cloud's options, then `policies` on every try.
    fn vault_options(
        &self,
        cloud_of: Option<&Cloud>,
        http: reqwest::Client,
        policies: &[Arc<dyn Policy>],
    ) -> ClientOptions {
        let mut options = self.client_options_in(cloud_of, http);
        options.per_try_policies.extend(policies.iter().cloned());
        options
    }

    fn client_options_in(&self, cloud_of: Option<&Cloud>, http: reqwest::Client) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self.endpoints(cloud_of).0.trim_end_matches('/').to_owned();
        let budget = self.config.request_budget.as_secs() as i64;
        ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(250),
                max_retries: self.config.max_retries,
                max_total_elapsed: azure_core::time::Duration::seconds(budget),
                max_delay: azure_core::time::Duration::seconds(10),
            }),
            ..Default::default()
        }
    }

    /// A credential for `auth` in `tenant` (the daemon's cloud).
    pub fn credential(
        &self,
        tenant: &str,
        auth: &Auth,
    ) -> Result<Arc<dyn TokenCredential>, VaultError> {
        self.credential_in(None, tenant, auth)
    }

    fn credential_in(
        &self,
        cloud: Option<&Cloud>,
        tenant: &str,
        auth: &Auth,
    ) -> Result<Arc<dyn TokenCredential>, VaultError> {
        let scrub_failure = |e: azure_core::Error| {
            VaultError::new(
                ErrorKind::InvalidArgument,
                format!("credential setup: {}", VaultError::from_sdk(&e, &[])),
            )
        };
        match auth {
            Auth::WorkloadIdentity { client_id, token } => {
                let options = ClientAssertionCredentialOptions {
                    client_options: self.client_options_in(cloud, self.auth_http.clone()),
                };
                let credential = ClientAssertionCredential::new(
                    tenant.to_owned(),
                    client_id.clone(),
                    StaticAssertion(token.clone()),
                    Some(options),
                )
                .map_err(scrub_failure)?;
                Ok(credential)
            }
            Auth::ServicePrincipal {
                client_id,
                client_secret,
            } => {
                let options = ClientSecretCredentialOptions {
                    client_options: self.client_options_in(cloud, self.auth_http.clone()),
                };
                let credential = ClientSecretCredential::new(
                    tenant,
                    client_id.clone(),
                    Secret::new(client_secret.expose().to_owned()),
                    Some(options),
                )
                .map_err(scrub_failure)?;
                Ok(credential)
            }
            Auth::ManagedIdentity { user_assigned_id } => {
                // IMDS at 169.254.169.254 (the SDK's fixed address), or App Service when the
                // daemon's environment sets IDENTITY_ENDPOINT/IDENTITY_HEADER.
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: user_assigned_id.clone().map(UserAssignedId::ClientId),
                    client_options: self.client_options_in(cloud, self.auth_http.clone()),
                };
                let credential =
                    ManagedIdentityCredential::new(Some(options)).map_err(scrub_failure)?;
                Ok(credential)
            }
        }
    }

    /// The clients (secrets, keys, certificates) for `vault` in the daemon's cloud, which
    /// authenticate with `credential`.
    pub fn secret_client(
        &self,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<VaultClient, VaultError> {
        self.vault_client_in(None, vault, credential, None)
    }

    /// The clients of `vault` in `cloud` (`None`: the daemon's own), reading with `credential`.
    /// Every HTTP try of theirs (the SDK's own retries included) passes `extra` (the daemon's
    /// rate limit and metrics), when given, after the preauthorizing policy.
    pub fn vault_client_in(
        &self,
        cloud: Option<&Cloud>,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
        extra: Option<Arc<dyn Policy>>,
    ) -> Result<VaultClient, VaultError> {
        let (_, suffix) = self.endpoints(cloud);
        let url = format!("https://{vault}.{suffix}/");
        // One HTTP client (connection pool) per vault host.
        let VaultHttp { http, opening } = self
            .vault_http(&format!("{vault}.{suffix}"))
            .map_err(|e| VaultError::new(ErrorKind::Internal, e.to_string()))?;
        let bad = |e: azure_core::Error| {
            VaultError::new(ErrorKind::InvalidArgument, format!("vault {vault:?}: {e}"))
        };
        let preauthorize: Arc<dyn Policy> = Arc::new(Preauthorize::new(
            Arc::clone(&credential),
            self.token_scope_in(cloud),
            opening,
        ));
        let policies: Vec<Arc<dyn Policy>> = std::iter::once(preauthorize).chain(extra).collect();
        let secrets = SecretClient::new(
            &url,
            Arc::clone(&credential),
            Some(SecretClientOptions {
                client_options: self.vault_options(cloud, http.clone(), &policies),
                ..Default::default()
            }),
        )
        .map_err(bad)?;
        let keys = KeyClient::new(
            &url,
            Arc::clone(&credential),
            Some(KeyClientOptions {
                client_options: self.vault_options(cloud, http.clone(), &policies),
                ..Default::default()
            }),
        )
        .map_err(bad)?;
        let certificates = CertificateClient::new(
            &url,
            Arc::clone(&credential),
            Some(CertificateClientOptions {
                client_options: self.vault_options(cloud, http, &policies),
                ..Default::default()
            }),
        )
        .map_err(bad)?;
        Ok(VaultClient::new(secrets, keys, certificates))
    }
}
