//! Node managed identity end to end, through the real `ManagedIdentityCredential` code path:
//! the test creates a network namespace with 169.254.169.254 on its loopback, runs the mock
//! vault (TLS on 127.0.0.1:8443, IMDS on 169.254.169.254:80) and `kvmount-provider serve`
//! inside it, and mounts over the provider's Unix socket from outside. Nothing leaves the
//! namespace; it is deleted (processes first) when the test ends, also when it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_tests::{DriverRequest, object, objects, workspace_bin};
use tonic::Code;

const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const NODE: &str = "00000000-0000-0000-0000-0000000000c1";
const UAMI: &str = "00000000-0000-0000-0000-0000000000c2";
const OTHER_UAMI: &str = "00000000-0000-0000-0000-0000000000c3";

const SEED: &str = r#"
tenantId: 00000000-0000-0000-0000-000000000001
identities:
  - { name: node, clientId: 00000000-0000-0000-0000-0000000000c1, managedIdentity: system }
  - { name: uami, clientId: 00000000-0000-0000-0000-0000000000c2, managedIdentity: user }
  - { name: other, clientId: 00000000-0000-0000-0000-0000000000c3, managedIdentity: user }
vaults:
  - name: kvname
    access:
      - { identity: node, objects: ["secret/*"] }
      - { identity: uami, objects: ["secret/*", "key/*"] }
    secrets:
      - { name: secret1, versions: ["old-value", "node-secret-value"] }
    keys:
      - { name: key1, versions: [{ kty: EC, curve: P-256 }] }
"#;

/// A network namespace; deleted on drop.
struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    fn new() -> Self {
        let name = format!(
            "kvm-{}-{:08x}",
            std::process::id(),
            rand_u32() // unique per test in this process
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        ns
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_le_bytes(b)
}

/// A child process whose output is collected; killed on drop.
struct Proc {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .env_remove("IDENTITY_ENDPOINT")
            .env_remove("MSI_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let output = Arc::new(Mutex::new(String::new()));
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for stream in streams {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().expect("lock");
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Self { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    fn wait_for(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output().contains(what) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited with {status} before {what:?}:\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "no {what:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mock and daemon inside a fresh namespace. Field order is drop order: processes, then the
/// namespace, then the temp dir.
struct Node {
    daemon: Proc,
    _mock: Proc,
    _ns: NetNs,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-test-mi.")
            .tempdir()
            .expect("tempdir");
        let ns = NetNs::new();
        let seed = dir.path().join("seed.yaml");
        std::fs::write(&seed, SEED).expect("seed");
        let bin = workspace_bin("kvmount-provider");
        let tls = dir.path().join("tls");
        let mut cmd = ns.command(&bin);
        cmd.arg("mock-vault")
            .arg("--seed")
            .arg(&seed)
            .args(["--listen", "127.0.0.1:8443"])
            .arg("--tls-dir")
            .arg(&tls)
            .args(["--imds-listen", "169.254.169.254:80"]);
        let mut mock = Proc::spawn(cmd);
        mock.wait_for("kvmount mock vault ready");
        assert!(mock.output().contains("imds=http://169.254.169.254:80"));
        let socket = dir.path().join("kvmount.sock");
        let mut cmd = ns.command(&bin);
        cmd.arg("serve")
            .arg("--provider-socket")
            .arg(&socket)
            .args(["--keyvault-dns-suffix", "vault.localhost"])
            .args(["--authority-host", "https://127.0.0.1:8443"])
            .arg("--ca-file")
            .arg(tls.join("ca.pem"))
            .args(["--resolve", "*.vault.localhost=127.0.0.1:8443"])
            .args(["--log-level", "trace"]);
        let mut daemon = Proc::spawn(cmd);
        daemon.wait_for("serving provider API");
        Self {
            daemon,
            _mock: mock,
            _ns: ns,
            socket,
            _dir: dir,
        }
    }

    async fn client(&self) -> CsiDriverProviderClient<tonic::transport::Channel> {
        let channel = kvmount_provider::server::unix_channel(&self.socket)
            .await
            .expect("connect");
        CsiDriverProviderClient::new(channel)
    }
}

fn request(objects_yaml: &str) -> DriverRequest {
    DriverRequest::new("kvname", TENANT, objects_yaml, "default", "pod-mi")
}

fn key1() -> String {
    "objectName: key1\nobjectType: key\nobjectVersion: \"\"\n".to_owned()
}

#[tokio::test]
async fn managed_identity_through_imds_in_a_network_namespace() {
    let node = Node::start();
    let mut client = node.client().await;

    // The Azure provider's documented system-assigned example (usePodIdentity "false",
    // useVMManagedIdentity "true", cloudName "").
    let system = request(&objects(&[object("secret1", "objectVersion: \"\"\n")]))
        .attr("usePodIdentity", "false")
        .attr("useVMManagedIdentity", "true")
        .attr("cloudName", "");
    let resp = client
        .mount(system.build())
        .await
        .expect("system-assigned mount")
        .into_inner();
    assert_eq!(resp.files.len(), 1);
    assert_eq!(resp.files[0].path, "secret1");
    assert_eq!(resp.files[0].contents, b"node-secret-value");
    assert_eq!(resp.object_version[0].id, "secret/secret1");

    // The system-assigned identity may not read keys.
    let err = client
        .mount(
            request(&objects(&[key1()]))
                .attr("useVMManagedIdentity", "true")
                .build(),
        )
        .await
        .expect_err("no key permission");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The documented user-assigned example: secret1 and key1.
    let user = request(&objects(&[
        object("secret1", "objectVersion: \"\"\n"),
        key1(),
    ]))
    .attr("usePodIdentity", "false")
    .attr("useVMManagedIdentity", "true")
    .attr("userAssignedIdentityID", UAMI)
    .attr("cloudName", "");
    let resp = client
        .mount(user.build())
        .await
        .expect("user-assigned mount")
        .into_inner();
    let key = resp
        .files
        .iter()
        .find(|f| f.path == "key1")
        .expect("key1 file");
    assert!(key.contents.starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(resp.object_version.len(), 2);

    // A user-assigned identity with no vault access, and one IMDS does not know.
    let err = client
        .mount(
            request(&objects(&[object("secret1", "")]))
                .attr("useVMManagedIdentity", "true")
                .attr("userAssignedIdentityID", OTHER_UAMI)
                .build(),
        )
        .await
        .expect_err("no access");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = client
        .mount(
            request(&objects(&[object("secret1", "")]))
                .attr("useVMManagedIdentity", "true")
                .attr(
                    "userAssignedIdentityID",
                    "00000000-0000-0000-0000-0000000000ff",
                )
                .build(),
        )
        .await
        .expect_err("unknown identity");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Two modes at once are refused before anything is fetched, naming both.
    let err = client
        .mount(
            request(&objects(&[object("secret1", "")]))
                .attr("useVMManagedIdentity", "true")
                .service_principal(NODE, "x-secret")
                .build(),
        )
        .await
        .expect_err("two modes");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("useVMManagedIdentity") && err.message().contains("clientsecret"),
        "{}",
        err.message()
    );

    // Tokens never reach the logs, even at trace level.
    let log = node.daemon.output();
    assert!(!log.contains("eyJ"), "a JWT in the daemon log");
    assert!(!log.contains("node-secret-value"));
}
