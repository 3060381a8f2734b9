//! The SecretProviderClass as kvmount uses it, parsed once from the API object.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::Value;

use crate::LookupError;

/// API group of the SecretProviderClass CRD.
pub const GROUP: &str = "secrets-store.csi.x-k8s.io";
/// The served version we read.
pub const VERSION: &str = "v1";
/// Kind of the CRD.
pub const KIND: &str = "SecretProviderClass";
/// Plural resource name, as in the URL path.
pub const PLURAL: &str = "secretproviderclasses";

/// A SecretProviderClass: which provider serves it and the parameters it passes.
///
/// `parameters` hold configuration (vault name, tenant, object list), not secret
/// values; still, log only `namespace`, `name` and `resource_version`.
/// `spec.secretObjects` (sync to Kubernetes Secrets) is not read: kvmount does not sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProviderClass {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.provider`, e.g. `azure`.
    pub provider: String,
    /// `spec.parameters`; empty when the object has none.
    pub parameters: BTreeMap<String, String>,
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.resourceVersion`: changes on every update of the object.
    pub resource_version: Option<String>,
}

impl SecretProviderClass {
    /// Parses the object returned for a GET of `namespace/name`.
    pub(crate) fn from_object(
        obj: DynamicObject,
        namespace: &str,
        name: &str,
    ) -> Result<Self, LookupError> {
        let bad = |field: &str, message: String| LookupError::InvalidObject {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            field: field.to_owned(),
            message,
        };
        check_identity(&obj, namespace, name).map_err(|(field, message)| bad(field, message))?;
        let spec = match obj.data.get("spec") {
            Some(Value::Object(spec)) => spec,
            Some(other) => {
                return Err(bad(
                    "spec",
                    format!("expected an object, found {}", type_name(other)),
                ));
            }
            None => return Err(bad("spec", "missing".to_owned())),
        };
        let provider = spec_provider(spec).map_err(|m| bad("spec.provider", m))?;
        let parameters = spec_parameters(spec).map_err(|(field, m)| bad(&field, m))?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            provider,
            parameters,
            uid: obj.metadata.uid,
            resource_version: obj.metadata.resource_version,
        })
    }
}

/// The object is the one asked for: a SecretProviderClass of this group and version, named
/// `namespace/name` (the server answers for the path asked; a different name or namespace
/// would mean something between us and it is not the API server). Else the field at fault and
/// what was wrong.
fn check_identity(
    obj: &DynamicObject,
    namespace: &str,
    name: &str,
) -> Result<(), (&'static str, String)> {
    if let Some(types) = &obj.types {
        let want = format!("{GROUP}/{VERSION}");
        if types.api_version != want || types.kind != KIND {
            return Err((
                "apiVersion/kind",
                format!(
                    "expected {want} {KIND}, found {} {}",
                    short(&types.api_version),
                    short(&types.kind)
                ),
            ));
        }
    }
    for (field, want, found) in [
        ("metadata.name", name, obj.metadata.name.as_deref()),
        (
            "metadata.namespace",
            namespace,
            obj.metadata.namespace.as_deref(),
        ),
    ] {
        if found != Some(want) {
            return Err((
                field,
                format!("expected {want:?}, found {:?}", found.map(short)),
            ));
        }
    }
    Ok(())
}

/// `spec.provider`: a non-empty string.
fn spec_provider(spec: &serde_json::Map<String, Value>) -> Result<String, String> {
    match spec.get("provider") {
        Some(Value::String(p)) if !p.is_empty() => Ok(p.clone()),
        Some(Value::String(_)) => Err("empty".to_owned()),
        Some(other) => Err(format!("expected a string, found {}", type_name(other))),
        None => Err("missing".to_owned()),
    }
}

/// `spec.parameters`: a map of strings (none: empty). Else the field at fault and what was
/// wrong.
fn spec_parameters(
    spec: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, String>, (String, String)> {
    let map = match spec.get("parameters") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err((
                "spec.parameters".to_owned(),
                format!("expected a map of strings, found {}", type_name(other)),
            ));
        }
    };
    map.iter()
        .map(|(key, value)| match value {
            Value::String(s) => Ok((key.clone(), s.clone())),
            other => Err((
                format!("spec.parameters.{}", short(key)),
                format!(
                    "expected a string, found {} (parameters are a map of strings; \
                     quote the value or use a YAML block scalar)",
                    type_name(other)
                ),
            )),
        })
        .collect()
}

/// At most the first 64 characters of `text`, for an error message: a name or key from the
/// object must not make the message as long as the object. (The vault crate's `shown` does
/// the same for class parameters; this crate sits below it.)
fn short(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SecretProviderClass, LookupError> {
        let obj: DynamicObject = serde_json::from_value(v).map_err(|e| LookupError::Config {
            message: e.to_string(),
        })?;
        SecretProviderClass::from_object(obj, "ns", "spc")
    }

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "spc", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"},
            "spec": spec,
        })
    }

    fn field_of(r: Result<SecretProviderClass, LookupError>) -> String {
        match r {
            Err(LookupError::InvalidObject { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_class() {
        let spc = parse(object(json!({
            "provider": "azure",
            "parameters": {"keyvaultName": "kv", "usePodIdentity": "false"},
            "secretObjects": [{"secretName": "s", "type": "Opaque"}],
        })))
        .unwrap();
        assert_eq!(spc.provider, "azure");
        assert_eq!(spc.parameters.len(), 2);
        assert_eq!(spc.parameters["keyvaultName"], "kv");
        assert_eq!(spc.uid.as_deref(), Some("u-1"));
        assert_eq!(spc.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn parameters_may_be_absent_or_null() {
        assert!(
            parse(object(json!({"provider": "azure"})))
                .unwrap()
                .parameters
                .is_empty()
        );
        assert!(
            parse(object(json!({"provider": "azure", "parameters": null})))
                .unwrap()
                .parameters
                .is_empty()
        );
    }

    #[test]
    fn errors_quote_a_short_prefix_of_names_and_keys() {
        let key = "k".repeat(100_000);
        let field = field_of(parse(object(
            json!({"provider": "azure", "parameters": {key.clone(): 3}}),
        )));
        assert_eq!(field, format!("spec.parameters.{}", &key[..64]));
        let mut renamed = object(json!({"provider": "azure"}));
        renamed["metadata"]["name"] = json!("n".repeat(100_000));
        let error = parse(renamed).unwrap_err().to_string();
        assert!(error.contains("metadata.name"), "{error}");
        assert!(error.len() < 300, "{} bytes", error.len());
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            field_of(parse(object(
                json!({"provider": "azure", "parameters": {"n": 3}})
            ))),
            "spec.parameters.n"
        );
        assert_eq!(
            field_of(parse(object(
                json!({"provider": "azure", "parameters": ["a"]})
            ))),
            "spec.parameters"
        );
        assert_eq!(
            field_of(parse(object(json!({"parameters": {}})))),
            "spec.provider"
        );
        assert_eq!(
            field_of(parse(object(json!({"provider": 1})))),
            "spec.provider"
        );
        assert_eq!(
            field_of(parse(object(json!({"provider": ""})))),
            "spec.provider"
        );
        assert_eq!(field_of(parse(object(json!("x")))), "spec");
        let mut no_spec = object(json!({}));
        no_spec.as_object_mut().unwrap().remove("spec");
        assert_eq!(field_of(parse(no_spec)), "spec");
    }

    #[test]
    fn rejects_another_object() {
        let mut v = object(json!({"provider": "azure"}));
        v["kind"] = json!("Secret");
        v["apiVersion"] = json!("v1");
        assert_eq!(field_of(parse(v)), "apiVersion/kind");
        let mut v = object(json!({"provider": "azure"}));
        v["metadata"]["namespace"] = json!("other");
        assert_eq!(field_of(parse(v)), "metadata.namespace");
        let mut v = object(json!({"provider": "azure"}));
        v["metadata"]["name"] = json!("other");
        assert_eq!(field_of(parse(v)), "metadata.name");
    }
}
