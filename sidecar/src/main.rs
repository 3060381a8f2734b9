//! `kvmount-sidecar`: the admission webhook, plus the in-pod commands of `kvmount-agent`
//! (see `kvmount_sidecar`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kvmount_sidecar::agent_cli::{self, LogArgs, PodCommand};
use kvmount_sidecar::annotations::Mode;
use kvmount_sidecar::logging;
use kvmount_sidecar::{server, tls, webhook};

/// Freed memory is zeroed: HTTP, TLS and JSON buffers that held secret values do not keep them
/// (the `tests/tests/security_sidecar.rs` scan counts copies in the agent between rounds).
#[global_allocator]
static ALLOCATOR: kvmount_alloc::ZeroingAllocator = kvmount_alloc::ZeroingAllocator::mimalloc();

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
    #[command(flatten)]
    Pod(PodCommand),
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
    /// Path of kvmount-agent in the agent image.
    #[arg(long, default_value = "/usr/local/bin/kvmount-agent")]
    agent_command: String,
    /// Extra argument for every injected agent (repeatable), e.g. --agent-arg=--keyvault-dns-suffix=vault.azure.cn.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Extra trusted roots for every injected agent (and exec): a ConfigMap, in each injected
    /// pod's namespace, mounted read-only and passed as the agents' --ca-file. For a vault
    /// behind a private CA or a TLS-inspecting proxy.
    #[arg(long, value_name = "NAME")]
    agent_ca_configmap: Option<String>,
    /// The key of --agent-ca-configmap that holds the PEM roots.
    #[arg(
        long,
        value_name = "KEY",
        default_value = "ca.crt",
        requires = "agent_ca_configmap"
    )]
    agent_ca_key: String,
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
        Command::Pod(command) => agent_cli::run(command, started),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kvmount-sidecar: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_webhook(args: WebhookArgs) -> Result<(), String> {
    logging::init(&args.log.log_level, args.log.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(webhook_main(args))
}

async fn webhook_main(args: WebhookArgs) -> Result<(), String> {
    let mut agent_args = args.agent_args.clone();
    let agent_ca = match &args.agent_ca_configmap {
        Some(name) => {
            if agent_args.iter().any(|a| a.starts_with("--ca-file")) {
                return Err("--agent-ca-configmap and --agent-arg=--ca-file both name the agents' extra roots; accepted: one of them".into());
            }
            agent_args.push(format!("--ca-file={}", webhook::CA_FILE));
            Some(webhook::AgentCa::new(name, &args.agent_ca_key)?)
        }
        None => None,
    };
    agent_cli::check_agent_args(&agent_args)?;
    let mut skip = vec!["kube-system".to_owned(), "kube-public".to_owned()];
    skip.extend(args.namespace.iter().cloned());
    skip.extend(args.skip_namespaces.iter().cloned());
    let config = webhook::WebhookConfig {
        agent_image: args.agent_image.clone(),
        agent_command: args.agent_command.clone(),
        agent_args,
        agent_ca,
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
            #[allow(
                clippy::disallowed_methods,
                reason = "the public CA certificate, to a path the operator names"
            )]
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
        metrics: server::Metrics::new(certs.clone()),
        certs,
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
