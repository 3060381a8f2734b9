//! Kubernetes name rules, checked before a name goes into a request path.
//!
//! The same rules as apimachinery's `IsDNS1123Label` (namespaces) and
//! `IsDNS1123Subdomain` (SecretProviderClass names): lower-case ASCII letters,
//! digits and `-` (plus `.` between labels for a subdomain), starting and ending
//! with a letter or digit. Anything else (`/`, `..`, `%`, upper case, empty) cannot
//! name an object, so it is refused here and never reaches the API server's URL.

use crate::LookupError;

/// Longest namespace (a DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest SecretProviderClass name (a DNS-1123 subdomain).
pub const MAX_NAME_LEN: usize = 253;

const LABEL_RULE: &str = "must be 1 to 63 characters of lower-case letters, digits and '-', \
                          starting and ending with a letter or digit (a DNS-1123 label)";
const SUBDOMAIN_RULE: &str = "must be 1 to 253 characters of lower-case letters, digits, '-' and '.', \
                              each '.'-separated part starting and ending with a letter or digit \
                              (a DNS-1123 subdomain)";

/// Checks a namespace: a DNS-1123 label of at most 63 characters.
pub fn validate_namespace(namespace: &str) -> Result<(), LookupError> {
    if is_dns1123_label(namespace) {
        Ok(())
    } else {
        Err(invalid("namespace", namespace, LABEL_RULE))
    }
}

/// Checks a SecretProviderClass name: a DNS-1123 subdomain of at most 253 characters.
pub fn validate_name(name: &str) -> Result<(), LookupError> {
    if is_dns1123_subdomain(name) {
        Ok(())
    } else {
        Err(invalid("name", name, SUBDOMAIN_RULE))
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= MAX_NAMESPACE_LEN && is_label_chars(s)
}

/// DNS-1123 labels joined by `.`, at most 253 characters in all.
///
/// Like apimachinery, the 63-character limit applies to the whole of a label-only
/// check, not to each part of a subdomain.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && s.split('.').all(is_label_chars)
}

fn is_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> LookupError {
    // Echo at most a bounded prefix of what we were given: it may be arbitrary input.
    let value: String = value.chars().take(300).collect();
    LookupError::InvalidName {
        field,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "0", "kube-system", "a-b-c", "x1", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok:?}");
            assert!(validate_namespace(ok).is_ok());
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "Default",
            "a.b",
            "a_b",
            "a/b",
            "..",
            "../..",
            "a b",
            "é",
            "a\n",
            "%2e%2e",
            &"a".repeat(64),
        ] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
            match validate_namespace(bad) {
                Err(LookupError::InvalidName { field, value, .. }) => {
                    assert_eq!(field, "namespace");
                    assert_eq!(value, bad);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn subdomains() {
        let long_part = "a".repeat(100);
        let max = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        assert_eq!(max.len(), 253);
        for ok in [
            "a",
            "app-secrets",
            "azure-kvname",
            "a.b",
            "my.class.v1",
            "0.1",
            &long_part,
            &max,
        ] {
            assert!(is_dns1123_subdomain(ok), "{ok:?}");
            assert!(validate_name(ok).is_ok());
        }
        let too_long = format!("{max}c");
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "..",
            "../..",
            "../kube-system/secrets/x",
            "a/b",
            "a-.b",
            "a.-b",
            "App",
            "a_b",
            "a?b",
            "a#b",
            "a%2fb",
            "a b",
            &too_long,
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
            match validate_name(bad) {
                Err(e @ LookupError::InvalidName { field: "name", .. }) => {
                    assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn echoed_value_is_bounded() {
        let huge = "X".repeat(10_000);
        match validate_name(&huge) {
            Err(LookupError::InvalidName { value, .. }) => assert_eq!(value.len(), 300),
            other => panic!("{other:?}"),
        }
    }
}
