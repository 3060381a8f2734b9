//! An object of the vault as the agent configuration and the annotations name it: a reference
//! (`<type>/<name>[/<version>]`), its per-file fields, and the SecretProviderClass `objects`
//! YAML that carries both, checked by the vault crate's parameter rules.

use std::collections::BTreeMap;

use kvmount_vault::ObjectSpec;
use kvmount_vault::error::ParamError;
use kvmount_vault::params::parse_objects;
use serde::Serialize;

/// `<type>/<name>[/<version>]`: an object in the vault.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// `secret`, `key` or `cert`.
    pub object_type: String,
    /// Object name.
    pub name: String,
    /// Version; `None` for the newest.
    pub version: Option<String>,
}

/// What an object reference looks like, for messages.
pub const OBJECT_REF_FORM: &str =
    "<type>/<name>[/<version>] with type secret, key or cert, e.g. secret/db-password";

impl ObjectRef {
    /// Parses `<type>/<name>[/<version>]`. The error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('/').collect();
        let (object_type, name, version) = match parts.as_slice() {
            [t, n] => (*t, *n, None),
            [t, n, v] => (*t, *n, Some(*v)),
            _ => {
                return Err(format!(
                    "{text:?} is not an object reference; accepted: {OBJECT_REF_FORM}"
                ));
            }
        };
        if !matches!(object_type, "secret" | "key" | "cert") {
            return Err(format!(
                "{object_type:?} is not an object type; accepted: {OBJECT_REF_FORM}"
            ));
        }
        let reference = Self {
            object_type: object_type.to_owned(),
            name: name.to_owned(),
            version: version.filter(|v| !v.is_empty()).map(str::to_owned),
        };
        // The vault crate's rules for names and versions.
        object_spec(&reference, &ObjectFields::default()).map_err(|e| e.problem)?;
        Ok(reference)
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.object_type, self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The optional per-file fields of an object (SecretProviderClass names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectFields {
    /// `objectAlias`: the file name.
    pub alias: Option<String>,
    /// `objectEncoding`.
    pub encoding: Option<String>,
    /// `objectFormat`.
    pub format: Option<String>,
    /// `filePermission`.
    pub permission: Option<String>,
}

/// One object of an `objects` document as YAML text (one element of its `array`).
pub fn object_yaml(reference: &ObjectRef, fields: &ObjectFields) -> String {
    let mut map: BTreeMap<&str, &str> = BTreeMap::new();
    map.insert("objectName", &reference.name);
    map.insert("objectType", &reference.object_type);
    if let Some(v) = &reference.version {
        map.insert("objectVersion", v);
    }
    for (key, value) in [
        ("objectAlias", &fields.alias),
        ("objectEncoding", &fields.encoding),
        ("objectFormat", &fields.format),
        ("filePermission", &fields.permission),
    ] {
        if let Some(value) = value {
            map.insert(key, value);
        }
    }
    // Serialising a map of strings cannot fail; an empty document would be refused by the parser.
    serde_norway::to_string(&map).unwrap_or_default()
}

/// An `objects` document (`array:` of object YAML strings), as a SecretProviderClass holds it.
pub fn objects_document(objects: &[String]) -> String {
    #[derive(Serialize)]
    struct Document<'a> {
        array: &'a [String],
    }
    // A list of strings always serialises; an empty document would be refused by the parser.
    serde_norway::to_string(&Document { array: objects }).unwrap_or_default()
}

/// The typed spec of one object, checked by the vault crate's parameter rules.
pub fn object_spec(reference: &ObjectRef, fields: &ObjectFields) -> Result<ObjectSpec, ParamError> {
    let document = objects_document(&[object_yaml(reference, fields)]);
    let mut specs = parse_objects(&document)?;
    specs
        .pop()
        .ok_or_else(|| ParamError::new("objects", "the array is empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_refs() {
        let r = ObjectRef::parse("secret/db-password/0123abcd").expect("valid");
        assert_eq!(r.version.as_deref(), Some("0123abcd"));
        assert_eq!(r.to_string(), "secret/db-password/0123abcd");
        assert!(ObjectRef::parse("db-password").is_err());
        assert!(
            ObjectRef::parse("blob/x")
                .expect_err("type")
                .contains("secret, key or cert")
        );
        assert!(ObjectRef::parse("secret/bad_name").is_err());
        assert!(ObjectRef::parse("secret/x/not-hex!").is_err());
        assert!(ObjectRef::parse("secret/a/b/c").is_err());
    }
}
