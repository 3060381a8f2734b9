//! JSON patch (RFC 6902) operations with JSON pointers (RFC 6901).
//!
//! Only `add` and `replace` are produced. Arrays the object does not have yet are added whole
//! (`add /spec/volumes [..]`); to an existing array, elements are appended with `/-` or
//! inserted at an index.

use serde::Serialize;
use serde_json::Value;

/// One operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    /// `add` or `replace`.
    pub op: &'static str,
    /// The JSON pointer.
    pub path: String,
    /// The value.
    pub value: Value,
}

/// Escapes one reference token: `~` becomes `~0`, `/` becomes `~1` (RFC 6901 section 3).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer from unescaped tokens.
pub fn pointer(tokens: &[&str]) -> String {
    let mut out = String::new();
    for token in tokens {
        out.push('/');
        out.push_str(&escape(token));
    }
    out
}

/// Collects operations in order.
#[derive(Debug, Default, Clone)]
pub struct Patch {
    ops: Vec<Operation>,
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }

    /// `add` at `tokens`.
    pub fn add(&mut self, tokens: &[&str], value: Value) {
        self.ops.push(Operation {
            op: "add",
            path: pointer(tokens),
            value,
        });
    }

    /// `replace` at `tokens`.
    pub fn replace(&mut self, tokens: &[&str], value: Value) {
        self.ops.push(Operation {
            op: "replace",
            path: pointer(tokens),
            value,
        });
    }

    /// Appends `items` to the array at `tokens`; `exists` says whether the object has the array
    /// (an absent or null array is added whole).
    pub fn append(&mut self, tokens: &[&str], exists: bool, items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        if !exists {
            self.add(tokens, Value::Array(items));
            return;
        }
        let mut path = tokens.to_vec();
        path.push("-");
        for item in items {
            self.add(&path, item);
        }
    }

    /// Inserts `items` at the front of the array at `tokens`, keeping their order.
    pub fn prepend(&mut self, tokens: &[&str], exists: bool, items: Vec<Value>) {
        if !exists {
            self.append(tokens, false, items);
            return;
        }
        for (i, item) in items.into_iter().enumerate() {
            let index = i.to_string();
            let mut path = tokens.to_vec();
            path.push(&index);
            self.add(&path, item);
        }
    }

    /// The operations.
    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The JSON text of the patch.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising operations made of strings and JSON values cannot fail.
        serde_json::to_vec(&self.ops).unwrap_or_else(|_| b"[]".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc6901_escaping() {
        assert_eq!(escape("kvmount.io/status"), "kvmount.io~1status");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        assert_eq!(escape("~1"), "~01");
        assert_eq!(
            pointer(&["metadata", "annotations", "kvmount.io/status"]),
            "/metadata/annotations/kvmount.io~1status"
        );
    }

    #[test]
    fn arrays() {
        let mut p = Patch::new();
        p.append(&["spec", "volumes"], false, vec![json!(1), json!(2)]);
        p.append(&["spec", "containers", "0", "env"], true, vec![json!(3)]);
        p.prepend(&["spec", "initContainers"], true, vec![json!(4), json!(5)]);
        let paths: Vec<_> = p.operations().iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/spec/volumes",
                "/spec/containers/0/env/-",
                "/spec/initContainers/0",
                "/spec/initContainers/1"
            ]
        );
        assert_eq!(p.operations()[0].value, json!([1, 2]));
    }
}
