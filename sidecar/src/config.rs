//! The agent configuration: what the webhook writes into the agent container (and into
//! containers that use `exec`), and the typed [`Plan`] the agent and `exec` work from.
//!
//! The configuration holds names only (vault, tenant, client ID, object names, file names,
//! templates), never a secret or a token, so it can travel in an environment variable.
//! Objects are written in the SecretProviderClass `objects` YAML and parsed by
//! [`kvmount_vault::params::parse_objects`]: one rule set for the node plugin and the agent.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use kvmount_vault::ObjectSpec;
use kvmount_vault::error::ParamError;
use kvmount_vault::params::{parse_file_permission, parse_objects, validate_file_path};
use serde::{Deserialize, Serialize};

pub use crate::object::{
    OBJECT_REF_FORM, ObjectFields, ObjectRef, object_spec, object_yaml, objects_document,
};
use crate::template::Template;

/// Environment variable with the agent's JSON configuration.
pub const AGENT_CONFIG_ENV: &str = "KVMOUNT_AGENT_CONFIG";
/// Environment variable with the JSON configuration of `kvmount-sidecar exec` (removed from
/// the app's environment before the app starts).
pub const EXEC_CONFIG_ENV: &str = "KVMOUNT_EXEC_CONFIG";
/// Default refresh interval.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Shortest refresh interval accepted.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest refresh interval accepted.
pub const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// Default file mode (the kubelet secret volume default).
pub const DEFAULT_MODE: u32 = 0o644;

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not the JSON this release reads.
    #[error("{variable}: not a kvmount agent configuration ({problem})")]
    Json {
        /// Where the configuration came from (an environment variable or a file).
        variable: String,
        /// The parser's position and category; never the input itself.
        problem: String,
    },
    /// A field is wrong; `field` names it (e.g. `objects[1].objectEncoding`, `env.DB_PASSWORD`).
    #[error("{0}")]
    Field(#[from] ParamError),
}

/// A file rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateFile {
    /// Path relative to the volume.
    pub path: String,
    /// Octal mode such as `"0640"`; the default mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The template text (see [`crate::template`]).
    pub template: String,
}

/// The configuration as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// `keyvaultName`.
    pub keyvault_name: String,
    /// Entra tenant; when absent, `AZURE_TENANT_ID` from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Application (client) ID; when absent, `AZURE_CLIENT_ID` from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The service-account token file; when absent, `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// The shared memory volume the agent writes into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Objects written as files: a SecretProviderClass `objects` document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<String>,
    /// Files rendered from templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateFile>,
    /// `exec` only: environment variable name to object reference.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds between refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_seconds: Option<u64>,
    /// Group that gets read access to every file (the pod's fsGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<u32>,
}

impl AgentConfig {
    /// Parses the JSON text; `variable` names its source for the error.
    pub fn from_json(variable: &str, text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Json {
            variable: variable.to_owned(),
            problem: format!(
                "{:?} at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps of strings always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A template file, parsed.
#[derive(Debug, Clone)]
pub struct PlannedTemplate {
    /// Path relative to the volume.
    pub path: String,
    /// File mode.
    pub mode: u32,
    /// The template.
    pub template: Template,
    /// The spec of each of `template.references()`, in the same order.
    pub specs: Vec<ObjectSpec>,
}

/// The configuration, checked and typed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Vault name.
    pub keyvault_name: String,
    /// Tenant, if configured.
    pub tenant_id: Option<String>,
    /// Client ID, if configured.
    pub client_id: Option<String>,
    /// Token file, if configured.
    pub token_file: Option<PathBuf>,
    /// Where the agent writes.
    pub mount_path: Option<PathBuf>,
    /// Objects written as files.
    pub files: Vec<ObjectSpec>,
    /// Template files.
    pub templates: Vec<PlannedTemplate>,
    /// `exec`: variables and their objects.
    pub env: Vec<(String, ObjectSpec)>,
    /// Refresh interval.
    pub refresh: Duration,
    /// Group read access for the pod's fsGroup.
    pub fs_group: Option<u32>,
}

/// True for a valid environment variable name (C identifier: `[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Plan {
    /// Checks every field of `config`.
    pub fn new(config: &AgentConfig) -> Result<Self, ConfigError> {
        kvmount_vault::params::validate_vault_name(&config.keyvault_name)?;
        let files = match config.objects.as_deref() {
            Some(objects) if !objects.trim().is_empty() => parse_objects(objects)?,
            _ => Vec::new(),
        };
        let mut paths: HashSet<&str> = files.iter().map(|s| s.file_name()).collect();
        let mut templates = Vec::with_capacity(config.templates.len());
        for (i, file) in config.templates.iter().enumerate() {
            let field = |key: &str| format!("templates[{i}].{key}");
            validate_file_path(&field("path"), &file.path)?;
            if !paths.insert(&file.path) {
                return Err(ParamError::new(
                    field("path"),
                    format!("{:?} is written by another object or template", file.path),
                )
                .into());
            }
            let mode = match &file.mode {
                Some(m) => parse_file_permission(&field("mode"), m)?,
                None => DEFAULT_MODE,
            };
            let template = Template::parse(&file.template)
                .map_err(|e| ParamError::new(field("template"), e.to_string()))?;
            let specs = template
                .references()
                .into_iter()
                .map(|r| object_spec(r, &ObjectFields::default()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ParamError::new(field("template"), e.problem))?;
            templates.push(PlannedTemplate {
                path: file.path.clone(),
                mode,
                template,
                specs,
            });
        }
        let mut env = Vec::with_capacity(config.env.len());
        for (name, reference) in &config.env {
            let field = format!("env.{name}");
            if !is_env_name(name) {
                return Err(ParamError::new(
                    field,
                    "is not an environment variable name; accepted: letters, digits and '_', not starting with a digit",
                )
                .into());
            }
            let reference =
                ObjectRef::parse(reference).map_err(|p| ParamError::new(field.clone(), p))?;
            let spec = object_spec(&reference, &ObjectFields::default())
                .map_err(|e| ParamError::new(field, e.problem))?;
            env.push((name.clone(), spec));
        }
        let refresh = match config.refresh_seconds {
            None => DEFAULT_REFRESH,
            Some(s) => {
                let d = Duration::from_secs(s);
                if !(MIN_REFRESH..=MAX_REFRESH).contains(&d) {
                    return Err(ParamError::new(
                        "refreshSeconds",
                        format!("{s} is out of range; accepted: 1 to 86400"),
                    )
                    .into());
                }
                d
            }
        };
        Ok(Self {
            keyvault_name: config.keyvault_name.clone(),
            tenant_id: config.tenant_id.clone(),
            client_id: config.client_id.clone(),
            token_file: config.token_file.as_ref().map(PathBuf::from),
            mount_path: config.mount_path.as_ref().map(PathBuf::from),
            files,
            templates,
            env,
            refresh,
            fs_group: config.fs_group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_plan() {
        let r = ObjectRef::parse("secret/db-password").expect("valid");
        let config = AgentConfig {
            keyvault_name: "demo".into(),
            objects: Some(objects_document(&[object_yaml(
                &r,
                &ObjectFields {
                    alias: Some("db".into()),
                    permission: Some("0640".into()),
                    ..Default::default()
                },
            )])),
            templates: vec![TemplateFile {
                path: "conn".into(),
                mode: None,
                template: "p={{ secret/db-password }}".into(),
            }],
            env: BTreeMap::from([("DB_PASSWORD".into(), "secret/db-password".into())]),
            refresh_seconds: Some(30),
            ..Default::default()
        };
        let json = config.to_json();
        let back = AgentConfig::from_json("test", &json).expect("parses");
        assert_eq!(back, config);
        let plan = Plan::new(&back).expect("valid");
        assert_eq!(plan.files[0].file_name(), "db");
        assert_eq!(plan.files[0].file_mode, Some(0o640));
        assert_eq!(plan.templates[0].specs[0].name, "db-password");
        assert_eq!(plan.env[0].0, "DB_PASSWORD");
        assert_eq!(plan.refresh, Duration::from_secs(30));
    }

    #[test]
    fn plan_errors_name_the_field() {
        let mut config = AgentConfig {
            keyvault_name: "demo".into(),
            env: BTreeMap::from([("1BAD".into(), "secret/x".into())]),
            ..Default::default()
        };
        let err = Plan::new(&config).expect_err("bad env");
        assert!(err.to_string().starts_with("env.1BAD:"), "{err}");
        config.env.clear();
        config.refresh_seconds = Some(0);
        assert!(
            Plan::new(&config)
                .expect_err("refresh")
                .to_string()
                .contains("refreshSeconds")
        );
        let err = AgentConfig::from_json("KVMOUNT_AGENT_CONFIG", "{\"token\":\"canary\"}")
            .expect_err("unknown field");
        assert!(!err.to_string().contains("canary"));
    }
}
