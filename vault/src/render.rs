//! Turns what Key Vault returned into file contents, per the class's options.

use base64::Engine;

use crate::error::{ErrorKind, VaultError};
use crate::params::{ObjectEncoding, ObjectFormat, ObjectSpec};
use crate::read::FetchedSecret;
use crate::secret::{SecretBytes, SecretString};

/// Content type Key Vault gives secrets that back PKCS#12 certificates.
pub const CONTENT_TYPE_PKCS12: &str = "application/x-pkcs12";

/// The bytes of an object's file, and of the side files `certKeyFiles` adds (`.crt`, `.key`).
#[derive(Debug, Default)]
pub struct RenderedParts {
    /// The file at the object's alias.
    pub main: SecretBytes,
    /// `(suffix, contents)`: appended to the alias, e.g. `("crt", ...)` is `<alias>.crt`.
    pub side: Vec<(&'static str, SecretBytes)>,
}

fn format_error(what: &str, e: crate::pem::FormatError) -> VaultError {
    VaultError::new(
        ErrorKind::InvalidArgument,
        format!("the certificate secret is not valid {what}: {e}"),
    )
}

/// Renders a secret object into the bytes of its file(s). Errors do not name the object: the
/// caller's [`crate::ObjectError`] does, once.
///
/// A secret that backs a certificate (it has a `kid`) is written the way the Azure provider
/// does, except that a PEM-stored chain is put leaf first:
/// - PKCS#12-stored: with `objectFormat: pfx` the base64 PFX as stored (the binary PFX with
///   `objectEncoding: base64`); else PEM: the private key (PKCS#8) then the certificates, leaf
///   to root;
/// - PEM-stored: the private key block(s), then the certificates leaf to root (unchanged when
///   stored in that order).
pub fn render_secret(
    spec: &ObjectSpec,
    secret: FetchedSecret,
) -> Result<RenderedParts, VaultError> {
    if !secret.backs_certificate {
        return render_plain_secret(spec, secret);
    }
    let pkcs12 = secret
        .content_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(CONTENT_TYPE_PKCS12));
    match (pkcs12, spec.format) {
        (true, ObjectFormat::Pfx) => Ok(RenderedParts {
            main: decode(spec, secret.value)?,
            side: Vec::new(),
        }),
        (true, _) => render_pkcs12(spec, secret.value),
        (false, ObjectFormat::Pfx) => Err(VaultError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} pfx needs a certificate stored as PKCS#12 (contentType {CONTENT_TYPE_PKCS12}); this one is stored as {}; use pem",
                spec.field("objectFormat"),
                secret.content_type.as_deref().unwrap_or("PEM")
            ),
        )),
        (false, _) => render_pem_certificate(spec, secret.value.into()),
    }
}

/// A secret that backs no certificate: its value, decoded as the class asks.
fn render_plain_secret(
    spec: &ObjectSpec,
    secret: FetchedSecret,
) -> Result<RenderedParts, VaultError> {
    if spec.cert_key_files {
        return Err(VaultError::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} needs a secret that backs a certificate; this secret has no kid",
                spec.field("certKeyFiles")
            ),
        ));
    }
    Ok(RenderedParts {
        main: decode(spec, secret.value)?,
        side: Vec::new(),
    })
}

/// A certificate kept as PKCS#12 (base64 in the secret), as PEM: the key, then the chain;
/// with `certKeyFiles`, the chain and the key as side files too.
fn render_pkcs12(spec: &ObjectSpec, value: SecretString) -> Result<RenderedParts, VaultError> {
    let pfx = SecretBytes::new(
        base64::engine::general_purpose::STANDARD
            .decode(value.expose().trim())
            .map_err(|_| {
                VaultError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the certificate secret is marked {CONTENT_TYPE_PKCS12} but is not base64"
                    ),
                )
            })?,
    );
    let contents = crate::pem::read_pkcs12(pfx.expose()).map_err(|e| format_error("PKCS#12", e))?;
    let key = crate::pem::key_pem(&contents);
    let certs = crate::pem::certs_pem(&contents.certs);
    let mut main = key.expose().to_vec();
    main.extend_from_slice(&certs);
    let side = if spec.cert_key_files {
        vec![("crt", SecretBytes::new(certs)), ("key", key)]
    } else {
        Vec::new()
    };
    Ok(RenderedParts {
        main: SecretBytes::new(main),
        side,
    })
}

/// A certificate kept as PEM: its blocks in chain order; with `certKeyFiles`, the
/// certificates and the key as side files too.
fn render_pem_certificate(
    spec: &ObjectSpec,
    value: SecretBytes,
) -> Result<RenderedParts, VaultError> {
    let main =
        crate::pem::normalize_pem_chain(value.expose()).map_err(|e| format_error("PEM", e))?;
    if !spec.cert_key_files {
        return Ok(RenderedParts {
            main,
            side: Vec::new(),
        });
    }
    let blocks = crate::pem::parse_pem(main.expose()).map_err(|e| format_error("PEM", e))?;
    let mut crt = Vec::new();
    let mut key = Vec::new();
    for b in &blocks {
        let text = &main.expose()[b.range.clone()];
        let out = if b.label == "CERTIFICATE" {
            &mut crt
        } else {
            &mut key
        };
        out.extend_from_slice(text);
        if !text.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    let side = vec![
        ("crt", SecretBytes::new(crt)),
        ("key", SecretBytes::new(key)),
    ];
    Ok(RenderedParts { main, side })
}

fn decode(spec: &ObjectSpec, value: SecretString) -> Result<SecretBytes, VaultError> {
    let invalid = |what: &str| {
        VaultError::new(
            ErrorKind::InvalidArgument,
            format!(
                "the value is not valid {what} ({} is {what}); check the object's encoding",
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
            validity: Default::default(),
        }
    }

    #[test]
    fn encodings() {
        let out = render_secret(&spec("utf-8"), fetched("héllo")).expect("utf8");
        assert_eq!(out.main.expose(), "héllo".as_bytes());
        let out = render_secret(&spec("base64"), fetched("AAEC/w==")).expect("b64");
        assert_eq!(out.main.expose(), &[0, 1, 2, 255]);
        let out = render_secret(&spec("hex"), fetched("00ff10")).expect("hex");
        assert_eq!(out.main.expose(), &[0, 255, 16]);
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
