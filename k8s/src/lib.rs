//! Resolves a SecretProviderClass by namespace and name through the Kubernetes API.
//!
//! One plain GET of
//! `/apis/secrets-store.csi.x-k8s.io/v1/namespaces/{namespace}/secretproviderclasses/{name}`
//! with the `kube` client (no watch, no cache, no controller runtime). Names are
//! checked against the DNS-1123 rules before any request, the whole request is
//! bounded by a timeout, and API statuses become [`LookupError`] variants whose
//! [`ErrorKind`] the provider maps to gRPC codes.
//!
//! What this crate must not do: log tokens, client keys or the kubeconfig's
//! credentials (it logs namespace, name and resourceVersion only), or log the
//! class parameters.

#![forbid(unsafe_code)]

mod class;
mod error;
pub mod names;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

pub use class::{GROUP, KIND, PLURAL, SecretProviderClass, VERSION};
pub use error::{ErrorKind, LookupError};
pub use names::{validate_name, validate_namespace};

/// Default bound on one lookup: connect, TLS, request and response together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads SecretProviderClass objects from one cluster.
///
/// Cheap to clone: clones share the connection pool and credentials (which kube
/// keeps refreshed, e.g. a rotated in-cluster service-account token file).
#[derive(Clone)]
pub struct ClassResolver {
    client: kube::Client,
    resource: ApiResource,
    timeout: Duration,
    /// `host:port` of the API server, for `Debug` and logs (no user info, no path).
    server: String,
}

impl fmt::Debug for ClassResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassResolver")
            .field("server", &self.server)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClassResolver {
    /// Uses the current context of an explicit kubeconfig file (`--kubeconfig`).
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, LookupError> {
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| LookupError::config(kubeconfig_message(path, &e)))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| LookupError::config(kubeconfig_message(path, &e)))?;
        Self::from_config(config, "kubeconfig")
    }

    /// Uses the pod's service account: `KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA
    /// under `/var/run/secrets/kubernetes.io/serviceaccount/` (the token file is re-read as
    /// kubelet rotates it).
    pub async fn in_cluster() -> Result<Self, LookupError> {
        let config = kube::Config::incluster()
            .map_err(|e| LookupError::config(format!("in-cluster: {}", error::chain(&e))))?;
        Self::from_config(config, "in-cluster")
    }

    /// In-cluster when running in a pod, else `$KUBECONFIG` or `~/.kube/config`.
    pub async fn infer() -> Result<Self, LookupError> {
        let in_cluster = match kube::Config::incluster() {
            Ok(config) => return Self::from_config(config, "in-cluster"),
            Err(e) => error::chain(&e),
        };
        match kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await {
            Ok(config) => Self::from_config(config, "kubeconfig"),
            Err(e) => Err(LookupError::config(format!(
                "no in-cluster service account ({in_cluster}) and no usable kubeconfig ({})",
                kubeconfig_message(Path::new("$KUBECONFIG or ~/.kube/config"), &e)
            ))),
        }
    }

    /// The configured Kubernetes client (shares this resolver's connections and credentials),
    /// for callers that read other objects with the same identity.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The same resolver with another bound on each lookup (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reads the SecretProviderClass `name` in `namespace`.
    ///
    /// Both are validated first ([`validate_namespace`], [`validate_name`]); an invalid one
    /// is refused with [`LookupError::InvalidName`] and no request is sent.
    #[tracing::instrument(skip(self), fields(server = %self.server))]
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<SecretProviderClass, LookupError> {
        validate_namespace(namespace)?;
        validate_name(name)?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &self.resource);
        let obj = match tokio::time::timeout(self.timeout, api.get(name)).await {
            Ok(Ok(obj)) => obj,
            Ok(Err(e)) => {
                let err = LookupError::from_kube(e, &self.server, namespace, name);
                tracing::debug!(error = %err, "SecretProviderClass lookup failed");
                return Err(err);
            }
            Err(_elapsed) => {
                tracing::debug!(timeout = ?self.timeout, "SecretProviderClass lookup timed out");
                return Err(LookupError::Unavailable {
                    message: format!(
                        "no answer from {} within {:?} for SecretProviderClass {namespace}/{name}",
                        self.server, self.timeout
                    ),
                });
            }
        };
        let class = SecretProviderClass::from_object(obj, namespace, name)?;
        tracing::debug!(
            resource_version = class.resource_version.as_deref().unwrap_or(""),
            provider = %class.provider,
            "resolved SecretProviderClass"
        );
        Ok(class)
    }

    fn from_config(mut config: kube::Config, source: &'static str) -> Result<Self, LookupError> {
        install_crypto_provider();
        config.connect_timeout = Some(DEFAULT_TIMEOUT);
        config.read_timeout = Some(DEFAULT_TIMEOUT);
        config.write_timeout = Some(DEFAULT_TIMEOUT);
        let server = match (config.cluster_url.host(), config.cluster_url.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => String::new(),
        };
        let client = kube::Client::try_from(config).map_err(|e| {
            LookupError::config(format!(
                "{source} client for {server}: {}",
                error::chain(&e)
            ))
        })?;
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, KIND);
        let resource = ApiResource::from_gvk_with_plural(&gvk, PLURAL);
        tracing::debug!(%server, source, "Kubernetes client configured");
        Ok(Self {
            client,
            resource,
            timeout: DEFAULT_TIMEOUT,
            server,
        })
    }
}

/// kube builds its rustls config with the process-wide default crypto provider, which a
/// binary may not have installed yet (kvmount's HTTP clients install ring through
/// `kvmount_vault::client::use_ring`; this crate does not depend on that one), so install
/// ring unless the program already chose a provider (then this is a no-op).
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only means another thread installed one first: equally fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Describes a kubeconfig error without its content: a YAML parse error can quote the
/// offending line, which may be a token or a key.
fn kubeconfig_message(path: &Path, err: &KubeconfigError) -> String {
    let what = match err {
        KubeconfigError::Parse(_) => "not valid kubeconfig YAML".to_owned(),
        KubeconfigError::ReadConfig(io, _) => format!("cannot read: {io}"),
        other => error::chain(other),
    };
    format!("kubeconfig {}: {what}", path.display())
}
