//! The one error type of this crate and the gRPC-style kind each variant maps to.

use std::error::Error as StdError;

/// What went wrong, in the terms a caller maps to a gRPC status code.
///
/// The provider turns these into `tonic::Code` in one place; this crate does not
/// depend on tonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The SecretProviderClass does not exist in that namespace.
    NotFound,
    /// The API server refused our credentials or our RBAC does not allow the read.
    PermissionDenied,
    /// The caller passed a namespace or name that cannot exist.
    InvalidArgument,
    /// The API server could not be reached or answered with a transient error; retrying may help.
    Unavailable,
    /// The cluster or the client configuration is not in a usable state; a person must fix it.
    FailedPrecondition,
}

/// Why a SecretProviderClass could not be resolved.
///
/// Messages name the namespace, the name and the field at fault; they never carry
/// tokens, client keys or other kubeconfig credentials.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The API server answered 404: no SecretProviderClass of that name in that namespace
    /// (or the CRD is not installed).
    #[error("SecretProviderClass {namespace}/{name} not found")]
    NotFound {
        /// The namespace that was searched.
        namespace: String,
        /// The class name that was asked for.
        name: String,
    },

    /// The API server answered 403: our identity may not `get` secretproviderclasses there.
    #[error("not allowed to read SecretProviderClass {namespace}/{name}: {message}")]
    Forbidden {
        /// The namespace that was searched.
        namespace: String,
        /// The class name that was asked for.
        name: String,
        /// The API server's explanation (names the user, verb and resource).
        message: String,
    },

    /// The API server answered 401: the token or client certificate was not accepted.
    #[error("the Kubernetes API server rejected our credentials: {message}")]
    Unauthorized {
        /// The API server's explanation.
        message: String,
    },

    /// A namespace or name is not a valid DNS-1123 label/subdomain; no request was sent.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName {
        /// Which argument was wrong: `"namespace"` or `"name"`.
        field: &'static str,
        /// The value as given.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },

    /// The object exists but is not a SecretProviderClass we can use.
    #[error("SecretProviderClass {namespace}/{name}: {field}: {message}")]
    InvalidObject {
        /// The namespace of the object.
        namespace: String,
        /// The name of the object.
        name: String,
        /// The JSON path at fault, e.g. `spec.parameters.objects`.
        field: String,
        /// What was wrong and what is expected.
        message: String,
    },

    /// The API server answered a status this crate does not expect for a GET (e.g. 400, 405, 410).
    #[error(
        "the Kubernetes API server answered {code} for SecretProviderClass {namespace}/{name}: {message}"
    )]
    Rejected {
        /// The namespace that was searched.
        namespace: String,
        /// The class name that was asked for.
        name: String,
        /// The HTTP status code.
        code: u16,
        /// The API server's message.
        message: String,
    },

    /// The API server could not be reached, timed out, or answered 408/429/5xx.
    #[error("Kubernetes API unavailable: {message}")]
    Unavailable {
        /// What failed (connect, TLS, timeout, server status).
        message: String,
    },

    /// The client could not be configured (kubeconfig, in-cluster environment, TLS setup).
    #[error("Kubernetes client configuration: {message}")]
    Config {
        /// What is missing or malformed; never the credentials themselves.
        message: String,
    },
}

impl LookupError {
    /// The gRPC-style kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Forbidden { .. } | Self::Unauthorized { .. } => ErrorKind::PermissionDenied,
            Self::InvalidName { .. } => ErrorKind::InvalidArgument,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::InvalidObject { .. } | Self::Rejected { .. } | Self::Config { .. } => {
                ErrorKind::FailedPrecondition
            }
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
        }
    }

    /// Maps an error from a GET of `namespace/name` sent to `server` (`host:port`).
    pub(crate) fn from_kube(err: kube::Error, server: &str, namespace: &str, name: &str) -> Self {
        use kube::Error as E;
        match err {
            E::Api(status) => {
                let message = status.message.clone();
                match status.code {
                    404 => Self::NotFound {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    },
                    403 => Self::Forbidden {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        message,
                    },
                    401 => Self::Unauthorized { message },
                    code @ (408 | 429 | 500..=599) => Self::Unavailable {
                        message: format!(
                            "{server} answered {code} for SecretProviderClass {namespace}/{name}: {message}"
                        ),
                    },
                    code => Self::Rejected {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        code,
                        message,
                    },
                }
            }
            E::SerdeError(e) => Self::InvalidObject {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                field: "(object)".to_owned(),
                message: format!("not a Kubernetes object: {e}"),
            },
            e @ (E::Auth(_)
            | E::InferConfig(_)
            | E::InferKubeconfig(_)
            | E::RustlsTls(_)
            | E::TlsRequired
            | E::ProxyProtocolUnsupported { .. }
            | E::ProxyProtocolDisabled { .. }
            | E::BuildRequest(_)) => Self::config(chain(&e)),
            e => Self::Unavailable {
                message: format!(
                    "{server} (SecretProviderClass {namespace}/{name}): {}",
                    chain(&e)
                ),
            },
        }
    }
}

/// The error and its sources, joined with `": "`, skipping a source whose text the
/// message already contains (kube's messages often embed their source).
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let nf = LookupError::NotFound {
            namespace: "a".into(),
            name: "b".into(),
        };
        assert_eq!(nf.kind(), ErrorKind::NotFound);
        assert_eq!(nf.to_string(), "SecretProviderClass a/b not found");
        let inv = LookupError::InvalidName {
            field: "name",
            value: "../x".into(),
            reason: "r",
        };
        assert_eq!(inv.kind(), ErrorKind::InvalidArgument);
        assert_eq!(inv.to_string(), "invalid name \"../x\": r");
        assert_eq!(
            LookupError::config("x").kind(),
            ErrorKind::FailedPrecondition
        );
        assert_eq!(
            LookupError::Unauthorized {
                message: "m".into()
            }
            .kind(),
            ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn status_codes_map_to_variants() {
        let status = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("msg", "Reason")
                    .with_code(code)
                    .boxed(),
            )
        };
        let kind = |code| LookupError::from_kube(status(code), "127.0.0.1:6443", "ns", "n").kind();
        assert_eq!(kind(404), ErrorKind::NotFound);
        assert_eq!(kind(403), ErrorKind::PermissionDenied);
        assert_eq!(kind(401), ErrorKind::PermissionDenied);
        assert_eq!(kind(429), ErrorKind::Unavailable);
        assert_eq!(kind(500), ErrorKind::Unavailable);
        assert_eq!(kind(503), ErrorKind::Unavailable);
        assert_eq!(kind(400), ErrorKind::FailedPrecondition);
    }
}
