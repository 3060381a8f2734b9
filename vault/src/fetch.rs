//! Fetching and rendering every object of a mount: concurrently, all or nothing.

use futures::future::try_join_all;

use crate::client::Connector;
use crate::error::{ErrorKind, VaultError};
use crate::params::{Auth, MountParams, ObjectSpec, ObjectType};
use crate::read::{VaultClient, VersionInfo};
use crate::render::{RenderedParts, render_secret};
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
    /// A failure of the vault of `params` before any object (a credential, a client).
    pub fn of_vault(params: &MountParams, error: VaultError) -> Self {
        Self {
            object: format!("vault {}", params.keyvault_name),
            error,
        }
    }

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
        Auth::ManagedIdentity { .. } => Vec::new(),
    }
}

/// An object read from Key Vault and rendered (per encoding and format), before the volume's
/// choices (file name, mode) are applied.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    /// The Key Vault version that was read; empty for a version-history slot beyond the
    /// versions that exist (no file is written for it).
    pub version: String,
    /// The rendered bytes.
    pub contents: SecretBytes,
    /// Side files (`certKeyFiles`): suffix and bytes.
    pub side: Vec<(&'static str, SecretBytes)>,
    /// False for a version-history slot with no version behind it.
    pub present: bool,
}

/// Fetches and renders every object in `params`, concurrently; the first failure fails all.
/// One credential and one client for the whole mount; no caching across calls.
pub async fn fetch_all(
    connector: &Connector,
    params: &MountParams,
) -> Result<Vec<RenderedObject>, ObjectError> {
    let vault_failure = |error| ObjectError::of_vault(params, error);
    let credential = connector.credential_for(params).map_err(vault_failure)?;
    let client = connector
        .vault_client_for(params, credential)
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

/// The version a history slot stands for: enabled versions newest first (by creation time),
/// starting at `objectVersion` when one is pinned; `Ok(None)` past the last one. A pinned
/// version that is not among the enabled versions is an error.
pub fn history_version(
    mut versions: Vec<VersionInfo>,
    pinned: Option<&str>,
    index: usize,
) -> Result<Option<String>, String> {
    versions.retain(|v| v.enabled);
    versions.sort_by_key(|v| std::cmp::Reverse(v.created));
    let start = match pinned {
        None => 0,
        Some(p) => versions
            .iter()
            .position(|v| v.version.eq_ignore_ascii_case(p))
            .ok_or_else(|| format!("{p} is not among the object's enabled versions"))?,
    };
    Ok(versions.get(start + index).map(|v| v.version.clone()))
}

/// Reads one object and renders its bytes. Errors do not name the object: the caller does,
/// once (as [`ObjectError`] does).
pub async fn fetch_object(
    client: &VaultClient,
    spec: &ObjectSpec,
    scrub: &[&str],
) -> Result<FetchedObject, VaultError> {
    let version = match spec.history {
        None => spec.version.clone(),
        Some(slot) => {
            let versions = client
                .list_versions(spec.object_type, &spec.name, scrub)
                .await?;
            let picked =
                history_version(versions, spec.version.as_deref(), slot.index).map_err(|m| {
                    VaultError::new(
                        ErrorKind::NotFound,
                        format!("{}: {m}", spec.field("objectVersion")),
                    )
                })?;
            match picked {
                Some(v) => Some(v),
                None => {
                    tracing::debug!(object = %spec.id(), "no version for this history slot");
                    return Ok(FetchedObject {
                        version: String::new(),
                        contents: SecretBytes::default(),
                        side: Vec::new(),
                        present: false,
                    });
                }
            }
        }
    };
    let version = version.as_deref();
    let (read_version, parts) = match spec.object_type {
        ObjectType::Secret => {
            let fetched = client.read_secret(&spec.name, version, scrub).await?;
            fetched.validity.check(&fetched.version)?;
            let v = fetched.version.clone();
            (v, render_secret(spec, fetched)?)
        }
        ObjectType::Key => {
            let key = client.read_key(&spec.name, version, scrub).await?;
            key.validity.check(&key.version)?;
            (
                key.version,
                RenderedParts {
                    main: key.pem,
                    side: Vec::new(),
                },
            )
        }
        ObjectType::Cert => {
            let cert = client.read_certificate(&spec.name, version, scrub).await?;
            cert.validity.check(&cert.version)?;
            let pem = crate::pem::pem_encode(crate::pem::PemLabel::Certificate, &cert.der);
            (
                cert.version,
                RenderedParts {
                    main: SecretBytes::new(pem.as_bytes().to_vec()),
                    side: Vec::new(),
                },
            )
        }
    };
    tracing::debug!(object = %spec.id(), version = %read_version, "fetched");
    Ok(FetchedObject {
        version: read_version,
        contents: parts.main,
        side: parts.side,
        present: true,
    })
}

/// The files of `object` as the volume will show them (alias, mode).
pub fn rendered_object(
    spec: &ObjectSpec,
    object: &FetchedObject,
    default_mode: u32,
) -> RenderedObject {
    let mode = spec.file_mode.unwrap_or(default_mode);
    let mut files = Vec::with_capacity(1 + object.side.len());
    if object.present {
        files.push(RenderedFile {
            path: spec.file_name().to_owned(),
            mode,
            contents: object.contents.clone(),
        });
        for (suffix, contents) in &object.side {
            files.push(RenderedFile {
                path: format!("{}.{suffix}", spec.file_name()),
                mode,
                contents: contents.clone(),
            });
        }
    }
    RenderedObject {
        id: spec.id(),
        version: object.version.clone(),
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: &str, created: i64, enabled: bool) -> VersionInfo {
        VersionInfo {
            version: version.into(),
            created,
            enabled,
        }
    }

    #[test]
    fn history_is_newest_first_enabled_only_from_the_pinned_version() {
        let list = vec![
            v("a", 1, true),
            v("c", 3, true),
            v("b", 2, false),
            v("d", 4, true),
        ];
        let pick = |pinned, i| history_version(list.clone(), pinned, i);
        assert_eq!(pick(None, 0), Ok(Some("d".into())));
        assert_eq!(pick(None, 1), Ok(Some("c".into())));
        assert_eq!(pick(None, 2), Ok(Some("a".into())));
        assert_eq!(pick(None, 3), Ok(None));
        assert_eq!(pick(Some("C"), 1), Ok(Some("a".into())));
        assert!(pick(Some("zz"), 0).is_err());
        assert!(pick(Some("b"), 0).is_err(), "disabled");
    }
}
