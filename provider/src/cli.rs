//! Command-line interface of `kvmount-provider`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kvmount_vault::client::{DEFAULT_AUTHORITY_HOST, DEFAULT_KEYVAULT_DNS_SUFFIX};
use kvmount_vault::{ConnectorConfig, ResolveRule};
use std::path::PathBuf;

use crate::logging::{self, LogFormat, LogLevel};

/// Default provider socket: where the upstream driver looks for provider `kvmount`.
pub const DEFAULT_PROVIDER_SOCKET: &str = "/var/run/secrets-store-csi-providers/kvmount.sock";

/// kvmount node daemon: Azure Key Vault secrets as tmpfs files in Kubernetes pods.
#[derive(Debug, Parser)]
#[command(name = "kvmount-provider", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// One value, parsed once at start: its size does not matter (without the `dev` feature
// `serve`'s flags are by far the largest variant, and clippy says so).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Secrets Store CSI Driver provider API on a Unix socket.
    Serve(ServeArgs),
    /// Run a local Azure Key Vault (TLS, challenge auth, token endpoint) for dev and tests.
    #[cfg(feature = "dev")]
    MockVault(kvmount_mock_vault::MockVaultArgs),
    /// Show the whole life cycle of a secret on this machine (mock vault, real tmpfs mounts).
    #[cfg(feature = "dev")]
    Dev(DevArgs),
    /// `mock-vault` in a build without the `dev` feature (the images): refused, saying so.
    #[cfg(not(feature = "dev"))]
    #[command(hide = true, disable_help_flag = true)]
    MockVault(AbsentArgs),
    /// `dev` in a build without the `dev` feature (the images): refused, saying so.
    #[cfg(not(feature = "dev"))]
    #[command(hide = true, disable_help_flag = true)]
    Dev(AbsentArgs),
    /// Show the published volumes of this node: pod, class, objects and versions, last
    /// refresh, last error.
    Status(StatusArgs),
}

/// Logging flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log level: error, warn (or warning), info, debug, trace, off, or target=level
    /// directives such as `kvmount_provider=trace,info` (RUST_LOG overrides).
    #[arg(long, default_value = "info", env = "KVMOUNT_LOG_LEVEL")]
    pub log_level: LogLevel,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the logger; an invalid RUST_LOG is an error naming it.
    pub fn init(&self) -> anyhow::Result<()> {
        logging::init(&self.log_level, self.log_format).map_err(anyhow::Error::msg)
    }
}

/// Where Key Vault and Entra ID are.
#[derive(Debug, Clone, Args)]
pub struct VaultArgs {
    /// Key Vault DNS suffix: vault NAME is https://NAME.SUFFIX/.
    #[arg(long, default_value = DEFAULT_KEYVAULT_DNS_SUFFIX)]
    pub keyvault_dns_suffix: String,
    /// Entra ID authority host (https).
    #[arg(long, default_value = DEFAULT_AUTHORITY_HOST)]
    pub authority_host: String,
    /// Extra trusted root certificates (PEM), added to the system roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// HOST=ADDR or *.SUFFIX=ADDR (ADDR is IP or IP:PORT): connect there instead of using DNS.
    /// Repeatable. For private endpoints and the mock vault; no /etc/hosts edits needed.
    #[arg(long = "resolve", value_name = "HOST=ADDR")]
    pub resolve: Vec<String>,
    /// Retries of a throttled or failed Key Vault request.
    #[arg(long, default_value_t = 4)]
    pub max_retries: u32,
}

impl VaultArgs {
    /// The connector configuration these flags describe.
    pub fn connector_config(&self) -> anyhow::Result<ConnectorConfig> {
        let authority_host = url::Url::parse(&self.authority_host)
            .with_context(|| format!("--authority-host {:?}: not a URL", self.authority_host))?;
        let extra_roots_pem = match &self.ca_file {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("--ca-file {}: cannot read", path.display()))?,
            None => Vec::new(),
        };
        let resolve = self
            .resolve
            .iter()
            .map(|r| ResolveRule::parse(r).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ConnectorConfig {
            keyvault_dns_suffix: self.keyvault_dns_suffix.trim_matches('.').to_owned(),
            authority_host,
            extra_roots_pem,
            resolve,
            max_retries: self.max_retries,
            ..ConnectorConfig::default()
        })
    }
}

/// `serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Unix socket for the provider API (the upstream Secrets Store CSI Driver calls it).
    #[arg(long, default_value = DEFAULT_PROVIDER_SOCKET)]
    pub provider_socket: PathBuf,
    /// Unix socket for the CSI Identity and Node services (kvmount as the CSI driver itself).
    #[arg(long)]
    pub csi_socket: Option<PathBuf>,
    /// This node's name, reported by NodeGetInfo (required with --csi-socket).
    #[arg(long, env = "NODE_NAME")]
    pub node_id: Option<String>,
    /// Register the CSI driver with the kubelet: serve the kubelet's plugin registration
    /// service on `<DIR>/<driver name>-reg.sock` (DIR is `<kubelet root>/plugins_registry`),
    /// so no node-driver-registrar container is needed. Requires --csi-socket.
    #[arg(long, value_name = "DIR")]
    pub plugin_registration_dir: Option<PathBuf>,
    /// The CSI socket's path as the kubelet sees it on the node, when it differs from
    /// --csi-socket (the daemon's container mounts the host directory elsewhere).
    #[arg(long, value_name = "PATH")]
    pub kubelet_csi_socket: Option<PathBuf>,
    /// CSI driver name reported by GetPluginInfo.
    #[arg(long, default_value = crate::grpc::identity::DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Directory for the state file (published volumes, never secrets); must be on tmpfs.
    #[arg(long, default_value = "/run/kvmount")]
    pub state_dir: PathBuf,
    /// The directory whose regular files a class may name as `cloudEnvFileName` (custom
    /// clouds). Without it, every `cloudEnvFileName` is refused.
    #[arg(long)]
    pub cloud_env_dir: Option<PathBuf>,
    /// Kubeconfig for SecretProviderClass lookups, which only the CSI path makes (with
    /// `--csi-socket`; default: in-cluster config when running in a pod, else none).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Rotation interval: each object in use is read once per interval (with jitter) for the
    /// whole node, and volumes are rewritten atomically when its version changed. Accepts `90s`,
    /// `1m30s`, `2h`, `500ms` or seconds (200ms to a week).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub rotation_interval: Duration,
    /// How long an entry no published volume uses stays cached (the upstream-driver path),
    /// default: the rotation interval. Entries used by volumes are erased at the last unpublish.
    #[arg(long, value_parser = parse_duration)]
    pub cache_idle: Option<Duration>,
    /// Key Vault requests per second allowed per vault from this node (every try, retries
    /// too). Default 20 = Key Vault's 4,000 GETs per 10 s per vault / 10 s / 20 nodes: the
    /// sustained ceilings of 20 nodes sharing a vault make its limit (at a 2m rotation
    /// interval, a ceiling of 2,400 objects in use per node).
    #[arg(long, default_value_t = crate::ratelimit::DEFAULT_VAULT_QPS)]
    pub vault_qps: f64,
    /// Burst of Key Vault requests allowed per vault above `--vault-qps`. Default 401 = the
    /// first mount of the largest class accepted (200 files, each a history slot: a version
    /// list and a GET, plus one 401 challenge), so no accepted class waits on its first mount;
    /// a node's worst 10 s is then 401 + 10 x 20 = 601 requests, 15% of the vault's 4,000.
    #[arg(long, default_value_t = crate::ratelimit::DEFAULT_VAULT_BURST)]
    pub vault_burst: u32,
    /// Serve Prometheus metrics, /healthz and /readyz over HTTP here, e.g. 0.0.0.0:9808.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Size limit of each volume's tmpfs, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub tmpfs_bytes: u64,
    /// Most memory all published volumes' files may take together: the kernel charges tmpfs
    /// pages to the daemon's memory cgroup. `auto`: the cgroup's memory limit less 48 MiB for
    /// the daemon itself (no budget without a limit); `none`; or a number of bytes. A publish
    /// over it is RESOURCE_EXHAUSTED.
    #[arg(long, default_value = "auto", value_parser = parse_budget)]
    pub tmpfs_budget: Budget,
    /// Deadline for fetching all objects of one Mount (provider API) or one publish (CSI), in
    /// seconds.
    #[arg(long, default_value_t = 60)]
    pub mount_timeout_seconds: u64,
    /// Key Vault location.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// `--tmpfs-budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// From the daemon's memory cgroup.
    Auto,
    /// No budget.
    None,
    /// This many bytes.
    Bytes(u64),
}

/// The part of the daemon's memory limit `--tmpfs-budget auto` leaves to the daemon itself.
const DAEMON_HEADROOM: u64 = 48 << 20;

impl Budget {
    /// The budget in bytes, reading the daemon's cgroup for `auto`.
    pub fn resolve(self) -> Option<u64> {
        match self {
            Self::Auto => {
                crate::hardening::memory_limit().map(|l| l.saturating_sub(DAEMON_HEADROOM))
            }
            Self::None => None,
            Self::Bytes(n) => Some(n),
        }
    }
}

fn parse_budget(text: &str) -> Result<Budget, String> {
    match text.trim() {
        "auto" => Ok(Budget::Auto),
        "none" => Ok(Budget::None),
        n => n
            .parse()
            .map(Budget::Bytes)
            .map_err(|_| format!("{n:?}: accepted: auto, none, or a number of bytes")),
    }
}

/// Shortest `--rotation-interval` / `--cache-idle` (the rotation loop's own floor).
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Longest `--rotation-interval` / `--cache-idle`: a week.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// Parses what users type for the daemon's intervals (`90s`, `1m30s`, `2h`, `500ms` or seconds;
/// `kvmount_vault::duration`), 200ms to a week. clap adds the flag's name to the error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    kvmount_vault::duration::parse_duration_within("value", text, MIN_INTERVAL, MAX_INTERVAL)
        .map_err(|e| e.trim_start_matches("value: ").to_owned())
}

/// `status` flags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The daemon's state directory.
    #[arg(long, default_value = "/run/kvmount")]
    pub state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Whatever follows a subcommand this build does not have (`dev`, `mock-vault` without the
/// `dev` feature): taken, so the refusal names the build rather than a flag.
#[cfg(not(feature = "dev"))]
#[derive(Debug, Clone, Args)]
pub struct AbsentArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

/// Why `dev` and `mock-vault` fail in a build without the `dev` feature.
#[cfg(not(feature = "dev"))]
pub const NO_MOCK_VAULT: &str = "this build has no mock vault (`dev` and `mock-vault` are left out of the images); build with --features dev";

/// `dev` flags (none are needed).
#[cfg(feature = "dev")]
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Logging (quiet by default: the narration goes to stdout).
    #[arg(long, default_value = "warn", env = "KVMOUNT_LOG_LEVEL")]
    pub log_level: LogLevel,
}
