//! Validation of the relative file paths a volume publishes.
//!
//! The rules are the kubelet's atomic-writer rules plus stricter ones of our own,
//! because every path comes from user-controlled names (object names, aliases)
//! and a bad one is a directory-traversal bug (CVE-2020-8567).

/// Longest accepted path, in bytes (the kubelet's limit, `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path element, in bytes (the kubelet's limit, `NAME_MAX`).
pub const MAX_ELEMENT_BYTES: usize = 255;

/// How much of an offending path an error message shows, in characters.
const SHOWN_CHARS: usize = 96;

/// Why a relative path was refused. Each variant names one rule; the message says what is accepted.
///
/// Paths are not secret, so messages include the path (escaped with `{:?}`, and cut short when long).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty; a relative path such as \"dir/file\" is required")]
    Empty,
    /// The path starts with `/`.
    #[error("path {path:?} is absolute; only relative paths such as \"dir/file\" are accepted")]
    Absolute {
        /// The path, possibly shortened.
        path: String,
    },
    /// The whole path is longer than [`MAX_PATH_BYTES`].
    #[error("path {path:?} is {len} bytes long; at most 4096 bytes are accepted")]
    TooLong {
        /// The start of the path.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// One element (the text between two `/`) is longer than [`MAX_ELEMENT_BYTES`].
    #[error("path {path:?} has an element of {len} bytes; each element may be at most 255 bytes")]
    ElementTooLong {
        /// The path, possibly shortened.
        path: String,
        /// Length in bytes of the long element.
        len: usize,
    },
    /// The path contains a NUL byte.
    #[error("path {path:?} contains a NUL byte; it is not accepted anywhere in a path")]
    Nul {
        /// The path, possibly shortened.
        path: String,
    },
    /// The path contains a control character other than NUL (newline, tab, escape, DEL, C1 ...).
    #[error("path {path:?} contains a control character; only printable characters are accepted")]
    ControlCharacter {
        /// The path, possibly shortened.
        path: String,
    },
    /// The path contains a backslash.
    #[error("path {path:?} contains a backslash; use \"/\" to separate elements")]
    Backslash {
        /// The path, possibly shortened.
        path: String,
    },
    /// The path starts with `..`; such names are reserved for the writer (`..data`, timestamped dirs).
    #[error(
        "path {path:?} starts with \"..\"; names starting with \"..\" are reserved (for \"..data\" and the timestamped directories)"
    )]
    LeadingDotDot {
        /// The path, possibly shortened.
        path: String,
    },
    /// An element is `..`.
    #[error("path {path:?} has a \"..\" element; paths must stay inside the volume")]
    DotDotElement {
        /// The path, possibly shortened.
        path: String,
    },
    /// An element is `.`.
    #[error("path {path:?} has a \".\" element; write the path without it")]
    DotElement {
        /// The path, possibly shortened.
        path: String,
    },
    /// Two `/` in a row (`a//b`).
    #[error("path {path:?} has an empty element (\"//\"); separate elements with a single \"/\"")]
    EmptyElement {
        /// The path, possibly shortened.
        path: String,
    },
    /// The path ends with `/`.
    #[error("path {path:?} ends with \"/\"; a path must name a file")]
    TrailingSlash {
        /// The path, possibly shortened.
        path: String,
    },
}

/// The path as shown in an error: at most [`SHOWN_CHARS`] characters, then `...`.
fn shown(path: &str) -> String {
    match path.char_indices().nth(SHOWN_CHARS) {
        None => path.to_owned(),
        Some((cut, _)) => format!("{}...", &path[..cut]),
    }
}

/// Checks one relative file path against the volume's path rules.
///
/// Accepted: a non-empty relative path of `/`-separated elements, at most 4096 bytes, each element
/// 1 to 255 bytes, no element `.` or `..`, not starting with `..` (so `..data` is refused), no NUL,
/// no other control character, no backslash, no trailing `/`. Any Unicode text is otherwise fine.
pub fn validate_relative_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul { path: shown(path) });
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter { path: shown(path) });
    }
    if path.contains('\\') {
        return Err(PathError::Backslash { path: shown(path) });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute { path: shown(path) });
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            path: shown(path),
            len: path.len(),
        });
    }
    if path.starts_with("..") {
        return Err(PathError::LeadingDotDot { path: shown(path) });
    }
    if path.ends_with('/') {
        return Err(PathError::TrailingSlash { path: shown(path) });
    }
    for element in path.split('/') {
        match element {
            "" => return Err(PathError::EmptyElement { path: shown(path) }),
            "." => return Err(PathError::DotElement { path: shown(path) }),
            ".." => return Err(PathError::DotDotElement { path: shown(path) }),
            e if e.len() > MAX_ELEMENT_BYTES => {
                return Err(PathError::ElementTooLong {
                    path: shown(path),
                    len: e.len(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(p: &str) -> Result<(), std::mem::Discriminant<PathError>> {
        validate_relative_path(p).map_err(|e| std::mem::discriminant(&e))
    }

    fn d(e: PathError) -> Result<(), std::mem::Discriminant<PathError>> {
        Err(std::mem::discriminant(&e))
    }

    #[test]
    fn path_table() {
        let s = String::new;
        let long_name = "x".repeat(256);
        let ok_name = "x".repeat(255);
        // 20 elements of 200 bytes, 20 separators, then a last element: 4020 + last.
        let nested = |last: usize| {
            format!(
                "{}/{}",
                vec!["a".repeat(200); 20].join("/"),
                "z".repeat(last)
            )
        };
        let long_path = nested(77);
        assert_eq!(long_path.len(), 4097);
        let ok_long_path = nested(76);
        assert_eq!(ok_long_path.len(), 4096);
        let cases: Vec<(&str, Result<(), std::mem::Discriminant<PathError>>)> = vec![
            ("", d(PathError::Empty)),
            ("..", d(PathError::LeadingDotDot { path: s() })),
            ("a/../../b", d(PathError::DotDotElement { path: s() })),
            ("a/..", d(PathError::DotDotElement { path: s() })),
            ("/etc/passwd", d(PathError::Absolute { path: s() })),
            ("..data", d(PathError::LeadingDotDot { path: s() })),
            ("..data_tmp", d(PathError::LeadingDotDot { path: s() })),
            ("..2024_x", d(PathError::LeadingDotDot { path: s() })),
            ("...", d(PathError::LeadingDotDot { path: s() })),
            ("a//b", d(PathError::EmptyElement { path: s() })),
            ("./a", d(PathError::DotElement { path: s() })),
            ("a/.", d(PathError::DotElement { path: s() })),
            (".", d(PathError::DotElement { path: s() })),
            ("a/", d(PathError::TrailingSlash { path: s() })),
            ("a\\b", d(PathError::Backslash { path: s() })),
            ("..\\b", d(PathError::Backslash { path: s() })),
            ("a\0b", d(PathError::Nul { path: s() })),
            ("a\nb", d(PathError::ControlCharacter { path: s() })),
            ("a\tb", d(PathError::ControlCharacter { path: s() })),
            ("a\u{7f}", d(PathError::ControlCharacter { path: s() })),
            ("a\u{85}", d(PathError::ControlCharacter { path: s() })),
            (
                &long_name,
                d(PathError::ElementTooLong { path: s(), len: 0 }),
            ),
            (&long_path, d(PathError::TooLong { path: s(), len: 0 })),
            (&ok_name, Ok(())),
            (&ok_long_path, Ok(())),
            ("ключ", Ok(())),
            ("секрет/ключ", Ok(())),
            ("🔑", Ok(())),
            ("dir/0", Ok(())),
            ("alias/1", Ok(())),
            ("a", Ok(())),
            (".hidden", Ok(())),
            ("a/..b", Ok(())),
            ("a/.b", Ok(())),
            ("tls.crt", Ok(())),
            ("a b", Ok(())),
        ];
        for (path, want) in cases {
            assert_eq!(verdict(path), want, "verdict for {path:?}");
        }
    }

    #[test]
    fn messages_escape_and_shorten() {
        let e = validate_relative_path("a\nb/..").expect_err("refused");
        assert!(e.to_string().contains("\"a\\nb/..\""), "{e}");
        let long = "y".repeat(5000);
        let e = validate_relative_path(&long).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.contains("5000 bytes") && msg.contains("4096"), "{msg}");
        let multibyte = "ж".repeat(3000);
        assert!(validate_relative_path(&multibyte).is_err());
    }
}
