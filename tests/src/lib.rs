//! Helpers for kvmount's multi-process integration tests: a mock vault in the test process,
//! `kvmount-provider serve` as a real child process on a real Unix socket, and builders for
//! driver-shaped requests. Every guard cleans up on drop, also when a test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmount_mock_vault::{MockVault, MockVaultConfig, Seed, ServiceAccountTokenRequest};
use kvmount_proto::provider::MountRequest;
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use tonic::transport::Channel;

/// Audience of workload-identity tokens.
pub const WI_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Path of a workspace binary (built by `tests/run.sh` before `cargo test`).
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!(
        "KVMOUNT_{}_BIN",
        name.replace('-', "_").to_uppercase()
    )) {
        return PathBuf::from(path);
    }
    // target/debug/deps/<test-binary> -> target/debug/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --workspace --bins, as tests/run.sh does)",
        bin.display()
    );
    bin
}

/// A mock vault running in the test process, with its TLS directory.
pub struct Vault {
    /// The running mock.
    pub mock: MockVault,
    /// Holds the TLS dir (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Vault {
    /// Starts the mock with `seed` (the demo seed when `None`).
    pub async fn start(seed: Option<Seed>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-test-vault.")
            .tempdir()
            .expect("tempdir");
        let mut config = MockVaultConfig::new(dir.path().join("tls"));
        if let Some(seed) = seed {
            config.seed = seed;
        }
        let mock = kvmount_mock_vault::start(config)
            .await
            .expect("mock vault starts");
        Self { mock, dir }
    }

    /// The TLS dir (CA and issuer keys).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// A workload-identity token for `namespace`/`service_account`, signed by the dev issuer.
    pub fn sa_token(&self, namespace: &str, service_account: &str) -> String {
        kvmount_mock_vault::mint_service_account_token(
            &self.tls_dir(),
            &ServiceAccountTokenRequest::new(namespace, service_account),
        )
        .expect("mint token")
    }

    /// The flags that point `kvmount-provider serve` at this mock.
    pub fn provider_flags(&self) -> Vec<String> {
        vec![
            "--keyvault-dns-suffix".into(),
            self.mock.dns_suffix().into(),
            "--authority-host".into(),
            self.mock.base_url(),
            "--ca-file".into(),
            self.mock.ca_path().display().to_string(),
            "--resolve".into(),
            format!("*.{}={}", self.mock.dns_suffix(), self.mock.addr()),
        ]
    }
}

impl Vault {
    /// A connector that reaches this mock: its CA trusted, its vault hosts resolved to it.
    pub fn connector(&self) -> kvmount_vault::Connector {
        kvmount_vault::Connector::new(kvmount_vault::ConnectorConfig {
            keyvault_dns_suffix: self.mock.dns_suffix().into(),
            authority_host: url::Url::parse(&self.mock.base_url()).expect("url"),
            extra_roots_pem: std::fs::read(self.mock.ca_path()).expect("ca"),
            resolve: vec![
                kvmount_vault::ResolveRule::parse(&format!(
                    "*.{}={}",
                    self.mock.dns_suffix(),
                    self.mock.addr()
                ))
                .expect("rule"),
            ],
            ..Default::default()
        })
        .expect("connector")
    }

    /// Sets a new current version of secret `name` in `vault_name` through the official SDK,
    /// as the service principal `client_id` / `client_secret` (which needs `set` access).
    pub async fn set_secret(
        &self,
        vault_name: &str,
        client_id: &str,
        client_secret: &str,
        name: &str,
        value: &str,
    ) {
        let connector = self.connector();
        let credential = connector
            .credential(
                self.mock.tenant_id(),
                &kvmount_vault::Auth::ServicePrincipal {
                    client_id: client_id.into(),
                    client_secret: kvmount_vault::SecretString::new(client_secret.into()),
                },
            )
            .expect("credential");
        let client = connector
            .secret_client(vault_name, credential)
            .expect("client");
        let body: azure_core::http::RequestContent<
            azure_security_keyvault_secrets::models::SetSecretParameters,
        > = azure_security_keyvault_secrets::models::SetSecretParameters {
            value: Some(value.into()),
            ..Default::default()
        }
        .try_into()
        .expect("body");
        client
            .secrets()
            .set_secret(name, body, None)
            .await
            .expect("set secret");
    }
}

/// `kvmount-provider serve` as a child process; killed and its socket dir removed on drop.
pub struct Provider {
    child: Option<Child>,
    /// The provider socket.
    pub socket: PathBuf,
    dir: tempfile::TempDir,
    output: Arc<Mutex<String>>,
}

impl Provider {
    /// Starts `serve` with `flags` plus `--provider-socket` in a fresh temp dir, and waits
    /// until it serves.
    pub fn start(flags: &[String]) -> Self {
        Self::start_at(None, flags)
    }

    /// Like [`Provider::start`], with the socket at `socket` when given.
    pub fn start_at(socket: Option<PathBuf>, flags: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-test-provider.")
            .tempdir()
            .expect("tempdir");
        let socket = socket.unwrap_or_else(|| dir.path().join("providers/kvmount.sock"));
        let mut child = Command::new(workspace_bin("kvmount-provider"))
            .arg("serve")
            .arg("--provider-socket")
            .arg(&socket)
            .args(flags)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvmount-provider serve");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().expect("output lock");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let mut provider = Self {
            child: Some(child),
            socket,
            dir,
            output,
        };
        provider.wait_for_socket();
        provider
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() || !self.output().contains("serving provider API") {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("kvmount-provider exited with {status}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "socket never appeared:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Give the reader threads a moment to drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A gRPC client on the socket.
    pub async fn client(&self) -> CsiDriverProviderClient<Channel> {
        let channel = kvmount_provider::server::unix_channel(&self.socket)
            .await
            .expect("connect to the provider socket");
        CsiDriverProviderClient::new(channel)
    }

    /// The socket's directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Builds a MountRequest the way the upstream driver does.
#[derive(Clone)]
pub struct DriverRequest {
    /// The attribute map (class parameters, volume attributes, pod info).
    pub attributes: HashMap<String, String>,
    /// The nodePublishSecretRef data.
    pub secrets: HashMap<String, String>,
    /// The permission field.
    pub permission: String,
    /// Target path.
    pub target_path: String,
}

impl DriverRequest {
    /// A class for vault `vault` with `objects` YAML, for pod `pod` in `namespace`.
    pub fn new(vault: &str, tenant: &str, objects: &str, namespace: &str, pod: &str) -> Self {
        let attributes = HashMap::from([
            ("keyvaultName".to_owned(), vault.to_owned()),
            ("tenantID".to_owned(), tenant.to_owned()),
            ("objects".to_owned(), objects.to_owned()),
            ("secretProviderClass".to_owned(), "app-secrets".to_owned()),
            ("csi.storage.k8s.io/pod.name".to_owned(), pod.to_owned()),
            (
                "csi.storage.k8s.io/pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
            (
                "csi.storage.k8s.io/pod.uid".to_owned(),
                format!("uid-{pod}"),
            ),
            (
                "csi.storage.k8s.io/serviceAccount.name".to_owned(),
                "app".to_owned(),
            ),
            ("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned()),
        ]);
        Self {
            attributes,
            secrets: HashMap::new(),
            permission: "420".into(),
            target_path: format!(
                "/var/lib/kubelet/pods/uid-{pod}/volumes/kubernetes.io~csi/secrets/mount"
            ),
        }
    }

    /// Workload identity: `clientID` plus the kubelet token attribute.
    pub fn workload_identity(mut self, client_id: &str, token: &str) -> Self {
        self.attributes.insert("clientID".into(), client_id.into());
        let tokens = serde_json::json!({WI_AUDIENCE: {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}});
        self.attributes.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".into(),
            tokens.to_string(),
        );
        self
    }

    /// Service principal through nodePublishSecretRef.
    pub fn service_principal(mut self, client_id: &str, secret: &str) -> Self {
        self.secrets.insert("clientid".into(), client_id.into());
        self.secrets.insert("clientsecret".into(), secret.into());
        self
    }

    /// Sets one attribute.
    pub fn attr(mut self, key: &str, value: &str) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// The wire message.
    pub fn build(&self) -> MountRequest {
        MountRequest {
            attributes: serde_json::to_string(&self.attributes).expect("json"),
            secrets: serde_json::to_string(&self.secrets).expect("json"),
            target_path: self.target_path.clone(),
            permission: self.permission.clone(),
            current_object_version: vec![],
        }
    }
}

/// One object's YAML.
pub fn object(name: &str, extra: &str) -> String {
    let mut s = format!("objectName: {name}\nobjectType: secret\n");
    s.push_str(extra);
    s
}

/// The `objects` parameter from per-object YAML documents.
pub fn objects(docs: &[String]) -> String {
    let mut s = String::from("array:\n");
    for doc in docs {
        s.push_str("  - |\n");
        for line in doc.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

/// Mount points under `root`, from /proc/self/mountinfo.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    kvmount_provider::dev::mounts_under(root)
}

/// `kvmount-provider serve` with both sockets (CSI node plugin + provider API) as a child
/// process, with its state dir on tmpfs (/dev/shm). Killed, and its dirs removed, on drop.
pub struct NodeDaemon {
    child: Option<Child>,
    /// The CSI socket.
    pub csi_socket: PathBuf,
    /// The provider socket.
    pub provider_socket: PathBuf,
    /// The state dir (on tmpfs).
    pub state_dir: PathBuf,
    /// Where test pods' volumes live (a stand-in for /var/lib/kubelet/pods).
    pub pods_dir: PathBuf,
    binary: PathBuf,
    flags: Vec<String>,
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    output: Arc<Mutex<String>>,
}

impl NodeDaemon {
    /// Starts the daemon with `flags` (e.g. [`Vault::provider_flags`]).
    pub fn start(flags: &[String]) -> Self {
        Self::start_binary(workspace_bin("kvmount-provider"), flags)
    }

    /// Starts `binary` (another build of the daemon, for side-by-side benchmarks) with `flags`.
    pub fn start_binary(binary: PathBuf, flags: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-test-node.")
            .tempdir()
            .expect("tempdir");
        // On tmpfs, as the daemon requires; tests/run.sh gives each run its own directory.
        let shm = std::env::var_os("KVMOUNT_TEST_SHM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/dev/shm"));
        let state = tempfile::Builder::new()
            .prefix("kvmount-test-state.")
            .tempdir_in(&shm)
            .expect("state dir on tmpfs");
        let mut daemon = Self {
            child: None,
            csi_socket: dir.path().join("plugins/csi.sock"),
            provider_socket: dir.path().join("providers/kvmount.sock"),
            state_dir: state.path().to_owned(),
            pods_dir: dir.path().join("pods"),
            binary,
            flags: flags.to_vec(),
            dir,
            state,
            output: Arc::new(Mutex::new(String::new())),
        };
        std::fs::create_dir_all(&daemon.pods_dir).expect("pods dir");
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .arg("--provider-socket")
            .arg(&self.provider_socket)
            .arg("--csi-socket")
            .arg(&self.csi_socket)
            .arg("--node-id")
            .arg("test-node")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.flags)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvmount-provider serve");
        let mark = self.output().len();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&self.output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().expect("output lock");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.output()[mark..].contains("ready") {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("kvmount-provider exited with {status}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "daemon never became ready:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, then start again with the same sockets and state dir.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// A channel to the CSI socket.
    pub async fn csi_channel(&self) -> Channel {
        kvmount_provider::server::unix_channel(&self.csi_socket)
            .await
            .expect("connect to the CSI socket")
    }

    /// A pod volume target (its parent exists, as kubelet guarantees).
    pub fn target(&self, pod_uid: &str) -> PathBuf {
        let parent = self
            .pods_dir
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi/secrets");
        std::fs::create_dir_all(&parent).expect("target parent");
        parent.join("mount")
    }

    /// The test's temp dir (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The state tmp dir handle (removed on drop).
    pub fn state(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for NodeDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for mount in mounts_under(self.dir.path()) {
            let _ = kvmount_volume::teardown(&mount);
        }
    }
}

/// A NodePublishVolumeRequest the way kubelet sends it for a pod's inline CSI volume.
pub fn publish_request(
    target: &Path,
    volume_id: &str,
    context: &HashMap<String, String>,
) -> kvmount_proto::csi::NodePublishVolumeRequest {
    use kvmount_proto::csi::volume_capability::access_mode::Mode;
    use kvmount_proto::csi::volume_capability::{AccessMode, AccessType, MountVolume};
    let mut request = kvmount_proto::csi::NodePublishVolumeRequest::default();
    request.volume_id = volume_id.into();
    request.target_path = target.display().to_string();
    request.readonly = true;
    request.volume_capability = Some(kvmount_proto::csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeReaderOnly as i32,
        }),
    });
    request.volume_context = context.clone();
    request
}

/// Counts occurrences of `needle` in the readable memory of process `pid`, read from another
/// process through /proc/<pid>/maps and /proc/<pid>/mem (needs root for a non-dumpable process).
pub fn scan_process_memory(pid: u32, needle: &[u8]) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut hits = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r')
            || line.ends_with("[vvar]")
            || line.ends_with("[vsyscall]")
            || line.ends_with("[vvar_vclock]")
        {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() {
            continue;
        }
        let mut read = 0;
        while read < buf.len() {
            match mem.read(&mut buf[read..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        hits += buf[..read]
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count();
    }
    hits
}

/// Records one suite's counts for the summary screen `tests/run.sh` prints at the end: writes
/// `$KVMOUNT_SUMMARY_DIR/<suite>.json` when the variable is set (run.sh sets it), and always
/// prints the counts (visible with `--nocapture`).
pub fn record_summary(suite: &str, counts: &[(&str, u64)]) {
    let map: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let text = serde_json::Value::Object(map).to_string();
    println!("summary {suite}: {text}");
    if let Some(dir) = std::env::var_os("KVMOUNT_SUMMARY_DIR") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{suite}.json")), text);
    }
}

/// Every path below `root` (not following links), sorted: a before/after snapshot that shows
/// whether anything was created or removed.
pub fn tree(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.clone());
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

/// Expands the hostile-input corpus's compact repeats, `@@<count>*<text>@@`
/// (`tests/corpus/generate.py` writes them; `security_inputs` and `fuzz_smoke` read them).
pub fn expand_repeats(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("@@") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let parsed = after.split_once('*').and_then(|(count, tail)| {
            let count: usize = count.parse().ok()?;
            let (text, tail) = tail.split_once("@@")?;
            Some((count, text, tail))
        });
        match parsed {
            Some((count, text, tail)) => {
                out.push_str(&text.repeat(count));
                rest = tail;
            }
            None => {
                out.push_str("@@");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
