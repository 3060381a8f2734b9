//! Reading objects through the official SDK clients: one vault's [`VaultClient`] and what its
//! reads return (value or public part, version, [`Validity`]).

use std::pin::pin;

use azure_security_keyvault_certificates::CertificateClient;
use azure_security_keyvault_certificates::models::{
    CertificateAttributes, CertificateClientGetCertificateOptions,
};
use azure_security_keyvault_keys::KeyClient;
use azure_security_keyvault_keys::models::{
    CurveName, JsonWebKey, KeyAttributes, KeyClientGetKeyOptions, KeyType,
};
use azure_security_keyvault_secrets::SecretClient;
use azure_security_keyvault_secrets::models::{SecretAttributes, SecretClientGetSecretOptions};
use futures::{TryStream, TryStreamExt as _};
use time::OffsetDateTime;

use crate::error::{ErrorKind, VaultError};
use crate::params::ObjectType;
use crate::pem::PublicKey;
use crate::secret::{SecretBytes, SecretString};
use crate::validity::{Validity, VersionAttributes};

/// The clients of one vault: secrets, keys and certificates, sharing one credential and one
/// HTTP client (the connector makes them).
pub struct VaultClient {
    /// Secrets (and the secrets behind certificates).
    secrets: SecretClient,
    /// Keys (public parts only are read).
    keys: KeyClient,
    /// Certificates.
    certificates: CertificateClient,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient").finish_non_exhaustive()
    }
}

/// A secret as fetched: value and the metadata rendering needs.
#[derive(Debug)]
pub struct FetchedSecret {
    /// The value as Key Vault returned it.
    pub value: SecretString,
    /// The version id (last segment of the Key Vault id).
    pub version: String,
    /// `contentType`, if set.
    pub content_type: Option<String>,
    /// True when the secret backs a certificate (it has a `kid`).
    pub backs_certificate: bool,
    /// enabled / nbf / exp.
    pub validity: Validity,
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

impl VaultClient {
    /// The clients of one vault.
    pub(crate) fn new(
        secrets: SecretClient,
        keys: KeyClient,
        certificates: CertificateClient,
    ) -> Self {
        Self {
            secrets,
            keys,
            certificates,
        }
    }

    /// The SDK's secrets client itself, for what kvmount does not read (`dev` writes a new
    /// version with it).
    pub fn secrets(&self) -> &SecretClient {
        &self.secrets
    }

    /// Reads one secret (newest when `version` is `None`).
    pub async fn read_secret(
        &self,
        name: &str,
        version: Option<&str>,
        scrub: &[&str],
    ) -> Result<FetchedSecret, VaultError> {
        let options = SecretClientGetSecretOptions {
            secret_version: version.map(str::to_owned),
            ..Default::default()
        };
        let secret = self
            .secrets
            .get_secret(name, Some(options))
            .await
            .map_err(|e| VaultError::from_sdk(&e, scrub))?
            .into_model()
            .map_err(|e| unreadable(&e, scrub))?;
        let value = secret
            .value
            .map(SecretString::new)
            .ok_or_else(|| missing("value"))?;
        let version = last_segment(secret.id.as_deref()).ok_or_else(|| missing("id"))?;
        Ok(FetchedSecret {
            value,
            version,
            content_type: secret.content_type,
            backs_certificate: secret.kid.is_some(),
            validity: Validity::of(secret.attributes.as_ref()),
        })
    }

    /// Reads a key's public part (newest when `version` is `None`) as a PKIX `PUBLIC KEY` PEM.
    pub async fn read_key(
        &self,
        name: &str,
        version: Option<&str>,
        scrub: &[&str],
    ) -> Result<FetchedKey, VaultError> {
        let options = KeyClientGetKeyOptions {
            key_version: version.map(str::to_owned),
            ..Default::default()
        };
        let key = self
            .keys
            .get_key(name, Some(options))
            .await
            .map_err(|e| VaultError::from_sdk(&e, scrub))?
            .into_model()
            .map_err(|e| unreadable(&e, scrub))?;
        let jwk = key.key.ok_or_else(|| missing("key"))?;
        let version = last_segment(jwk.kid.as_deref()).ok_or_else(|| missing("kid"))?;
        let pem = crate::pem::public_key_pem(public_key(&jwk)?)
            .map_err(|e| VaultError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        Ok(FetchedKey {
            version,
            pem: SecretBytes::new(pem),
            validity: Validity::of(key.attributes.as_ref()),
        })
    }

    /// Reads a certificate's `cer` (newest when `version` is `None`).
    pub async fn read_certificate(
        &self,
        name: &str,
        version: Option<&str>,
        scrub: &[&str],
    ) -> Result<FetchedCertificate, VaultError> {
        let options = CertificateClientGetCertificateOptions {
            certificate_version: version.map(str::to_owned),
            ..Default::default()
        };
        let cert = self
            .certificates
            .get_certificate(name, Some(options))
            .await
            .map_err(|e| VaultError::from_sdk(&e, scrub))?
            .into_model()
            .map_err(|e| unreadable(&e, scrub))?;
        let version = last_segment(cert.id.as_deref()).ok_or_else(|| missing("id"))?;
        let der = cert.cer.ok_or_else(|| missing("cer"))?;
        Ok(FetchedCertificate {
            version,
            der,
            validity: Validity::of(cert.attributes.as_ref()),
        })
    }

    /// Every version of an object (needs the list permission), in the order Key Vault lists
    /// them.
    pub async fn list_versions(
        &self,
        object_type: ObjectType,
        name: &str,
        scrub: &[&str],
    ) -> Result<Vec<VersionInfo>, VaultError> {
        let sdk = |e: azure_core::Error| VaultError::from_sdk(&e, scrub);
        match object_type {
            ObjectType::Secret => {
                let pager = self
                    .secrets
                    .list_secret_properties_versions(name, None)
                    .map_err(sdk)?;
                versions(pager, |s| (s.id.as_deref(), s.attributes.as_ref()), scrub).await
            }
            ObjectType::Key => {
                let pager = self
                    .keys
                    .list_key_properties_versions(name, None)
                    .map_err(sdk)?;
                versions(pager, |k| (k.kid.as_deref(), k.attributes.as_ref()), scrub).await
            }
            ObjectType::Cert => {
                let pager = self
                    .certificates
                    .list_certificate_properties_versions(name, None)
                    .map_err(sdk)?;
                versions(pager, |c| (c.id.as_deref(), c.attributes.as_ref()), scrub).await
            }
        }
    }
}

/// The pages of a version list, one [`VersionInfo`] per item that has an id; `entry` gives an
/// item's id (the version is its last path segment) and attributes.
async fn versions<T, A: VersionAttributes>(
    pager: impl TryStream<Ok = T, Error = azure_core::Error>,
    entry: impl Fn(&T) -> (Option<&str>, Option<&A>),
    scrub: &[&str],
) -> Result<Vec<VersionInfo>, VaultError> {
    let mut pager = pin!(pager.into_stream());
    let mut out = Vec::new();
    while let Some(item) = pager
        .try_next()
        .await
        .map_err(|e| VaultError::from_sdk(&e, scrub))?
    {
        let (id, attributes) = entry(&item);
        out.extend(last_segment(id).map(|version| {
            VersionInfo {
                version,
                created: attributes
                    .and_then(A::created)
                    .map_or(0, OffsetDateTime::unix_timestamp),
                enabled: attributes.and_then(A::enabled).unwrap_or(true),
            }
        }));
    }
    Ok(out)
}

/// A JSON Web Key's public part, for [`crate::pem::public_key_pem`].
fn public_key(jwk: &JsonWebKey) -> Result<PublicKey<'_>, VaultError> {
    Ok(match &jwk.kty {
        Some(KeyType::Rsa | KeyType::RsaHsm) => PublicKey::Rsa {
            n: jwk.n.as_deref().ok_or_else(|| missing("n"))?,
            e: jwk.e.as_deref().ok_or_else(|| missing("e"))?,
        },
        Some(KeyType::Ec | KeyType::EcHsm) => PublicKey::Ec {
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
    })
}

/// The version of a Key Vault id: its last path segment.
fn last_segment(id: Option<&str>) -> Option<String> {
    id.and_then(|id| id.trim_end_matches('/').rsplit('/').next())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// An answer without a field every answer has.
fn missing(what: &str) -> VaultError {
    VaultError::new(ErrorKind::Internal, format!("Key Vault returned no {what}"))
}

/// An answer the SDK could not decode.
fn unreadable(e: &azure_core::Error, scrub: &[&str]) -> VaultError {
    VaultError::new(
        ErrorKind::Internal,
        format!(
            "unreadable answer from Key Vault: {}",
            VaultError::from_sdk(e, scrub)
        ),
    )
}

/// The three SDK attribute types have the same fields.
macro_rules! version_attributes {
    ($($sdk:ty),+) => {$(
        impl VersionAttributes for $sdk {
            fn enabled(&self) -> Option<bool> {
                self.enabled
            }
            fn not_before(&self) -> Option<OffsetDateTime> {
                self.not_before
            }
            fn expires(&self) -> Option<OffsetDateTime> {
                self.expires
            }
            fn created(&self) -> Option<OffsetDateTime> {
                self.created
            }
        }
    )+};
}

version_attributes!(SecretAttributes, KeyAttributes, CertificateAttributes);
