//! `kvmount-provider serve`: the node daemon. One node cache serves both entry points: the
//! provider API (for the upstream driver) and, with `--csi-socket`, the CSI node plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use kvmount_proto::csi::identity_server::IdentityServer;
use kvmount_proto::csi::node_server::NodeServer;
use kvmount_telemetry::metrics::{Exposition, Registry};
use kvmount_vault::Connector;
use tonic::transport::Server;

use crate::access::VaultAccess;
use crate::cache::{CacheConfig, NodeCache};
use crate::cli::ServeArgs;
use crate::cloud_files::CloudFiles;
use crate::grpc::identity::IdentityService;
use crate::grpc::node::NodeService;
use crate::grpc::provider::ProviderService;
use crate::grpc::registration::RegistrationState;
use crate::hardening;
use crate::metrics::Metrics;
use crate::provider_api::Mounter;
use crate::ratelimit::{RateLimiter, VaultPolicies};
use crate::registration::RegistrationConfig;
use crate::server::{BoundSocket, MAX_REQUEST_BYTES, serve_provider, shutdown_signal};

use crate::state::StateStore;
use crate::volumes::{ClassLookup, VolumeConfig, Volumes};

/// What a started daemon exposes to an in-process caller (`dev`, tests).
#[derive(Clone)]
pub struct DaemonHandle {
    /// The node cache.
    pub cache: Arc<NodeCache>,
    /// The published volumes, when the CSI socket is served.
    pub volumes: Option<Arc<Volumes>>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(args: ServeArgs, classes: Option<Arc<dyn ClassLookup>>) -> anyhow::Result<()> {
    run_until(args, classes, shutdown_signal(), None).await
}

/// Runs the daemon until `shutdown` resolves; sends a [`DaemonHandle`] once it serves.
pub async fn run_until(
    args: ServeArgs,
    classes: Option<Arc<dyn ClassLookup>>,
    shutdown: impl Future<Output = ()>,
    started: Option<tokio::sync::oneshot::Sender<DaemonHandle>>,
) -> anyhow::Result<()> {
    if let Err(warning) = hardening::lock_memory() {
        tracing::warn!("{warning}");
    }
    anyhow::ensure!(
        args.csi_socket.is_some() || args.plugin_registration_dir.is_none(),
        "--plugin-registration-dir registers the CSI socket: it needs --csi-socket"
    );
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let config = cache_config(&args);
    let cache = node_cache(&args, config, &metrics)?;
    let ready = Arc::new(AtomicBool::new(false));
    let registration = Arc::new(RegistrationState::default());
    let stop = Stop::new();
    let mut tasks = Tasks::new();

    let cloud_files = Arc::new(CloudFiles::new(args.cloud_env_dir.clone()));
    let mounter = Mounter::new(
        Arc::clone(&cache),
        Duration::from_secs(args.mount_timeout_seconds),
        Arc::clone(&cloud_files),
    );
    let provider_socket = BoundSocket::bind(&args.provider_socket)?;
    tasks.spawn(serve_provider(
        provider_socket,
        ProviderService::new(mounter, Arc::clone(&metrics)),
        stop.stopped(),
    ));

    let mut handle = DaemonHandle {
        cache: Arc::clone(&cache),
        volumes: None,
    };
    if let Some(csi_path) = &args.csi_socket {
        let volumes = node_volumes(&args, &cache, classes, cloud_files)?;
        handle.volumes = Some(Arc::clone(&volumes));
        let node = NodeService::new(node_id(&args)?, Arc::clone(&volumes), Arc::clone(&metrics));
        let identity = IdentityService::new(args.driver_name.clone(), Arc::clone(&ready));
        spawn_csi(csi_path, identity, node, &stop, &mut tasks)?;
        // After the CSI socket: a registration directory the daemon cannot write to stops it
        // at start, naming the path.
        if let Some(config) = registration_config(&args, csi_path)? {
            let first = BoundSocket::bind(&config.socket_path())
                .with_context(|| format!("--plugin-registration-dir {}", config.dir.display()))?;
            let registered = Arc::clone(&registration);
            let keep =
                crate::registration::keep_registered(config, registered, first, stop.stopped_fn());
            tasks.spawn(keep);
        }
    }

    // The rotation loop: one read per object in use per interval, for the whole node.
    tasks.spawn(crate::refresh::run(
        Arc::clone(&cache),
        handle.volumes.clone(),
        Arc::clone(&metrics),
        config.refresh_after,
        stop.stopped(),
    ));
    // Idle entries of the upstream-driver path are erased on a timer.
    tasks.spawn(sweep(Arc::clone(&cache), config.idle_ttl, stop.stopped()));

    // Gauges and cache counters, read at each scrape.
    crate::metrics::register_live(
        &mut registry,
        Arc::clone(&cache),
        handle.volumes.clone(),
        args.plugin_registration_dir
            .is_some()
            .then(|| Arc::clone(&registration)),
    );
    if let Some(addr) = args.metrics_addr {
        let listener = kvmount_telemetry::metrics::listen("--metrics-addr", addr).await?;
        let serve = kvmount_telemetry::metrics::serve(
            listener,
            Exposition::new(registry),
            Arc::clone(&ready),
            stop.stopped(),
        );
        tasks.spawn(async move { Ok(serve.await?) });
    }

    ready.store(true, Ordering::Release);
    tracing::info!("ready");
    if let Some(started) = started {
        let _ = started.send(handle);
    }
    serve_until(shutdown, tasks, &stop, &ready).await
}

/// Serves until `shutdown` resolves, then stops every part and waits for it; or stops the
/// others when one ends on its own (a failure).
async fn serve_until(
    shutdown: impl Future<Output = ()>,
    mut tasks: Tasks,
    stop: &Stop,
    ready: &AtomicBool,
) -> anyhow::Result<()> {
    let ended = tokio::select! {
        _ = shutdown => None,
        Some(result) = tasks.join_next() => Some(result),
    };
    ready.store(false, Ordering::Release);
    stop.now();
    if let Some(result) = ended {
        // A server ended on its own: that is a failure; the others are stopped.
        result??;
        anyhow::bail!("a server stopped unexpectedly");
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// The daemon's long-running parts: servers, rotation, the sweeper.
type Tasks = tokio::task::JoinSet<anyhow::Result<()>>;

/// Tells every part of the daemon to stop.
struct Stop {
    tx: tokio::sync::watch::Sender<bool>,
}

impl Stop {
    fn new() -> Self {
        Self {
            tx: tokio::sync::watch::channel(false).0,
        }
    }

    /// Resolves once the daemon stops.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stopped_fn()()
    }

    /// Makes [`Stop::stopped`] futures, for a part that waits for the stop more than once.
    fn stopped_fn(&self) -> impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static {
        let rx = self.tx.subscribe();
        move || {
            let mut rx = rx.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
        }
    }

    fn now(&self) {
        self.tx.send_replace(true);
    }
}

/// The node cache, reading Key Vault through a connector whose requests pass the node's rate
/// limit and metrics.
fn node_cache(
    args: &ServeArgs,
    config: CacheConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<NodeCache>> {
    let limiter = Arc::new(RateLimiter::new(args.vault_qps, args.vault_burst));
    let connector = Connector::new(args.vault.connector_config()?)?;
    let policies = VaultPolicies {
        limiter,
        metrics: Arc::clone(metrics),
    };
    let access = VaultAccess::new(connector, Some(policies));
    Ok(Arc::new(NodeCache::new(access, config)))
}

/// The rotation interval (at least 200 ms) and how long an unused entry stays.
fn cache_config(args: &ServeArgs) -> CacheConfig {
    let refresh = args.rotation_interval.max(Duration::from_millis(200));
    CacheConfig {
        refresh_after: refresh,
        idle_ttl: args.cache_idle.unwrap_or(refresh),
    }
}

fn node_id(args: &ServeArgs) -> anyhow::Result<String> {
    args.node_id
        .clone()
        .filter(|n| !n.is_empty())
        .context("--node-id (or NODE_NAME) is required with --csi-socket")
}

/// The CSI node plugin's volumes, with those published before a restart adopted (or cleaned
/// up) from the state file.
fn node_volumes(
    args: &ServeArgs,
    cache: &Arc<NodeCache>,
    classes: Option<Arc<dyn ClassLookup>>,
    cloud_files: Arc<CloudFiles>,
) -> anyhow::Result<Arc<Volumes>> {
    let state = StateStore::open(&args.state_dir)?;
    let tmpfs_budget = args.tmpfs_budget.resolve();
    match tmpfs_budget {
        Some(budget) => tracing::info!(
            budget,
            "volumes' files may take this many bytes of memory (--tmpfs-budget)"
        ),
        None => tracing::info!("no --tmpfs-budget: no memory limit found for the daemon"),
    }
    let volumes = Arc::new(Volumes::new(
        Arc::clone(cache),
        classes,
        state,
        VolumeConfig {
            tmpfs_bytes: args.tmpfs_bytes,
            cloud_files,
            tmpfs_budget,
            fetch_deadline: Duration::from_secs(args.mount_timeout_seconds),
        },
    ));
    let (adopted, cleaned) = volumes.recover()?;
    tracing::info!(
        adopted,
        cleaned,
        "recovered published volumes from the state file"
    );
    Ok(volumes)
}

/// Serves CSI Identity and Node on `path` until the daemon stops.
fn spawn_csi(
    path: &std::path::Path,
    identity: IdentityService,
    node: NodeService,
    stop: &Stop,
    tasks: &mut Tasks,
) -> anyhow::Result<()> {
    let mut socket = BoundSocket::bind(path)?;
    let listener = socket.take_listener().context("CSI socket listener")?;
    let shutdown = stop.stopped();
    tasks.spawn(async move {
        tracing::info!(socket = %socket.path().display(), "serving CSI Identity and Node");
        Server::builder()
            .add_service(IdentityServer::new(identity).max_decoding_message_size(MAX_REQUEST_BYTES))
            .add_service(NodeServer::new(node).max_decoding_message_size(MAX_REQUEST_BYTES))
            .serve_with_incoming_shutdown(kvmount_unix_h2::incoming(listener), shutdown)
            .await?;
        tracing::info!(socket = %socket.path().display(), "CSI services stopped");
        drop(socket);
        Ok(())
    });
    Ok(())
}

/// Erases idle entries of the upstream-driver path, a few times per idle period.
async fn sweep(
    cache: Arc<NodeCache>,
    idle: Duration,
    stopped: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let every = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if cache.sweep() > 0 {
                    hardening::scrub_stack();
                }
            }
            _ = &mut stopped => return Ok(()),
        }
    }
}

/// The registration with the kubelet the flags ask for, checked before anything is served.
fn registration_config(
    args: &ServeArgs,
    csi_path: &std::path::Path,
) -> anyhow::Result<Option<RegistrationConfig>> {
    let Some(dir) = &args.plugin_registration_dir else {
        anyhow::ensure!(
            args.kubelet_csi_socket.is_none(),
            "--kubelet-csi-socket is used only with --plugin-registration-dir"
        );
        return Ok(None);
    };
    let endpoint = args.kubelet_csi_socket.as_deref().unwrap_or(csi_path);
    anyhow::ensure!(
        endpoint.is_absolute(),
        "--kubelet-csi-socket (or --csi-socket) {:?}: the kubelet needs an absolute path",
        endpoint
            .display()
            .to_string()
            .chars()
            .take(128)
            .collect::<String>()
    );
    Ok(Some(RegistrationConfig {
        dir: dir.clone(),
        driver_name: args.driver_name.clone(),
        endpoint: endpoint.display().to_string(),
    }))
}
