//! `kvmount-sidecar`: the admission webhook and the in-pod agent (see `kvmount_sidecar`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kvmount_sidecar::annotations::Mode;
use kvmount_sidecar::config::{AGENT_CONFIG_ENV, AgentConfig, EXEC_CONFIG_ENV, Plan};
use kvmount_sidecar::logging::{self, LogFormat};
use kvmount_sidecar::{agent, exec, server, tls, webhook};
use kvmount_vault::ConnectorConfig;
use kvmount_vault::client::{DEFAULT_AUTHORITY_HOST, DEFAULT_KEYVAULT_DNS_SUFFIX};

#[derive(Parser)]
#[command(
    name = "kvmount-sidecar",
    version,
    about = "Key Vault secrets for pods through an injected agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The mutating admission webhook (HTTPS only).
    Webhook(Box<WebhookArgs>),
    /// The in-pod agent: render into the shared memory volume and keep it fresh.
    Agent(AgentArgs),
    /// Resolve env-<VAR> references and exec CMD with them (nothing on disk).
    Exec(ExecArgs),
    /// startupProbe: exit 0 once the first render is on disk.
    Probe(ProbeArgs),
    /// Copy this binary into DIR (the memory volume `exec` runs from).
    Install {
        /// Target directory.
        dir: PathBuf,
    },
}

#[derive(Args)]
struct LogArgs {
    /// Log filter (RUST_LOG overrides).
    #[arg(long, default_value = "info", env = "KVMOUNT_LOG_LEVEL")]
    log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KVMOUNT_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Args)]
struct VaultArgs {
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
struct AgentArgs {
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
struct ExecArgs {
    #[command(flatten)]
    vault: VaultArgs,
    /// Log filter (exec logs only failures by default).
    #[arg(long, default_value = "warn", env = "KVMOUNT_LOG_LEVEL")]
    log_level: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

#[derive(Args)]
struct ProbeArgs {
    /// The secrets volume (default: mountPath of $KVMOUNT_AGENT_CONFIG).
    #[arg(long)]
    mount_path: Option<PathBuf>,
}

#[derive(Args)]
struct WebhookArgs {
    /// Address to listen on (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM); re-read when it changes (cert-manager).
    #[arg(long, requires = "tls_key_file", conflicts_with = "tls_self_managed")]
    tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How often to look for new certificate files.
    #[arg(long, default_value_t = 10)]
    tls_reload_seconds: u64,
    /// Generate a CA and short-lived serving certificates.
    #[arg(long)]
    tls_self_managed: bool,
    /// DNS names of the serving certificate (self-managed), e.g. kvmount-webhook.kvmount.svc.
    #[arg(long = "tls-dns-name")]
    tls_dns_names: Vec<String>,
    /// Lifetime of self-managed serving certificates, in hours (renewed at 10% left).
    #[arg(long, default_value_t = 24)]
    tls_cert_hours: u64,
    /// Write the self-managed CA (PEM) here: the caBundle for the MutatingWebhookConfiguration.
    #[arg(long)]
    ca_bundle_out: Option<PathBuf>,
    /// Self-managed: set the caBundle of this MutatingWebhookConfiguration (needs get and update
    /// on it, and --in-cluster or --kubeconfig); not ready until it is set.
    #[arg(long, requires = "tls_self_managed")]
    webhook_config_name: Option<String>,
    /// The agent image.
    #[arg(
        long,
        env = "KVMOUNT_AGENT_IMAGE",
        default_value = "ghcr.io/kvmount/kvmount-sidecar:0.1.0"
    )]
    agent_image: String,
    /// Path of kvmount-sidecar in the agent image.
    #[arg(long, default_value = "/usr/local/bin/kvmount-sidecar")]
    agent_command: String,
    /// Extra argument for every injected agent (repeatable), e.g. --agent-arg=--keyvault-dns-suffix=vault.azure.cn.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Mode when the pod does not set kvmount.io/mode: native (Kubernetes 1.29+) or sidecar.
    #[arg(long, default_value = "native", value_parser = ["native", "sidecar", "init-only"])]
    default_mode: String,
    /// The webhook's own namespace (never mutated).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// More namespaces never mutated (kube-system and kube-public always are).
    #[arg(long = "skip-namespace")]
    skip_namespaces: Vec<String>,
    /// Tenant for pods that give none.
    #[arg(long)]
    default_tenant_id: Option<String>,
    /// Read SecretProviderClasses through this kubeconfig.
    #[arg(long, conflicts_with = "in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Read SecretProviderClasses with the pod's service account.
    #[arg(long)]
    in_cluster: bool,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Webhook(args) => run_webhook(*args),
        Command::Agent(args) => run_agent(args, started),
        Command::Exec(args) => run_exec(args),
        Command::Probe(args) => run_probe(args),
        Command::Install { dir } => agent::install(&dir)
            .map(drop)
            .map_err(|e| format!("install into {}: {e}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kvmount-sidecar: {message}");
            ExitCode::FAILURE
        }
    }
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
    logging::init(&args.log.log_level, args.log.log_format);
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
    logging::init(&args.log_level, LogFormat::Text);
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
    if agent::probe(&mount) {
        Ok(())
    } else {
        Err(format!("{}: no render yet", mount.display()))
    }
}

fn run_webhook(args: WebhookArgs) -> Result<(), String> {
    logging::init(&args.log.log_level, args.log.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(webhook_main(args))
}

async fn webhook_main(args: WebhookArgs) -> Result<(), String> {
    let mut skip = vec!["kube-system".to_owned(), "kube-public".to_owned()];
    skip.extend(args.namespace.iter().cloned());
    skip.extend(args.skip_namespaces.iter().cloned());
    let config = webhook::WebhookConfig {
        agent_image: args.agent_image.clone(),
        agent_command: args.agent_command.clone(),
        agent_args: args.agent_args.clone(),
        default_mode: Mode::parse(&args.default_mode).unwrap_or(Mode::Native),
        skip_namespaces: skip,
        default_tenant_id: args.default_tenant_id.clone(),
        ..Default::default()
    };
    let classes = if let Some(path) = &args.kubeconfig {
        Some(
            kvmount_k8s::ClassResolver::from_kubeconfig(path)
                .await
                .map_err(|e| e.to_string())?,
        )
    } else if args.in_cluster {
        Some(
            kvmount_k8s::ClassResolver::in_cluster()
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let certs = tls::CertStore::new().map_err(|e| e.to_string())?;
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        let files = tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            interval: Duration::from_secs(args.tls_reload_seconds.max(1)),
        };
        tokio::spawn(files.watch(certs.clone()));
    } else if args.tls_self_managed {
        if args.tls_dns_names.is_empty() {
            return Err("--tls-self-managed needs at least one --tls-dns-name (e.g. kvmount-webhook.kvmount.svc)".into());
        }
        let ca = tls::SelfManaged::new(
            args.tls_dns_names.clone(),
            Duration::from_secs(args.tls_cert_hours.max(1) * 3600),
        )
        .map_err(|e| e.to_string())?;
        if let Some(out) = &args.ca_bundle_out {
            std::fs::write(out, ca.ca_pem())
                .map_err(|e| format!("--ca-bundle-out {}: {e}", out.display()))?;
        }
        match (&args.webhook_config_name, &classes) {
            (None, _) => {
                tokio::spawn(ca.maintain(certs.clone()));
            }
            (Some(_), None) => {
                return Err(
                    "--webhook-config-name needs API access: --in-cluster or --kubeconfig".into(),
                );
            }
            (Some(name), Some(classes)) => {
                let client = classes.client();
                let name = name.clone();
                let store = certs.clone();
                tokio::spawn(async move {
                    // The leaf is served only once the API server trusts its CA.
                    while let Err(e) =
                        kvmount_sidecar::kube_api::patch_ca_bundle(&client, &name, ca.ca_pem())
                            .await
                    {
                        tracing::warn!(error = %e, "setting the caBundle failed; retrying in 10s");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    ca.maintain(store).await;
                });
            }
        }
    } else {
        return Err("the webhook serves HTTPS only: give --tls-cert-file and --tls-key-file, or --tls-self-managed".into());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, api_access = classes.is_some(), "webhook listening (HTTPS)");
    let state = Arc::new(server::State {
        config,
        kube: classes.as_ref().map(kvmount_k8s::ClassResolver::client),
        classes,
        certs,
        metrics: server::Metrics::default(),
    });
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    std::future::pending::<()>().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: finishing open connections");
    };
    server::serve(listener, state, shutdown)
        .await
        .map_err(|e| e.to_string())
}
