//! The crate's errors: Key Vault and Entra ID failures, classified for the gRPC layer
//! ([`VaultError`]), and parameters that could not be accepted ([`ParamError`], with [`shown`]
//! for the pieces of input a message repeats).

use azure_core::error::ErrorKind as SdkKind;

/// What kind of failure this is, for mapping to a gRPC status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or class is wrong (bad version id, undecodable value for the chosen encoding).
    InvalidArgument,
    /// The object or version does not exist.
    NotFound,
    /// The identity may not read the object (403), or the object is disabled.
    PermissionDenied,
    /// Entra ID refused the credential, or Key Vault refused the token.
    Unauthenticated,
    /// Network failure, throttling (429) or server errors (5xx) after retries.
    Unavailable,
    /// The mount's deadline passed.
    DeadlineExceeded,
    /// Something this release does not do.
    Unimplemented,
    /// A bug or an unexpected answer.
    Internal,
}

/// A Key Vault or Entra ID failure for one object. Messages come from the service or from us,
/// never from secret values; credential material is scrubbed from them before they are stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct VaultError {
    /// Classification.
    pub kind: ErrorKind,
    /// What happened, for the user.
    pub message: String,
}

impl VaultError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Classifies an SDK error. `scrub` lists strings (client secrets, tokens) that must not
    /// appear in the message even if some layer echoed them.
    pub fn from_sdk(err: &azure_core::Error, scrub: &[&str]) -> Self {
        let kind = classify(err);
        let mut message = sdk_message(err);
        for s in scrub.iter().filter(|s| s.len() >= 4) {
            message = message.replace(s, "<redacted>");
        }
        Self { kind, message }
    }
}

/// Walks the error and its sources for the most telling SDK error kind.
fn classify(err: &azure_core::Error) -> ErrorKind {
    let mut kinds = vec![err.kind().clone()];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(inner) = s.downcast_ref::<azure_core::Error>() {
            kinds.push(inner.kind().clone());
        }
        source = s.source();
    }
    let credential = kinds.iter().any(|k| matches!(k, SdkKind::Credential));
    for kind in kinds.iter().rev() {
        match kind {
            SdkKind::HttpResponse { status, .. } => {
                let code = u16::from(*status);
                return match code {
                    404 => ErrorKind::NotFound,
                    403 => ErrorKind::PermissionDenied,
                    401 => ErrorKind::Unauthenticated,
                    408 | 429 | 500..=599 => ErrorKind::Unavailable,
                    400 if credential => ErrorKind::Unauthenticated,
                    400..=499 => ErrorKind::InvalidArgument,
                    _ => ErrorKind::Internal,
                };
            }
            SdkKind::Connection | SdkKind::Io => return ErrorKind::Unavailable,
            _ => {}
        }
    }
    if credential {
        ErrorKind::Unauthenticated
    } else {
        ErrorKind::Internal
    }
}

/// A one-paragraph message: the service's error code and message when there is a response,
/// else the SDK's own text, without the troubleshooting boilerplate.
fn sdk_message(err: &azure_core::Error) -> String {
    if let SdkKind::HttpResponse {
        status,
        error_code,
        raw_response,
    } = err.kind()
    {
        let service_message = raw_response
            .as_ref()
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(r.body().as_ref()).ok())
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            });
        let code = error_code.clone().unwrap_or_default();
        return match service_message {
            Some(m) => format!("Key Vault answered {status} {code}: {m}"),
            None => format!("Key Vault answered {status} {code}"),
        };
    }
    let mut text = err.to_string();
    if let Some(cut) = text.find("\nTo troubleshoot") {
        text.truncate(cut);
    }
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace('\n', " ").chars().take(600).collect()
}

/// A parameter that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ParamError {
    /// The parameter, e.g. `keyvaultName` or `objects[1].objectAlias`.
    pub field: String,
    /// What is wrong and what is accepted. Never contains a secret.
    pub problem: String,
}

/// The longest `problem` an error carries: a backstop behind [`shown`], so that no message
/// built from input (a parser's own error text among them) can become a megabyte-long status.
const MAX_PROBLEM_BYTES: usize = 1024;

impl ParamError {
    /// A new error for `field`; a problem longer than 1 KiB is cut there.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let mut problem = problem.into();
        if problem.len() > MAX_PROBLEM_BYTES {
            let cut = (0..=MAX_PROBLEM_BYTES - 3)
                .rev()
                .find(|&i| problem.is_char_boundary(i))
                .unwrap_or(0);
            problem.truncate(cut);
            problem.push_str("...");
        }
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// Longest piece of an input an error message repeats.
pub(crate) const SHOWN_CHARS: usize = 64;

/// `value` quoted for an error message, cut after [`SHOWN_CHARS`] characters: a hostile
/// megabyte-long input must not become a megabyte-long gRPC status and log line.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}
