//! AdmissionReview v1 in, AdmissionReview v1 out: the mutation itself, without I/O.
//!
//! [`parse_review`] reads the request; [`mutate`] decides (skip, patch or deny) given the
//! SecretProviderClass parameters when the pod names one; [`response`] writes the answer.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::annotations::{self, Injection, Mode, STATUS, STATUS_INJECTED};
use crate::config::{AGENT_CONFIG_ENV, AgentConfig, EXEC_CONFIG_ENV, Plan};
use crate::patch::Patch;
use crate::paths;
use kvmount_vault::error::shown;

/// Name of the memory volume with the rendered files.
pub const SECRETS_VOLUME: &str = "kvmount-secrets";
/// Name of the projected service-account token volume.
pub const TOKEN_VOLUME: &str = "kvmount-token";
/// Where the token volume is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/kvmount.io/serviceaccount";
/// Name of the volume with the extra trusted roots ([`AgentCa`]).
pub const CA_VOLUME: &str = "kvmount-ca";
/// Where the extra trusted roots are mounted; the file in it is [`CA_FILE`].
pub const CA_DIR: &str = "/var/run/secrets/kvmount.io/ca";
/// The extra trusted roots, as the agents' `--ca-file` names them.
pub const CA_FILE: &str = "/var/run/secrets/kvmount.io/ca/ca.crt";
/// Name of the memory volume that carries the `kvmount-agent` binary for `exec`.
pub const BIN_VOLUME: &str = "kvmount-bin";
/// Where the binary volume is mounted.
pub const BIN_DIR: &str = "/kvmount/bin";
/// The Azure Workload Identity webhook's token volume, reused when present.
pub const AZURE_TOKEN_VOLUME: &str = "azure-identity-token";
/// Where Azure Workload Identity mounts it.
pub const AZURE_TOKEN_DIR: &str = "/var/run/secrets/azure/tokens";
/// Audience of workload-identity tokens.
pub const AUDIENCE: &str = kvmount_vault::params::WORKLOAD_IDENTITY_AUDIENCE;
/// Azure Workload Identity env vars copied into the agent when an app container has them.
const AZURE_ENV: &[&str] = &[
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];
/// How long the native agent's postStart hook (`probe --wait`) waits for the first render
/// before it fails, and the kubelet restarts the agent (with its crash-loop backoff). The
/// kubelet waits for a postStart hook even when the pod is deleted (it does not cancel the
/// exec: kubernetes/kubernetes#116032), so this is also how much longer deleting a pod whose
/// first render has not come can take. A first render takes milliseconds to a few seconds.
pub const POST_START_WAIT: &str = "20s";
/// The user the agent runs as when the pod sets none.
pub const AGENT_UID: i64 = 65532;
/// Injected container names.
pub const AGENT_CONTAINER: &str = "kvmount-agent";
/// The init container of `sidecar` and `init-only` modes.
pub const AGENT_INIT_CONTAINER: &str = "kvmount-agent-init";
/// The init container that copies the binary for `exec`.
pub const INSTALL_CONTAINER: &str = "kvmount-install";

/// How the webhook builds what it injects.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The agent image.
    pub agent_image: String,
    /// Path of `kvmount-agent` inside the image.
    pub agent_command: String,
    /// Extra arguments for every agent (e.g. `--keyvault-dns-suffix` for other clouds).
    pub agent_args: Vec<String>,
    /// Mode when the pod does not choose one.
    pub default_mode: Mode,
    /// Namespaces never mutated (the webhook's own, kube-system, kube-public).
    pub skip_namespaces: Vec<String>,
    /// Tenant when neither the pod nor Azure Workload Identity gives one.
    pub default_tenant_id: Option<String>,
    /// Lifetime of the projected token.
    pub token_expiration_seconds: i64,
    /// Extra trusted roots for every agent (and `exec`), from a ConfigMap in the pod's
    /// namespace. The caller adds `--ca-file=`[`CA_FILE`] to `agent_args` with it.
    pub agent_ca: Option<AgentCa>,
}

/// A ConfigMap key holding PEM roots (a private CA, a TLS-inspecting proxy) that agents trust
/// besides the system roots. The ConfigMap must exist in each namespace whose pods are
/// injected (trust-manager's Bundle, for one, distributes such a ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCa {
    /// The ConfigMap's name.
    pub config_map: String,
    /// The key in it.
    pub key: String,
}

impl AgentCa {
    /// Checks a name and key as the apiserver would (a DNS subdomain; a ConfigMap key), so a
    /// typo stops the webhook at start instead of leaving every injected pod without volume.
    pub fn new(config_map: &str, key: &str) -> Result<Self, String> {
        let subdomain = config_map.len() <= 253
            && !config_map.is_empty()
            && config_map.split('.').all(annotations::is_dns_label);
        if !subdomain {
            return Err(format!(
                "--agent-ca-configmap {}: not a ConfigMap name; accepted: a DNS subdomain (lowercase letters, digits, '-', '.'; at most 253 characters)",
                shown(config_map)
            ));
        }
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !key_ok {
            return Err(format!(
                "--agent-ca-key {}: not a ConfigMap key; accepted: letters, digits, '-', '_', '.' (at most 253)",
                shown(key)
            ));
        }
        Ok(Self {
            config_map: config_map.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            agent_image: "ghcr.io/kvmount/kvmount-sidecar:0.1.0".into(),
            agent_command: "/usr/local/bin/kvmount-agent".into(),
            agent_args: Vec::new(),
            default_mode: Mode::Native,
            skip_namespaces: vec!["kube-system".into(), "kube-public".into()],
            default_tenant_id: None,
            token_expiration_seconds: 3600,
            agent_ca: None,
        }
    }
}

/// The review could not be read (answered with HTTP 400, not an AdmissionReview).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not an AdmissionReview v1 with a request.
    #[error("not an admission.k8s.io/v1 AdmissionReview request: {0}")]
    Malformed(String),
}

/// The parts of an AdmissionReview request we read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewDocument {
    api_version: String,
    kind: String,
    request: Option<RequestDocument>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestDocument {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// The pod fields the mutation reads; everything else is left alone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `metadata`.
    #[serde(default)]
    pub metadata: Metadata,
    /// `spec`.
    #[serde(default)]
    pub spec: PodSpec,
}

/// Pod metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// `name` (often empty on CREATE: `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// `generateName`.
    #[serde(default)]
    pub generate_name: Option<String>,
    /// `annotations`; `None` when absent or null.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// `labels`.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Pod spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// `containers`.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// `initContainers`.
    #[serde(default)]
    pub init_containers: Option<Vec<Container>>,
    /// `volumes`.
    #[serde(default)]
    pub volumes: Option<Vec<Named>>,
    /// `securityContext`.
    #[serde(default)]
    pub security_context: Option<PodSecurityContext>,
    /// `serviceAccountName` (`default` when absent).
    #[serde(default)]
    pub service_account_name: Option<String>,
}

/// The pod security context fields the agent follows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// `runAsUser`.
    #[serde(default)]
    pub run_as_user: Option<i64>,
    /// `runAsGroup`.
    #[serde(default)]
    pub run_as_group: Option<i64>,
    /// `fsGroup`.
    #[serde(default)]
    pub fs_group: Option<i64>,
}

/// Anything with a name (volumes, volume mounts).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Named {
    /// `name`.
    #[serde(default)]
    pub name: String,
}

/// A container.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `command`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `env`.
    #[serde(default)]
    pub env: Option<Vec<EnvVar>>,
    /// `volumeMounts`.
    #[serde(default)]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// A container env var.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnvVar {
    /// `name`.
    pub name: String,
    /// `value` (absent for `valueFrom`).
    #[serde(default)]
    pub value: Option<String>,
}

/// A volume mount.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `mountPath`.
    #[serde(default)]
    pub mount_path: String,
}

/// A parsed AdmissionReview request.
#[derive(Debug, Clone)]
pub struct Review {
    /// `request.uid`, echoed in the response.
    pub uid: String,
    /// `request.namespace`.
    pub namespace: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    /// True for core/v1 Pod.
    pub is_pod: bool,
    /// The pod, when `is_pod`.
    pub pod: Option<Pod>,
}

/// Reads an AdmissionReview v1 request.
pub fn parse_review(body: &[u8]) -> Result<Review, ReviewError> {
    let doc: ReviewDocument = serde_json::from_slice(body).map_err(|e| {
        ReviewError::Malformed(format!(
            "{:?} at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if doc.api_version != "admission.k8s.io/v1" || doc.kind != "AdmissionReview" {
        return Err(ReviewError::Malformed(format!(
            "apiVersion {:?} kind {:?}; accepted: admission.k8s.io/v1 AdmissionReview",
            doc.api_version, doc.kind
        )));
    }
    let request = doc
        .request
        .ok_or_else(|| ReviewError::Malformed("no request".into()))?;
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let pod = if is_pod {
        match request.object {
            Some(object) => Some(serde_json::from_value::<Pod>(object).map_err(|e| {
                ReviewError::Malformed(format!("request.object is not a Pod: {e}"))
            })?),
            None => None,
        }
    } else {
        None
    };
    Ok(Review {
        uid: request.uid,
        namespace: request.namespace.unwrap_or_default(),
        operation: request.operation,
        is_pod,
        pod,
    })
}

/// What the webhook does with a review.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Allow unchanged; the reason is for logs and metrics.
    Skip(&'static str),
    /// Allow with this patch.
    Patch(Patch),
    /// Refuse the pod with this message.
    Deny(String),
}

/// What the mutation needs before it can decide.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Decided without any lookup.
    Done(Decision),
    /// The pod asks for injection.
    Inject(Box<Injection>),
}

/// First step: skip, deny invalid annotations, or hand back the parsed injection.
pub fn prepare(config: &WebhookConfig, review: &Review) -> Prepared {
    if !review.is_pod {
        return Prepared::Done(Decision::Skip("not a pod"));
    }
    if review.operation != "CREATE" {
        return Prepared::Done(Decision::Skip("not a CREATE"));
    }
    if config.skip_namespaces.contains(&review.namespace) {
        return Prepared::Done(Decision::Skip("namespace excluded"));
    }
    let Some(pod) = &review.pod else {
        return Prepared::Done(Decision::Skip("no object"));
    };
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if annotations::already_injected(annotations) {
        return Prepared::Done(Decision::Skip("already injected"));
    }
    match annotations::wants_injection(annotations) {
        Ok(false) => return Prepared::Done(Decision::Skip("not annotated")),
        Ok(true) => {}
        Err(e) => return Prepared::Done(Decision::Deny(deny_message(&e.to_string()))),
    }
    match annotations::parse(annotations) {
        Ok(injection) => Prepared::Inject(Box::new(injection)),
        Err(e) => Prepared::Done(Decision::Deny(deny_message(&e.to_string()))),
    }
}

fn deny_message(problem: &str) -> String {
    format!("kvmount: {problem}")
}

/// What the caller looked up in the API for this pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookups<'a> {
    /// The name and `spec.parameters` of the pod's `secret-provider-class` (the webhook takes
    /// `keyvaultName`, `tenantID`, `clientID` and `objects` from them).
    pub class: Option<(&'a str, &'a BTreeMap<String, String>)>,
    /// The service account's `azure.workload.identity/client-id`.
    pub service_account_client_id: Option<&'a str>,
}

/// The service account whose client ID the webhook may look up: only when neither the
/// annotations nor the class give one.
pub fn client_id_lookup<'a>(
    review: &'a Review,
    injection: &Injection,
    class: Option<&BTreeMap<String, String>>,
) -> Option<(&'a str, &'a str)> {
    let pod = review.pod.as_ref()?;
    let class_has = class
        .and_then(|c| c.get("clientID"))
        .is_some_and(|v| !v.trim().is_empty());
    if injection.client_id.is_some() || class_has {
        return None;
    }
    let sa = pod
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    Some((review.namespace.as_str(), sa))
}

/// Second step: the patch (or a denial) for a pod that asks for injection, given what the
/// caller looked up in the API.
pub fn mutate(
    config: &WebhookConfig,
    review: &Review,
    injection: &Injection,
    lookups: Lookups<'_>,
) -> Decision {
    let Some(pod) = &review.pod else {
        return Decision::Skip("no object");
    };
    match build_patch(config, pod, injection, lookups) {
        Ok(patch) => Decision::Patch(patch),
        Err(message) => Decision::Deny(deny_message(&message)),
    }
}

fn annotation(key: &str) -> String {
    format!("{}{key}", annotations::PREFIX)
}

/// A plain env value of the first selected container that has it.
fn app_env<'a>(containers: &[&'a Container], name: &str) -> Option<&'a str> {
    containers.iter().find_map(|c| {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    })
}

/// The patch for `pod`, in named steps: which containers, the checks the apiserver or the
/// pod's start would otherwise fail, what is injected ([`Wiring`]), then the patch itself.
fn build_patch(
    config: &WebhookConfig,
    pod: &Pod,
    injection: &Injection,
    lookups: Lookups<'_>,
) -> Result<Patch, String> {
    let spec = &pod.spec;
    let selected = selected_containers(spec, injection)?;
    check_injected_names(spec)?;
    check_mount_path(config, &injection.mount_path)?;
    let wiring = Wiring::new(config, pod, injection, lookups, &selected)?;
    if let Some(exec) = &wiring.exec {
        check_exec_containers(&selected, exec)?;
    }
    let exec_paths = wiring
        .exec
        .as_ref()
        .map(|exec| (format!("env-{}", first_env(exec)), wiring.token_dir()));
    check_free_paths(
        &selected,
        wiring.has_files.then_some(injection.mount_path.as_str()),
        exec_paths.as_ref().map(|(key, dir)| (key.as_str(), *dir)),
        config.agent_ca.is_some(),
    )?;

    let mut patch = Patch::new();
    mark_injected(&mut patch, pod);
    add_volumes(&mut patch, config, spec, injection, &wiring);
    patch_app_containers(&mut patch, config, injection, &wiring, &selected);
    add_agent_containers(&mut patch, config, spec, injection, &wiring, &selected);
    Ok(patch)
}

/// A volume mount kvmount adds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Mount<'a> {
    name: &'a str,
    mount_path: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    read_only: bool,
}

impl<'a> Mount<'a> {
    fn read_only(name: &'a str, mount_path: &'a str) -> Self {
        Self {
            name,
            mount_path,
            read_only: true,
        }
    }

    fn writable(name: &'a str, mount_path: &'a str) -> Self {
        Self {
            name,
            mount_path,
            read_only: false,
        }
    }
}

/// An environment variable kvmount adds.
#[derive(Serialize)]
struct Env<'a> {
    name: &'a str,
    value: &'a str,
}

/// A typed value of the patch as JSON (plain structs of strings, numbers and booleans always
/// serialise).
fn value(item: impl Serialize) -> Value {
    serde_json::to_value(item).unwrap_or_default()
}

/// The app containers that get the volume (`containers`, or all), with their index.
fn selected_containers<'p>(
    spec: &'p PodSpec,
    injection: &Injection,
) -> Result<Vec<(usize, &'p Container)>, String> {
    let selected: Vec<(usize, &Container)> = match &injection.containers {
        None => spec.containers.iter().enumerate().collect(),
        Some(names) => {
            let mut out = Vec::new();
            for name in names {
                match spec.containers.iter().position(|c| &c.name == name) {
                    Some(i) => out.push((i, &spec.containers[i])),
                    None => {
                        let have: Vec<&str> =
                            spec.containers.iter().map(|c| c.name.as_str()).collect();
                        return Err(format!(
                            "annotation {}: the pod has no container {name:?}; accepted: names of its containers ({})",
                            annotation("containers"),
                            have.join(", ")
                        ));
                    }
                }
            }
            out
        }
    };
    if selected.is_empty() {
        return Err(format!(
            "annotation {}: the pod has no containers to mount the secrets into; accepted: a pod with at least one container",
            annotation("containers")
        ));
    }
    Ok(selected)
}

/// The vault and the identity the agent reads as.
struct Identity {
    keyvault: String,
    tenant_id: Option<String>,
    client_id: Option<String>,
}

impl Identity {
    /// From the annotations, then the class, then the containers' Workload Identity variables
    /// (and the webhook's default tenant, the service account's client ID); both may stay
    /// unset only for a pod that uses Workload Identity (its webhook sets them).
    fn new(
        config: &WebhookConfig,
        pod: &Pod,
        injection: &Injection,
        lookups: Lookups<'_>,
        selected: &[&Container],
    ) -> Result<Self, String> {
        let class = lookups.class;
        let class_param = |key: &str| class_parameter(class, key);
        let keyvault = injection
            .keyvault
            .clone()
            .or_else(|| class_param("keyvaultName"))
            .ok_or_else(|| {
                format!(
                    "annotation {}: SecretProviderClass {:?} has no keyvaultName",
                    annotation("secret-provider-class"),
                    class.map(|(n, _)| n).unwrap_or_default()
                )
            })?;
        let uses_workload_identity = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("azure.workload.identity/use"))
            .is_some_and(|v| v == "true");
        let tenant_id = injection
            .tenant_id
            .clone()
            .or_else(|| class_param("tenantID").or_else(|| class_param("tenantId")))
            .or_else(|| app_env(selected, "AZURE_TENANT_ID").map(str::to_owned))
            .or_else(|| config.default_tenant_id.clone());
        if tenant_id.is_none() && !uses_workload_identity {
            return Err(format!(
                "annotation {}: is required (no tenant in the class, the containers' AZURE_TENANT_ID or the webhook's default); accepted: a tenant GUID or domain, or the label azure.workload.identity/use: \"true\"",
                annotation("tenant-id")
            ));
        }
        let client_id = injection
            .client_id
            .clone()
            .or_else(|| class_param("clientID"))
            .or_else(|| app_env(selected, "AZURE_CLIENT_ID").map(str::to_owned))
            .or_else(|| lookups.service_account_client_id.map(str::to_owned));
        if client_id.is_none() && !uses_workload_identity {
            return Err(format!(
                "annotation {}: is required (no clientID in the class, the containers' AZURE_CLIENT_ID or the service account's azure.workload.identity/client-id); accepted: the application (client) ID, or the label azure.workload.identity/use: \"true\" with the service account annotated azure.workload.identity/client-id",
                annotation("client-id")
            ));
        }
        Ok(Self {
            keyvault,
            tenant_id,
            client_id,
        })
    }
}

/// A class parameter, trimmed; empty is absent.
fn class_parameter(class: Option<(&str, &BTreeMap<String, String>)>, key: &str) -> Option<String> {
    class
        .and_then(|(_, p)| p.get(key))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// What a pod gets, decided before the patch is written.
struct Wiring {
    /// The agent's configuration (its files).
    agent: AgentConfig,
    /// `exec`'s configuration, when the pod has `env-` references.
    exec: Option<AgentConfig>,
    /// The pod has files to write (objects or templates), not only `env-` references.
    has_files: bool,
    /// The pod has Azure Workload Identity's token volume: kvmount reads that token.
    reuse_azure_token: bool,
    /// How the agent runs.
    mode: Mode,
    /// The pod's security context (the agent runs as its user and group, not root).
    security: PodSecurityContext,
}

impl Wiring {
    fn new(
        config: &WebhookConfig,
        pod: &Pod,
        injection: &Injection,
        lookups: Lookups<'_>,
        selected: &[(usize, &Container)],
    ) -> Result<Self, String> {
        let spec = &pod.spec;
        let selected: Vec<&Container> = selected.iter().map(|(_, c)| *c).collect();
        let Identity {
            keyvault,
            tenant_id,
            client_id,
        } = Identity::new(config, pod, injection, lookups, &selected)?;
        let reuse_azure_token = spec
            .volumes
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|v| v.name == AZURE_TOKEN_VOLUME);
        let token_file = if reuse_azure_token {
            format!("{AZURE_TOKEN_DIR}/azure-identity-token")
        } else {
            format!("{TOKEN_DIR}/token")
        };
        let security = spec.security_context.clone().unwrap_or_default();
        let agent = AgentConfig {
            keyvault_name: keyvault.clone(),
            tenant_id: tenant_id.clone(),
            client_id: client_id.clone(),
            token_file: Some(token_file.clone()),
            mount_path: Some(injection.mount_path.clone()),
            objects: injection
                .objects
                .clone()
                .or_else(|| class_parameter(lookups.class, "objects")),
            templates: injection.templates.clone(),
            env: BTreeMap::new(),
            refresh_seconds: injection.refresh.map(|d| d.as_secs()),
            fs_group: security.fs_group.and_then(|g| u32::try_from(g).ok()),
        };
        if let Err(e) = Plan::new(&agent) {
            let source = match lookups.class {
                Some((name, _)) => format!(
                    "annotation {}: SecretProviderClass {name:?}",
                    annotation("secret-provider-class")
                ),
                None => "the agent configuration".to_owned(),
            };
            return Err(format!("{source}: {e}"));
        }
        let exec = (!injection.env.is_empty()).then(|| AgentConfig {
            keyvault_name: keyvault,
            tenant_id,
            client_id,
            token_file: Some(token_file),
            env: injection.env.clone(),
            ..Default::default()
        });
        let has_files = agent.objects.is_some() || !agent.templates.is_empty();
        let mode = if has_files {
            injection.mode.unwrap_or(config.default_mode)
        } else {
            // Only env references: nothing to keep fresh on disk.
            Mode::InitOnly
        };
        Ok(Self {
            agent,
            exec,
            has_files,
            reuse_azure_token,
            mode,
            security,
        })
    }

    /// Where the token kvmount reads is mounted.
    fn token_dir(&self) -> &'static str {
        if self.reuse_azure_token {
            AZURE_TOKEN_DIR
        } else {
            TOKEN_DIR
        }
    }

    /// The mount of the token kvmount reads.
    fn token_mount(&self) -> Mount<'static> {
        if self.reuse_azure_token {
            Mount::read_only(AZURE_TOKEN_VOLUME, AZURE_TOKEN_DIR)
        } else {
            Mount::read_only(TOKEN_VOLUME, TOKEN_DIR)
        }
    }
}

/// The first `env-<VAR>` of `exec`, to name in messages.
fn first_env(exec: &AgentConfig) -> &str {
    exec.env
        .keys()
        .next()
        .map(String::as_str)
        .unwrap_or_default()
}

/// `exec` runs the container's command: each selected container needs one in its spec, and
/// must not set the variables `exec` sets.
fn check_exec_containers(
    selected: &[(usize, &Container)],
    exec: &AgentConfig,
) -> Result<(), String> {
    for (_, c) in selected {
        if c.command.as_ref().is_none_or(|cmd| cmd.is_empty()) {
            return Err(format!(
                "annotation {}: container {:?} has no command in its spec, and kvmount does not read image entrypoints from registries; accepted: set the container's command, or select other containers with {}",
                annotation(&format!("env-{}", first_env(exec))),
                c.name,
                annotation("containers")
            ));
        }
        for var in exec.env.keys() {
            if c.env
                .as_ref()
                .is_some_and(|env| env.iter().any(|e| &e.name == var))
            {
                return Err(format!(
                    "annotation {}: container {:?} already sets {var}; accepted: a variable the container does not set",
                    annotation(&format!("env-{var}")),
                    c.name
                ));
            }
        }
    }
    Ok(())
}

/// 1. The status annotation (blocks a second mutation).
fn mark_injected(patch: &mut Patch, pod: &Pod) {
    match &pod.metadata.annotations {
        None => patch.add(
            &["metadata", "annotations"],
            json!({ STATUS: STATUS_INJECTED }),
        ),
        Some(_) => patch.add(&["metadata", "annotations", STATUS], json!(STATUS_INJECTED)),
    }
}

/// 2. The volumes: the secrets (memory), the token (unless the pod has Workload Identity's),
///    `exec`'s binary, the extra trusted roots.
fn add_volumes(
    patch: &mut Patch,
    config: &WebhookConfig,
    spec: &PodSpec,
    injection: &Injection,
    wiring: &Wiring,
) {
    let mut new_volumes = Vec::new();
    if wiring.has_files {
        new_volumes.push(json!({
            "name": SECRETS_VOLUME,
            "emptyDir": { "medium": "Memory", "sizeLimit": injection.size_limit },
        }));
    }
    if !wiring.reuse_azure_token {
        new_volumes.push(json!({
            "name": TOKEN_VOLUME,
            "projected": { "sources": [ { "serviceAccountToken": {
                "audience": AUDIENCE,
                "expirationSeconds": config.token_expiration_seconds,
                "path": "token",
            } } ] },
        }));
    }
    if wiring.exec.is_some() {
        new_volumes.push(json!({
            "name": BIN_VOLUME,
            "emptyDir": { "medium": "Memory", "sizeLimit": "64Mi" },
        }));
    }
    if let Some(ca) = &config.agent_ca {
        new_volumes.push(json!({
            "name": CA_VOLUME,
            "configMap": { "name": ca.config_map, "items": [ { "key": ca.key, "path": "ca.crt" } ] },
        }));
    }
    patch.append(&["spec", "volumes"], spec.volumes.is_some(), new_volumes);
}

/// 3. The app containers: the secrets mount, and for `exec` the env, token, binary and command.
fn patch_app_containers(
    patch: &mut Patch,
    config: &WebhookConfig,
    injection: &Injection,
    wiring: &Wiring,
    selected: &[(usize, &Container)],
) {
    for (index, container) in selected {
        let index = index.to_string();
        let base = ["spec", "containers", index.as_str()];
        let mut mounts = Vec::new();
        if wiring.has_files {
            mounts.push(value(Mount::read_only(
                SECRETS_VOLUME,
                &injection.mount_path,
            )));
        }
        if let Some(exec) = &wiring.exec {
            let has_token = container
                .volume_mounts
                .as_ref()
                .is_some_and(|ms| ms.iter().any(|m| m.name == AZURE_TOKEN_VOLUME));
            if !has_token {
                mounts.push(value(wiring.token_mount()));
            }
            mounts.push(value(Mount::read_only(BIN_VOLUME, BIN_DIR)));
            if config.agent_ca.is_some() {
                mounts.push(value(Mount::read_only(CA_VOLUME, CA_DIR)));
            }
            let exec_json = exec.to_json();
            patch.append(
                &[base[0], base[1], base[2], "env"],
                container.env.is_some(),
                vec![value(Env {
                    name: EXEC_CONFIG_ENV,
                    value: &exec_json,
                })],
            );
            // The webhook's --agent-arg flags that exec takes (cloud, --resolve, --ca-file, ...).
            let mut command = vec![format!("{BIN_DIR}/kvmount-agent"), "exec".to_owned()];
            command.extend(crate::agent_cli::exec_flags(&config.agent_args));
            command.push("--".to_owned());
            command.extend(container.command.clone().unwrap_or_default());
            patch.replace(&[base[0], base[1], base[2], "command"], json!(command));
        }
        patch.append(
            &[base[0], base[1], base[2], "volumeMounts"],
            container.volume_mounts.is_some(),
            mounts,
        );
    }
}

/// 4. The agent containers (per [`Mode`]) and `exec`'s installer.
fn add_agent_containers(
    patch: &mut Patch,
    config: &WebhookConfig,
    spec: &PodSpec,
    injection: &Injection,
    wiring: &Wiring,
    selected: &[(usize, &Container)],
) {
    let security_context = agent_security_context(&wiring.security);
    let resources = agent_resources(injection);
    let agent = AgentContainer {
        config,
        env: agent_env(wiring, selected),
        mounts: agent_mounts(config, injection, wiring),
        resources: &resources,
        security_context: &security_context,
    };
    let mut init = Vec::new();
    let mut sidecars = Vec::new();
    if wiring.has_files {
        match wiring.mode {
            Mode::Native => {
                let mut c = agent.container(AGENT_CONTAINER, false);
                c["restartPolicy"] = json!("Always");
                // The app containers start once the kubelet sees the agent started: for a
                // postStart hook, at its next look at the pod after the hook returned; for a
                // startupProbe, at the probe's next run after that (every second at most),
                // which cost about 1 s per pod (bench/podstart.py). The hook waits for the
                // first render, at most POST_START_WAIT.
                c["lifecycle"] = json!({
                    "postStart": {
                        "exec": { "command": [config.agent_command, "probe", "--wait", POST_START_WAIT] }
                    }
                });
                init.push(c);
            }
            Mode::Sidecar => {
                init.push(agent.container(AGENT_INIT_CONTAINER, true));
                sidecars.push(agent.container(AGENT_CONTAINER, false));
            }
            Mode::InitOnly => init.push(agent.container(AGENT_INIT_CONTAINER, true)),
        }
    }
    if wiring.exec.is_some() {
        init.push(json!({
            "name": INSTALL_CONTAINER,
            "image": config.agent_image,
            "imagePullPolicy": "IfNotPresent",
            "command": [config.agent_command],
            "args": ["install", BIN_DIR],
            "volumeMounts": [ value(Mount::writable(BIN_VOLUME, BIN_DIR)) ],
            "resources": resources,
            "securityContext": security_context,
        }));
    }
    patch.prepend(
        &["spec", "initContainers"],
        spec.init_containers.is_some(),
        init,
    );
    patch.append(&["spec", "containers"], true, sidecars);
}

/// What every agent container of a pod shares.
struct AgentContainer<'a> {
    config: &'a WebhookConfig,
    env: Vec<Value>,
    mounts: Vec<Value>,
    resources: &'a Value,
    security_context: &'a Value,
}

impl AgentContainer<'_> {
    /// The agent container `name`; `init_only` writes the files once and exits.
    fn container(&self, name: &str, init_only: bool) -> Value {
        let mut args = vec!["agent".to_owned()];
        if init_only {
            args.push("--init-only".to_owned());
        }
        args.extend(self.config.agent_args.iter().cloned());
        json!({
            "name": name,
            "image": self.config.agent_image,
            "imagePullPolicy": "IfNotPresent",
            "command": [self.config.agent_command],
            "args": args,
            "env": self.env,
            "volumeMounts": self.mounts,
            "resources": self.resources,
            "securityContext": self.security_context,
        })
    }
}

/// The agent's environment: its configuration, and with Workload Identity's token the
/// Azure variables the app containers have.
fn agent_env(wiring: &Wiring, selected: &[(usize, &Container)]) -> Vec<Value> {
    let config = wiring.agent.to_json();
    let mut env = vec![value(Env {
        name: AGENT_CONFIG_ENV,
        value: &config,
    })];
    if wiring.reuse_azure_token {
        let selected: Vec<&Container> = selected.iter().map(|(_, c)| *c).collect();
        for name in AZURE_ENV {
            if let Some(value_of) = app_env(&selected, name) {
                env.push(value(Env {
                    name,
                    value: value_of,
                }));
            }
        }
    }
    env
}

/// The agent's mounts: the secrets volume (writable), the token, the extra trusted roots.
fn agent_mounts(config: &WebhookConfig, injection: &Injection, wiring: &Wiring) -> Vec<Value> {
    let mut mounts = vec![
        value(Mount::writable(SECRETS_VOLUME, &injection.mount_path)),
        value(wiring.token_mount()),
    ];
    if config.agent_ca.is_some() {
        mounts.push(value(Mount::read_only(CA_VOLUME, CA_DIR)));
    }
    mounts
}

/// The agent runs as the pod's user and group (never root; [`AGENT_UID`] otherwise), with
/// nothing it does not need.
fn agent_security_context(security: &PodSecurityContext) -> Value {
    let run_as_user = security
        .run_as_user
        .filter(|u| *u != 0)
        .unwrap_or(AGENT_UID);
    let run_as_group = security
        .run_as_group
        .filter(|g| *g != 0)
        .unwrap_or(AGENT_UID);
    json!({
        "runAsNonRoot": true,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_group,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The agent containers' requests and limits (`cpu-limit` only when set).
fn agent_resources(injection: &Injection) -> Value {
    let r = &injection.resources;
    let mut limits = json!({ "memory": r.memory_limit });
    if let Some(cpu) = &r.cpu_limit {
        limits["cpu"] = json!(cpu);
    }
    json!({
        "requests": { "cpu": r.cpu_request, "memory": r.memory_request },
        "limits": limits,
    })
}

/// Refuses a pod that already uses a volume or container name kvmount injects (the apiserver
/// wants them unique).
fn check_injected_names(spec: &PodSpec) -> Result<(), String> {
    let volumes = spec.volumes.as_deref().unwrap_or(&[]);
    let ours = [SECRETS_VOLUME, TOKEN_VOLUME, BIN_VOLUME, CA_VOLUME];
    if let Some(v) = volumes.iter().find(|v| ours.contains(&v.name.as_str())) {
        return Err(format!(
            "annotation {}: the pod already has a volume named {}, which kvmount injects; accepted: a pod without volumes named {}",
            annotation("inject"),
            v.name,
            ours.join(", ")
        ));
    }
    let ours = [AGENT_CONTAINER, AGENT_INIT_CONTAINER, INSTALL_CONTAINER];
    let mut containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    if let Some(c) = containers.find(|c| ours.contains(&c.name.as_str())) {
        return Err(format!(
            "annotation {}: the pod already has a container named {}, which kvmount injects; accepted: a pod without containers named {}",
            annotation("inject"),
            c.name,
            ours.join(", ")
        ));
    }
    Ok(())
}

/// Refuses a `mount-path` that would hide, or sit inside, a path the app containers or the
/// agent need ([`paths`]).
fn check_mount_path(config: &WebhookConfig, mount_path: &str) -> Result<(), String> {
    let mut injected = vec![
        (TOKEN_DIR, "the token kvmount injects"),
        (AZURE_TOKEN_DIR, "the Azure Workload Identity token"),
        (BIN_DIR, "the binary exec runs from"),
        (CA_DIR, "the agents' extra trusted roots"),
    ];
    let agent_dir = paths::directory_of(&config.agent_command);
    injected.extend(agent_dir.map(|dir| (dir, "the agent binary")));
    let reserved = paths::reserved(&injected);
    let Some(hit) = paths::conflict(mount_path, &reserved) else {
        return Ok(());
    };
    Err(format!(
        "annotation {}: {} would hide or sit inside {hit}, which the containers or the agent need; accepted: a directory of the app's own, e.g. /mnt/secrets or /etc/<app>/secrets, away from /bin, /sbin, /lib*, /usr, /proc, /sys, /dev, /etc itself, /etc/ssl, /etc/pki, kubelet's /etc files, /var/run/secrets, {BIN_DIR}{}",
        annotation("mount-path"),
        shown(mount_path),
        agent_dir.map(|d| format!(" and {d}")).unwrap_or_default()
    ))
}

/// Refuses a selected container that already mounts something at a path kvmount adds to it
/// (two mounts at one path): the secrets volume's (`mount-path`), and for `exec` the token
/// directory and [`BIN_DIR`] (`exec` is the annotation key of the first `env-<VAR>` and the
/// token directory).
fn check_free_paths(
    selected: &[(usize, &Container)],
    secrets_at: Option<&str>,
    exec: Option<(&str, &str)>,
    with_ca: bool,
) -> Result<(), String> {
    for (_, c) in selected {
        let mounts = c.volume_mounts.as_deref().unwrap_or(&[]);
        let mut added: Vec<(&str, &str, &str)> = Vec::new();
        if let Some(path) = secrets_at {
            added.push((path, "mount-path", "the secrets volume"));
        }
        if let Some((key, token_dir)) = exec {
            if !mounts.iter().any(|m| m.name == AZURE_TOKEN_VOLUME) {
                added.push((token_dir, key, "the token exec reads"));
            }
            added.push((BIN_DIR, key, "the binary exec runs from"));
            if with_ca {
                added.push((CA_DIR, key, "the extra trusted roots exec reads"));
            }
        }
        for (path, key, what) in added {
            if let Some(m) = mounts.iter().find(|m| m.mount_path == path) {
                return Err(format!(
                    "annotation {}: container {} already mounts volume {} at {path}, where kvmount mounts {what}; accepted: containers with nothing mounted there ({} selects them){}",
                    annotation(key),
                    c.name,
                    shown(&m.name),
                    annotation("containers"),
                    if key == "mount-path" {
                        ", or another mount-path"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Ok(())
}

/// The AdmissionReview v1 response for `uid`.
pub fn response(uid: &str, decision: &Decision) -> Vec<u8> {
    let body = match decision {
        Decision::Skip(_) => json!({ "uid": uid, "allowed": true }),
        Decision::Patch(patch) => json!({
            "uid": uid,
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_json()),
        }),
        Decision::Deny(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": { "code": 400, "reason": "BadRequest", "message": message },
        }),
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": body,
    });
    // A `json!` value always serialises.
    serde_json::to_vec(&review).unwrap_or_default()
}

/// The denial for a SecretProviderClass pod when the webhook has no API access.
pub fn no_api_denial(class: &str) -> String {
    deny_message(&format!(
        "annotation {}: this webhook has no Kubernetes API access to read SecretProviderClass {class:?} (start it with --in-cluster or --kubeconfig); accepted: per-file {}secret-<file> annotations",
        annotation("secret-provider-class"),
        annotations::PREFIX
    ))
}

/// The whole review without lookups (a SecretProviderClass pod is denied: the caller, which
/// can reach the API server, uses [`prepare`] and [`mutate`] instead).
pub fn review_offline(
    config: &WebhookConfig,
    body: &[u8],
) -> Result<(Review, Decision), ReviewError> {
    let review = parse_review(body)?;
    let decision = match prepare(config, &review) {
        Prepared::Done(d) => d,
        Prepared::Inject(injection) if injection.secret_provider_class.is_some() => {
            Decision::Deny(no_api_denial(
                injection
                    .secret_provider_class
                    .as_deref()
                    .unwrap_or_default(),
            ))
        }
        Prepared::Inject(injection) => mutate(config, &review, &injection, Lookups::default()),
    };
    Ok((review, decision))
}

#[cfg(test)]
mod tests {
    use super::AgentCa;

    #[test]
    fn agent_ca_names_are_checked_as_the_apiserver_would() {
        assert!(AgentCa::new("corp-roots", "ca.crt").is_ok());
        assert!(AgentCa::new("trust.example.com", "roots_2024.pem").is_ok());
        for bad in [
            "",
            "Corp",
            "-corp",
            "corp-",
            "a..b",
            &"a".repeat(254),
            "x/y",
        ] {
            let err = AgentCa::new(bad, "ca.crt").expect_err(bad);
            assert!(err.starts_with("--agent-ca-configmap "), "{err}");
            assert!(err.len() < 400, "a short prefix of the input: {err}");
        }
        for bad in ["", ".", "..", "a/b", "c a", &"k".repeat(254)] {
            let err = AgentCa::new("corp-roots", bad).expect_err(bad);
            assert!(err.starts_with("--agent-ca-key "), "{err}");
        }
    }
}
