//! Key Vault access through the official Azure SDK: one shared HTTP client (with the extra
//! roots and host overrides the daemon was given), per-mount credentials, and object reads.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{
    ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions, Transport,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions,
};
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use url::Url;

use crate::error::{ErrorKind, VaultError};
use crate::params::Auth;
use crate::render::FetchedSecret;
use crate::secret::SecretString;

/// Public-cloud defaults.
pub const DEFAULT_KEYVAULT_DNS_SUFFIX: &str = "vault.azure.net";
/// Public-cloud Entra authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// A `--resolve` rule: a host (or `*.suffix`) and the address to connect to instead of DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRule {
    /// Exact host name, or a suffix when `wildcard` is set (the part after `*.`).
    pub host: String,
    /// True for `*.suffix` rules: every host under the suffix.
    pub wildcard: bool,
    /// Where to connect. A port of 0 keeps the URL's port.
    pub addr: SocketAddr,
}

impl ResolveRule {
    /// Parses `HOST=ADDR` or `*.SUFFIX=ADDR`, where ADDR is an IP or `IP:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, addr) = text.split_once('=').ok_or_else(|| {
            format!("--resolve {text:?}: expected HOST=ADDR, e.g. *.vault.localhost=127.0.0.1:8443")
        })?;
        let host = host.trim().to_ascii_lowercase();
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(suffix) => (true, suffix.to_owned()),
            None => (false, host),
        };
        if host.is_empty() || host.contains('*') || host.contains('/') {
            return Err(format!(
                "--resolve {text:?}: HOST must be a name like demo.vault.azure.net or *.vault.azure.net"
            ));
        }
        let addr = addr.trim();
        let addr = match addr.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => addr
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, 0))
                .map_err(|_| {
                    format!("--resolve {text:?}: ADDR must be an IP address or IP:PORT")
                })?,
        };
        Ok(Self {
            host,
            wildcard,
            addr,
        })
    }

    fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            name.len() > self.host.len()
                && name.ends_with(&self.host)
                && name.as_bytes()[name.len() - self.host.len() - 1] == b'.'
        } else {
            name == self.host
        }
    }
}

/// Makes the extra per-try SDK policy of a vault's clients (rate limits, metrics): every HTTP
/// try to that vault, the SDK's own retries included, goes through it.
pub trait VaultPolicyFactory: Send + Sync {
    /// The policy for requests to `vault`.
    fn policy(&self, vault: &str) -> Arc<dyn azure_core::http::policies::Policy>;
}

/// DNS with `--resolve` overrides in front of the system resolver.
struct OverrideResolver {
    rules: Arc<Vec<ResolveRule>>,
}

impl reqwest::dns::Resolve for OverrideResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rule = self
            .rules
            .iter()
            .find(|r| r.matches(name.as_str()))
            .cloned();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if let Some(rule) = rule {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(rule.addr));
                return Ok(addrs);
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// Where Key Vault and Entra ID are, and how to reach them.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// Key Vault DNS suffix: vault `demo` is `https://demo.<suffix>/`.
    pub keyvault_dns_suffix: String,
    /// Entra authority host (https).
    pub authority_host: Url,
    /// Extra trusted root certificates, PEM (added to the system roots).
    pub extra_roots_pem: Vec<u8>,
    /// Host overrides.
    pub resolve: Vec<ResolveRule>,
    /// Retries of throttled or failed requests inside the SDK.
    pub max_retries: u32,
    /// Time budget for one request including its retries.
    pub request_budget: Duration,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            keyvault_dns_suffix: DEFAULT_KEYVAULT_DNS_SUFFIX.into(),
            #[allow(clippy::expect_used)] // invariant: a constant, valid URL
            authority_host: Url::parse(DEFAULT_AUTHORITY_HOST).expect("constant URL"),
            extra_roots_pem: Vec::new(),
            resolve: Vec::new(),
            max_retries: 4,
            request_budget: Duration::from_secs(30),
        }
    }
}

/// Error building the connector from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--ca-file` contents are not PEM certificates.
    #[error("--ca-file: not a PEM certificate bundle: {0}")]
    CaFile(String),
    /// The authority host is not an https URL.
    #[error(
        "--authority-host {0:?}: must be an https URL such as https://login.microsoftonline.com"
    )]
    AuthorityHost(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    Http(String),
}

/// The daemon's way to Key Vault: one HTTP client shared by every mount (connection reuse),
/// credentials and clients made per mount.
///
/// Each vault gets its own HTTP client (its own connection pool), dropped by
/// [`Connector::forget_vault`] when nothing on the node uses the vault any more: closing those
/// connections frees the TLS buffers that held the vault's answers.
#[derive(Clone)]
pub struct Connector {
    /// For Entra ID token requests.
    auth_http: reqwest::Client,
    /// Per-vault clients, created on first use.
    vault_http: Arc<std::sync::Mutex<std::collections::HashMap<String, reqwest::Client>>>,
    config: Arc<ConnectorConfig>,
    policies: Option<Arc<dyn VaultPolicyFactory>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("keyvault_dns_suffix", &self.config.keyvault_dns_suffix)
            .field("authority_host", &self.config.authority_host.as_str())
            .finish_non_exhaustive()
    }
}

/// The service-account token, handed to Entra as the client assertion.
struct StaticAssertion(SecretString);

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

impl Connector {
    /// Checks the configuration and builds the Entra ID HTTP client.
    pub fn new(config: ConnectorConfig) -> Result<Self, ConfigError> {
        if config.authority_host.scheme() != "https" {
            return Err(ConfigError::AuthorityHost(
                config.authority_host.to_string(),
            ));
        }
        let auth_http = build_http(&config)?;
        Ok(Self {
            auth_http,
            vault_http: Arc::default(),
            config: Arc::new(config),
            policies: None,
        })
    }

    /// Adds a per-try policy to every vault client this connector makes.
    pub fn with_vault_policies(mut self, factory: Arc<dyn VaultPolicyFactory>) -> Self {
        self.policies = Some(factory);
        self
    }

    /// The HTTP client for `vault`, created on first use.
    fn vault_http(&self, vault: &str) -> Result<reqwest::Client, ConfigError> {
        let mut clients = self
            .vault_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(vault) {
            return Ok(client.clone());
        }
        let client = build_http(&self.config)?;
        clients.insert(vault.to_owned(), client.clone());
        Ok(client)
    }

    /// Drops the HTTP client of `vault`; its connections close once no request uses them.
    pub fn forget_vault(&self, vault: &str) {
        self.vault_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(vault);
    }

    /// The OAuth scope for Key Vault tokens: `https://<dns suffix without port>/.default`.
    pub fn token_scope(&self) -> String {
        let suffix = &self.config.keyvault_dns_suffix;
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

    fn client_options(&self, http: reqwest::Client) -> ClientOptions {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = self
            .config
            .authority_host
            .as_str()
            .trim_end_matches('/')
            .to_owned();
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

    /// A credential for `auth` in `tenant`.
    pub fn credential(
        &self,
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
                    client_options: self.client_options(self.auth_http.clone()),
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
                    client_options: self.client_options(self.auth_http.clone()),
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
        }
    }

    /// A secrets client for `vault` that authenticates with `credential`.
    pub fn secret_client(
        &self,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<SecretClient, VaultError> {
        let http = self
            .vault_http(vault)
            .map_err(|e| VaultError::new(ErrorKind::Internal, e.to_string()))?;
        let mut client_options = self.client_options(http);
        if let Some(factory) = &self.policies {
            client_options.per_try_policies.push(factory.policy(vault));
        }
        let options = SecretClientOptions {
            client_options,
            ..Default::default()
        };
        SecretClient::new(&self.vault_url(vault), credential, Some(options)).map_err(|e| {
            VaultError::new(ErrorKind::InvalidArgument, format!("vault {vault:?}: {e}"))
        })
    }
}

/// Builds an HTTP client with the configured roots and host overrides.
fn build_http(config: &ConnectorConfig) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("kvmount/", env!("CARGO_PKG_VERSION")));
    if !config.extra_roots_pem.is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(&config.extra_roots_pem)
            .map_err(|e| ConfigError::CaFile(e.to_string()))?;
        if certs.is_empty() {
            return Err(ConfigError::CaFile("no certificate found".into()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if !config.resolve.is_empty() {
        builder = builder.dns_resolver(Arc::new(OverrideResolver {
            rules: Arc::new(config.resolve.clone()),
        }));
    }
    builder
        .build()
        .map_err(|e| ConfigError::Http(e.to_string()))
}

/// Asks `credential` for a Key Vault token: proof that these credentials are valid for their
/// identity right now (the SDK credential caches the token until shortly before expiry).
pub async fn check_credential(
    credential: &Arc<dyn TokenCredential>,
    scope: &str,
    scrub: &[&str],
) -> Result<(), VaultError> {
    credential
        .get_token(&[scope], None)
        .await
        .map(drop)
        .map_err(|e| VaultError::from_sdk(&e, scrub))
}

/// Reads one secret (newest when `version` is `None`).
pub async fn get_secret(
    client: &SecretClient,
    name: &str,
    version: Option<&str>,
    scrub: &[&str],
) -> Result<FetchedSecret, VaultError> {
    let options = SecretClientGetSecretOptions {
        secret_version: version.map(str::to_owned),
        ..Default::default()
    };
    let response = client
        .get_secret(name, Some(options))
        .await
        .map_err(|e| VaultError::from_sdk(&e, scrub))?;
    let secret = response.into_model().map_err(|e| {
        VaultError::new(
            ErrorKind::Internal,
            format!(
                "secret {name}: unreadable answer from Key Vault: {}",
                VaultError::from_sdk(&e, scrub)
            ),
        )
    })?;
    let value = secret.value.map(SecretString::new).ok_or_else(|| {
        VaultError::new(
            ErrorKind::Internal,
            format!("secret {name}: Key Vault returned no value"),
        )
    })?;
    let version = secret
        .id
        .as_deref()
        .and_then(|id| id.trim_end_matches('/').rsplit('/').next())
        .map(str::to_owned)
        .ok_or_else(|| {
            VaultError::new(
                ErrorKind::Internal,
                format!("secret {name}: Key Vault returned no id"),
            )
        })?;
    Ok(FetchedSecret {
        value,
        version,
        content_type: secret.content_type,
        backs_certificate: secret.kid.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_rules() {
        let r = ResolveRule::parse("*.vault.localhost=127.0.0.1:8443").expect("valid");
        assert!(r.wildcard);
        assert!(r.matches("demo.vault.localhost"));
        assert!(r.matches("Demo.Vault.Localhost."));
        assert!(!r.matches("vault.localhost"));
        assert!(!r.matches("evilvault.localhost"));
        let r = ResolveRule::parse("demo.vault.azure.net=10.0.0.5").expect("valid");
        assert_eq!(r.addr.port(), 0);
        assert!(r.matches("demo.vault.azure.net"));
        assert!(!r.matches("x.demo.vault.azure.net"));
        assert!(ResolveRule::parse("nohost").is_err());
        assert!(ResolveRule::parse("a=not-an-ip").is_err());
        assert!(ResolveRule::parse("*.=1.2.3.4").is_err());
    }
}
