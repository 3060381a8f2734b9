//! Command line: serve (prints one ready line), or mint a dev service-account token.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::{MockVaultConfig, Seed, ServiceAccountTokenRequest};

/// `mock-vault` arguments: serve a local Key Vault + Entra endpoint, or mint a token.
#[derive(Debug, clap::Args)]
pub struct MockVaultArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Seed YAML (tenant, identities, vaults, secrets); default: the built-in demo seed.
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,
    /// Folder for the dev CA, server certificate and signing keys; default
    /// `$XDG_CACHE_HOME/kvmount/mock-vault`, else `~/.cache/kvmount/mock-vault`, else `<tmp>/kvmount-mock-vault`.
    #[arg(long, value_name = "DIR", env = "KVMOUNT_MOCK_TLS_DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Key Vault DNS suffix: vaults are `<name>.<suffix>`, the token resource `https://<suffix>`.
    #[arg(long, default_value = "vault.localhost")]
    pub dns_suffix: String,
    /// Repeatable: a DNS name clients reach the Entra endpoints by (a hosts file maps it here),
    /// added to the server certificate; the first is the authority in the OpenID documents.
    #[arg(long = "entra-host", value_name = "NAME")]
    pub entra_hosts: Vec<String>,
    /// Repeatable: another name for the server certificate, a DNS name or an IP address, for
    /// clients that reach the mock at an address other than loopback (pods reaching a node IP).
    #[arg(long = "tls-san", value_name = "NAME_OR_IP")]
    pub tls_sans: Vec<String>,
    /// Also serve IMDS (plain HTTP) here for the seed's managed identities, e.g.
    /// 169.254.169.254:80 inside a network namespace.
    #[arg(long, value_name = "ADDR")]
    pub imds_listen: Option<SocketAddr>,
    /// Instead of serving: another action.
    #[command(subcommand)]
    pub command: Option<MockVaultCommand>,
}

/// Actions other than serving.
#[derive(Debug, clap::Subcommand)]
pub enum MockVaultCommand {
    /// Print a service-account JWT signed by the dev issuer key (a federated client assertion).
    MintToken(MintTokenArgs),
}

/// `mint-token` arguments.
#[derive(Debug, clap::Args)]
pub struct MintTokenArgs {
    /// Namespace of the service account.
    #[arg(long)]
    pub namespace: String,
    /// Service account name.
    #[arg(long)]
    pub service_account: String,
    /// Audience.
    #[arg(long, default_value = crate::FEDERATION_AUDIENCE)]
    pub audience: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,
    /// Issuer (`iss`); default https://oidc.kvmount.local.
    #[arg(long)]
    pub issuer: Option<String>,
    /// Pod name for the kubernetes.io claim.
    #[arg(long)]
    pub pod_name: Option<String>,
}

/// The default TLS folder (see [`MockVaultArgs::tls_dir`]).
pub fn default_tls_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("kvmount/mock-vault");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".cache/kvmount/mock-vault");
    }
    std::env::temp_dir().join("kvmount-mock-vault")
}

/// Runs the command line: serves until SIGINT/SIGTERM (after printing the ready line), or mints a token.
pub async fn run_cli(args: MockVaultArgs) -> anyhow::Result<()> {
    let tls_dir = args.tls_dir.clone().unwrap_or_else(default_tls_dir);
    if let Some(MockVaultCommand::MintToken(m)) = args.command {
        let req = ServiceAccountTokenRequest {
            audience: m.audience,
            ttl: Duration::from_secs(m.ttl_seconds),
            issuer: m.issuer,
            pod_name: m.pod_name,
            ..ServiceAccountTokenRequest::new(m.namespace, m.service_account)
        };
        let token = crate::mint_service_account_token(&tls_dir, &req)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{token}")?;
        out.flush()?;
        return Ok(());
    }
    let seed = match &args.seed {
        Some(path) => Seed::from_file(path)?,
        None => Seed::demo(),
    };
    let config = MockVaultConfig {
        listen: args.listen,
        seed,
        tls_dir,
        dns_suffix: args.dns_suffix,
        entra_hosts: args.entra_hosts,
        tls_sans: args.tls_sans,
    };
    let vault = crate::start_with_imds(config, args.imds_listen)
        .await
        .context("starting the mock vault")?;
    {
        let ca = vault.ca_path();
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "kvmount mock vault ready url={} ca={} dns-suffix={} tenant={}{}",
            vault.base_url(),
            ca.display(),
            vault.dns_suffix(),
            vault.tenant_id(),
            vault
                .imds_addr()
                .map(|a| format!(" imds=http://{a}"))
                .unwrap_or_default()
        )?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {},
    }
    tracing::info!("signal received; shutting down");
    vault.shutdown().await;
    Ok(())
}
