//! `kvmount-sidecar exec -- CMD ARGS...`: resolve `env-<VAR>` references and replace this
//! process with the app, the values in its environment only. Nothing is written to disk.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;

use kvmount_vault::{ConnectorConfig, SecretBytes};

use crate::agent::{Session, fetch_distinct};
use crate::config::{EXEC_CONFIG_ENV, Plan};

/// Why `exec` could not start the app.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No command after `--`.
    #[error("no command to run; usage: kvmount-sidecar exec -- CMD [ARGS...]")]
    NoCommand,
    /// The configuration names no variable.
    #[error("{EXEC_CONFIG_ENV} names no environment variable (env is empty)")]
    NoVariables,
    /// The configuration or environment is incomplete.
    #[error("{0}")]
    Agent(#[from] crate::agent::AgentError),
    /// Key Vault or Entra ID failed.
    #[error("resolving the environment failed: {0}")]
    Fetch(String),
    /// A value cannot be an environment variable (it contains a NUL byte).
    #[error("{0}: the value contains a NUL byte and cannot be passed in the environment")]
    NulByte(String),
    /// `execvp` failed.
    #[error("cannot run {command:?}: {source}")]
    Exec {
        /// The command.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The variables `plan.env` names, with their values.
pub async fn resolve(
    plan: &Plan,
    connector: ConnectorConfig,
) -> Result<Vec<(String, SecretBytes)>, ExecError> {
    if plan.env.is_empty() {
        return Err(ExecError::NoVariables);
    }
    let mut session = Session::new(connector, plan)?;
    let fetched = fetch_distinct(&mut session, plan.env.iter().map(|(_, s)| s))
        .await
        .map_err(ExecError::Fetch)?;
    let mut out = Vec::with_capacity(plan.env.len());
    for (name, spec) in &plan.env {
        let key = crate::agent::fetch_key(spec);
        let object = fetched
            .get(&key)
            .ok_or_else(|| ExecError::Fetch(format!("{}: not fetched", spec.id())))?;
        if object.contents.expose().contains(&0) {
            return Err(ExecError::NulByte(name.clone()));
        }
        out.push((name.clone(), object.contents.clone()));
    }
    Ok(out)
}

/// Replaces this process with `command`, adding `vars` and removing [`EXEC_CONFIG_ENV`].
/// Returns only on failure.
pub fn exec(command: &[OsString], vars: &[(String, SecretBytes)]) -> ExecError {
    let Some((program, args)) = command.split_first() else {
        return ExecError::NoCommand;
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_remove(EXEC_CONFIG_ENV);
    for (name, value) in vars {
        cmd.env(name, OsStr::from_bytes(value.expose()));
    }
    tracing::info!(command = %program.to_string_lossy(), variables = %vars.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(","), "exec");
    let source = cmd.exec();
    ExecError::Exec {
        command: program.to_string_lossy().into_owned(),
        source,
    }
}
