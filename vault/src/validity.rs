//! Whether an object version may be written: Key Vault's `enabled`, `nbf` and `exp`
//! attributes, read from whichever object type returned them, checked before anything is
//! written.

use time::OffsetDateTime;

use crate::error::{ErrorKind, VaultError};

/// The attributes Key Vault keeps on every version of a secret, key or certificate (each SDK
/// crate has its own type with these fields).
pub trait VersionAttributes {
    /// `attributes.enabled` (absent means enabled).
    fn enabled(&self) -> Option<bool>;
    /// `attributes.nbf`.
    fn not_before(&self) -> Option<OffsetDateTime>;
    /// `attributes.exp`.
    fn expires(&self) -> Option<OffsetDateTime>;
    /// `attributes.created`.
    fn created(&self) -> Option<OffsetDateTime>;
}

/// Validity attributes of an object version, checked before anything is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validity {
    /// `attributes.enabled` (absent means enabled).
    pub enabled: Option<bool>,
    /// `attributes.nbf`.
    pub not_before: Option<OffsetDateTime>,
    /// `attributes.exp`.
    pub expires: Option<OffsetDateTime>,
}

impl Validity {
    /// The validity of a version from its attributes; no attributes: no restriction.
    pub fn of(attributes: Option<&impl VersionAttributes>) -> Self {
        attributes.map_or_else(Self::default, |a| Self {
            enabled: a.enabled(),
            not_before: a.not_before(),
            expires: a.expires(),
        })
    }

    /// Refuses disabled, expired and not-yet-valid versions, as a PermissionDenied naming the
    /// version and the time (the caller names the object).
    pub fn check(&self, version: &str) -> Result<(), VaultError> {
        let now = OffsetDateTime::now_utc();
        let when = |t: OffsetDateTime| {
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
