//! The in-pod commands (`agent`, `exec`, `probe`, `install`), shared by `kvmount-agent` (the
//! small binary the webhook injects) and `kvmount-sidecar`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kvmount_vault::ConnectorConfig;
use kvmount_vault::client::{DEFAULT_AUTHORITY_HOST, DEFAULT_KEYVAULT_DNS_SUFFIX};

use crate::config::{AGENT_CONFIG_ENV, AgentConfig, EXEC_CONFIG_ENV, Plan};
use crate::logging::{self, LogFormat, LogLevel};
use crate::{agent, exec};

/// The in-pod commands.
#[derive(Subcommand)]
pub enum PodCommand {
    /// The in-pod agent: render into the shared memory volume and keep it fresh.
    Agent(AgentArgs),
    /// Resolve env-<VAR> references and exec CMD with them (nothing on disk).
    Exec(ExecArgs),
    /// Exit 0 once the first render is on disk (now, or within `--wait`): the native
    /// sidecar's postStart hook.
    Probe(ProbeArgs),
    /// Copy this binary into DIR (the memory volume `exec` runs from).
    Install {
        /// Target directory.
        dir: PathBuf,
    },
}

/// Runs one in-pod command; `started` is the process start (for the first-render time).
pub fn run(command: PodCommand, started: Instant) -> Result<(), String> {
    match command {
        PodCommand::Agent(args) => run_agent(args, started),
        PodCommand::Exec(args) => run_exec(args),
        PodCommand::Probe(args) => run_probe(args),
        PodCommand::Install { dir } => agent::install(&dir)
            .map(drop)
            .map_err(|e| format!("install into {}: {e}", dir.display())),
    }
}

#[derive(Args)]
pub struct LogArgs {
    /// Log level: error, warn (or warning), info, debug, trace, off, or target=level
    /// directives (RUST_LOG overrides).
    #[arg(long, default_value = "info", env = "KVMOUNT_LOG_LEVEL")]
    pub log_level: LogLevel,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KVMOUNT_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Args)]
pub struct VaultArgs {
    /// Key Vault DNS suffix: vault NAME is https://NAME.SUFFIX/.
    #[arg(long, default_value = DEFAULT_KEYVAULT_DNS_SUFFIX, env = "KVMOUNT_KEYVAULT_DNS_SUFFIX")]
    keyvault_dns_suffix: String,
    /// Entra ID authority.
    #[arg(long, default_value = DEFAULT_AUTHORITY_HOST, env = "AZURE_AUTHORITY_HOST")]
    authority_host: String,
    /// Extra trusted roots (PEM), added to the system roots.
    #[arg(long, env = "KVMOUNT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// HOST=ADDR or *.SUFFIX=ADDR: connect there instead of resolving HOST (repeatable).
    #[arg(long = "resolve", value_name = "HOST=ADDR")]
    resolve: Vec<String>,
    /// Retries of throttled or failed requests.
    #[arg(long, default_value_t = 4)]
    max_retries: u32,
}

impl VaultArgs {
    fn connector(&self) -> Result<ConnectorConfig, String> {
        let authority_host = url::Url::parse(&self.authority_host)
            .map_err(|e| format!("--authority-host {:?}: {e}", self.authority_host))?;
        let extra_roots_pem = match &self.ca_file {
            Some(p) => std::fs::read(p).map_err(|e| format!("--ca-file {}: {e}", p.display()))?,
            None => Vec::new(),
        };
        let resolve = self
            .resolve
            .iter()
            .map(|r| kvmount_vault::ResolveRule::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConnectorConfig {
            keyvault_dns_suffix: self.keyvault_dns_suffix.clone(),
            authority_host,
            extra_roots_pem,
            resolve,
            max_retries: self.max_retries,
            request_budget: Duration::from_secs(30),
        })
    }
}

#[derive(Args)]
pub struct AgentArgs {
    /// Render once and exit 0 (init containers, Jobs).
    #[arg(long)]
    init_only: bool,
    /// Init-only: give up (exit 1) when there is no render after this many seconds.
    #[arg(long, default_value_t = 120)]
    init_timeout_seconds: u64,
    /// Read the configuration from this file instead of $KVMOUNT_AGENT_CONFIG.
    #[arg(long)]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    vault: VaultArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// Log filter (exec logs only failures by default).
    #[arg(long, default_value = "warn", env = "KVMOUNT_LOG_LEVEL")]
    log_level: LogLevel,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KVMOUNT_LOG_FORMAT")]
    log_format: LogFormat,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// The secrets volume (default: mountPath of $KVMOUNT_AGENT_CONFIG).
    #[arg(long)]
    mount_path: Option<PathBuf>,
    /// Wait up to this long for the first render (e.g. 300ms, 5m; at most 1h); without it the
    /// probe answers at once.
    #[arg(long, value_parser = parse_wait)]
    wait: Option<Duration>,
}

/// The longest `probe --wait`.
const MOST_WAIT: Duration = Duration::from_secs(3600);

/// `--wait`: a duration as every kvmount duration is typed (`300ms`, `5m`, a number of
/// seconds), at most [`MOST_WAIT`].
fn parse_wait(text: &str) -> Result<Duration, String> {
    kvmount_vault::duration::parse_duration_within("--wait", text, Duration::ZERO, MOST_WAIT)
}

/// Checks the webhook's `--agent-arg` values: `agent` must take all of them, and `exec` the
/// ones [`exec_flags`] passes on. The error names the value and what clap says of it.
pub fn check_agent_args(agent_args: &[String]) -> Result<(), String> {
    let parse = |command: clap::Command, args: &[String]| {
        command
            .no_binary_name(true)
            .try_get_matches_from(args)
            .map(drop)
            .map_err(|e| {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or_default().to_owned();
                format!("--agent-arg {}: {first}", args.join(" "))
            })
    };
    parse(
        AgentArgs::augment_args(clap::Command::new("agent")),
        agent_args,
    )?;
    let mut exec = exec_flags(agent_args);
    exec.extend(["--".to_owned(), "true".to_owned()]);
    parse(ExecArgs::augment_args(clap::Command::new("exec")), &exec)
}

/// The flags of `agent_args` (the webhook's `--agent-arg` values, for `agent`) that `exec`
/// takes too, with their values: all but the agent-only ones (`--init-only`,
/// `--init-timeout-seconds`, `--config-file`). Values given as the next word are kept with
/// their flag.
pub fn exec_flags(agent_args: &[String]) -> Vec<String> {
    let agent = AgentArgs::augment_args(clap::Command::new("agent"));
    let exec = ExecArgs::augment_args(clap::Command::new("exec"));
    let mut out = Vec::new();
    let mut words = agent_args.iter();
    while let Some(word) = words.next() {
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        let takes_value = agent
            .get_arguments()
            .find(|a| a.get_long() == Some(name))
            .is_some_and(|a| a.get_action().takes_values());
        let value = if takes_value && !inline_value {
            words.next()
        } else {
            None
        };
        if exec.get_arguments().any(|a| a.get_long() == Some(name)) {
            out.push(word.clone());
            out.extend(value.cloned());
        }
    }
    out
}

/// One thread: the agent does a few requests per interval.
fn current_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn load_plan(variable: &str, file: Option<&PathBuf>) -> Result<Plan, String> {
    let (source, text) = match file {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => (
            variable.to_owned(),
            std::env::var(variable).map_err(|_| format!("{variable} is not set"))?,
        ),
    };
    let config = AgentConfig::from_json(&source, &text).map_err(|e| e.to_string())?;
    Plan::new(&config).map_err(|e| format!("{source}: {e}"))
}

fn run_agent(args: AgentArgs, started: Instant) -> Result<(), String> {
    logging::init(&args.log.log_level, args.log.log_format)?;
    let plan = load_plan(AGENT_CONFIG_ENV, args.config_file.as_ref())?;
    let connector = args.vault.connector()?;
    let options = agent::AgentOptions {
        init_only: args.init_only,
        init_timeout: Duration::from_secs(args.init_timeout_seconds),
        started,
    };
    current_thread()?
        .block_on(agent::run(plan, connector, options))
        .map_err(|e| e.to_string())
}

fn run_exec(args: ExecArgs) -> Result<(), String> {
    logging::init(&args.log_level, args.log_format)?;
    let plan = load_plan(EXEC_CONFIG_ENV, None)?;
    let connector = args.vault.connector()?;
    let vars = current_thread()?
        .block_on(exec::resolve(&plan, connector))
        .map_err(|e| e.to_string())?;
    Err(exec::exec(&args.command, &vars).to_string())
}

fn run_probe(args: ProbeArgs) -> Result<(), String> {
    let mount = match args.mount_path {
        Some(p) => p,
        None => load_plan(AGENT_CONFIG_ENV, None)?
            .mount_path
            .ok_or_else(|| format!("{AGENT_CONFIG_ENV} has no mountPath"))?,
    };
    let rendered = match args.wait {
        None => agent::probe(&mount),
        Some(wait) => agent::wait_for_render(&mount, wait),
    };
    if rendered {
        Ok(())
    } else {
        Err(format!("{}: no render yet", mount.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exec_gets_the_vault_and_log_flags_with_their_values() {
        let agent = words(&[
            "--keyvault-dns-suffix=vault.azure.cn",
            "--resolve",
            "*.vault.azure.cn=10.0.0.4",
            "--init-timeout-seconds",
            "300",
            "--ca-file=/etc/kvmount/ca.pem",
            "--log-format=json",
        ]);
        assert!(check_agent_args(&agent).is_ok());
        assert_eq!(
            exec_flags(&agent),
            words(&[
                "--keyvault-dns-suffix=vault.azure.cn",
                "--resolve",
                "*.vault.azure.cn=10.0.0.4",
                "--ca-file=/etc/kvmount/ca.pem",
                "--log-format=json",
            ])
        );
    }

    #[test]
    fn unknown_flags_stop_the_webhook() {
        let err = check_agent_args(&words(&["--keyvault-suffix=x"])).expect_err("typo");
        assert!(err.starts_with("--agent-arg --keyvault-suffix=x:"), "{err}");
        assert!(check_agent_args(&words(&["--init-only", "stray"])).is_err());
    }
}
