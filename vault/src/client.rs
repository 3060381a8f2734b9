//! Key Vault access through the official Azure SDK: one shared HTTP client (with the extra
//! roots and host overrides the daemon was given), per-mount credentials, and object reads.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions, Transport,
};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use azure_security_keyvault_certificates::models::CertificateClientGetCertificateOptions;
use azure_security_keyvault_certificates::{CertificateClient, CertificateClientOptions};
use azure_security_keyvault_keys::models::{CurveName, KeyClientGetKeyOptions, KeyType};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use futures::TryStreamExt as _;
use url::Url;

use crate::cloud::Cloud;
use crate::error::{ErrorKind, VaultError};
use crate::params::{Auth, MountParams, ObjectType};
use crate::preauth::{NoteOpen, Opening, POOL_IDLE, Preauthorize};
use crate::render::FetchedSecret;
use crate::secret::{SecretBytes, SecretString};

/// The clients of one vault: secrets, keys and certificates, sharing one credential and one
/// HTTP client. Dereferences to the [`SecretClient`].
pub struct VaultClient {
    /// Secrets (and the secrets behind certificates).
    pub secrets: SecretClient,
    /// Keys (public parts only are read).
    pub keys: KeyClient,
    /// Certificates.
    pub certificates: CertificateClient,
}

impl std::ops::Deref for VaultClient {
    type Target = SecretClient;
    fn deref(&self) -> &SecretClient {
        &self.secrets
    }
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient").finish_non_exhaustive()
    }
}

/// Validity attributes of an object version, checked before anything is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validity {
    /// `attributes.enabled` (absent means enabled).
    pub enabled: Option<bool>,
    /// `attributes.nbf`.
    pub not_before: Option<time::OffsetDateTime>,
    /// `attributes.exp`.
    pub expires: Option<time::OffsetDateTime>,
}

impl Validity {
    /// Refuses disabled, expired and not-yet-valid versions, as a PermissionDenied naming the
    /// version and the time (the caller names the object).
    pub fn check(&self, version: &str) -> Result<(), VaultError> {
        let now = time::OffsetDateTime::now_utc();
        let when = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.unix_timestamp().to_string())
        };
        if self.enabled == Some(false) {
            return Err(VaultError::new(
                ErrorKind::PermissionDenied,
                format!("version {version} is disabled in Key Vault"),
            ));
        }
        if let Some(exp) = self.expires
            && exp <= now
        {
            return Err(VaultError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "version {version} expired at {} (attributes.exp); kvmount does not write expired objects",
                    when(exp)
                ),
            ));
        }
        if let Some(nbf) = self.not_before
            && nbf > now
        {
            return Err(VaultError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "version {version} is not valid before {} (attributes.nbf)",
                    when(nbf)
                ),
            ));
        }
        Ok(())
    }
}

/// A key's public part, ready to write.
#[derive(Debug)]
pub struct FetchedKey {
    /// Version id.
    pub version: String,
    /// PKIX `PUBLIC KEY` PEM.
    pub pem: SecretBytes,
    /// Validity.
    pub validity: Validity,
}

/// A certificate (`cer`).
#[derive(Debug)]
pub struct FetchedCertificate {
    /// Version id.
    pub version: String,
    /// DER X.509.
    pub der: Vec<u8>,
    /// Validity.
    pub validity: Validity,
}

/// One entry of a version list.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// Version id.
    pub version: String,
    /// Creation time (Unix seconds; 0 when absent).
    pub created: i64,
    /// `attributes.enabled` (absent means enabled).
    pub enabled: bool,
}

fn last_segment(id: Option<&str>) -> Option<String> {
    id.and_then(|id| id.trim_end_matches('/').rsplit('/').next())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

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
    /// The trusted roots: the system's (read once, here) and `--ca-file`'s.
    roots: Arc<Vec<reqwest::Certificate>>,
    /// For Entra ID token requests.
    auth_http: reqwest::Client,
    /// Per-vault clients, created on first use.
    vault_http: Arc<std::sync::Mutex<std::collections::HashMap<String, VaultHttp>>>,
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
        let roots = Arc::new(trusted_roots(&config)?);
        let auth_http = build_http(&config, &roots, None)?;
        Ok(Self {
            roots,
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
        self.vault_client_in(params.cloud.as_ref(), &params.keyvault_name, credential)
    }

    /// Options of a data-plane client of `vault`: the cloud's options, `preauthorize`, then the
    /// vault's per-try policy (rate limit, metrics), when the connector has one.
    fn vault_options(
        &self,
        vault: &str,
        cloud_of: Option<&Cloud>,
        http: reqwest::Client,
        preauthorize: &Arc<dyn Policy>,
    ) -> ClientOptions {
        let mut options = self.client_options_in(cloud_of, http);
        options.per_try_policies.push(Arc::clone(preauthorize));
        if let Some(factory) = &self.policies {
            options.per_try_policies.push(factory.policy(vault));
        }
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
        self.vault_client_in(None, vault, credential)
    }

    /// The clients of `vault` in `cloud` (`None`: the daemon's own), reading with `credential`.
    pub fn vault_client_in(
        &self,
        cloud: Option<&Cloud>,
        vault: &str,
        credential: Arc<dyn TokenCredential>,
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
        let secrets = SecretClient::new(
            &url,
            Arc::clone(&credential),
            Some(SecretClientOptions {
                client_options: self.vault_options(vault, cloud, http.clone(), &preauthorize),
                ..Default::default()
            }),
        )
        .map_err(bad)?;
        let keys = KeyClient::new(
            &url,
            Arc::clone(&credential),
            Some(KeyClientOptions {
                client_options: self.vault_options(vault, cloud, http.clone(), &preauthorize),
                ..Default::default()
            }),
        )
        .map_err(bad)?;
        let certificates = CertificateClient::new(
            &url,
            Arc::clone(&credential),
            Some(CertificateClientOptions {
                client_options: self.vault_options(vault, cloud, http, &preauthorize),
                ..Default::default()
            }),
        )
        .map_err(bad)?;
        Ok(VaultClient {
            secrets,
            keys,
            certificates,
        })
    }
}

/// The policies after one in an SDK pipeline: the next, and the ones after it.
pub type NextPolicies<'a> = (&'a Arc<dyn Policy>, &'a [Arc<dyn Policy>]);

/// The next policy of an SDK pipeline and the ones after it, for a policy of `name` to pass a
/// request on (a pipeline always ends in its transport; an error says so if not).
pub fn next_policy<'a>(
    name: &str,
    next: &'a [Arc<dyn Policy>],
) -> azure_core::Result<NextPolicies<'a>> {
    next.split_first().ok_or_else(|| {
        azure_core::Error::with_message(
            azure_core::error::ErrorKind::Other,
            format!("kvmount {name} policy: no transport after it"),
        )
    })
}

/// The system's trusted roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle,
/// as rustls-native-certs finds them) plus the `--ca-file` roots. Reading and parsing the
/// system store costs tens of milliseconds, so it is done once per connector, not per client.
fn trusted_roots(config: &ConnectorConfig) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::warn!(
            errors = native.errors.len(),
            first = %native.errors[0],
            "some system trusted roots could not be read"
        );
    }
    let mut roots = Vec::with_capacity(native.certs.len() + 1);
    for der in native.certs {
        // A root the TLS stack cannot use is skipped, as the platform verifier would.
        if let Ok(cert) = reqwest::Certificate::from_der(der.as_ref()) {
            roots.push(cert);
        }
    }
    if !config.extra_roots_pem.is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(&config.extra_roots_pem)
            .map_err(|e| ConfigError::CaFile(e.to_string()))?;
        if certs.is_empty() {
            return Err(ConfigError::CaFile("no certificate found".into()));
        }
        roots.extend(certs);
    }
    Ok(roots)
}

/// Makes ring rustls' process-wide default provider, unless one is installed already. The HTTP
/// clients take their TLS from it: reqwest is built without a provider of its own (no aws-lc,
/// a second copy of the same work), so a process calls this before it builds one.
pub fn use_ring() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A vault host's HTTP client (its connection pool) and whether it has connected yet.
#[derive(Clone)]
struct VaultHttp {
    http: reqwest::Client,
    opening: Arc<Opening>,
}

/// Builds an HTTP client that trusts `roots` only, with the configured host overrides; a
/// vault's client marks `opening` open when it has connected.
fn build_http(
    config: &ConnectorConfig,
    roots: &[reqwest::Certificate],
    opening: Option<&Arc<Opening>>,
) -> Result<reqwest::Client, ConfigError> {
    use_ring();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("kvmount/", env!("CARGO_PKG_VERSION")))
        .tls_certs_only(roots.iter().cloned());
    if let Some(opening) = opening {
        builder = builder.connector_layer(NoteOpen(Arc::clone(opening)));
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
                "unreadable answer from Key Vault: {}",
                VaultError::from_sdk(&e, scrub)
            ),
        )
    })?;
    let value = secret
        .value
        .map(SecretString::new)
        .ok_or_else(|| VaultError::new(ErrorKind::Internal, "Key Vault returned no value"))?;
    let version = last_segment(secret.id.as_deref())
        .ok_or_else(|| VaultError::new(ErrorKind::Internal, "Key Vault returned no id"))?;
    let validity = secret
        .attributes
        .as_ref()
        .map(|a| Validity {
            enabled: a.enabled,
            not_before: a.not_before,
            expires: a.expires,
        })
        .unwrap_or_default();
    Ok(FetchedSecret {
        value,
        version,
        content_type: secret.content_type,
        backs_certificate: secret.kid.is_some(),
        validity,
    })
}

fn unreadable(e: &azure_core::Error, scrub: &[&str]) -> VaultError {
    VaultError::new(
        ErrorKind::Internal,
        format!(
            "unreadable answer from Key Vault: {}",
            VaultError::from_sdk(e, scrub)
        ),
    )
}

/// Reads a key's public part (newest when `version` is `None`) as a PKIX `PUBLIC KEY` PEM.
pub async fn get_key(
    client: &KeyClient,
    name: &str,
    version: Option<&str>,
    scrub: &[&str],
) -> Result<FetchedKey, VaultError> {
    let options = KeyClientGetKeyOptions {
        key_version: version.map(str::to_owned),
        ..Default::default()
    };
    let key = client
        .get_key(name, Some(options))
        .await
        .map_err(|e| VaultError::from_sdk(&e, scrub))?
        .into_model()
        .map_err(|e| unreadable(&e, scrub))?;
    let jwk = key
        .key
        .ok_or_else(|| VaultError::new(ErrorKind::Internal, "Key Vault returned no key"))?;
    let version = last_segment(jwk.kid.as_deref())
        .ok_or_else(|| VaultError::new(ErrorKind::Internal, "Key Vault returned no kid"))?;
    let missing =
        |what: &str| VaultError::new(ErrorKind::Internal, format!("Key Vault returned no {what}"));
    let public = match jwk.kty {
        Some(KeyType::Rsa | KeyType::RsaHsm) => crate::pem::PublicKey::Rsa {
            n: jwk.n.as_deref().ok_or_else(|| missing("n"))?,
            e: jwk.e.as_deref().ok_or_else(|| missing("e"))?,
        },
        Some(KeyType::Ec | KeyType::EcHsm) => crate::pem::PublicKey::Ec {
            crv: match &jwk.crv {
                Some(CurveName::P256) => "P-256",
                Some(CurveName::P384) => "P-384",
                Some(CurveName::P521) => "P-521",
                Some(CurveName::P256K) => "P-256K",
                Some(CurveName::UnknownValue(c)) => c.as_str(),
                None => return Err(missing("crv")),
            },
            x: jwk.x.as_deref().ok_or_else(|| missing("x"))?,
            y: jwk.y.as_deref().ok_or_else(|| missing("y"))?,
        },
        Some(other) => {
            return Err(VaultError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "kty {other} has no public key to write; accepted: RSA, RSA-HSM, EC, EC-HSM"
                ),
            ));
        }
        None => return Err(missing("kty")),
    };
    let pem = crate::pem::public_key_pem(public)
        .map_err(|e| VaultError::new(ErrorKind::InvalidArgument, e.to_string()))?;
    let validity = key
        .attributes
        .as_ref()
        .map(|a| Validity {
            enabled: a.enabled,
            not_before: a.not_before,
            expires: a.expires,
        })
        .unwrap_or_default();
    Ok(FetchedKey {
        version,
        pem: SecretBytes::new(pem),
        validity,
    })
}

/// Reads a certificate's `cer` (newest when `version` is `None`).
pub async fn get_certificate(
    client: &CertificateClient,
    name: &str,
    version: Option<&str>,
    scrub: &[&str],
) -> Result<FetchedCertificate, VaultError> {
    let options = CertificateClientGetCertificateOptions {
        certificate_version: version.map(str::to_owned),
        ..Default::default()
    };
    let cert = client
        .get_certificate(name, Some(options))
        .await
        .map_err(|e| VaultError::from_sdk(&e, scrub))?
        .into_model()
        .map_err(|e| unreadable(&e, scrub))?;
    let version = last_segment(cert.id.as_deref())
        .ok_or_else(|| VaultError::new(ErrorKind::Internal, "Key Vault returned no id"))?;
    let der = cert
        .cer
        .ok_or_else(|| VaultError::new(ErrorKind::Internal, "Key Vault returned no cer"))?;
    let validity = cert
        .attributes
        .as_ref()
        .map(|a| Validity {
            enabled: a.enabled,
            not_before: a.not_before,
            expires: a.expires,
        })
        .unwrap_or_default();
    Ok(FetchedCertificate {
        version,
        der,
        validity,
    })
}

/// Every version of an object (needs the list permission), in the order Key Vault lists them.
pub async fn list_versions(
    client: &VaultClient,
    object_type: ObjectType,
    name: &str,
    scrub: &[&str],
) -> Result<Vec<VersionInfo>, VaultError> {
    let sdk = |e: azure_core::Error| VaultError::from_sdk(&e, scrub);
    // One version's entry from its id (the version is the last path segment) and attributes.
    let info = |id: Option<&str>, created: Option<time::OffsetDateTime>, enabled: Option<bool>| {
        last_segment(id).map(|version| VersionInfo {
            version,
            created: created.map(|t| t.unix_timestamp()).unwrap_or(0),
            enabled: enabled.unwrap_or(true),
        })
    };
    let mut out = Vec::new();
    match object_type {
        ObjectType::Secret => {
            let mut pager = client
                .secrets
                .list_secret_properties_versions(name, None)
                .map_err(sdk)?;
            while let Some(item) = pager.try_next().await.map_err(sdk)? {
                let a = item.attributes.as_ref();
                out.extend(info(
                    item.id.as_deref(),
                    a.and_then(|a| a.created),
                    a.and_then(|a| a.enabled),
                ));
            }
        }
        ObjectType::Key => {
            let mut pager = client
                .keys
                .list_key_properties_versions(name, None)
                .map_err(sdk)?;
            while let Some(item) = pager.try_next().await.map_err(sdk)? {
                let a = item.attributes.as_ref();
                out.extend(info(
                    item.kid.as_deref(),
                    a.and_then(|a| a.created),
                    a.and_then(|a| a.enabled),
                ));
            }
        }
        ObjectType::Cert => {
            let mut pager = client
                .certificates
                .list_certificate_properties_versions(name, None)
                .map_err(sdk)?;
            while let Some(item) = pager.try_next().await.map_err(sdk)? {
                let a = item.attributes.as_ref();
                out.extend(info(
                    item.id.as_deref(),
                    a.and_then(|a| a.created),
                    a.and_then(|a| a.enabled),
                ));
            }
        }
    }
    Ok(out)
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

    #[test]
    fn roots_are_the_system_store_plus_the_ca_file() {
        let system = trusted_roots(&ConnectorConfig::default()).expect("system roots");
        let with_ca = trusted_roots(&ConnectorConfig {
            extra_roots_pem: include_bytes!("../testdata/legacy-cert.pem").to_vec(),
            ..Default::default()
        })
        .expect("with --ca-file");
        assert_eq!(with_ca.len(), system.len() + 1);
        for bad in [
            &b"not a certificate"[..],
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        ] {
            let err = trusted_roots(&ConnectorConfig {
                extra_roots_pem: bad.to_vec(),
                ..Default::default()
            })
            .expect_err("not PEM certificates");
            assert!(matches!(err, ConfigError::CaFile(_)), "{err}");
        }
    }
}
