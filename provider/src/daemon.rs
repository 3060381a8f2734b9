//! `kvmount-provider serve`: the node daemon. One node cache serves both entry points: the
//! provider API (for the upstream driver) and, with `--csi-socket`, the CSI node plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use kvmount_proto::csi::identity_server::IdentityServer;
use kvmount_proto::csi::node_server::NodeServer;
use kvmount_telemetry::metrics::{Exposition, Registry};
use kvmount_vault::Connector;
use tonic::transport::Server;

use crate::cache::{CacheConfig, NodeCache};
use crate::cli::ServeArgs;
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
    let limiter = Arc::new(RateLimiter::new(args.vault_qps, args.vault_burst));
    let connector = Connector::new(args.vault.connector_config()?)?.with_vault_policies(Arc::new(
        VaultPolicies {
            limiter,
            metrics: Arc::clone(&metrics),
        },
    ));
    let refresh = args.rotation_interval.max(Duration::from_millis(200));
    let idle = args.cache_idle.unwrap_or(refresh);
    let cache = Arc::new(NodeCache::new(
        connector,
        CacheConfig {
            refresh_after: refresh,
            idle_ttl: idle,
        },
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let registration = Arc::new(RegistrationState::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let mounter = Mounter::new(
        Arc::clone(&cache),
        Duration::from_secs(args.mount_timeout_seconds),
        args.cloud_env_dir.clone(),
    );
    let provider_socket = BoundSocket::bind(&args.provider_socket)?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve_provider(
        provider_socket,
        ProviderService::new(mounter, Arc::clone(&metrics)),
        stopped(),
    ));

    let mut handle = DaemonHandle {
        cache: Arc::clone(&cache),
        volumes: None,
    };
    if let Some(csi_path) = &args.csi_socket {
        let node_id = args
            .node_id
            .clone()
            .filter(|n| !n.is_empty())
            .context("--node-id (or NODE_NAME) is required with --csi-socket")?;
        let state = StateStore::open(&args.state_dir)?;
        let tmpfs_budget = args.tmpfs_budget.resolve();
        let volumes = Arc::new(Volumes::new(
            Arc::clone(&cache),
            classes,
            state,
            VolumeConfig {
                tmpfs_bytes: args.tmpfs_bytes,
                cloud_env_dir: args.cloud_env_dir.clone(),
                tmpfs_budget,
                fetch_deadline: Duration::from_secs(args.mount_timeout_seconds),
            },
        ));
        handle.volumes = Some(Arc::clone(&volumes));
        match tmpfs_budget {
            Some(budget) => tracing::info!(
                budget,
                "volumes' files may take this many bytes of memory (--tmpfs-budget)"
            ),
            None => tracing::info!("no --tmpfs-budget: no memory limit found for the daemon"),
        }
        let (adopted, cleaned) = volumes.recover()?;
        tracing::info!(
            adopted,
            cleaned,
            "recovered published volumes from the state file"
        );
        let mut csi_socket = BoundSocket::bind(csi_path)?;
        let listener = csi_socket.take_listener().context("CSI socket listener")?;
        if let Some(config) = registration_config(&args, csi_path)? {
            // Bound here, after the CSI socket: a directory the daemon cannot write to stops
            // it at start, naming the path.
            let first = BoundSocket::bind(&config.socket_path())
                .with_context(|| format!("--plugin-registration-dir {}", config.dir.display()))?;
            tasks.spawn(crate::registration::keep_registered(
                config,
                Arc::clone(&registration),
                first,
                stopped.clone(),
            ));
        }
        let identity = IdentityService::new(args.driver_name.clone(), Arc::clone(&ready));
        let node = NodeService::new(node_id, Arc::clone(&volumes), Arc::clone(&metrics));
        let shutdown = stopped();
        tasks.spawn(async move {
            tracing::info!(socket = %csi_socket.path().display(), "serving CSI Identity and Node");
            Server::builder()
                .add_service(
                    IdentityServer::new(identity).max_decoding_message_size(MAX_REQUEST_BYTES),
                )
                .add_service(NodeServer::new(node).max_decoding_message_size(MAX_REQUEST_BYTES))
                .serve_with_incoming_shutdown(kvmount_unix_h2::incoming(listener), shutdown)
                .await?;
            tracing::info!(socket = %csi_socket.path().display(), "CSI services stopped");
            drop(csi_socket);
            Ok(())
        });
    }

    // The rotation loop: one read per object in use per interval, for the whole node.
    tasks.spawn(crate::refresh::run(
        Arc::clone(&cache),
        handle.volumes.clone(),
        Arc::clone(&metrics),
        refresh,
        stopped(),
    ));

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
            stopped(),
        );
        tasks.spawn(async move { Ok(serve.await?) });
    }

    // Idle entries of the upstream-driver path are erased on a timer.
    let sweeper_cache = Arc::clone(&cache);
    let sweep_every = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let sweeper_stop = stopped();
    tasks.spawn(async move {
        tokio::pin!(sweeper_stop);
        let mut tick = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if sweeper_cache.sweep() > 0 {
                        hardening::scrub_stack();
                    }
                }
                _ = &mut sweeper_stop => return Ok(()),
            }
        }
    });

    ready.store(true, Ordering::Release);
    tracing::info!("ready");
    if let Some(started) = started {
        let _ = started.send(handle);
    }
    tokio::select! {
        _ = shutdown => {}
        Some(result) = tasks.join_next() => {
            // A server ended on its own: that is a failure; stop the others.
            let _ = stop_tx.send(true);
            result??;
            anyhow::bail!("a server stopped unexpectedly");
        }
    }
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
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
