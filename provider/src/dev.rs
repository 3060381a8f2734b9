//! `kvmount-provider dev`: the life cycle of a secret on one machine, narrated.
//!
//! Starts the mock vault and the provider API in this process, then plays what the upstream
//! driver and kubelet would do for two pods on one node: mount a tmpfs per pod, call Mount,
//! write the files with the kubelet-style atomic writer, rotate a secret through the Key Vault
//! API, re-mount (the driver's rotation), and tear both pods down. Everything lives under one
//! temporary directory, which is gone at the end.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use azure_core::http::RequestContent;
use azure_security_keyvault_secrets::models::SetSecretParameters;
use kvmount_mock_vault::{MockVault, MockVaultConfig, Seed, ServiceAccountTokenRequest};
use kvmount_proto::csi::identity_client::IdentityClient;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_proto::csi::volume_capability::access_mode::Mode;
use kvmount_proto::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use kvmount_proto::csi::{
    GetPluginInfoRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest, ProbeRequest,
    VolumeCapability,
};
use kvmount_vault::params::{Auth, TOKENS_ATTRIBUTE, WORKLOAD_IDENTITY_AUDIENCE};
use kvmount_vault::{Connector, SecretString};
use kvmount_volume::TmpfsOptions;

use crate::cli::{DevArgs, LogArgs, ServeArgs, VaultArgs};
use crate::daemon::DaemonHandle;
use crate::logging::{self, LogFormat};
use crate::server::unix_channel;

/// The demo's refresh interval, so a rotation shows within seconds.
const REFRESH_SECONDS: u64 = 2;

/// The demo class: two secrets from the demo seed, one with its own file mode.
const DEMO_OBJECTS: &str = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n    filePermission: \"0600\"\n  - |\n    objectName: api-key\n    objectType: secret\n";

/// Identity `app-a` of the demo seed (`mock-vault/demo-seed.yaml`): federated with
/// `system:serviceaccount:team-a:app`, allowed to read and write the `demo` vault.
const DEMO_CLIENT_ID: &str = "00000000-0000-0000-0000-00000000000a";
/// app-a's client secret in the demo seed (a demo value, not a real credential).
const DEMO_CLIENT_SECRET: &str = "app-a-password";

/// A pod of the demo: its identity and where its volume is.
struct Pod {
    name: &'static str,
    uid: String,
    target: PathBuf,
    /// The pod's projected service-account token: kubelet reuses it until it nears expiry.
    token: std::cell::OnceCell<SecretString>,
}

impl Pod {
    fn new(root: &Path, name: &'static str) -> Self {
        let uid = uuid_like(name);
        let target = root
            .join("kubelet/pods")
            .join(&uid)
            .join("volumes/kubernetes.io~csi/secrets/mount");
        Self {
            name,
            uid,
            target,
            token: std::cell::OnceCell::new(),
        }
    }
}

/// A stable, readable pod UID for the narration.
fn uuid_like(name: &str) -> String {
    let tag: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("00000000-0000-4000-8000-{:0>12}", &tag[..tag.len().min(12)])
}

/// Removes the work directory and any mount left under it, whatever happened.
struct WorkDir {
    path: PathBuf,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        for target in mounts_under(&self.path) {
            let _ = kvmount_volume::teardown(&target);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Mount points at or below `root` (empty if mountinfo cannot be read).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    kvmount_volume::mounts_under(root).unwrap_or_default()
}

/// Runs the demo.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    logging::init(&args.log_level, LogFormat::Text).map_err(anyhow::Error::msg)?;
    if !rustix::process::geteuid().is_root() {
        bail!(
            "kvmount dev mounts real tmpfs volumes, which needs root (CAP_SYS_ADMIN). \
             Run it as root, for example: sudo -E cargo run --release -p kvmount-provider -- dev"
        );
    }
    let base = std::env::temp_dir();
    let work = WorkDir {
        path: tempfile::Builder::new()
            .prefix("kvmount-dev.")
            .tempdir_in(&base)
            .context("creating the work directory")?
            .keep(),
    };
    std::fs::set_permissions(&work.path, std::fs::Permissions::from_mode(0o700))?;
    let result = play(&work.path).await;
    let leftover_mounts = mounts_under(&work.path);
    drop(work);
    result?;
    if !leftover_mounts.is_empty() {
        bail!("mounts were left behind: {leftover_mounts:?}");
    }
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

async fn play(root: &Path) -> anyhow::Result<()> {
    println!("kvmount dev: the life cycle of a secret on one node, with a local Key Vault");
    println!("    work directory {} (removed at the end)", root.display());

    step(
        1,
        "start the mock Key Vault (TLS, challenge auth, Entra token endpoint)",
    );
    let tls_dir = root.join("tls");
    let mock = kvmount_mock_vault::start(MockVaultConfig {
        listen: "127.0.0.1:0".parse()?,
        seed: Seed::demo(),
        tls_dir: tls_dir.clone(),
        dns_suffix: "vault.localhost".into(),
        entra_hosts: Vec::new(),
        tls_sans: Vec::new(),
    })
    .await
    .context("starting the mock vault")?;
    println!(
        "    Key Vault  {}  (served at {})",
        mock.vault_url("demo"),
        mock.base_url()
    );
    println!(
        "    Entra ID   {}/{}/oauth2/v2.0/token",
        mock.base_url(),
        mock.tenant_id()
    );

    step(
        2,
        "start the node daemon: CSI node plugin and provider API, one node cache",
    );
    let state_dir = root.join("state");
    std::fs::create_dir_all(&state_dir)?;
    kvmount_volume::mount_tmpfs(
        &state_dir,
        &TmpfsOptions {
            size_bytes: 1 << 20,
            mode: 0o700,
            uid: None,
            gid: None,
        },
    )?;
    let csi_socket = root.join("plugins/secrets.kvmount.io/csi.sock");
    let args = ServeArgs {
        provider_socket: root.join("providers/kvmount.sock"),
        csi_socket: Some(csi_socket.clone()),
        node_id: Some("dev-node".into()),
        plugin_registration_dir: None,
        kubelet_csi_socket: None,
        driver_name: crate::grpc::identity::DEFAULT_DRIVER_NAME.into(),
        state_dir: state_dir.clone(),
        cloud_env_dir: None,
        kubeconfig: None,
        rotation_interval: Duration::from_secs(REFRESH_SECONDS),
        cache_idle: None,
        vault_qps: crate::ratelimit::DEFAULT_VAULT_QPS,
        vault_burst: crate::ratelimit::DEFAULT_VAULT_BURST,
        metrics_addr: None,
        tmpfs_bytes: 1 << 20,
        tmpfs_budget: crate::cli::Budget::Auto,
        mount_timeout_seconds: 30,
        vault: VaultArgs {
            keyvault_dns_suffix: mock.dns_suffix().to_owned(),
            authority_host: mock.base_url(),
            ca_file: Some(mock.ca_path()),
            resolve: vec![format!("*.{}={}", mock.dns_suffix(), mock.addr())],
            max_retries: 2,
        },
        log: LogArgs {
            log_level: "warn".parse().map_err(anyhow::Error::msg)?,
            log_format: crate::logging::LogFormat::Text,
        },
    };
    let connector = Connector::new(args.vault.connector_config()?)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::daemon::run_until(
        args,
        None,
        async {
            let _ = stop_rx.await;
        },
        Some(started_tx),
    ));
    let handle = match started_rx.await {
        Ok(handle) => handle,
        Err(_) => {
            let _ = kvmount_volume::teardown(&state_dir);
            return match daemon.await {
                Ok(Err(e)) => Err(e.context("the daemon did not start")),
                _ => Err(anyhow::anyhow!("the daemon did not start")),
            };
        }
    };
    let channel = unix_channel(&csi_socket).await?;
    let mut identity = IdentityClient::new(channel.clone());
    let mut node = NodeClient::new(channel);
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await?
        .into_inner();
    let probe = identity.probe(ProbeRequest {}).await?.into_inner();
    println!(
        "    CSI driver {} {} on {} (ready: {})",
        info.name,
        info.vendor_version,
        csi_socket.display(),
        probe.ready.unwrap_or(false)
    );

    let pod_a = Pod::new(root, "pod-a");
    let pod_b = Pod::new(root, "pod-b");
    let outcome = async {
        step(3, "pod A (namespace team-a, service account app) mounts class app-secrets");
        publish(&mut node, &mock, &tls_dir, &pod_a).await?;
        show_node(&mock, &handle, "after pod A");

        step(4, "pod B on the same node mounts the same class: served from the node cache");
        publish(&mut node, &mock, &tls_dir, &pod_b).await?;
        show_node(&mock, &handle, "after pod B");

        step(5, "rotate db-password through the Key Vault API");
        let new_version = rotate(&connector, &mock, "db-password", "rotated-value").await?;
        println!("    db-password now has version {new_version}");

        step(6, &format!("within one rotation interval ({REFRESH_SECONDS} s here, 2 min by default) the node reads it once and rewrites both volumes atomically"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(REFRESH_SECONDS * 3);
        loop {
            let values: Vec<String> = [&pod_a, &pod_b]
                .iter()
                .map(|p| std::fs::read_to_string(p.target.join("db-password")).unwrap_or_default())
                .collect();
            if values.iter().all(|v| v == "rotated-value") {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the rotation did not reach both volumes within {} s", REFRESH_SECONDS * 3);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for pod in [&pod_a, &pod_b] {
            println!("    {}: db-password = {:?}   (no restart, no republish)", pod.name, std::fs::read_to_string(pod.target.join("db-password"))?);
            show_files(&pod.target)?;
        }
        show_node(&mock, &handle, "after the rotation");

        step(7, "pod A leaves: its volume is unmounted and removed; pod B keeps the secrets");
        unpublish(&mut node, &pod_a).await?;
        println!(
            "    pod B still reads: db-password = {:?}",
            std::fs::read_to_string(pod_b.target.join("db-password"))?
        );
        show_node(&mock, &handle, "after pod A left");

        step(8, "pod B leaves: the node holds nothing");
        unpublish(&mut node, &pod_b).await?;
        let left: Vec<PathBuf> = mounts_under(&root.join("kubelet"));
        let dirs: Vec<_> = [&pod_a, &pod_b]
            .iter()
            .filter(|p| p.target.exists())
            .map(|p| p.target.clone())
            .collect();
        println!("    volume mounts left: {}", left.len());
        println!("    volume directories left: {}", dirs.len());
        println!("    cached objects on the node: {} (erased and zeroed at the last unpublish)", handle.cache.len());
        if !left.is_empty() || !dirs.is_empty() || !handle.cache.is_empty() {
            bail!("something was left behind: mounts {left:?}, directories {dirs:?}, {} cache entries", handle.cache.len());
        }
        show_node(&mock, &handle, "in total");
        anyhow::Ok(())
    }
    .await;

    // Teardown even when a step failed: unmount volumes, stop the daemon, stop the vault.
    for pod in [&pod_a, &pod_b] {
        let _ = kvmount_volume::teardown(&pod.target);
    }
    drop(node);
    drop(identity);
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), daemon).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the daemon ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the daemon task failed"),
        Err(_) => tracing::warn!("the daemon did not stop within 10 s"),
    }
    let _ = kvmount_volume::teardown(&state_dir);
    mock.shutdown().await;
    outcome?;
    println!(
        "\ndone: every volume unmounted, the sockets removed, the work directory removed next."
    );
    Ok(())
}

/// What kubelet does for a pod: NodePublishVolume with the pod's volume attributes and its
/// service-account token (the CSIDriver object's tokenRequests).
async fn publish(
    node: &mut NodeClient<tonic::transport::Channel>,
    mock: &MockVault,
    tls_dir: &Path,
    pod: &Pod,
) -> anyhow::Result<()> {
    if let Some(parent) = pod.target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if pod.token.get().is_none() {
        let minted = kvmount_mock_vault::mint_service_account_token(
            tls_dir,
            &ServiceAccountTokenRequest {
                namespace: "team-a".into(),
                service_account: "app".into(),
                audience: WORKLOAD_IDENTITY_AUDIENCE.into(),
                ttl: Duration::from_secs(600),
                issuer: None,
                pod_name: Some(pod.name.into()),
                pod_uid: Some(pod.uid.clone()),
            },
        )?;
        let _ = pod.token.set(SecretString::new(minted));
    }
    let token = pod.token.get().context("token minted above")?;
    let tokens = serde_json::json!({
        WORKLOAD_IDENTITY_AUDIENCE: {"token": token.expose(), "expirationTimestamp": "2099-01-01T00:00:00Z"}
    });
    let mut request = NodePublishVolumeRequest::default();
    request.volume_id = format!("csi-{}", pod.uid);
    request.target_path = pod.target.display().to_string();
    request.readonly = true;
    request.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeReaderOnly as i32,
        }),
    });
    request.volume_context = HashMap::from([
        ("keyvaultName".to_owned(), "demo".to_owned()),
        ("tenantID".to_owned(), mock.tenant_id().to_owned()),
        ("clientID".to_owned(), DEMO_CLIENT_ID.to_owned()),
        ("objects".to_owned(), DEMO_OBJECTS.to_owned()),
        (
            "csi.storage.k8s.io/pod.name".to_owned(),
            pod.name.to_owned(),
        ),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            "team-a".to_owned(),
        ),
        ("csi.storage.k8s.io/pod.uid".to_owned(), pod.uid.clone()),
        (
            "csi.storage.k8s.io/serviceAccount.name".to_owned(),
            "app".to_owned(),
        ),
        ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
        (TOKENS_ATTRIBUTE.to_owned(), tokens.to_string()),
    ]);
    node.node_publish_volume(request).await?;
    println!(
        "    {}: NodePublishVolume OK, tmpfs at {}",
        pod.name,
        pod.target.display()
    );
    show_files(&pod.target)?;
    Ok(())
}

/// Lists the visible files with mode, owner and size, and the demo values.
fn show_files(target: &Path) -> anyhow::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(target)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    names.sort();
    for name in names {
        let path = target.join(&name);
        let meta = std::fs::metadata(&path)?;
        let value = std::fs::read_to_string(&path).unwrap_or_default();
        println!(
            "      {:04o} uid={} {:>3} bytes  {name} = {value:?}   (demo value)",
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            meta.len(),
        );
    }
    Ok(())
}

async fn unpublish(
    node: &mut NodeClient<tonic::transport::Channel>,
    pod: &Pod,
) -> anyhow::Result<()> {
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: format!("csi-{}", pod.uid),
        target_path: pod.target.display().to_string(),
    })
    .await?;
    println!(
        "    {}: NodeUnpublishVolume OK; {} exists: {}",
        pod.name,
        pod.target.display(),
        pod.target.exists()
    );
    Ok(())
}

/// Sets a new version of `name` with the official SDK, as app-a (which may write in the demo seed).
async fn rotate(
    connector: &Connector,
    mock: &MockVault,
    name: &str,
    value: &str,
) -> anyhow::Result<String> {
    let auth = Auth::ServicePrincipal {
        client_id: DEMO_CLIENT_ID.to_owned(),
        client_secret: SecretString::new(DEMO_CLIENT_SECRET.to_owned()),
    };
    let credential = connector.credential(mock.tenant_id(), &auth)?;
    let client = connector.secret_client("demo", Arc::clone(&credential))?;
    let parameters = SetSecretParameters {
        value: Some(value.to_owned()),
        ..Default::default()
    };
    let body: RequestContent<SetSecretParameters> = parameters.try_into()?;
    let secret = client
        .secrets()
        .set_secret(name, body, None)
        .await?
        .into_model()?;
    let id = secret.id.unwrap_or_default();
    Ok(id.rsplit('/').next().unwrap_or_default().to_owned())
}

fn show_node(mock: &MockVault, handle: &DaemonHandle, when: &str) {
    let stats = mock.stats();
    let gets = stats.count(Some("demo"), Some("secret.get"), None, Some(200));
    let tokens = stats.count(None, Some("token"), None, Some(200));
    let counters = &handle.cache.counters;
    println!(
        "    {when}: Key Vault secret GETs {gets}, token requests {tokens}; node cache: {} objects, {} hits, {} misses",
        handle.cache.len(),
        counters.hits.load(std::sync::atomic::Ordering::Relaxed),
        counters.misses.load(std::sync::atomic::Ordering::Relaxed),
    );
}
