//! The template language of `kvmount.io/template-<file>`: text with object references.
//!
//! ```text
//! Server=db.example.com;User={{ secret/db-user }};Password={{ secret/db-password/6f8d1a2b }}
//! ```
//!
//! - `{{ <type>/<name>[/<version>] }}` is replaced by the object's value (spaces inside the
//!   braces are optional);
//! - `{{ "{{" }}` writes a literal `{{`;
//! - everything else is copied as is; a `{{` that does not start one of the two forms is an
//!   error (so a typo never leaks into a file silently).

use crate::object::ObjectRef;

/// Longest template accepted (annotation values are small; this bounds rendering work).
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// Most references in one template.
pub const MAX_REFERENCES: usize = 32;

/// A template that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is longer than [`MAX_TEMPLATE_BYTES`].
    #[error("the template is {0} bytes; accepted: at most {MAX_TEMPLATE_BYTES}")]
    TooLong(usize),
    /// A `{{` without its `}}`.
    #[error(
        "`{{{{` at byte {0} is never closed; accepted: {{{{ <type>/<name>[/<version>] }}}} or {{{{ \"{{{{\" }}}}"
    )]
    Unclosed(usize),
    /// What is between the braces is not a reference.
    #[error("`{{{{ ... }}}}` at byte {at}: {problem}")]
    BadReference {
        /// Byte offset of the `{{`.
        at: usize,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// More than [`MAX_REFERENCES`] references.
    #[error("more than {MAX_REFERENCES} references; accepted: at most {MAX_REFERENCES}")]
    TooManyReferences,
    /// No reference at all: a template without objects is a constant, not a secret.
    #[error(
        "the template references no object; accepted: text with at least one {{{{ <type>/<name>[/<version>] }}}}"
    )]
    NoReference,
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// The value of an object.
    Object(ObjectRef),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Text and references, in order.
    pub parts: Vec<Part>,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLong(text.len()));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        let mut references = 0;
        while let Some(start) = rest.find("{{") {
            literal.push_str(&rest[..start]);
            let at = offset + start;
            let inner_start = start + 2;
            let Some(len) = rest[inner_start..].find("}}") else {
                return Err(TemplateError::Unclosed(at));
            };
            let inner = rest[inner_start..inner_start + len].trim();
            if inner == "\"{{\"" {
                literal.push_str("{{");
            } else {
                let reference = ObjectRef::parse(inner)
                    .map_err(|problem| TemplateError::BadReference { at, problem })?;
                references += 1;
                if references > MAX_REFERENCES {
                    return Err(TemplateError::TooManyReferences);
                }
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Object(reference));
            }
            let consumed = inner_start + len + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if references == 0 {
            return Err(TemplateError::NoReference);
        }
        Ok(Self { parts })
    }

    /// The objects the template needs, in order of first use, without repeats.
    pub fn references(&self) -> Vec<&ObjectRef> {
        let mut out: Vec<&ObjectRef> = Vec::new();
        for part in &self.parts {
            if let Part::Object(r) = part
                && !out.contains(&r)
            {
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_and_references() {
        let t = Template::parse(
            "u={{ secret/db-user }};p={{secret/db-password/abc123}}{{ \"{{\" }}x}}",
        )
        .expect("valid");
        assert_eq!(t.parts.len(), 5);
        assert_eq!(t.parts[0], Part::Text("u=".into()));
        assert_eq!(t.parts[4], Part::Text("{{x}}".into()));
        let refs = t.references();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1].version.as_deref(), Some("abc123"));
    }

    #[test]
    fn refuses_mistakes_with_positions() {
        assert_eq!(
            Template::parse("a {{ secret/x").expect_err("unclosed"),
            TemplateError::Unclosed(2)
        );
        assert!(matches!(
            Template::parse("{{ .Data.password }}").expect_err("go template"),
            TemplateError::BadReference { at: 0, .. }
        ));
        assert_eq!(
            Template::parse("no refs").expect_err("constant"),
            TemplateError::NoReference
        );
        let many = "{{ secret/a }}".repeat(MAX_REFERENCES + 1);
        assert_eq!(
            Template::parse(&many).expect_err("many"),
            TemplateError::TooManyReferences
        );
        assert!(matches!(
            Template::parse(&"x".repeat(MAX_TEMPLATE_BYTES + 1)),
            Err(TemplateError::TooLong(_))
        ));
    }
}
