//! Fetching and rendering every object of a mount: concurrently, all or nothing.

use futures::future::try_join_all;

use crate::client::{Connector, get_secret};
use crate::error::{ErrorKind, VaultError};
use crate::params::{Auth, MountParams, ObjectSpec, ObjectType};
use crate::render::render_secret;
use crate::secret::SecretBytes;

/// One file of a rendered object.
#[derive(Debug)]
pub struct RenderedFile {
    /// Path relative to the volume (validated).
    pub path: String,
    /// File mode, 0..=0o777.
    pub mode: u32,
    /// The contents.
    pub contents: SecretBytes,
}

/// An object as it will appear in the volume.
#[derive(Debug)]
pub struct RenderedObject {
    /// `ObjectVersion.id`, e.g. `secret/db-password`.
    pub id: String,
    /// The Key Vault version that was read.
    pub version: String,
    /// Its files (one, for secrets).
    pub files: Vec<RenderedFile>,
}

/// A failure for one object of a mount.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{object}: {error}")]
pub struct ObjectError {
    /// `<type>/<name>` of the object (or the vault, for failures before any object).
    pub object: String,
    /// What went wrong.
    pub error: VaultError,
}

impl ObjectError {
    /// Classification of the failure.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind
    }
}

/// The strings no message may contain for this mount.
pub fn scrub_list(auth: &Auth) -> Vec<&str> {
    match auth {
        Auth::WorkloadIdentity { token, .. } => vec![token.expose()],
        Auth::ServicePrincipal { client_secret, .. } => vec![client_secret.expose()],
    }
}

/// An object read from Key Vault and rendered (per encoding and format), before the volume's
/// choices (file name, mode) are applied.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    /// The Key Vault version that was read.
    pub version: String,
    /// The rendered bytes.
    pub contents: SecretBytes,
}

/// Fetches and renders every object in `params`, concurrently; the first failure fails all.
/// One credential and one client for the whole mount; no caching across calls.
pub async fn fetch_all(
    connector: &Connector,
    params: &MountParams,
) -> Result<Vec<RenderedObject>, ObjectError> {
    let vault_failure = |error: VaultError| ObjectError {
        object: format!("vault {}", params.keyvault_name),
        error,
    };
    let credential = connector
        .credential(&params.tenant_id, &params.auth)
        .map_err(vault_failure)?;
    let client = connector
        .secret_client(&params.keyvault_name, credential)
        .map_err(vault_failure)?;
    let scrub = scrub_list(&params.auth);
    let fetches = params.objects.iter().map(|spec| {
        let client = &client;
        let scrub = &scrub;
        async move {
            let fetched = fetch_object(client, spec, scrub)
                .await
                .map_err(|error| ObjectError {
                    object: spec.id(),
                    error,
                })?;
            Ok(rendered_object(spec, &fetched, params.default_mode))
        }
    });
    try_join_all(fetches).await
}

/// Reads one object and renders its bytes.
pub async fn fetch_object(
    client: &azure_security_keyvault_secrets::SecretClient,
    spec: &ObjectSpec,
    scrub: &[&str],
) -> Result<FetchedObject, VaultError> {
    if spec.object_type != ObjectType::Secret {
        return Err(VaultError::new(
            ErrorKind::Unimplemented,
            format!(
                "{}: objectType {} is not supported by this kvmount release; accepted: secret",
                spec.field("objectType"),
                spec.object_type
            ),
        ));
    }
    let fetched = get_secret(client, &spec.name, spec.version.as_deref(), scrub).await?;
    tracing::debug!(object = %spec.id(), version = %fetched.version, "fetched");
    let version = fetched.version.clone();
    let contents = render_secret(spec, fetched)?;
    Ok(FetchedObject { version, contents })
}

/// The files of `object` as the volume will show them (alias, mode).
pub fn rendered_object(
    spec: &ObjectSpec,
    object: &FetchedObject,
    default_mode: u32,
) -> RenderedObject {
    RenderedObject {
        id: spec.id(),
        version: object.version.clone(),
        files: vec![RenderedFile {
            path: spec.file_name().to_owned(),
            mode: spec.file_mode.unwrap_or(default_mode),
            contents: object.contents.clone(),
        }],
    }
}
