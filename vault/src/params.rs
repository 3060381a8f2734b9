//! The SecretProviderClass parameter model: what the upstream driver sends in
//! `MountRequest.attributes` / `secrets` / `permission` (or what a CSI
//! `volume_context` holds), parsed once into typed values.
//!
//! Parameter names are those of the Azure provider, so a class written for it
//! works unchanged. Every error names the field and says what is accepted; no
//! error ever contains a secret value or a token.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::error::{ParamError, SHOWN_CHARS, shown};
use crate::objects_memo::ObjectsMemo;
use crate::secret::SecretString;

/// Audience of the service-account token used for workload identity.
pub const WORKLOAD_IDENTITY_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Attribute that carries kubelet's service-account tokens.
pub const TOKENS_ATTRIBUTE: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// Attribute keys with pod information (set by the driver or kubelet).
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Pod namespace attribute.
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Pod UID attribute.
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// Service account name attribute.
pub const POD_SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";

/// Longest objectAlias / objectName file element kubelet accepts.
const MAX_NAME_BYTES: usize = 255;

/// Most path elements of an objectAlias / objectName: every level is a directory the writer and
/// teardown walk, and a class author controls it.
pub const MAX_PATH_ELEMENTS: usize = 16;

/// A YAML parser's error for a message: its text can quote the input (`invalid type: string
/// "..."`), so it is cut like any input.
fn yaml_problem(err: &serde_norway::Error) -> String {
    let text = err.to_string();
    match text.char_indices().nth(2 * SHOWN_CHARS) {
        None => text,
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

/// The kinds of Key Vault object a class can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectType {
    /// `secret`: a secret value.
    Secret,
    /// `key`: the public part of a key.
    Key,
    /// `cert`: a certificate.
    Cert,
}

impl ObjectType {
    /// The name used in classes and in `ObjectVersion.id`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Key => "key",
            Self::Cert => "cert",
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a secret's value is decoded before it is written (`objectEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObjectEncoding {
    /// `utf-8` (default): the value as stored.
    #[default]
    Utf8,
    /// `base64`: the value is standard base64; the decoded bytes are written.
    Base64,
    /// `hex`: the value is hex; the decoded bytes are written.
    Hex,
}

/// `objectFormat`: how certificate-backed secrets are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ObjectFormat {
    /// `pem` (default).
    #[default]
    Pem,
    /// `pfx`: only for objectType secret.
    Pfx,
}

/// One entry of the class's `objects` array.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectSpec {
    /// Position in the `objects` array (for error messages).
    pub index: usize,
    /// `objectName`: the name in the vault.
    pub name: String,
    /// `objectType`.
    pub object_type: ObjectType,
    /// `objectVersion`; `None` means the newest version.
    pub version: Option<String>,
    /// `objectAlias`, the file name; `None` means the object name.
    pub alias: Option<String>,
    /// `objectEncoding`.
    pub encoding: ObjectEncoding,
    /// `objectFormat`.
    pub format: ObjectFormat,
    /// `filePermission`, as a mode; `None` means the mount's default mode.
    pub file_mode: Option<u32>,
    /// With `objectVersionHistory: N`, one spec per slot: the `index`-th newest enabled version
    /// (0 = newest, or `objectVersion` when set) written as `<alias>/<index>`.
    pub history: Option<HistorySlot>,
    /// `certKeyFiles: "true"` (kvmount): also write `<alias>.crt` (the chain, leaf first) and
    /// `<alias>.key` (the private key, PKCS#8) for a secret that backs a certificate.
    pub cert_key_files: bool,
}

/// One slot of `objectVersionHistory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistorySlot {
    /// 0 is the newest (or the pinned `objectVersion`).
    pub index: usize,
    /// N, the number of versions asked for.
    pub count: usize,
}

/// Most objects one class may list.
pub const MAX_OBJECTS: usize = 100;

/// Most files one class's objects may expand to (each object, times its
/// `objectVersionHistory`): what one mount may read from Key Vault at once.
pub const MAX_SLOTS: usize = 200;

/// Largest `objects` parameter, in bytes.
pub const MAX_OBJECTS_BYTES: usize = 256 * 1024;

/// Most versions `objectVersionHistory` may ask for.
pub const MAX_VERSION_HISTORY: usize = 50;

impl ObjectSpec {
    /// What, besides type, name, version, encoding and format, changes this spec's bytes (for
    /// cache keys): empty for a plain object.
    pub fn cache_variant(&self) -> String {
        let mut v = String::new();
        if let Some(h) = self.history {
            v.push_str(&format!("history={}/{}", h.index, h.count));
        }
        if self.cert_key_files {
            if !v.is_empty() {
                v.push(',');
            }
            v.push_str("cert-key-files");
        }
        v
    }

    /// The path of the file this object is written to, relative to the volume.
    pub fn file_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    /// `ObjectVersion.id` as the Azure provider reports it: `<type>/<name>`, or
    /// `<type>/<name>/<index>` for a version-history slot.
    pub fn id(&self) -> String {
        match self.history {
            Some(h) => format!("{}/{}/{}", self.object_type, self.name, h.index),
            None => format!("{}/{}", self.object_type, self.name),
        }
    }

    /// The field path used in errors, e.g. `objects[2]`.
    pub fn field(&self, key: &str) -> String {
        format!("objects[{}].{key}", self.index)
    }
}

/// How the pod authenticates to Entra ID.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Workload identity: the pod's service-account token is the client assertion.
    WorkloadIdentity {
        /// Application (client) ID of the Entra identity (`clientID`).
        client_id: String,
        /// The service-account token for audience `api://AzureADTokenExchange`.
        token: SecretString,
    },
    /// Service principal from the nodePublishSecretRef (`clientid` / `clientsecret`).
    ServicePrincipal {
        /// Application (client) ID.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
    },
    /// The node's managed identity through IMDS (`useVMManagedIdentity`): system-assigned, or
    /// the user-assigned identity with this client ID (`userAssignedIdentityID`).
    ManagedIdentity {
        /// Client ID of a user-assigned identity; `None` for the system-assigned identity.
        user_assigned_id: Option<String>,
    },
}

/// The `exp` claim of a compact JWT, unverified; `None` when there is none or the token is not
/// a JWT.
fn jwt_expiry(token: &str) -> Option<std::time::SystemTime> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Claims>(&json).ok()?.exp?;
    std::time::SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(exp))
}

/// What [`Auth::client_id`] reports for the node's system-assigned managed identity.
pub const SYSTEM_ASSIGNED_IDENTITY: &str = "system-assigned-managed-identity";

impl Auth {
    /// The Entra identity this credential authenticates as.
    pub fn client_id(&self) -> &str {
        match self {
            Self::WorkloadIdentity { client_id, .. } | Self::ServicePrincipal { client_id, .. } => {
                client_id
            }
            Self::ManagedIdentity {
                user_assigned_id: Some(id),
            } => id,
            Self::ManagedIdentity {
                user_assigned_id: None,
            } => SYSTEM_ASSIGNED_IDENTITY,
        }
    }

    /// When the credential itself stops being valid, if it says: a service-account token's
    /// `exp` claim (read, not verified: it only ever shortens how long a proof is trusted).
    /// Client secrets and managed identities carry no expiry.
    pub fn credential_expiry(&self) -> Option<std::time::SystemTime> {
        let Self::WorkloadIdentity { token, .. } = self else {
            return None;
        };
        jwt_expiry(token.expose())
    }

    /// Short name for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::WorkloadIdentity { .. } => "workload-identity",
            Self::ServicePrincipal { .. } => "service-principal",
            Self::ManagedIdentity { .. } => "managed-identity",
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode())
            .field("client_id", &self.client_id())
            .finish_non_exhaustive()
    }
}

/// Pod information the driver or kubelet attaches (for logs and, later, cache bookkeeping).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Service account name.
    pub service_account: String,
}

/// Everything a Mount needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountParams {
    /// `keyvaultName`.
    pub keyvault_name: String,
    /// `tenantID` (or the older `tenantId`).
    pub tenant_id: String,
    /// How to authenticate.
    pub auth: Auth,
    /// The objects, in class order.
    pub objects: Vec<ObjectSpec>,
    /// Default file mode (from `MountRequest.permission`).
    pub default_mode: u32,
    /// The pod the mount is for.
    pub pod: PodInfo,
    /// `secretProviderClass`, when the driver names it.
    pub class_name: Option<String>,
    /// `cloudName` / `cloudEnvFileName`: where Entra ID and Key Vault are; `None` means the
    /// daemon's `--authority-host` and `--keyvault-dns-suffix` (AzurePublicCloud by default).
    pub cloud: Option<crate::cloud::Cloud>,
}

/// Parses a JSON object of strings (`MountRequest.attributes` or `.secrets`). An empty field
/// and JSON `null` are the empty map: the driver marshals a nil Go map as `null`, which is what
/// `secrets` is for every class without a `nodePublishSecretRef` (workload identity, managed
/// identity).
///
/// The error never repeats any part of the input: it may hold tokens.
pub fn parse_string_map(field: &str, json: &str) -> Result<HashMap<String, String>, ParamError> {
    if json.trim().is_empty() {
        return Ok(HashMap::new());
    }
    serde_json::from_str::<Option<HashMap<String, String>>>(json)
        .map(Option::unwrap_or_default)
        .map_err(|err| {
            ParamError::new(
                field,
                format!(
                    "must be a JSON object whose values are all strings ({} at line {} column {})",
                    match err.classify() {
                        serde_json::error::Category::Syntax => "syntax error",
                        serde_json::error::Category::Eof => "unexpected end of input",
                        serde_json::error::Category::Data => "wrong type",
                        serde_json::error::Category::Io => "read error",
                    },
                    err.line(),
                    err.column()
                ),
            )
        })
}

/// Parses `MountRequest.permission`: a JSON-encoded decimal mode such as `"420"` (0644); empty
/// or JSON `null` mean the driver's default, 0644.
pub fn parse_default_mode(permission: &str) -> Result<u32, ParamError> {
    let text = permission.trim();
    if text.is_empty() || text == "null" {
        return Ok(0o644);
    }
    let mode: u32 = serde_json::from_str::<u32>(text)
        .or_else(|_| text.trim_matches('"').parse::<u32>())
        .map_err(|_| {
            ParamError::new(
                "permission",
                format!(
                    "{} is not a decimal file mode; accepted: 0 to 511, e.g. \"420\" for 0644",
                    shown(text)
                ),
            )
        })?;
    if mode > 0o777 {
        return Err(ParamError::new(
            "permission",
            format!("{mode} is above 511 (0777); accepted: 0 to 511"),
        ));
    }
    Ok(mode)
}

/// Parses a `filePermission` value: an octal string such as `"0600"` or `"640"`.
pub fn parse_file_permission(field: &str, text: &str) -> Result<u32, ParamError> {
    let digits = text.trim();
    let digits = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
        .unwrap_or(digits);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(ParamError::new(
            field,
            format!(
                "{} is not an octal file mode; accepted: 3 or 4 octal digits from 0000 to 0777, e.g. \"0600\"",
                shown(text)
            ),
        ));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| {
        ParamError::new(field, format!("{} is not an octal file mode", shown(text)))
    })?;
    if mode > 0o777 {
        return Err(ParamError::new(
            field,
            format!(
                "{} sets bits above 0777 (setuid, setgid or sticky); accepted: 0000 to 0777",
                shown(text)
            ),
        ));
    }
    Ok(mode)
}

/// Looks up `key` and trims it, treating empty as absent (the Azure provider does the same).
fn get<'a>(map: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn parse_bool(map: &HashMap<String, String>, key: &str) -> Result<bool, ParamError> {
    match get(map, key) {
        None => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" | "yes" => Ok(true),
            "false" | "0" | "f" | "no" => Ok(false),
            _ => Err(ParamError::new(
                key,
                format!(
                    "{} is not a boolean; accepted: \"true\" or \"false\"",
                    shown(v)
                ),
            )),
        },
    }
}

/// Checks a vault name: 3-24 characters of `[-A-Za-z0-9]`, as Key Vault requires.
pub fn validate_vault_name(name: &str) -> Result<(), ParamError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !(3..=24).contains(&name.len()) || !ok_chars {
        return Err(ParamError::new(
            "keyvaultName",
            format!(
                "{} is not a Key Vault name; accepted: 3 to 24 characters of letters, digits and '-'",
                shown(name)
            ),
        ));
    }
    Ok(())
}

/// Checks a tenant: a GUID or a domain name (what Entra accepts in the authority path).
fn validate_tenant(tenant: &str) -> Result<(), ParamError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 256
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        return Err(ParamError::new(
            "tenantID",
            format!(
                "{} is not a tenant; accepted: a tenant GUID or a domain such as contoso.onmicrosoft.com",
                shown(tenant)
            ),
        ));
    }
    Ok(())
}

/// Checks a Key Vault object name: 1-127 characters of `[-A-Za-z0-9]`.
fn validate_object_name(field: &str, name: &str) -> Result<(), ParamError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.is_empty() || name.len() > 127 || !ok_chars {
        return Err(ParamError::new(
            field,
            format!(
                "{} is not a Key Vault object name; accepted: 1 to 127 characters of letters, digits and '-'",
                shown(name)
            ),
        ));
    }
    Ok(())
}

/// Checks a version id: Key Vault versions are 32 hex digits; we accept any short token of
/// letters and digits so that the vault, not us, decides whether it exists.
fn validate_version(field: &str, version: &str) -> Result<(), ParamError> {
    if version.len() > 64 || !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ParamError::new(
            field,
            format!(
                "{} is not a version id; accepted: empty, \"latest\", or a version such as 6f8d1a2b3c4d5e6f7a8b9c0d1e2f3a4b",
                shown(version)
            ),
        ));
    }
    Ok(())
}

/// Checks a file path from objectAlias/objectName the way kubelet's atomic writer will.
pub fn validate_file_path(field: &str, path: &str) -> Result<(), ParamError> {
    let elements = path.split('/').count();
    if elements > MAX_PATH_ELEMENTS {
        return Err(ParamError::new(
            field,
            format!("has {elements} path elements; accepted: at most {MAX_PATH_ELEMENTS}"),
        ));
    }
    if let Err(err) = kvmount_volume::validate_relative_path(path) {
        return Err(ParamError::new(field, err.to_string()));
    }
    for element in path.split('/') {
        if element.len() > MAX_NAME_BYTES {
            return Err(ParamError::new(
                field,
                format!(
                    "a path element is {} bytes; accepted: at most {MAX_NAME_BYTES}",
                    element.len()
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ObjectsDocument {
    array: Vec<String>,
}

/// One object as written in YAML. Unknown keys are refused so that a typo
/// (`objectAliass`) does not silently write to another file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    object_name: Option<String>,
    #[serde(default)]
    object_type: Option<String>,
    #[serde(default)]
    object_version: Option<String>,
    #[serde(default)]
    object_version_history: Option<serde_norway::Value>,
    #[serde(default)]
    object_alias: Option<String>,
    #[serde(default)]
    object_format: Option<String>,
    #[serde(default)]
    object_encoding: Option<String>,
    #[serde(default)]
    file_permission: Option<serde_norway::Value>,
    #[serde(default)]
    cert_key_files: Option<serde_norway::Value>,
}

fn trimmed(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Parses the `objects` parameter: YAML with an `array` of YAML strings, one per object. A
/// class author controls it, so its size, its count of objects and the files they expand to
/// are bounded ([`MAX_OBJECTS_BYTES`], [`MAX_OBJECTS`], [`MAX_SLOTS`]) before any slot is
/// built and before any call to Entra ID or Key Vault. A text parsed before is answered from
/// the process's [`ObjectsMemo`] (see there why, and its bounds).
pub fn parse_objects(objects: &str) -> Result<Vec<ObjectSpec>, ParamError> {
    static PARSED: LazyLock<ObjectsMemo> = LazyLock::new(ObjectsMemo::default);
    PARSED.get_or_parse(objects, parse_objects_uncached)
}

/// [`parse_objects`] without the memo.
pub(crate) fn parse_objects_uncached(objects: &str) -> Result<Vec<ObjectSpec>, ParamError> {
    if objects.len() > MAX_OBJECTS_BYTES {
        return Err(ParamError::new(
            "objects",
            format!(
                "is {} bytes; accepted: at most {MAX_OBJECTS_BYTES}",
                objects.len()
            ),
        ));
    }
    let document: ObjectsDocument = serde_norway::from_str(objects).map_err(|err| {
        ParamError::new(
            "objects",
            format!(
                "is not YAML of the form `array: [<object YAML>, ...]` ({})",
                yaml_problem(&err)
            ),
        )
    })?;
    if document.array.is_empty() {
        return Err(ParamError::new(
            "objects",
            "the array is empty; accepted: at least one object",
        ));
    }
    if document.array.len() > MAX_OBJECTS {
        return Err(ParamError::new(
            "objects",
            format!(
                "lists {} objects; accepted: at most {MAX_OBJECTS} per class",
                document.array.len()
            ),
        ));
    }
    let parsed = document
        .array
        .iter()
        .enumerate()
        .map(|(index, text)| parse_object(index, text))
        .collect::<Result<Vec<_>, _>>()?;
    let files: usize = parsed
        .iter()
        .map(|spec| spec.history.map_or(1, |h| h.count.max(1)))
        .sum();
    if files > MAX_SLOTS {
        return Err(ParamError::new(
            "objects",
            format!(
                "expands to {files} files (each object times its objectVersionHistory); accepted: at most {MAX_SLOTS} per class"
            ),
        ));
    }
    let mut specs = Vec::with_capacity(files);
    for spec in parsed {
        match spec.history {
            None => specs.push(spec),
            Some(h) => {
                let base = spec.file_name().to_owned();
                for i in 0..h.count {
                    let mut slot = spec.clone();
                    slot.alias = Some(format!("{base}/{i}"));
                    slot.history = Some(HistorySlot {
                        index: i,
                        count: h.count,
                    });
                    specs.push(slot);
                }
            }
        }
    }
    check_distinct_files(&specs)?;
    Ok(specs)
}

/// One element of the `objects` array: each field parsed on its own, then the checks that
/// span fields.
fn parse_object(index: usize, text: &str) -> Result<ObjectSpec, ParamError> {
    let field = |key: &str| format!("objects[{index}].{key}");
    let raw = raw_object(index, text)?;
    let name = trimmed(raw.object_name)
        .ok_or_else(|| ParamError::new(field("objectName"), "is required"))?;
    validate_object_name(&field("objectName"), &name)?;
    let object_type = object_type(&field("objectType"), raw.object_type)?;
    let version = trimmed(raw.object_version).filter(|v| !v.eq_ignore_ascii_case("latest"));
    if let Some(v) = &version {
        validate_version(&field("objectVersion"), v)?;
    }
    let history = match raw.object_version_history {
        Some(value) => version_history(&field("objectVersionHistory"), &value)?,
        None => None,
    };
    let encoding = object_encoding(&field("objectEncoding"), raw.object_encoding, object_type)?;
    let format = object_format(&field("objectFormat"), raw.object_format, object_type)?;
    let file_mode = match raw.file_permission {
        Some(value) => yaml_file_mode(&field("filePermission"), value)?,
        None => None,
    };
    let cert_key_files = match raw.cert_key_files {
        Some(value) => yaml_bool(&field("certKeyFiles"), value)?,
        None => false,
    };
    if cert_key_files && (object_type != ObjectType::Secret || format != ObjectFormat::Pem) {
        return Err(ParamError::new(
            field("certKeyFiles"),
            "is only for objectType secret with objectFormat pem (the secret behind a certificate holds its key and chain)",
        ));
    }
    let spec = ObjectSpec {
        index,
        name,
        object_type,
        version,
        alias: trimmed(raw.object_alias),
        encoding,
        format,
        file_mode,
        history,
        cert_key_files,
    };
    let path_field = if spec.alias.is_some() {
        field("objectAlias")
    } else {
        field("objectName")
    };
    check_object_files(&path_field, &spec)?;
    Ok(spec)
}

/// The YAML of `objects[index]` as its fields, unchecked; empty text is an object with none.
fn raw_object(index: usize, text: &str) -> Result<RawObject, ParamError> {
    if text.trim().is_empty() {
        return Ok(RawObject::default());
    }
    serde_norway::from_str(text).map_err(|err| {
        ParamError::new(
            format!("objects[{index}]"),
            format!("is not a YAML mapping of object fields ({}); accepted keys: objectName, objectType, objectVersion, objectVersionHistory, objectAlias, objectFormat, objectEncoding, filePermission, certKeyFiles", yaml_problem(&err)),
        )
    })
}

/// `objectType`: required.
fn object_type(field: &str, raw: Option<String>) -> Result<ObjectType, ParamError> {
    match trimmed(raw).as_deref() {
        Some("secret") => Ok(ObjectType::Secret),
        Some("key") => Ok(ObjectType::Key),
        Some("cert") => Ok(ObjectType::Cert),
        Some(other) => Err(ParamError::new(
            field,
            format!(
                "{} is not an object type; accepted: secret, key, cert",
                shown(other)
            ),
        )),
        None => Err(ParamError::new(
            field,
            "is required; accepted: secret, key, cert",
        )),
    }
}

/// `objectVersionHistory`: a number or a string of one; 0 and 1 are no history.
fn version_history(
    field: &str,
    value: &serde_norway::Value,
) -> Result<Option<HistorySlot>, ParamError> {
    let n = match value {
        serde_norway::Value::Number(n) => n.as_u64(),
        serde_norway::Value::String(s) if s.trim().is_empty() => Some(0),
        serde_norway::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(0 | 1) => Ok(None),
        Some(n) if n as usize <= MAX_VERSION_HISTORY => Ok(Some(HistorySlot {
            index: 0,
            count: n as usize,
        })),
        _ => Err(ParamError::new(
            field,
            format!(
                "{} is not accepted; accepted: a whole number from 0 to {MAX_VERSION_HISTORY} (0 and 1 write one file)",
                shown(serde_norway::to_string(value).unwrap_or_default().trim())
            ),
        )),
    }
}

/// `objectEncoding`: secrets only.
fn object_encoding(
    field: &str,
    raw: Option<String>,
    object_type: ObjectType,
) -> Result<ObjectEncoding, ParamError> {
    let Some(e) = trimmed(raw).map(|e| e.to_ascii_lowercase()) else {
        return Ok(ObjectEncoding::Utf8);
    };
    if object_type != ObjectType::Secret {
        return Err(ParamError::new(
            field,
            format!("{} is only supported for objectType secret", shown(&e)),
        ));
    }
    match e.as_str() {
        "utf-8" | "utf8" => Ok(ObjectEncoding::Utf8),
        "base64" => Ok(ObjectEncoding::Base64),
        "hex" => Ok(ObjectEncoding::Hex),
        _ => Err(ParamError::new(
            field,
            format!(
                "{} is not an encoding; accepted: utf-8, base64, hex",
                shown(&e)
            ),
        )),
    }
}

/// `objectFormat`: `pfx` for secrets only.
fn object_format(
    field: &str,
    raw: Option<String>,
    object_type: ObjectType,
) -> Result<ObjectFormat, ParamError> {
    let Some(f) = trimmed(raw).map(|f| f.to_ascii_lowercase()) else {
        return Ok(ObjectFormat::Pem);
    };
    match f.as_str() {
        "pem" => Ok(ObjectFormat::Pem),
        "pfx" if object_type == ObjectType::Secret => Ok(ObjectFormat::Pfx),
        "pfx" => Err(ParamError::new(
            field,
            "pfx is only supported for objectType secret",
        )),
        _ => Err(ParamError::new(
            field,
            format!("{} is not a format; accepted: pem, pfx", shown(&f)),
        )),
    }
}

/// `filePermission` as YAML gives it: a string, or a number; empty is none.
fn yaml_file_mode(field: &str, value: serde_norway::Value) -> Result<Option<u32>, ParamError> {
    match value {
        serde_norway::Value::String(s) if s.trim().is_empty() => Ok(None),
        serde_norway::Value::String(s) => Ok(Some(parse_file_permission(field, &s)?)),
        // An unquoted 0600 is read by YAML 1.1 as octal and by YAML 1.2 as 600: take the digits.
        serde_norway::Value::Number(n) => Ok(Some(parse_file_permission(field, &n.to_string())?)),
        _ => Err(ParamError::new(
            field,
            "is not an octal file mode; accepted: a string such as \"0600\"",
        )),
    }
}

/// A boolean as YAML gives it: a bool, or the string `true`/`false` (empty is false).
fn yaml_bool(field: &str, value: serde_norway::Value) -> Result<bool, ParamError> {
    match value {
        serde_norway::Value::Bool(b) => Ok(b),
        serde_norway::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            _ => Err(ParamError::new(
                field,
                format!(
                    "{} is not a boolean; accepted: \"true\" or \"false\"",
                    shown(&s)
                ),
            )),
        },
        _ => Err(ParamError::new(
            field,
            "is not a boolean; accepted: \"true\" or \"false\"",
        )),
    }
}

/// The files `spec` writes (its alias or name, and the `certKeyFiles` side files) are valid
/// paths; `field` is the one that names them.
fn check_object_files(field: &str, spec: &ObjectSpec) -> Result<(), ParamError> {
    validate_file_path(field, spec.file_name())?;
    if spec.cert_key_files {
        for ext in [".crt", ".key"] {
            validate_file_path(field, &format!("{}{ext}", spec.file_name()))?;
        }
    }
    Ok(())
}

/// Refuses two objects that write the same file, or one file that another needs as a directory.
fn check_distinct_files(specs: &[ObjectSpec]) -> Result<(), ParamError> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for spec in specs {
        let mut paths = vec![spec.file_name().to_owned()];
        if spec.cert_key_files {
            paths.push(format!("{}.crt", spec.file_name()));
            paths.push(format!("{}.key", spec.file_name()));
        }
        for path in paths {
            if let Some(other) = seen.insert(path.clone(), spec.index) {
                return Err(ParamError::new(
                    format!("objects[{}]", spec.index),
                    format!(
                        "writes file {}, which objects[{other}] writes too; give one of them a different objectAlias",
                        shown(&path)
                    ),
                ));
            }
        }
    }
    for (path, index) in &seen {
        let prefix = format!("{path}/");
        if let Some((nested, other)) = seen.range(prefix.clone()..).next()
            && nested.starts_with(&prefix)
        {
            return Err(ParamError::new(
                format!("objects[{other}]"),
                format!(
                    "writes {} inside {}, which objects[{index}] writes as a file",
                    shown(nested),
                    shown(path)
                ),
            ));
        }
    }
    Ok(())
}

/// Finds the workload-identity token in the tokens attribute (from `attributes`, or from
/// `secrets` where Kubernetes 1.35+ drivers may put it).
fn workload_identity_token(
    attributes: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
) -> Result<Option<SecretString>, ParamError> {
    let Some(raw) = get(attributes, TOKENS_ATTRIBUTE).or_else(|| get(secrets, TOKENS_ATTRIBUTE))
    else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Token {
        token: String,
    }
    let mut tokens: HashMap<String, Token> = serde_json::from_str(raw).map_err(|_| {
        ParamError::new(
            TOKENS_ATTRIBUTE,
            "must be JSON of the form {\"<audience>\":{\"token\":\"<jwt>\",\"expirationTimestamp\":\"...\"}}",
        )
    })?;
    let token = tokens
        .remove(WORKLOAD_IDENTITY_AUDIENCE)
        .map(|t| SecretString::new(t.token));
    for (_, mut other) in tokens.drain() {
        zeroize::Zeroize::zeroize(&mut other.token);
    }
    match token {
        Some(t) if t.expose().trim().is_empty() => Err(ParamError::new(
            TOKENS_ATTRIBUTE,
            format!("the token for audience {WORKLOAD_IDENTITY_AUDIENCE} is empty"),
        )),
        other => Ok(other),
    }
}

/// Finds a key case-insensitively (the Azure provider accepts `clientid`, `clientId`, ...).
fn get_ci<'a>(map: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Builds [`MountParams`] from the parameter map (class parameters merged with volume
/// attributes and pod info), the node-publish secrets, and the default mode.
pub fn mount_params(
    attributes: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    default_mode: u32,
    env_file: crate::cloud::EnvFile<'_>,
) -> Result<MountParams, ParamError> {
    let auth = select_auth(attributes, secrets)?;
    let cloud = crate::cloud::from_attributes(attributes, env_file)?;
    let keyvault_name = get(attributes, "keyvaultName")
        .ok_or_else(|| ParamError::new("keyvaultName", "is required: the name of the Key Vault"))?
        .to_owned();
    validate_vault_name(&keyvault_name)?;
    let tenant_id = get(attributes, "tenantID")
        .or_else(|| get(attributes, "tenantId"))
        .ok_or_else(|| {
            ParamError::new(
                "tenantID",
                "is required: the Entra tenant ID of the Key Vault",
            )
        })?
        .to_owned();
    validate_tenant(&tenant_id)?;

    let objects_text = get(attributes, "objects").ok_or_else(|| {
        ParamError::new(
            "objects",
            "is required: a YAML `array:` of objects with objectName and objectType",
        )
    })?;
    let objects = parse_objects(objects_text)?;
    let pod = PodInfo {
        name: get(attributes, POD_NAME).unwrap_or_default().to_owned(),
        namespace: get(attributes, POD_NAMESPACE)
            .unwrap_or_default()
            .to_owned(),
        uid: get(attributes, POD_UID).unwrap_or_default().to_owned(),
        service_account: get(attributes, POD_SERVICE_ACCOUNT)
            .unwrap_or_default()
            .to_owned(),
    };
    Ok(MountParams {
        keyvault_name,
        tenant_id,
        auth,
        objects,
        default_mode,
        pod,
        class_name: get(attributes, "secretProviderClass").map(str::to_owned),
        cloud,
    })
}

/// Checks a user-assigned identity's client ID (a GUID in Azure; we accept any short token of
/// letters, digits and '-' and let IMDS decide).
fn validate_identity_id(id: &str) -> Result<(), ParamError> {
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ParamError::new(
            "userAssignedIdentityID",
            format!(
                "{id:?} is not a client ID; accepted: the GUID of a user-assigned managed identity"
            ),
        ));
    }
    Ok(())
}

/// Chooses the one identity mode a class sets: workload identity (`clientID`), service
/// principal (nodePublishSecretRef `clientid`/`clientsecret`) or the node's managed identity
/// (`useVMManagedIdentity`). Two modes at once are refused naming both; `usePodIdentity` is
/// refused as retired.
fn select_auth(
    attributes: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
) -> Result<Auth, ParamError> {
    let pod_identity = parse_bool(attributes, "usePodIdentity")?;
    let managed = parse_bool(attributes, "useVMManagedIdentity")?;
    let workload = get(attributes, "clientID");
    let sp_id = get_ci(secrets, "clientid");
    let sp_secret = get_ci(secrets, "clientsecret");
    let user_assigned = get(attributes, "userAssignedIdentityID");
    let mut modes: Vec<&str> = Vec::new();
    if pod_identity {
        modes.push("usePodIdentity");
    }
    if managed {
        modes.push("useVMManagedIdentity");
    }
    if workload.is_some() {
        modes.push("clientID");
    }
    if sp_secret.is_some() {
        modes.push("nodePublishSecretRef clientid/clientsecret");
    }
    if let [first, second, ..] = modes.as_slice() {
        return Err(ParamError::new(
            *first,
            format!(
                "{first} and {second} both select an identity; set only one of: clientID (workload identity), useVMManagedIdentity (node managed identity), nodePublishSecretRef clientid/clientsecret (service principal)"
            ),
        ));
    }
    if pod_identity {
        return Err(ParamError::new(
            "usePodIdentity",
            "aad-pod-identity is retired and not supported; use workload identity instead (set clientID to the identity's client ID and federate it with the pod's service account)",
        ));
    }
    if user_assigned.is_some() && !managed {
        return Err(ParamError::new(
            "userAssignedIdentityID",
            "is only used with useVMManagedIdentity: \"true\" (for workload identity set clientID instead)",
        ));
    }
    if managed {
        if let Some(id) = user_assigned {
            validate_identity_id(id)?;
        }
        return Ok(Auth::ManagedIdentity {
            user_assigned_id: user_assigned.map(str::to_owned),
        });
    }
    if let Some(client_id) = workload {
        let token = workload_identity_token(attributes, secrets)?.ok_or_else(|| {
            ParamError::new(
                TOKENS_ATTRIBUTE,
                format!("no service-account token for audience {WORKLOAD_IDENTITY_AUDIENCE}; workload identity (clientID) needs the CSIDriver object to request it in tokenRequests"),
            )
        })?;
        return Ok(Auth::WorkloadIdentity {
            client_id: client_id.to_owned(),
            token,
        });
    }
    match (sp_id, sp_secret) {
        (Some(id), Some(secret)) => Ok(Auth::ServicePrincipal {
            client_id: id.to_owned(),
            client_secret: SecretString::new(secret.to_owned()),
        }),
        (None, None) => Err(ParamError::new(
            "clientID",
            "no identity: set clientID for workload identity, useVMManagedIdentity for the node's managed identity, or provide clientid and clientsecret through nodePublishSecretRef for a service principal",
        )),
        (None, Some(_)) => Err(ParamError::new(
            "secrets.clientid",
            "is required with secrets.clientsecret",
        )),
        (Some(_), None) => Err(ParamError::new(
            "secrets.clientsecret",
            "is required with secrets.clientid",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::EnvFile;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const OBJECTS: &str = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n";

    fn sp() -> HashMap<String, String> {
        attrs(&[("clientid", "id"), ("clientsecret", "canary-secret")])
    }

    #[test]
    fn service_principal_class_parses() {
        let a = attrs(&[
            ("keyvaultName", "demo"),
            ("tenantID", "tenant"),
            ("objects", OBJECTS),
        ]);
        let p = mount_params(&a, &sp(), 0o644, EnvFile::Beneath(None)).expect("valid");
        assert_eq!(p.keyvault_name, "demo");
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.objects[0].file_name(), "db-password");
        assert_eq!(p.objects[0].id(), "secret/db-password");
        assert!(!format!("{p:?}").contains("canary"));
    }

    #[test]
    fn workload_identity_reads_the_token_from_attributes_or_secrets() {
        let tokens = r#"{"api://AzureADTokenExchange":{"token":"canary-jwt","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#;
        let a = attrs(&[
            ("keyvaultName", "demo"),
            ("tenantId", "tenant"),
            ("clientID", "cid"),
            ("objects", OBJECTS),
            (TOKENS_ATTRIBUTE, tokens),
        ]);
        let p = mount_params(&a, &HashMap::new(), 0o644, EnvFile::Beneath(None)).expect("valid");
        assert!(
            matches!(p.auth, Auth::WorkloadIdentity { ref token, .. } if token.expose() == "canary-jwt")
        );
        let mut a2 = a.clone();
        a2.remove(TOKENS_ATTRIBUTE);
        let s = attrs(&[(TOKENS_ATTRIBUTE, tokens)]);
        let p = mount_params(&a2, &s, 0o644, EnvFile::Beneath(None)).expect("valid");
        assert_eq!(p.auth.mode(), "workload-identity");
        let err = mount_params(&a2, &HashMap::new(), 0o644, EnvFile::Beneath(None))
            .expect_err("no token");
        assert_eq!(err.field, TOKENS_ATTRIBUTE);
    }

    #[test]
    fn errors_name_the_field() {
        let base = [
            ("keyvaultName", "demo"),
            ("tenantID", "t"),
            ("objects", OBJECTS),
        ];
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("tenantID", "t"), ("objects", OBJECTS)],
                "keyvaultName",
            ),
            (
                vec![("keyvaultName", "demo"), ("objects", OBJECTS)],
                "tenantID",
            ),
            (
                vec![
                    ("keyvaultName", "x"),
                    ("tenantID", "t"),
                    ("objects", OBJECTS),
                ],
                "keyvaultName",
            ),
            (vec![("keyvaultName", "demo"), ("tenantID", "t")], "objects"),
            (
                vec![
                    ("keyvaultName", "demo"),
                    ("tenantID", "t"),
                    ("objects", "array: ["),
                ],
                "objects",
            ),
            (vec![("usePodIdentity", "true")], "usePodIdentity"),
        ];
        for (pairs, field) in cases {
            let err = mount_params(&attrs(&pairs), &sp(), 0o644, EnvFile::Beneath(None))
                .expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(!err.to_string().contains("canary"));
        }
        let mut both = attrs(&base);
        both.insert("clientID".into(), "cid".into());
        let err = mount_params(&both, &sp(), 0o644, EnvFile::Beneath(None)).expect_err("two modes");
        assert!(err.problem.contains("both"), "{err}");
    }

    #[test]
    fn managed_identity_and_mode_conflicts() {
        let base = [
            ("keyvaultName", "demo"),
            ("tenantID", "t"),
            ("objects", OBJECTS),
        ];
        let mut a = attrs(&base);
        a.insert("useVMManagedIdentity".into(), "true".into());
        let p = mount_params(&a, &HashMap::new(), 0o644, EnvFile::Beneath(None))
            .expect("system-assigned");
        assert_eq!(
            p.auth,
            Auth::ManagedIdentity {
                user_assigned_id: None
            }
        );
        assert_eq!(p.auth.client_id(), SYSTEM_ASSIGNED_IDENTITY);
        a.insert("userAssignedIdentityID".into(), "0000-abc".into());
        let p = mount_params(&a, &HashMap::new(), 0o644, EnvFile::Beneath(None))
            .expect("user-assigned");
        assert_eq!(p.auth.client_id(), "0000-abc");
        assert_eq!(p.auth.mode(), "managed-identity");

        let err = mount_params(&a, &sp(), 0o644, EnvFile::Beneath(None)).expect_err("mi + sp");
        assert_eq!(err.field, "useVMManagedIdentity");
        assert!(err.problem.contains("nodePublishSecretRef"), "{err}");
        let mut wi = a.clone();
        wi.insert("clientID".into(), "cid".into());
        let err =
            mount_params(&wi, &HashMap::new(), 0o644, EnvFile::Beneath(None)).expect_err("mi + wi");
        assert!(
            err.to_string()
                .contains("useVMManagedIdentity and clientID"),
            "{err}"
        );
        let mut pod = attrs(&base);
        pod.insert("usePodIdentity".into(), "true".into());
        pod.insert("useVMManagedIdentity".into(), "true".into());
        let err = mount_params(&pod, &HashMap::new(), 0o644, EnvFile::Beneath(None))
            .expect_err("pod + mi");
        assert!(
            err.to_string()
                .contains("usePodIdentity and useVMManagedIdentity"),
            "{err}"
        );
        let mut pod = attrs(&base);
        pod.insert("usePodIdentity".into(), "true".into());
        let err = mount_params(&pod, &HashMap::new(), 0o644, EnvFile::Beneath(None))
            .expect_err("retired");
        assert!(err.problem.contains("retired") && err.problem.contains("workload identity"));
        let mut ua = attrs(&base);
        ua.insert("userAssignedIdentityID".into(), "x".into());
        let err =
            mount_params(&ua, &sp(), 0o644, EnvFile::Beneath(None)).expect_err("ua without mi");
        assert_eq!(err.field, "userAssignedIdentityID");
        let mut bad = attrs(&base);
        bad.insert("useVMManagedIdentity".into(), "true".into());
        bad.insert("userAssignedIdentityID".into(), "a b".into());
        assert_eq!(
            mount_params(&bad, &HashMap::new(), 0o644, EnvFile::Beneath(None))
                .expect_err("bad id")
                .field,
            "userAssignedIdentityID"
        );
    }

    #[test]
    fn version_history_expands_into_slots() {
        let yaml = "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: dir/a\n    objectVersionHistory: 3\n  - |\n    objectName: b\n    objectType: key\n    objectVersionHistory: \"1\"\n";
        let objects = parse_objects(yaml).expect("valid");
        assert_eq!(objects.len(), 4);
        let names: Vec<String> = objects.iter().map(|o| o.file_name().to_owned()).collect();
        assert_eq!(names, ["dir/a/0", "dir/a/1", "dir/a/2", "b"]);
        assert_eq!(objects[2].id(), "secret/a/2");
        assert_eq!(objects[3].id(), "key/b");
        assert_ne!(objects[0].cache_variant(), objects[1].cache_variant());
        for bad in ["51", "-1", "two"] {
            let yaml = format!(
                "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectVersionHistory: {bad}\n"
            );
            assert_eq!(object_err(&yaml).field, "objects[0].objectVersionHistory");
        }
        // A history directory cannot also be another object's file.
        let yaml = "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectVersionHistory: 2\n  - |\n    objectName: b\n    objectType: secret\n    objectAlias: a/1\n";
        assert_eq!(object_err(yaml).field, "objects[1]");
    }

    #[test]
    fn cert_key_files_option() {
        let yaml = "array:\n  - |\n    objectName: web\n    objectType: secret\n    certKeyFiles: \"true\"\n";
        let objects = parse_objects(yaml).expect("valid");
        assert!(objects[0].cert_key_files);
        assert_eq!(objects[0].cache_variant(), "cert-key-files");
        let yaml =
            "array:\n  - |\n    objectName: web\n    objectType: cert\n    certKeyFiles: true\n";
        assert_eq!(object_err(yaml).field, "objects[0].certKeyFiles");
        let yaml = "array:\n  - |\n    objectName: web\n    objectType: secret\n    objectFormat: pfx\n    certKeyFiles: true\n";
        assert_eq!(object_err(yaml).field, "objects[0].certKeyFiles");
        let yaml = "array:\n  - |\n    objectName: web\n    objectType: secret\n    certKeyFiles: \"true\"\n  - |\n    objectName: x\n    objectType: secret\n    objectAlias: web.key\n";
        assert_eq!(object_err(yaml).field, "objects[1]");
    }

    fn object_err(yaml: &str) -> ParamError {
        parse_objects(yaml).expect_err(yaml)
    }

    #[test]
    fn object_errors() {
        let one = |body: &str| format!("array:\n  - |\n{}", indent(body));
        let cases = [
            ("objectName: a\nobjectType: blob\n", "objects[0].objectType"),
            ("objectName: a\n", "objects[0].objectType"),
            ("objectType: secret\n", "objects[0].objectName"),
            (
                "objectName: a\nobjectType: secret\nobjectEncoding: rot13\n",
                "objects[0].objectEncoding",
            ),
            (
                "objectName: a\nobjectType: secret\nobjectAlias: ../x\n",
                "objects[0].objectAlias",
            ),
            (
                "objectName: a\nobjectType: secret\nobjectAlias: a/../../x\n",
                "objects[0].objectAlias",
            ),
            (
                "objectName: a\nobjectType: secret\nobjectAlias: /etc/passwd\n",
                "objects[0].objectAlias",
            ),
            (
                "objectName: a\nobjectType: secret\nobjectAlias: ..data\n",
                "objects[0].objectAlias",
            ),
            (
                "objectName: a\nobjectType: secret\nfilePermission: \"0999\"\n",
                "objects[0].filePermission",
            ),
            (
                "objectName: a\nobjectType: secret\nfilePermission: \"4755\"\n",
                "objects[0].filePermission",
            ),
            (
                "objectName: a\nobjectType: secret\nfilePermission: rw\n",
                "objects[0].filePermission",
            ),
            (
                "objectName: a\nobjectType: secret\nobjectAliass: b\n",
                "objects[0]",
            ),
            (
                "objectName: a\nobjectType: key\nobjectEncoding: hex\n",
                "objects[0].objectEncoding",
            ),
            (
                "objectName: a\nobjectType: cert\nobjectFormat: pfx\n",
                "objects[0].objectFormat",
            ),
            (
                "objectName: a_b\nobjectType: secret\n",
                "objects[0].objectName",
            ),
        ];
        for (body, field) in cases {
            let err = object_err(&one(body));
            assert_eq!(err.field, field, "{body}: {err}");
        }
        let long = format!(
            "objectName: a\nobjectType: secret\nobjectAlias: {}\n",
            "x".repeat(256)
        );
        assert_eq!(object_err(&one(&long)).field, "objects[0].objectAlias");
    }

    fn indent(s: &str) -> String {
        s.lines().map(|l| format!("    {l}\n")).collect()
    }

    #[test]
    fn two_objects_writing_one_file_are_refused() {
        let yaml = "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: b\n    objectType: secret\n    objectAlias: a\n";
        let err = object_err(yaml);
        assert_eq!(err.field, "objects[1]");
        let yaml = "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: b\n    objectType: secret\n    objectAlias: a/b\n";
        assert!(object_err(yaml).problem.contains("inside"));
    }

    #[test]
    fn options_parse() {
        let yaml = "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectVersion: latest\n    objectEncoding: Base64\n    objectAlias: dir/file\n    filePermission: \"0600\"\n  - |\n    objectName: b\n    objectType: secret\n    objectVersion: 0123456789abcdef0123456789abcdef\n    objectEncoding: hex\n    filePermission: 0640\n";
        let objects = parse_objects(yaml).expect("valid");
        assert_eq!(objects[0].version, None);
        assert_eq!(objects[0].encoding, ObjectEncoding::Base64);
        assert_eq!(objects[0].file_name(), "dir/file");
        assert_eq!(objects[0].file_mode, Some(0o600));
        assert_eq!(objects[1].encoding, ObjectEncoding::Hex);
        assert_eq!(objects[1].file_mode, Some(0o640));
        assert_eq!(
            objects[1].version.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn an_alias_is_at_most_16_levels_deep() {
        let alias = |depth: usize| vec!["d"; depth].join("/");
        let yaml = |a: &str| {
            format!(
                "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: {a}\n"
            )
        };
        assert!(parse_objects(&yaml(&alias(16))).is_ok());
        for depth in [17, 2047] {
            let err = parse_objects(&yaml(&alias(depth))).expect_err("too deep");
            assert_eq!(err.field, "objects[0].objectAlias");
            assert_eq!(
                err.problem,
                format!("has {depth} path elements; accepted: at most 16")
            );
        }
    }

    #[test]
    fn a_class_is_bounded_before_any_slot_is_built() {
        let list = |n: usize, extra: &str| {
            let docs: String = (0..n)
                .map(|i| format!("  - |\n    objectName: s{i}\n    objectType: secret\n{extra}"))
                .collect();
            format!("array:\n{docs}")
        };
        assert_eq!(
            parse_objects(&list(MAX_OBJECTS, ""))
                .expect("at the cap")
                .len(),
            MAX_OBJECTS
        );
        let err = parse_objects(&list(MAX_OBJECTS + 1, "")).expect_err("over");
        assert_eq!(err.field, "objects");
        assert!(err.problem.contains("at most 100 per class"), "{err}");
        let history = "    objectVersionHistory: 2\n";
        assert_eq!(
            parse_objects(&list(MAX_SLOTS / 2, history))
                .expect("at the cap")
                .len(),
            MAX_SLOTS
        );
        let err = parse_objects(&list(67, "    objectVersionHistory: 3\n")).expect_err("over");
        assert!(err.problem.contains("expands to 201 files"), "{err}");
        assert!(err.problem.contains("at most 200"), "{err}");
        let big = format!(
            "array:\n  - |\n    objectName: a\n    objectType: secret\n#{}",
            "x".repeat(MAX_OBJECTS_BYTES)
        );
        let err = parse_objects(&big).expect_err("too big");
        assert!(err.problem.contains("at most 262144"), "{err}");
    }

    #[test]
    fn a_service_account_token_says_when_it_expires() {
        use base64::Engine as _;
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let token = format!(
            "{}.{}.sig",
            encode("{}"),
            encode(r#"{"exp":2000000000,"sub":"x"}"#)
        );
        let auth = Auth::WorkloadIdentity {
            client_id: "c".into(),
            token: SecretString::new(token),
        };
        assert_eq!(
            auth.credential_expiry(),
            std::time::SystemTime::UNIX_EPOCH
                .checked_add(std::time::Duration::from_secs(2_000_000_000))
        );
        for opaque in [
            "not-a-jwt",
            "a.b.c",
            &format!("x.{}.y", encode(r#"{"sub":"x"}"#)),
        ] {
            let auth = Auth::WorkloadIdentity {
                client_id: "c".into(),
                token: SecretString::new(opaque.to_owned()),
            };
            assert_eq!(auth.credential_expiry(), None, "{opaque}");
        }
    }

    #[test]
    fn permissions() {
        assert_eq!(parse_default_mode("420"), Ok(0o644));
        assert_eq!(parse_default_mode("\"420\""), Ok(0o644));
        assert_eq!(parse_default_mode(""), Ok(0o644));
        assert_eq!(parse_default_mode("null"), Ok(0o644));
        assert!(parse_default_mode("512").is_err());
        assert!(parse_default_mode("-1").is_err());
        assert!(parse_default_mode("0644x").is_err());
        assert_eq!(parse_file_permission("f", "600"), Ok(0o600));
        assert_eq!(parse_file_permission("f", "0o400"), Ok(0o400));
        assert!(parse_file_permission("f", "").is_err());
        assert!(parse_file_permission("f", "07777").is_err());
    }

    /// Every shape the upstream driver sends for a map it has nothing for: a nil Go map is
    /// `null` (secrets without a nodePublishSecretRef), an empty one `{}`; `""` and an absent
    /// protobuf field are the same on the wire.
    #[test]
    fn string_maps_in_every_shape_the_driver_sends() {
        for empty in ["", "  ", "null", " null\n", "{}", "{ }"] {
            for field in ["attributes", "secrets"] {
                let map = parse_string_map(field, empty).expect("accepted");
                assert!(map.is_empty(), "{field} = {empty:?}");
            }
        }
        let map =
            parse_string_map("secrets", r#"{"clientid":"a","clientsecret":"b"}"#).expect("object");
        assert_eq!(map.get("clientid").map(String::as_str), Some("a"));
        for bad in ["[]", "\"null\"", "nul", "{\"a\":null}", "1"] {
            let err = parse_string_map("secrets", bad).expect_err(bad);
            assert_eq!(err.field, "secrets");
        }
    }

    #[test]
    fn string_maps_never_echo_input() {
        let err = parse_string_map("attributes", r#"{"token": canary}"#).expect_err("bad");
        assert_eq!(err.field, "attributes");
        assert!(!err.to_string().contains("canary"));
        let err = parse_string_map("secrets", r#"{"clientsecret": 12345}"#).expect_err("bad");
        assert!(!err.to_string().contains("12345"));
        assert!(
            parse_string_map("attributes", "")
                .expect("empty ok")
                .is_empty()
        );
    }

    #[test]
    fn errors_repeat_at_most_a_short_piece_of_the_input() {
        let long = "n".repeat(200_000);
        let body = format!("objectName: {long}\nobjectType: secret\n");
        let err = object_err(&format!("array:\n  - |\n{}", indent(&body)));
        assert_eq!(err.field, "objects[0].objectName");
        assert!(err.problem.len() < 300, "{} bytes", err.problem.len());
        assert!(err.problem.contains("(200000 bytes)"), "{}", err.problem);
        let mut a = attrs(&[
            ("keyvaultName", &long),
            ("tenantID", "t"),
            ("objects", OBJECTS),
        ]);
        let err =
            mount_params(&a, &sp(), 0o644, EnvFile::Beneath(None)).expect_err("long vault name");
        assert!(err.problem.len() < 300, "{} bytes", err.problem.len());
        a.insert("keyvaultName".into(), "ab".into());
        let err =
            mount_params(&a, &sp(), 0o644, EnvFile::Beneath(None)).expect_err("short vault name");
        assert!(err.problem.starts_with("\"ab\" is not"), "{}", err.problem);
        // The red team's 875 KB certKeyFiles value, and an object that is one long string,
        // which the YAML parser's own message quotes.
        let huge = "t".repeat(200_000);
        for body in [
            format!("objectName: a\nobjectType: secret\ncertKeyFiles: \"{huge}\"\n"),
            huge.clone(),
        ] {
            let err = object_err(&format!("array:\n  - |\n{}", indent(&body)));
            assert!(
                err.to_string().len() < 600,
                "{} bytes",
                err.to_string().len()
            );
        }
        let err = object_err(&format!("array: \"{huge}\""));
        assert!(
            err.to_string().len() < 600,
            "{} bytes",
            err.to_string().len()
        );
        assert!(ParamError::new("f", huge).problem.len() <= 1024);
    }
}
