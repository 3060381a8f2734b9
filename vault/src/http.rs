//! How kvmount reaches Key Vault and Entra ID: where they are ([`ConnectorConfig`]), the
//! trusted roots (the system's and `--ca-file`'s), `--resolve` host overrides, and the reqwest
//! clients (rustls with ring, HTTP/2 where offered) built from them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::preauth::{NoteOpen, Opening, POOL_IDLE};

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

/// The system's trusted roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle,
/// as rustls-native-certs finds them) plus the `--ca-file` roots. Reading and parsing the
/// system store costs tens of milliseconds, so it is done once per connector, not per client.
pub(crate) fn trusted_roots(
    config: &ConnectorConfig,
) -> Result<Vec<reqwest::Certificate>, ConfigError> {
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
pub(crate) struct VaultHttp {
    pub(crate) http: reqwest::Client,
    pub(crate) opening: Arc<Opening>,
}

/// Builds an HTTP client that trusts `roots` only, with the configured host overrides; a
/// vault's client marks `opening` open when it has connected.
pub(crate) fn build_http(
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
