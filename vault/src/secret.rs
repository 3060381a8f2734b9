//! Memory types for secret material: zeroed on drop, never printed.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Secret bytes (a rendered file, a decoded value). Zeroed when dropped; `Debug` shows the length only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes. Callers must not copy them into memory that is not zeroed.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<SecretString> for SecretBytes {
    fn from(mut value: SecretString) -> Self {
        // Moves the String's buffer; nothing is copied.
        let inner = std::mem::take(&mut *value.0);
        Self::new(inner.into_bytes())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted, {} bytes>)", self.0.len())
    }
}

/// A secret string (a client secret, a service-account token, a secret value as Key Vault returns it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `value` without copying it.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret text. Callers must not log it or copy it into memory that is not zeroed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Zeroes the value in place, leaving an empty string.
    pub fn clear(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString(<redacted, {} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretString::new("canary-value".into());
        let b = SecretBytes::new(b"canary-bytes".to_vec());
        let printed = format!("{s:?} {b:?}");
        assert!(!printed.contains("canary"));
        assert!(printed.contains("12 bytes"));
    }

    #[test]
    fn string_to_bytes_moves_without_copy() {
        let s = SecretString::new("abc".into());
        let b: SecretBytes = s.into();
        assert_eq!(b.expose(), b"abc");
    }
}
