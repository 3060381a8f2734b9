//! The webhook's other Kubernetes API calls (SecretProviderClass lookups are
//! `kvmount_k8s::ClassResolver`'s, whose client and credentials these share):
//!
//! - the client ID a service account carries for Azure Workload Identity
//!   (`azure.workload.identity/client-id`), when the webhook may read service accounts;
//! - the `caBundle` of the webhook's own MutatingWebhookConfiguration (self-managed TLS).

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

/// The service-account annotation Azure Workload Identity reads the client ID from.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// Bound on one call.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API server answered with an error status.
    #[error("{what}: the API server answered {code} ({reason})")]
    Status {
        /// What was asked.
        what: String,
        /// HTTP status.
        code: u16,
        /// The API server's reason.
        reason: String,
    },
    /// No answer in time, or a transport failure.
    #[error("{what}: {message}")]
    Unavailable {
        /// What was asked.
        what: String,
        /// What happened.
        message: String,
    },
}

fn api_error(what: String, e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) => ApiError::Status {
            what,
            code: status.code,
            reason: status.reason,
        },
        other => ApiError::Unavailable {
            what,
            message: other.to_string(),
        },
    }
}

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| api_error(what.to_owned(), e)),
        Err(_) => Err(ApiError::Unavailable {
            what: what.to_owned(),
            message: format!("no answer within {TIMEOUT:?}"),
        }),
    }
}

/// The `azure.workload.identity/client-id` of service account `namespace/name`; `Ok(None)`
/// when it has none or does not exist.
pub async fn service_account_client_id(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let what = format!("ServiceAccount {namespace}/{name}");
    match bounded(&what, api.get_opt(name)).await? {
        None => Ok(None),
        Some(sa) => Ok(sa
            .metadata
            .annotations
            .and_then(|a| a.get(CLIENT_ID_ANNOTATION).cloned())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())),
    }
}

/// Sets `caBundle` (the PEM, base64-encoded) on every webhook of MutatingWebhookConfiguration
/// `name`; returns how many webhooks it updated. A concurrent change (409) is retried once
/// with a fresh read.
pub async fn patch_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<usize, ApiError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    let bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut config = bounded(&what, api.get(name)).await?;
        let webhooks = config.webhooks.get_or_insert_with(Vec::new);
        for w in webhooks.iter_mut() {
            w.client_config.ca_bundle = Some(bundle.clone());
        }
        let count = webhooks.len();
        match bounded(&what, api.replace(name, &PostParams::default(), &config)).await {
            Ok(_) => {
                tracing::info!(configuration = name, webhooks = count, ca_sha256 = %ca_digest(ca_pem), "caBundle set");
                return Ok(count);
            }
            Err(ApiError::Status { code: 409, .. }) if attempt < 3 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A short digest of the CA for logs.
fn ca_digest(ca_pem: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(&d.as_ref()[..9])
}
