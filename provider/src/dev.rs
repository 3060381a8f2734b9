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
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_proto::provider::{MountRequest, VersionRequest};
use kvmount_vault::params::{Auth, TOKENS_ATTRIBUTE, WORKLOAD_IDENTITY_AUDIENCE};
use kvmount_vault::{Connector, ConnectorConfig, ResolveRule, SecretString};
use kvmount_volume::{AtomicWriter, FileSpec, Ownership, TmpfsOptions};

use crate::cli::DevArgs;
use crate::grpc::provider::ProviderService;
use crate::logging::{self, LogFormat};
use crate::mount::Mounter;
use crate::server::{BoundSocket, serve_provider, unix_channel};

/// The demo class: two secrets from the demo seed, one with its own file mode.
const DEMO_OBJECTS: &str = "array:\n  - |\n    objectName: db-password\n    objectType: secret\n    filePermission: \"0600\"\n  - |\n    objectName: api-key\n    objectType: secret\n";

/// A pod of the demo: its identity and where its volume is.
struct Pod {
    name: &'static str,
    uid: String,
    target: PathBuf,
}

impl Pod {
    fn new(root: &Path, name: &'static str) -> Self {
        let uid = uuid_like(name);
        let target = root
            .join("kubelet/pods")
            .join(&uid)
            .join("volumes/kubernetes.io~csi/secrets/mount");
        Self { name, uid, target }
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

/// Mount points at or below `root`, from /proc/self/mountinfo.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    // Deepest first, so nested mounts come off before their parents.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(code as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Runs the demo.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    logging::init(&args.log_level, LogFormat::Text);
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

    step(1, "start the mock Key Vault (TLS, challenge auth, Entra token endpoint)");
    let tls_dir = root.join("tls");
    let seed = Seed::demo();
    let mock = kvmount_mock_vault::start(MockVaultConfig {
        listen: "127.0.0.1:0".parse()?,
        seed,
        tls_dir: tls_dir.clone(),
        dns_suffix: "vault.localhost".into(),
    })
    .await
    .context("starting the mock vault")?;
    println!("    Key Vault  {}  (served at {})", mock.vault_url("demo"), mock.base_url());
    println!("    Entra ID   {}/{}/oauth2/v2.0/token", mock.base_url(), mock.tenant_id());

    step(2, "start the provider API on a Unix socket (what the upstream driver calls)");
    let connector = Connector::new(ConnectorConfig {
        keyvault_dns_suffix: mock.dns_suffix().to_owned(),
        authority_host: url::Url::parse(&mock.base_url())?,
        extra_roots_pem: std::fs::read(mock.ca_path())?,
        resolve: vec![ResolveRule {
            host: mock.dns_suffix().to_owned(),
            wildcard: true,
            addr: mock.addr(),
        }],
        ..ConnectorConfig::default()
    })?;
    let socket_path = root.join("providers/kvmount.sock");
    let socket = BoundSocket::bind(&socket_path)?;
    let mode = std::fs::metadata(&socket_path)?.permissions().mode() & 0o777;
    println!("    {} (mode {mode:04o})", socket_path.display());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_provider(
        socket,
        ProviderService::new(Mounter::new(connector.clone(), Duration::from_secs(30))),
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = unix_channel(&socket_path).await?;
    let mut client = CsiDriverProviderClient::new(channel);
    let version = client
        .version(VersionRequest {
            version: "v1alpha1".into(),
        })
        .await?
        .into_inner();
    println!(
        "    Version: runtime {} {}",
        version.runtime_name, version.runtime_version
    );

    let pod_a = Pod::new(root, "pod-a");
    let pod_b = Pod::new(root, "pod-b");
    let outcome = async {
        step(3, "pod A (namespace team-a, service account app) mounts class app-secrets");
        publish(&mut client, &mock, &tls_dir, &pod_a).await?;
        show_stats(&mock, "after pod A");

        step(4, "pod B on the same node mounts the same class");
        publish(&mut client, &mock, &tls_dir, &pod_b).await?;
        show_stats(&mock, "after pod B");
        println!("    (this release fetches per Mount; the shared node cache comes with the node plugin)");

        step(5, "rotate db-password through the Key Vault API");
        let new_version = rotate(&connector, &mock, "db-password", "rotated-value").await?;
        println!("    db-password now has version {new_version}");

        step(6, "the driver's rotation calls Mount again for each pod; files switch atomically");
        publish(&mut client, &mock, &tls_dir, &pod_a).await?;
        publish(&mut client, &mock, &tls_dir, &pod_b).await?;
        for pod in [&pod_a, &pod_b] {
            let value = std::fs::read_to_string(pod.target.join("db-password"))?;
            if value != "rotated-value" {
                bail!("{}: db-password was not updated", pod.name);
            }
            println!("    {}: db-password = {value:?}", pod.name);
        }

        step(7, "pod A leaves: its volume is unmounted and removed");
        unpublish(&pod_a)?;
        println!("    pod B still reads: db-password = {:?}", std::fs::read_to_string(pod_b.target.join("db-password"))?);

        step(8, "pod B leaves: the node holds nothing");
        unpublish(&pod_b)?;
        let left = mounts_under(root);
        let dirs: Vec<_> = [&pod_a, &pod_b].iter().filter(|p| p.target.exists()).map(|p| p.target.clone()).collect();
        println!("    mounts left under the work directory: {}", left.len());
        println!("    volume directories left: {}", dirs.len());
        if !left.is_empty() || !dirs.is_empty() {
            bail!("something was left behind: mounts {left:?}, directories {dirs:?}");
        }
        show_stats(&mock, "in total");
        anyhow::Ok(())
    }
    .await;

    // Teardown even when a step failed: unmount volumes, stop the server, stop the vault.
    for pod in [&pod_a, &pod_b] {
        let _ = kvmount_volume::teardown(&pod.target);
    }
    let _ = stop_tx.send(());
    drop(client);
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "provider server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "provider server task failed"),
        Err(_) => tracing::warn!("provider server did not stop within 10 s"),
    }
    mock.shutdown().await;
    outcome?;
    println!("\ndone: every volume unmounted, the socket removed, the work directory removed next.");
    Ok(())
}

/// What the upstream driver does for a pod: tmpfs at the target, Mount, write the files.
async fn publish(
    client: &mut CsiDriverProviderClient<tonic::transport::Channel>,
    mock: &MockVault,
    tls_dir: &Path,
    pod: &Pod,
) -> anyhow::Result<()> {
    if !pod.target.exists() {
        std::fs::create_dir_all(&pod.target)?;
        kvmount_volume::mount_tmpfs(
            &pod.target,
            &TmpfsOptions {
                size_bytes: 1 << 20,
                mode: 0o750,
                uid: None,
                gid: None,
            },
        )?;
        println!("    {}: tmpfs mounted at {}", pod.name, pod.target.display());
    }
    let token = SecretString::new(kvmount_mock_vault::mint_service_account_token(
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
    )?);
    let tokens = serde_json::json!({
        WORKLOAD_IDENTITY_AUDIENCE: {"token": token.expose(), "expirationTimestamp": "2099-01-01T00:00:00Z"}
    });
    let client_id = mock
        .client_id("app-a")
        .context("the demo seed has identity app-a")?
        .to_owned();
    let attributes: HashMap<&str, String> = HashMap::from([
        ("keyvaultName", "demo".to_owned()),
        ("tenantID", mock.tenant_id().to_owned()),
        ("clientID", client_id),
        ("objects", DEMO_OBJECTS.to_owned()),
        ("secretProviderClass", "app-secrets".to_owned()),
        ("csi.storage.k8s.io/pod.name", pod.name.to_owned()),
        ("csi.storage.k8s.io/pod.namespace", "team-a".to_owned()),
        ("csi.storage.k8s.io/pod.uid", pod.uid.clone()),
        ("csi.storage.k8s.io/serviceAccount.name", "app".to_owned()),
        ("csi.storage.k8s.io/ephemeral", "true".to_owned()),
        (TOKENS_ATTRIBUTE, tokens.to_string()),
    ]);
    let request = MountRequest {
        attributes: serde_json::to_string(&attributes)?,
        secrets: "{}".into(),
        target_path: pod.target.display().to_string(),
        permission: "420".into(),
        current_object_version: vec![],
    };
    drop(attributes);
    let response = client.mount(request).await?.into_inner();
    let writer = AtomicWriter::open(&pod.target)?;
    let specs: Vec<FileSpec<'_>> = response
        .files
        .iter()
        .map(|f| FileSpec {
            path: &f.path,
            mode: f.mode as u32,
            contents: &f.contents,
        })
        .collect();
    let outcome = writer.write(&specs, &Ownership::default())?;
    let versions: Vec<String> = response
        .object_version
        .iter()
        .map(|v| format!("{}@{}", v.id, &v.version[..v.version.len().min(8)]))
        .collect();
    println!(
        "    {}: Mount returned {} files ({}); {}",
        pod.name,
        response.files.len(),
        versions.join(", "),
        if outcome.changed { "written atomically (..data switched)" } else { "unchanged, nothing rewritten" }
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

fn unpublish(pod: &Pod) -> anyhow::Result<()> {
    kvmount_volume::teardown(&pod.target)?;
    println!(
        "    {}: unmounted; {} exists: {}",
        pod.name,
        pod.target.display(),
        pod.target.exists()
    );
    Ok(())
}

/// Sets a new version of `name` with the official SDK, as app-a (which may write in the demo seed).
async fn rotate(connector: &Connector, mock: &MockVault, name: &str, value: &str) -> anyhow::Result<String> {
    let client_id = mock.client_id("app-a").context("demo identity app-a")?.to_owned();
    let secret = mock
        .client_secret("app-a")
        .context("demo identity app-a has a client secret")?;
    let auth = Auth::ServicePrincipal {
        client_id,
        client_secret: SecretString::new(secret.to_owned()),
    };
    let credential = connector.credential(mock.tenant_id(), &auth)?;
    let client = connector.secret_client("demo", Arc::clone(&credential))?;
    let parameters = SetSecretParameters {
        value: Some(value.to_owned()),
        ..Default::default()
    };
    let body: RequestContent<SetSecretParameters> = parameters.try_into()?;
    let secret = client.set_secret(name, body, None).await?.into_model()?;
    let id = secret.id.unwrap_or_default();
    Ok(id.rsplit('/').next().unwrap_or_default().to_owned())
}

fn show_stats(mock: &MockVault, when: &str) {
    let stats = mock.stats();
    let gets = stats.count(Some("demo"), Some("secret.get"), None, Some(200));
    let tokens = stats.count(None, Some("token"), None, Some(200));
    let challenges = stats.count(Some("demo"), None, None, Some(401));
    println!("    Key Vault requests {when}: {gets} secret GETs, {tokens} token requests, {challenges} auth challenges");
}
