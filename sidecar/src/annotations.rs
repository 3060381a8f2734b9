//! The `kvmount.io/*` pod annotations, parsed once into an [`Injection`].
//!
//! Every error names the annotation and says what is accepted. Unknown `kvmount.io/` keys
//! are refused, so that a typo (`kvmount.io/secert-db`) does not silently leave a file out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{self, MAX_REFRESH, MIN_REFRESH, is_env_name};
use crate::object::{
    OBJECT_REF_FORM, ObjectFields, ObjectRef, object_spec, object_yaml, objects_document,
};
use crate::template::Template;
use kvmount_vault::error::shown;

/// Prefix of every kvmount annotation.
pub const PREFIX: &str = "kvmount.io/";
/// `kvmount.io/inject: "true"` asks for injection.
pub const INJECT: &str = "kvmount.io/inject";
/// Written by the webhook; a pod that has it is never mutated again.
pub const STATUS: &str = "kvmount.io/status";
/// The value of [`STATUS`] after injection.
pub const STATUS_INJECTED: &str = "injected";
/// Default mount path of the secrets volume in app containers.
pub const DEFAULT_MOUNT_PATH: &str = "/mnt/secrets";
/// Default size limit of the secrets volume.
pub const DEFAULT_SIZE_LIMIT: &str = "4Mi";

/// Plain annotations (after the prefix) and what each accepts.
const PLAIN_KEYS: &[&str] = &[
    "inject",
    "status",
    "keyvault",
    "tenant-id",
    "client-id",
    "secret-provider-class",
    "mount-path",
    "containers",
    "mode",
    "refresh-interval",
    "volume-size-limit",
    "cpu-request",
    "cpu-limit",
    "memory-request",
    "memory-limit",
];
/// Annotations with a name after the key (after the prefix).
const NAMED_KEYS: &[&str] = &[
    "secret-",
    "template-",
    "format-",
    "encoding-",
    "perms-",
    "env-",
];

/// An annotation that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {problem}")]
pub struct AnnotationError {
    /// The full annotation key, e.g. `kvmount.io/secret-db`.
    pub annotation: String,
    /// What is wrong and what is accepted. Never contains a secret (annotations hold none).
    pub problem: String,
}

impl AnnotationError {
    fn new(key: &str, problem: impl Into<String>) -> Self {
        Self {
            annotation: format!("{PREFIX}{key}"),
            problem: problem.into(),
        }
    }
}

/// How the agent runs in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+ native sidecar) whose
    /// postStart hook returns once the first render is on disk.
    Native,
    /// An init container that renders once, and a regular sidecar container that refreshes.
    Sidecar,
    /// Only the init container (for Jobs): render once and exit.
    InitOnly,
}

impl Mode {
    /// Parses `native`, `sidecar` or `init-only`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "native" => Some(Self::Native),
            "sidecar" => Some(Self::Sidecar),
            "init-only" => Some(Self::InitOnly),
            _ => None,
        }
    }
}

/// Resource requests and limits of the injected containers (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// `cpu-request`.
    pub cpu_request: String,
    /// `memory-request`.
    pub memory_request: String,
    /// `cpu-limit`, none by default.
    pub cpu_limit: Option<String>,
    /// `memory-limit`.
    pub memory_limit: String,
}

impl Default for Resources {
    /// Measured by `bench/run.sh` (docs/benchmarks.md): the agent as the image ships it (static
    /// musl, `dist-agent`) holds 4.8 MiB in steady state, 1.0 MiB of it anonymous; the request
    /// leaves room for a round with large objects.
    fn default() -> Self {
        Self {
            cpu_request: "5m".into(),
            memory_request: "12Mi".into(),
            cpu_limit: None,
            memory_limit: "32Mi".into(),
        }
    }
}

/// What an annotated pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// `keyvault` (or the class's `keyvaultName`).
    pub keyvault: Option<String>,
    /// `tenant-id`.
    pub tenant_id: Option<String>,
    /// `client-id`.
    pub client_id: Option<String>,
    /// `secret-provider-class`.
    pub secret_provider_class: Option<String>,
    /// The `objects` document of the `secret-<file>` annotations (with their `format-`,
    /// `encoding-`, `perms-`); `None` when there are none.
    pub objects: Option<String>,
    /// `template-<file>` files.
    pub templates: Vec<config::TemplateFile>,
    /// `env-<VAR>` references.
    pub env: BTreeMap<String, String>,
    /// `mount-path`.
    pub mount_path: String,
    /// `containers`: the app containers that get the volume; `None` means all.
    pub containers: Option<Vec<String>>,
    /// `mode`; `None` means the webhook's default.
    pub mode: Option<Mode>,
    /// `refresh-interval`.
    pub refresh: Option<Duration>,
    /// `volume-size-limit`.
    pub size_limit: String,
    /// Resource overrides.
    pub resources: Resources,
}

/// Whether the pod asks for injection: `Ok(true)` for `"true"`, `Ok(false)` when the
/// annotation is absent or `"false"`.
pub fn wants_injection(annotations: &BTreeMap<String, String>) -> Result<bool, AnnotationError> {
    match annotations.get(INJECT).map(|v| v.trim()) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(AnnotationError::new(
            "inject",
            format!(
                "{} is not accepted; accepted: \"true\" or \"false\"",
                shown(other)
            ),
        )),
    }
}

/// True when the webhook already injected this pod.
pub fn already_injected(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(STATUS).map(|v| v.trim()) == Some(STATUS_INJECTED)
}

/// A Kubernetes quantity such as `5m`, `0.5`, `16Mi`, `1G`.
pub fn is_quantity(text: &str) -> bool {
    quantity_value(text).is_some()
}

/// The exact value of a quantity in billionths (`1` is 1e9, `1m` is 1e6, `1Ki` is 1024e9),
/// for comparing requests with limits; `None` when `text` is not a quantity this webhook
/// accepts: digits (at most 12, then at most 6 after a `.`) and one of the suffixes `m`, `k`,
/// `M`, `G`, `T`, `Ki`, `Mi`, `Gi`, `Ti`, or none.
pub fn quantity_value(text: &str) -> Option<u128> {
    // Each suffix as a multiple of a thousandth.
    const SUFFIXES: [(&str, u128); 10] = [
        ("Ki", 1024 * 1000),
        ("Mi", (1 << 20) * 1000),
        ("Gi", (1 << 30) * 1000),
        ("Ti", (1 << 40) * 1000),
        ("m", 1),
        ("k", 1_000_000),
        ("M", 1_000_000_000),
        ("G", 1_000_000_000_000),
        ("T", 1_000_000_000_000_000),
        ("", 1000),
    ];
    SUFFIXES.iter().find_map(|(suffix, thousandths)| {
        let number = text.strip_suffix(suffix)?;
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        let digits = |d: &str, max: usize| {
            !d.is_empty() && d.len() <= max && d.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(whole, 12) || fraction.is_some_and(|f| !digits(f, 6)) {
            return None;
        }
        // The number in millionths, then times the suffix in thousandths: billionths.
        let fraction = format!("{:0<6}", fraction.unwrap_or(""));
        let millionths = whole.parse::<u128>().ok()? * 1_000_000 + fraction.parse::<u128>().ok()?;
        Some(millionths * thousandths)
    })
}

/// A tenant: a GUID or a domain name.
fn is_tenant(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// An absolute, clean container path that is not `/`.
fn is_mount_path(text: &str) -> bool {
    text.starts_with('/')
        && text.len() > 1
        && text.len() <= 1024
        && !text.ends_with('/')
        && !text.contains(':')
        && text
            .split('/')
            .skip(1)
            .all(|e| !e.is_empty() && e != "." && e != "..")
}

/// A DNS-1123 label (container names; the labels of a ConfigMap name).
pub(crate) fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Parses the `kvmount.io/*` annotations of a pod that asked for injection.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Injection, AnnotationError> {
    let sorted = Sorted::of(annotations)?;
    let keyvault = sorted.text("keyvault");
    if let Some(k) = &keyvault {
        kvmount_vault::params::validate_vault_name(k)
            .map_err(|e| AnnotationError::new("keyvault", e.problem))?;
    }
    check_identity(&sorted)?;
    let secret_provider_class = secret_provider_class(&sorted)?;
    let (objects, templates) = files(&sorted.named)?;
    let objects = if objects.is_empty() {
        None
    } else {
        Some(objects_document(&objects))
    };
    if secret_provider_class.is_some() {
        if let Some(file) = sorted.named.keys().next() {
            return Err(AnnotationError::new(
                "secret-provider-class",
                format!(
                    "takes the objects from the class; remove the per-file annotations (found {PREFIX}*-{file})"
                ),
            ));
        }
    } else {
        if keyvault.is_none() {
            return Err(AnnotationError::new(
                "keyvault",
                "is required (or name a SecretProviderClass with kvmount.io/secret-provider-class); accepted: a Key Vault name of 3 to 24 letters, digits and '-'",
            ));
        }
        if objects.is_none() && templates.is_empty() && sorted.env.is_empty() {
            return Err(AnnotationError::new(
                "inject",
                format!(
                    "the pod names no object; accepted: at least one {PREFIX}secret-<file>: {OBJECT_REF_FORM}, {PREFIX}template-<file> or {PREFIX}env-<VAR>"
                ),
            ));
        }
    }
    let mount_path = mount_path(&sorted)?;
    let containers = sorted
        .text("containers")
        .map(|list| parse_containers(&list))
        .transpose()?;
    let mode = mode(&sorted)?;
    let refresh = refresh(&sorted)?;
    let resources = resources(&sorted)?;
    let size_limit = sorted
        .quantity("volume-size-limit", Some(DEFAULT_SIZE_LIMIT))?
        .unwrap_or_else(|| DEFAULT_SIZE_LIMIT.to_owned());
    Ok(Injection {
        keyvault,
        tenant_id: sorted.text("tenant-id"),
        client_id: sorted.text("client-id"),
        secret_provider_class,
        objects,
        templates,
        env: sorted.env,
        mount_path,
        containers,
        mode,
        refresh,
        size_limit,
        resources,
    })
}

/// A pod's kvmount annotations by kind, keys without the prefix: the plain ones, the per-file
/// ones (file name to kind to value) and the `env-<VAR>` references (checked here).
struct Sorted<'a> {
    plain: BTreeMap<&'a str, &'a str>,
    named: BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>,
    env: BTreeMap<String, String>,
}

impl<'a> Sorted<'a> {
    /// Sorts the annotations; an unknown `kvmount.io/` key or a bad `env-` one is an error.
    fn of(annotations: &'a BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let mut sorted = Self {
            plain: BTreeMap::new(),
            named: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        for (key, value) in annotations {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let value = value.as_str();
            if PLAIN_KEYS.contains(&rest) {
                sorted.plain.insert(rest, value);
                continue;
            }
            let Some(kind) = NAMED_KEYS.iter().find(|k| rest.starts_with(**k)) else {
                return Err(AnnotationError::new(
                    rest,
                    format!(
                        "is not a kvmount annotation; accepted: {}, and {}<name>",
                        PLAIN_KEYS.join(", "),
                        NAMED_KEYS.join("<name>, ")
                    ),
                ));
            };
            let name = &rest[kind.len()..];
            if name.is_empty() {
                return Err(AnnotationError::new(
                    rest,
                    format!("needs a name after {PREFIX}{kind}"),
                ));
            }
            if *kind == "env-" {
                sorted
                    .env
                    .insert(name.to_owned(), env_reference(rest, name, value)?);
                continue;
            }
            sorted.named.entry(name).or_default().insert(kind, value);
        }
        Ok(sorted)
    }

    /// A plain annotation's value, trimmed; empty is absent.
    fn text(&self, key: &str) -> Option<String> {
        self.plain
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// A Kubernetes quantity annotation, or `default` when it is absent.
    fn quantity(
        &self,
        key: &str,
        default: Option<&str>,
    ) -> Result<Option<String>, AnnotationError> {
        match self.text(key) {
            None => Ok(default.map(str::to_owned)),
            Some(q) if is_quantity(&q) => Ok(Some(q)),
            Some(q) => Err(AnnotationError::new(
                key,
                format!(
                    "{} is not a Kubernetes quantity; accepted: e.g. 5m, 0.5, 16Mi, 1Gi",
                    shown(&q)
                ),
            )),
        }
    }
}

/// The object reference of `env-<name>` (annotation `key`), trimmed.
fn env_reference(key: &str, name: &str, value: &str) -> Result<String, AnnotationError> {
    if !is_env_name(name) {
        return Err(AnnotationError::new(
            key,
            format!(
                "{name:?} is not an environment variable name; accepted: letters, digits and '_', not starting with a digit"
            ),
        ));
    }
    ObjectRef::parse(value).map_err(|p| AnnotationError::new(key, p))?;
    Ok(value.trim().to_owned())
}

/// `tenant-id` and `client-id`: GUIDs (a tenant also as a domain).
fn check_identity(sorted: &Sorted<'_>) -> Result<(), AnnotationError> {
    for key in ["tenant-id", "client-id"] {
        if let Some(v) = sorted.text(key)
            && !is_tenant(&v)
        {
            return Err(AnnotationError::new(
                key,
                format!(
                    "{} is not accepted; accepted: a GUID{}",
                    shown(&v),
                    if key == "tenant-id" {
                        " or a domain such as contoso.onmicrosoft.com"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// `secret-provider-class`: a SecretProviderClass name.
fn secret_provider_class(sorted: &Sorted<'_>) -> Result<Option<String>, AnnotationError> {
    let class = sorted.text("secret-provider-class");
    if let Some(c) = &class
        && kvmount_k8s::validate_name(c).is_err()
    {
        return Err(AnnotationError::new(
            "secret-provider-class",
            format!(
                "{} is not a SecretProviderClass name; accepted: a DNS subdomain name (lowercase letters, digits, '-' and '.')",
                shown(c)
            ),
        ));
    }
    Ok(class)
}

/// The files of the per-file annotations: `secret-<file>` as object YAML, `template-<file>`
/// as template files, each with its options (`encoding-`, `format-`, `perms-`).
fn files(
    named: &BTreeMap<&str, BTreeMap<&str, &str>>,
) -> Result<(Vec<String>, Vec<config::TemplateFile>), AnnotationError> {
    let mut objects = Vec::new();
    let mut templates = Vec::new();
    for (file, kinds) in named {
        let secret = kinds.get("secret-");
        let template = kinds.get("template-");
        let key = |kind: &str| format!("{kind}{file}");
        kvmount_vault::params::validate_file_path(&key("secret-"), file).map_err(|e| {
            AnnotationError::new(
                &key(if secret.is_some() {
                    "secret-"
                } else {
                    kinds.keys().next().copied().unwrap_or("secret-")
                }),
                format!("the file name {file:?}: {}", e.problem),
            )
        })?;
        match (secret, template) {
            (Some(_), Some(_)) => {
                return Err(AnnotationError::new(
                    &key("template-"),
                    format!(
                        "file {file:?} has both {PREFIX}secret-{file} and {PREFIX}template-{file}; accepted: one of them"
                    ),
                ));
            }
            (None, None) => {
                let kind = kinds.keys().next().copied().unwrap_or("perms-");
                return Err(AnnotationError::new(
                    &key(kind),
                    format!(
                        "there is no {PREFIX}secret-{file} or {PREFIX}template-{file} for it to apply to"
                    ),
                ));
            }
            (Some(reference), None) => objects.push(secret_file(file, kinds, reference)?),
            (None, Some(text)) => templates.push(template_file(file, kinds, text)?),
        }
    }
    Ok((objects, templates))
}

/// `secret-<file>` and its options, as one element of an `objects` document.
fn secret_file(
    file: &str,
    kinds: &BTreeMap<&str, &str>,
    reference: &str,
) -> Result<String, AnnotationError> {
    let key = |kind: &str| format!("{kind}{file}");
    let reference =
        ObjectRef::parse(reference).map_err(|p| AnnotationError::new(&key("secret-"), p))?;
    let fields = ObjectFields {
        alias: Some(file.to_owned()),
        encoding: kinds.get("encoding-").map(|v| v.trim().to_owned()),
        format: kinds.get("format-").map(|v| v.trim().to_owned()),
        permission: kinds.get("perms-").map(|v| v.trim().to_owned()),
    };
    object_spec(&reference, &fields).map_err(|e| {
        let kind = if e.field.ends_with("objectEncoding") {
            "encoding-"
        } else if e.field.ends_with("objectFormat") {
            "format-"
        } else if e.field.ends_with("filePermission") {
            "perms-"
        } else {
            "secret-"
        };
        AnnotationError::new(&key(kind), e.problem)
    })?;
    Ok(object_yaml(&reference, &fields))
}

/// `template-<file>` and its mode (`perms-<file>`; encodings and formats do not apply).
fn template_file(
    file: &str,
    kinds: &BTreeMap<&str, &str>,
    text: &str,
) -> Result<config::TemplateFile, AnnotationError> {
    let key = |kind: &str| format!("{kind}{file}");
    for kind in ["encoding-", "format-"] {
        if kinds.contains_key(kind) {
            return Err(AnnotationError::new(
                &key(kind),
                format!(
                    "applies to {PREFIX}secret-{file} only; template files are written as rendered"
                ),
            ));
        }
    }
    Template::parse(text).map_err(|e| AnnotationError::new(&key("template-"), e.to_string()))?;
    let mode = kinds.get("perms-").map(|v| v.trim().to_owned());
    if let Some(m) = &mode {
        kvmount_vault::params::parse_file_permission(&key("perms-"), m)
            .map_err(|e| AnnotationError::new(&key("perms-"), e.problem))?;
    }
    Ok(config::TemplateFile {
        path: file.to_owned(),
        mode,
        template: text.to_owned(),
    })
}

/// `mount-path`, or the default.
fn mount_path(sorted: &Sorted<'_>) -> Result<String, AnnotationError> {
    let mount_path = sorted
        .text("mount-path")
        .unwrap_or_else(|| DEFAULT_MOUNT_PATH.to_owned());
    if !is_mount_path(&mount_path) {
        return Err(AnnotationError::new(
            "mount-path",
            format!(
                "{} is not accepted; accepted: an absolute path without '.', '..', ':' or a trailing '/', e.g. /mnt/secrets",
                shown(&mount_path)
            ),
        ));
    }
    Ok(mount_path)
}

/// `mode`, when set.
fn mode(sorted: &Sorted<'_>) -> Result<Option<Mode>, AnnotationError> {
    let Some(m) = sorted.text("mode") else {
        return Ok(None);
    };
    let mode = Mode::parse(&m).ok_or_else(|| {
        AnnotationError::new(
            "mode",
            format!(
                "{} is not a mode; accepted: native, sidecar, init-only",
                shown(&m)
            ),
        )
    })?;
    Ok(Some(mode))
}

/// `refresh-interval`, when set, within [`MIN_REFRESH`] and [`MAX_REFRESH`].
fn refresh(sorted: &Sorted<'_>) -> Result<Option<Duration>, AnnotationError> {
    let Some(r) = sorted.text("refresh-interval") else {
        return Ok(None);
    };
    let d = kvmount_vault::duration::parse_duration_within(
        "refresh-interval",
        &r,
        MIN_REFRESH,
        MAX_REFRESH,
    );
    let d = d.map_err(|problem| {
        let problem = problem.trim_start_matches("refresh-interval: ").to_owned();
        AnnotationError::new("refresh-interval", problem)
    })?;
    Ok(Some(d))
}

/// The injected containers' requests and limits: the defaults, overridden per annotation.
fn resources(sorted: &Sorted<'_>) -> Result<Resources, AnnotationError> {
    let defaults = Resources::default();
    let resources = Resources {
        cpu_request: sorted
            .quantity("cpu-request", Some(&defaults.cpu_request))?
            .unwrap_or(defaults.cpu_request.clone()),
        memory_request: sorted
            .quantity("memory-request", Some(&defaults.memory_request))?
            .unwrap_or(defaults.memory_request.clone()),
        cpu_limit: sorted.quantity("cpu-limit", None)?,
        memory_limit: sorted
            .quantity("memory-limit", Some(&defaults.memory_limit))?
            .unwrap_or(defaults.memory_limit.clone()),
    };
    check_requests_within_limits(&resources, |key| sorted.text(key).is_some())?;
    Ok(resources)
}

/// The `containers` list: container names, each once.
fn parse_containers(list: &str) -> Result<Vec<String>, AnnotationError> {
    let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
    if let Some(bad) = names.iter().find(|n| !is_dns_label(n)) {
        return Err(AnnotationError::new(
            "containers",
            format!(
                "{} is not a container name; accepted: a comma-separated list of container names",
                shown(bad)
            ),
        ));
    }
    if let Some((_, twice)) = names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
    {
        return Err(AnnotationError::new(
            "containers",
            format!(
                "names {} twice (the secrets volume would be mounted twice in it); accepted: each container once",
                shown(twice)
            ),
        ));
    }
    Ok(names)
}

/// Refuses a request above its limit (the apiserver would refuse the pod), naming the
/// annotation the pod set: the request, or the limit when only the limit is the pod's.
fn check_requests_within_limits(
    resources: &Resources,
    set_by_pod: impl Fn(&str) -> bool,
) -> Result<(), AnnotationError> {
    let pairs = [
        ("cpu", &resources.cpu_request, resources.cpu_limit.as_ref()),
        (
            "memory",
            &resources.memory_request,
            Some(&resources.memory_limit),
        ),
    ];
    for (kind, request, limit) in pairs {
        let Some(limit) = limit else { continue };
        if quantity_value(request) <= quantity_value(limit) {
            continue;
        }
        let (request_key, limit_key) = (format!("{kind}-request"), format!("{kind}-limit"));
        let default = |key: &str| {
            if set_by_pod(key) {
                ""
            } else {
                " (the default)"
            }
        };
        let key = if set_by_pod(&request_key) {
            &request_key
        } else {
            &limit_key
        };
        return Err(AnnotationError::new(
            key,
            format!(
                "the {kind} request {request}{} is above the {kind} limit {limit}{}; accepted: a request at most the limit (set {PREFIX}{request_key} and {PREFIX}{limit_key} together)",
                default(&request_key),
                default(&limit_key),
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn full_set() {
        let i = parse(&map(&[
            ("kvmount.io/inject", "true"),
            ("kvmount.io/keyvault", "demo"),
            ("kvmount.io/secret-db", "secret/db-password"),
            ("kvmount.io/perms-db", "0640"),
            ("kvmount.io/encoding-db", "utf-8"),
            ("kvmount.io/template-conn", "p={{ secret/db-password }}"),
            ("kvmount.io/env-API_KEY", "secret/api-key"),
            ("kvmount.io/mode", "init-only"),
            ("kvmount.io/refresh-interval", "30s"),
            ("kvmount.io/containers", "app, worker"),
            ("kvmount.io/memory-limit", "16Mi"),
            ("other.io/x", "ignored"),
        ]))
        .expect("valid");
        assert_eq!(i.mode, Some(Mode::InitOnly));
        assert_eq!(
            i.containers.as_deref(),
            Some(&["app".to_owned(), "worker".to_owned()][..])
        );
        assert_eq!(i.templates[0].path, "conn");
        assert!(
            i.objects
                .as_deref()
                .is_some_and(|o| o.contains("objectAlias: db"))
        );
        assert_eq!(i.resources.memory_limit, "16Mi");
        assert_eq!(i.refresh, Some(Duration::from_secs(30)));
    }

    #[test]
    fn each_error_names_its_annotation() {
        let base = [
            ("kvmount.io/inject", "true"),
            ("kvmount.io/keyvault", "demo"),
        ];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("kvmount.io/secret-db", "db-password")],
                "kvmount.io/secret-db",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/encoding-db", "rot13"),
                ],
                "kvmount.io/encoding-db",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/format-db", "jks"),
                ],
                "kvmount.io/format-db",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/perms-db", "999"),
                ],
                "kvmount.io/perms-db",
            ),
            (&[("kvmount.io/perms-db", "0600")], "kvmount.io/perms-db"),
            (
                &[("kvmount.io/template-c", "{{ nope }}")],
                "kvmount.io/template-c",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/mode", "daemon"),
                ],
                "kvmount.io/mode",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/mount-path", "relative"),
                ],
                "kvmount.io/mount-path",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/refresh-interval", "0s"),
                ],
                "kvmount.io/refresh-interval",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/cpu-limit", "lots"),
                ],
                "kvmount.io/cpu-limit",
            ),
            (
                &[
                    ("kvmount.io/secret-db", "secret/db"),
                    ("kvmount.io/containers", "App"),
                ],
                "kvmount.io/containers",
            ),
            (&[("kvmount.io/env-1X", "secret/db")], "kvmount.io/env-1X"),
            (
                &[("kvmount.io/secert-db", "secret/db")],
                "kvmount.io/secert-db",
            ),
            (&[], "kvmount.io/inject"),
        ];
        for (extra, annotation) in cases {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.extend_from_slice(extra);
            let err = parse(&map(&all)).expect_err(annotation);
            assert_eq!(err.annotation, *annotation, "{err}");
            assert!(
                err.problem.contains("accepted") || err.problem.contains("no "),
                "{err}"
            );
        }
        let err = parse(&map(&[
            ("kvmount.io/inject", "true"),
            ("kvmount.io/secret-db", "secret/db"),
        ]))
        .expect_err("no vault");
        assert_eq!(err.annotation, "kvmount.io/keyvault");
        assert!(wants_injection(&map(&[("kvmount.io/inject", "yes")])).is_err());
    }

    #[test]
    fn quantities() {
        for q in ["5m", "0.5", "16Mi", "1Gi", "100", "1.25G"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "Mi", "1.Mi", "-1", "1e3", "lots", "1 Mi"] {
            assert!(!is_quantity(q), "{q}");
        }
    }
}
