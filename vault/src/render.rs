//! Turns what Key Vault returned into file contents, per the class's options.

use base64::Engine;

use crate::error::{ErrorKind, VaultError};
use crate::params::{ObjectEncoding, ObjectFormat, ObjectSpec};
use crate::secret::{SecretBytes, SecretString};

/// Content type Key Vault gives secrets that back PKCS#12 certificates.
pub const CONTENT_TYPE_PKCS12: &str = "application/x-pkcs12";

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
}

/// Renders a secret object into the bytes of its file.
pub fn render_secret(spec: &ObjectSpec, secret: FetchedSecret) -> Result<SecretBytes, VaultError> {
    let pkcs12 = secret.backs_certificate
        && secret
            .content_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(CONTENT_TYPE_PKCS12));
    if pkcs12 && spec.format == ObjectFormat::Pem {
        return Err(VaultError::new(
            ErrorKind::Unimplemented,
            format!(
                "{}: converting a PKCS#12 certificate to PEM is not supported by this kvmount release; set objectFormat: pfx to receive the PFX",
                spec.id()
            ),
        ));
    }
    decode(spec, secret.value)
}

fn decode(spec: &ObjectSpec, value: SecretString) -> Result<SecretBytes, VaultError> {
    let invalid = |what: &str| {
        VaultError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{}: the value is not valid {what} ({} is {what}); check the object's encoding",
                spec.id(),
                spec.field("objectEncoding")
            ),
        )
    };
    match spec.encoding {
        ObjectEncoding::Utf8 => Ok(value.into()),
        ObjectEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(value.expose().trim())
            .map(SecretBytes::new)
            .map_err(|_| invalid("base64")),
        ObjectEncoding::Hex => hex::decode(value.expose().trim())
            .map(SecretBytes::new)
            .map_err(|_| invalid("hex")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ObjectType, parse_objects};

    fn spec(encoding: &str) -> ObjectSpec {
        let yaml = format!(
            "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectEncoding: {encoding}\n"
        );
        let mut v = parse_objects(&yaml).expect("valid");
        assert_eq!(v[0].object_type, ObjectType::Secret);
        v.remove(0)
    }

    fn fetched(value: &str) -> FetchedSecret {
        FetchedSecret {
            value: SecretString::new(value.into()),
            version: "v1".into(),
            content_type: None,
            backs_certificate: false,
        }
    }

    #[test]
    fn encodings() {
        let out = render_secret(&spec("utf-8"), fetched("héllo")).expect("utf8");
        assert_eq!(out.expose(), "héllo".as_bytes());
        let out = render_secret(&spec("base64"), fetched("AAEC/w==")).expect("b64");
        assert_eq!(out.expose(), &[0, 1, 2, 255]);
        let out = render_secret(&spec("hex"), fetched("00ff10")).expect("hex");
        assert_eq!(out.expose(), &[0, 255, 16]);
    }

    #[test]
    fn undecodable_values_are_named_but_not_echoed() {
        let err = render_secret(&spec("base64"), fetched("canary!!")).expect_err("bad");
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains("objects[0].objectEncoding"));
        assert!(!err.message.contains("canary"));
        let err = render_secret(&spec("hex"), fetched("canaryzz")).expect_err("bad");
        assert!(!err.message.contains("canary"));
    }
}
