//! The second red-team round against the node daemon (issue 17): each hole the outside attack
//! run found, reproduced as the attack was made and shown closed, against the real daemon on
//! its real sockets and the mock vault over TLS. Counted in the run summary (`red_team`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmount_mock_vault::{Seed, ServiceAccountTokenRequest, mint_service_account_token_at};
use kvmount_proto::provider::VersionRequest;
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_tests::{DriverRequest, NodeDaemon, Vault, object, objects, record_summary};
use tonic::Code;
use tonic::transport::Channel;

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
const APP_A_SECRET: &str = "app-a-password";

/// The attacker's own Entra ID: the victim's tenant and client ID, with a client secret the
/// attacker chose. It signs tokens with its own key, as any Entra endpoint the node trusts
/// would.
const ATTACKER_SEED: &str = "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: fake-a\n    clientId: 00000000-0000-0000-0000-00000000000a\n    clientSecret: attacker-chosen\nvaults:\n  - name: decoy\n";

/// kubelet's NodePublishVolume for `pod` (also the volume id), the class inline in the volume
/// context (no SecretProviderClass to look up), as the service principal app-a.
fn csi_publish(
    vault: &Vault,
    daemon: &NodeDaemon,
    class: &str,
    pod: &str,
) -> kvmount_proto::csi::NodePublishVolumeRequest {
    let mut context =
        DriverRequest::new("demo", vault.mock.tenant_id(), class, "team-a", pod).attributes;
    context.remove("secretProviderClass");
    let mut publish = kvmount_tests::publish_request(&daemon.target(pod), pod, &context);
    publish.secrets = HashMap::from([
        ("clientid".into(), APP_A.into()),
        ("clientsecret".into(), APP_A_SECRET.into()),
    ]);
    publish
}

/// Calls `call` every 500 ms until it is refused; the refusal, or a failed test after `limit`.
async fn refused_within<T, F>(limit: Duration, mut call: impl FnMut() -> F) -> tonic::Status
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let refused = async {
        loop {
            match call().await {
                Err(status) => return status,
                Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    };
    tokio::time::timeout(limit, refused)
        .await
        .unwrap_or_else(|_| panic!("not refused within {limit:?}"))
}

/// A directory for cloud environment files, and the daemon flags that allow it.
struct Clouds {
    dir: tempfile::TempDir,
}

impl Clouds {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("kvmount-clouds.")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an environment file for `authority` and `suffix`; returns its path.
    fn file(&self, name: &str, authority: &str, suffix: &str) -> PathBuf {
        let path = self.path().join(name);
        let json = serde_json::json!({
            "name": "AzureStackCloud",
            "activeDirectoryEndpoint": format!("{authority}/"),
            "keyVaultDNSSuffix": suffix,
        });
        std::fs::write(&path, json.to_string()).expect("env file");
        path
    }

    fn flag(&self) -> [String; 2] {
        ["--cloud-env-dir".into(), self.path().display().to_string()]
    }
}

async fn provider_client(daemon: &NodeDaemon) -> CsiDriverProviderClient<Channel> {
    CsiDriverProviderClient::new(
        kvmount_provider::server::unix_channel(&daemon.provider_socket)
            .await
            .expect("provider socket"),
    )
}

fn in_cloud(request: DriverRequest, env_file: &Path) -> DriverRequest {
    request
        .attr("cloudName", "AzureStackCloud")
        .attr("cloudEnvFileName", &env_file.display().to_string())
}

/// High 1: a class whose cloud file pairs the victim's Key Vault suffix with the attacker's own
/// Entra endpoint, plus the victim's client ID and a secret the attacker chose, got the
/// victim's cached secrets: the cache key held the suffix only. Now every key holds the
/// authority too, so the attacker's request reads Key Vault itself, with a token Key Vault
/// does not take.
#[tokio::test]
async fn another_authority_for_the_same_vault_gets_nothing_cached() {
    let victim = Vault::start(None).await;
    let attacker = Vault::start(Some(Seed::from_yaml(ATTACKER_SEED).expect("seed"))).await;
    let clouds = Clouds::new();
    let suffix = victim.mock.dns_suffix().to_owned();
    let own = clouds.file("victim.json", &victim.mock.base_url(), &suffix);
    let forged = clouds.file("forged.json", &attacker.mock.base_url(), &suffix);
    // The node trusts both TLS roots (any certificate the node trusts will do).
    let bundle = clouds.path().join("roots.pem");
    let mut roots = std::fs::read(victim.mock.ca_path()).expect("ca");
    roots.extend(std::fs::read(attacker.mock.ca_path()).expect("ca"));
    std::fs::write(&bundle, roots).expect("bundle");
    let mut flags = victim.provider_flags();
    let ca = flags
        .iter()
        .position(|f| f == "--ca-file")
        .expect("ca flag");
    flags[ca + 1] = bundle.display().to_string();
    flags.extend(clouds.flag());
    let daemon = NodeDaemon::start(&flags);
    let mut client = provider_client(&daemon).await;

    let class = objects(&[object("db-password", "")]);
    let request =
        |pod: &str| DriverRequest::new("demo", victim.mock.tenant_id(), &class, "team-a", pod);
    let legit = in_cloud(
        request("victim").service_principal(APP_A, APP_A_SECRET),
        &own,
    );
    let response = client
        .mount(legit.build())
        .await
        .expect("the victim mounts")
        .into_inner();
    assert_eq!(response.files[0].contents, b"current-value");

    let forged_request = in_cloud(
        request("attacker").service_principal(APP_A, "attacker-chosen"),
        &forged,
    );
    let refused = client
        .mount(forged_request.build())
        .await
        .expect_err("a proof at another authority opens no entry");
    assert_ne!(refused.code(), Code::Ok);
    assert!(!refused.message().contains("current-value"));
    // The victim's entry and clients are untouched: the victim still mounts.
    client.mount(legit.build()).await.expect("the victim again");
    assert!(!daemon.output().contains("current-value"));
    record_summary("red_team_1", &[("closed", 1)]);
}

/// High 2: `cloudEnvFileName` naming a FIFO or a terminal device blocked the one runtime
/// thread: Probe, Version and every other pod's Mount hung. Now such files are refused at once
/// (opened without blocking, only regular files beneath `--cloud-env-dir`), the read runs off
/// the runtime thread with a deadline, and others are served meanwhile.
#[tokio::test]
async fn a_cloud_file_that_would_block_holds_up_no_one() {
    let vault = Vault::start(None).await;
    let clouds = Clouds::new();
    let fifo = clouds.path().join("cloud.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("fifo");
    let mut flags = vault.provider_flags();
    flags.extend(clouds.flag());
    let daemon = NodeDaemon::start(&flags);
    let class = objects(&[object("db-password", "")]);
    let request = |pod: &str| {
        DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", pod)
            .service_principal(APP_A, APP_A_SECRET)
    };
    let mut blockers = Vec::new();
    for (i, path) in [fifo.as_path(), Path::new("/dev/ptmx")]
        .into_iter()
        .enumerate()
    {
        let mut client = provider_client(&daemon).await;
        let mount = in_cloud(request(&format!("blocker-{i}")), path).build();
        blockers.push(tokio::spawn(async move {
            let started = Instant::now();
            (client.mount(mount).await, started.elapsed())
        }));
    }
    let mut client = provider_client(&daemon).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        client
            .version(VersionRequest {
                version: "v1alpha1".into(),
            })
            .await
            .expect("Version");
        client
            .mount(request("bystander").build())
            .await
            .expect("another pod's Mount");
    })
    .await
    .expect("served while the blockers wait");
    println!("bystander served in {:?}", started.elapsed());
    for blocker in blockers {
        let (result, took) = blocker.await.expect("task");
        let err = result.expect_err("a FIFO or device is no environment file");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("cloudEnvFileName:"),
            "{}",
            err.message()
        );
        assert!(took < Duration::from_secs(5), "answered in {took:?}");
    }
    record_summary("red_team_2", &[("closed", 1)]);
}

/// Low 10: the answer told whether a node path exists, is a directory, is too large or is not
/// JSON. Now one answer for every file that cannot be used, naming the field and the allowed
/// directory only; paths outside `--cloud-env-dir` are never opened.
#[tokio::test]
async fn unusable_cloud_files_all_get_one_answer() {
    let vault = Vault::start(None).await;
    let clouds = Clouds::new();
    std::fs::create_dir(clouds.path().join("a-dir")).expect("dir");
    std::fs::write(clouds.path().join("big.json"), vec![b' '; 70_000]).expect("big");
    std::fs::write(
        clouds.path().join("canary.json"),
        "kvmount-canary-61f0 not json",
    )
    .expect("canary");
    std::os::unix::fs::symlink("/etc/hostname", clouds.path().join("link.json")).expect("link");
    let mut flags = vault.provider_flags();
    flags.extend(clouds.flag());
    let daemon = NodeDaemon::start(&flags);
    let mut client = provider_client(&daemon).await;
    let class = objects(&[object("db-password", "")]);
    let mut answers = Vec::new();
    for path in [
        clouds.path().join("missing.json"),
        clouds.path().join("a-dir"),
        clouds.path().join("big.json"),
        clouds.path().join("canary.json"),
        clouds.path().join("link.json"),
        PathBuf::from("/etc/hostname"),
        PathBuf::from("/etc"),
        PathBuf::from("/nonexistent/x.json"),
    ] {
        let mount = in_cloud(
            DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", "probe")
                .service_principal(APP_A, APP_A_SECRET),
            &path,
        );
        let err = client.mount(mount.build()).await.expect_err("unusable");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", path.display());
        answers.push(err.message().to_owned());
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
    assert!(answers[0].starts_with("cloudEnvFileName:"));
    for leak in ["canary", "hostname", "nonexistent", "a-dir", "big"] {
        assert!(!answers[0].contains(leak), "{}", answers[0]);
    }
    assert!(!daemon.output().contains("kvmount-canary-61f0"));
    record_summary(
        "red_team_10",
        &[("closed", 1), ("answers_compared", answers.len() as u64)],
    );
}

/// Low 8: an 875 KB `certKeyFiles` value came back whole in the gRPC status and a 1 MB log
/// line. Every error now quotes at most a short prefix of any input (and is cut at 1 KiB).
#[tokio::test]
async fn an_oversized_value_is_not_echoed() {
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--log-level".into(), "debug".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut client = provider_client(&daemon).await;
    // The red team's 875 KB value is now over the size of an `objects` parameter; one that
    // fits (200 KB) is refused as not a boolean, quoting a short prefix.
    for (size, field) in [(875_000, "objects:"), (200_000, "objects[0].certKeyFiles:")] {
        let huge = "k".repeat(size);
        let class = objects(&[object(
            "db-password",
            &format!("certKeyFiles: \"{huge}\"\n"),
        )]);
        let mount = DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", "echo")
            .service_principal(APP_A, APP_A_SECRET);
        let err = client.mount(mount.build()).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        let message = err.message();
        assert!(
            message.starts_with(field),
            "{}",
            &message[..200.min(message.len())]
        );
        assert!(message.len() < 1024, "a status of {} bytes", message.len());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let longest = daemon.output().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4096, "a log line of {longest} bytes");
    record_summary("red_team_8", &[("closed", 1)]);
}

/// Low 9: a service-account token kept working on a daemon that had proved it while fresh,
/// until the Entra token from it expired (an hour). A proof now lasts no longer than the
/// token's own `exp`: after it, the token is proved again, and Entra refuses it.
#[tokio::test]
async fn an_expired_service_account_token_is_refused_although_once_proved() {
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut client = provider_client(&daemon).await;
    // Expired 290 s ago: Entra (the mock, like the real one) allows 5 minutes of clock skew,
    // so it still takes the token for 10 s.
    let issued = std::time::SystemTime::now() - Duration::from_secs(3600 + 290);
    let token = mint_service_account_token_at(
        &vault.tls_dir(),
        &ServiceAccountTokenRequest::new("team-a", "app"),
        issued,
    )
    .expect("token");
    let class = objects(&[object("db-password", "")]);
    let mount = DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", "late")
        .workload_identity(APP_A, &token);
    client
        .mount(mount.build())
        .await
        .expect("taken while Entra still takes it");
    let skew_ends = issued + Duration::from_secs(3600 + 300 + 1);
    tokio::time::sleep(
        skew_ends
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let err = client
        .mount(mount.build())
        .await
        .expect_err("an expired token");
    assert_ne!(err.code(), Code::Ok);
    record_summary("red_team_9", &[("closed", 1)]);
}

/// `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

/// A class at every cap: 100 objects, each with objectVersionHistory 2 (200 files), padded to
/// just under 1 MiB of attributes.
fn class_at_the_caps() -> String {
    let docs: Vec<String> = (0..100)
        .map(|i| object(&format!("s-{i:03}"), "objectVersionHistory: 2\n"))
        .collect();
    objects(&docs)
}

/// Medium 4: a 1.2 MB MountRequest with a garbage credential for a new identity drove the
/// daemon to 1.77 GB and blocked it for 6 s. Now objects, files per class, the `objects` size
/// and both sockets' requests are capped, checked before anything is allocated per file and
/// before any call to Entra ID or Key Vault; a request at every cap costs under 16 MiB of peak
/// RSS, and one over a cap makes no call at all.
#[tokio::test]
async fn one_request_costs_bounded_memory_and_over_the_caps_nothing() {
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut client = provider_client(&daemon).await;
    let pid = daemon.pid();
    // Warm the daemon's own paths once (a refused mount), so its first-use allocations do not
    // count against the request.
    let small = objects(&[object("db-password", "")]);
    let _ = client
        .mount(
            DriverRequest::new("demo", vault.mock.tenant_id(), &small, "team-a", "warm")
                .service_principal(APP_A, "garbage")
                .build(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = status_kib(pid, "VmHWM");
    let padding = "p".repeat(950 * 1024);
    let class = class_at_the_caps();
    for round in 0..3 {
        let at_caps = DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", "caps")
            .service_principal(
                &format!("00000000-0000-0000-0000-0000000001{round:02}"),
                "garbage",
            )
            .attr("padding", &padding);
        let request = at_caps.build();
        assert!(request.attributes.len() > 900 * 1024, "near 1 MiB");
        let err = client.mount(request).await.expect_err("garbage credential");
        assert_ne!(err.code(), Code::InvalidArgument, "{}", err.message());
    }
    let grown = status_kib(pid, "VmHWM").saturating_sub(before);
    println!("peak RSS grew {grown} KiB for three requests at every cap");
    assert!(grown < 16 * 1024, "peak RSS grew {grown} KiB");

    // Over a cap: refused naming the field and the limit, and Key Vault and Entra never asked.
    vault.mock.reset_stats();
    let over: Vec<(String, &str)> = vec![
        (
            objects(
                &(0..101)
                    .map(|i| object(&format!("s-{i}"), ""))
                    .collect::<Vec<_>>(),
            ),
            "at most 100 per class",
        ),
        (
            objects(
                &(0..67)
                    .map(|i| object(&format!("s-{i}"), "objectVersionHistory: 3\n"))
                    .collect::<Vec<_>>(),
            ),
            "at most 200 per class",
        ),
        (
            objects(&[object("a", &format!("# {}\n", "x".repeat(300 * 1024)))]),
            "at most 262144",
        ),
    ];
    for (class, limit) in over {
        let mount = DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", "over")
            .service_principal("00000000-0000-0000-0000-0000000002ff", "garbage");
        let err = client.mount(mount.build()).await.expect_err("over a cap");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("objects:") && err.message().contains(limit),
            "{}",
            err.message()
        );
    }
    let mut huge = DriverRequest::new("demo", vault.mock.tenant_id(), &small, "team-a", "huge")
        .service_principal("00000000-0000-0000-0000-0000000002fe", "garbage")
        .build();
    huge.attributes = format!("{{\"padding\":\"{}\"}}", "p".repeat(1100 * 1024));
    let err = client
        .mount(huge)
        .await
        .expect_err("over the request limit");
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert_eq!(
        vault.mock.stats().total,
        0,
        "no call to Entra ID or Key Vault"
    );
    record_summary("red_team_4", &[("closed", 1), ("peak_kib", grown)]);
}

/// Medium 5: an objectAlias nested 2,047 directories deep published, and with the open-file
/// soft limit at 1,024 (common in containers) republish and unpublish then failed with EMFILE
/// forever: the tmpfs stayed mounted and the entry was never released. Now an alias has at
/// most 16 levels, and teardown removes a tree of any depth with two directories open at a
/// time (a volume published before the limit, here made by hand, with the daemon's limit at
/// 256 files).
#[tokio::test]
async fn a_deep_tree_is_refused_and_one_left_from_before_is_torn_down() {
    use kvmount_proto::csi::NodeUnpublishVolumeRequest;
    use kvmount_proto::csi::node_client::NodeClient;
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let publish = |alias: &str, pod: &str| {
        let class = objects(&[object("db-password", &format!("objectAlias: {alias}\n"))]);
        csi_publish(&vault, &daemon, &class, pod)
    };
    let deep = vec!["d"; 2047].join("/");
    let err = node
        .node_publish_volume(publish(&deep, "deep"))
        .await
        .expect_err("too deep");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message()
            .contains("objectAlias: has 2047 path elements; accepted: at most 16"),
        "{}",
        err.message()
    );

    let target = daemon.target("old");
    node.node_publish_volume(publish("db-password", "old"))
        .await
        .expect("publish");
    // What a daemon without the limit wrote: 2,047 levels below the volume.
    // (Built a level at a time: the whole path is longer than PATH_MAX.)
    {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut dir = rustix::fs::open(&target, flags, Mode::empty()).expect("target");
        for _ in 0..2047 {
            rustix::fs::mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).expect("mkdir");
            dir = rustix::fs::openat(&dir, "d", flags, Mode::empty()).expect("open");
        }
        let file = rustix::fs::openat(
            &dir,
            "db-password",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .expect("deep file");
        rustix::io::write(&file, b"current-value").expect("write");
    }
    let limit = rustix::process::Rlimit {
        current: Some(256),
        maximum: Some(4096),
    };
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(daemon.pid() as i32),
        rustix::process::Resource::Nofile,
        limit,
    )
    .expect("lower the daemon's open-file limit");
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "old".into(),
        target_path: target.display().to_string(),
    })
    .await
    .expect("unpublish at any depth");
    assert!(!target.exists(), "the target is gone");
    assert!(
        kvmount_tests::mounts_under(daemon.dir()).is_empty(),
        "no mount left"
    );
    record_summary("red_team_5", &[("closed", 1)]);
}

/// High 3: a process in the pod holding `flock(LOCK_EX)` on its read-only volume (no write
/// access needed) made the next rewrite block in the writer's directory lock, and then every
/// RPC. The writer takes no lock a pod can reach any more: republish, Probe and other pods'
/// publishes go on while the pod holds its locks, and unpublish too.
#[tokio::test]
async fn a_pod_holding_locks_on_its_volume_blocks_nothing() {
    use kvmount_proto::csi::identity_client::IdentityClient;
    use kvmount_proto::csi::node_client::NodeClient;
    use kvmount_proto::csi::{NodeUnpublishVolumeRequest, ProbeRequest};
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let mut identity = IdentityClient::new(daemon.csi_channel().await);
    let publish = |pod: &str| {
        let class = objects(&[object("db-password", ""), object("api-key", "")]);
        csi_publish(&vault, &daemon, &class, pod)
    };
    node.node_publish_volume(publish("locker"))
        .await
        .expect("publish");
    let target = daemon.target("locker");
    // The pod's locks: the volume directory, its ..data, and a file.
    let mut held = Vec::new();
    for path in [
        target.clone(),
        target.join("..data"),
        target.join("db-password"),
    ] {
        let fd =
            rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).expect("open");
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).expect("the pod's lock");
        held.push(fd);
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async {
        // kubelet's periodic republish of the locked volume, a Probe, another pod's publish,
        // then the locked volume's unpublish.
        node.node_publish_volume(publish("locker"))
            .await
            .expect("republish");
        identity.probe(ProbeRequest {}).await.expect("Probe");
        node.node_publish_volume(publish("bystander"))
            .await
            .expect("another pod");
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "locker".into(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish while the pod still holds its locks");
    })
    .await
    .expect("nothing waits for the pod's locks");
    println!(
        "served in {:?} with the pod's locks held",
        started.elapsed()
    );
    drop(held);
    assert!(!target.exists());
    record_summary("red_team_3", &[("closed", 1)]);
}

/// Medium 6: after a pinned version was disabled in Key Vault, mounts kept getting it for as
/// long as the run lasted: pinned entries never refreshed. Rotation now re-reads pinned
/// versions too; a version that is disabled (or an object the identity may no longer read) is
/// erased from the cache, new mounts are refused, and published volumes keep their last
/// content and report the error.
#[tokio::test]
async fn a_revoked_pinned_version_stops_being_served() {
    use azure_security_keyvault_secrets::models::{
        SecretAttributes, UpdateSecretPropertiesParameters,
    };
    use kvmount_mock_vault::FaultRule;
    use kvmount_proto::csi::node_client::NodeClient;
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "1s".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut client = provider_client(&daemon).await;
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let unpinned = objects(&[object("db-password", "")]);
    let learned = client
        .mount(
            DriverRequest::new("demo", vault.mock.tenant_id(), &unpinned, "team-a", "learn")
                .service_principal(APP_A, APP_A_SECRET)
                .build(),
        )
        .await
        .expect("mount")
        .into_inner();
    let version = learned.object_version[0].version.clone();
    let pinned = objects(&[
        object("db-password", &format!("objectVersion: {version}\n")),
        object("api-key", ""),
    ]);
    let publish = |pod: &str| csi_publish(&vault, &daemon, &pinned, pod);
    node.node_publish_volume(publish("pinned"))
        .await
        .expect("publish pinned");

    // The version is disabled in Key Vault, through the official SDK.
    let connector = vault.connector();
    let credential = connector
        .credential(
            vault.mock.tenant_id(),
            &kvmount_vault::Auth::ServicePrincipal {
                client_id: APP_A.into(),
                client_secret: kvmount_vault::SecretString::new(APP_A_SECRET.into()),
            },
        )
        .expect("credential");
    let sdk = connector.secret_client("demo", credential).expect("client");
    let disable: azure_core::http::RequestContent<UpdateSecretPropertiesParameters> =
        UpdateSecretPropertiesParameters {
            secret_attributes: Some(SecretAttributes {
                enabled: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }
        .try_into()
        .expect("body");
    sdk.secrets().update_secret_properties(
        "db-password",
        disable,
        Some(
            azure_security_keyvault_secrets::models::SecretClientUpdateSecretPropertiesOptions {
                secret_version: Some(version.clone()),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("disable the version");

    // Within a few intervals a new pod of the same class is refused.
    let mut attempt = 0;
    let status = refused_within(Duration::from_secs(15), || {
        attempt += 1;
        let (mut node, request) = (node.clone(), publish(&format!("late-{attempt}")));
        async move { node.node_publish_volume(request).await }
    })
    .await;
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    // The published volume keeps its last content.
    assert_eq!(
        std::fs::read_to_string(daemon.target("pinned").join("db-password")).expect("file"),
        "current-value"
    );

    // Access taken away (Key Vault answers 403 for the other object): the same.
    vault
        .mock
        .set_faults(vec![FaultRule {
            object: Some("secret/api-key".into()),
            status: Some(403),
            ..Default::default()
        }])
        .expect("fault");
    let only_key = objects(&[object("api-key", "")]);
    let mount = DriverRequest::new("demo", vault.mock.tenant_id(), &only_key, "team-a", "after")
        .service_principal(APP_A, APP_A_SECRET);
    let status = refused_within(Duration::from_secs(15), || {
        let (mut client, request) = (client.clone(), mount.build());
        async move { client.mount(request).await }
    })
    .await;
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert_eq!(
        std::fs::read_to_string(daemon.target("pinned").join("api-key")).expect("file"),
        "demo-api-key-0001"
    );
    record_summary("red_team_6", &[("closed", 1)]);
}

/// Medium 7: pages the daemon writes into pods' tmpfs are charged to the daemon's own memory
/// cgroup (128 MiB limit in the chart, 8 MiB of tmpfs per volume): about 16 full volumes reach
/// it and the daemon is killed. Measured here by putting the daemon in a memory cgroup of its
/// own; the fix is a budget for all volumes' files together (`--tmpfs-budget`, by default the
/// cgroup's limit less 48 MiB): a publish or rotation past it is RESOURCE_EXHAUSTED, naming
/// the flag, and the daemon stays within its limit.
#[tokio::test]
async fn volumes_stay_within_the_daemons_memory_budget() {
    use kvmount_proto::csi::NodeUnpublishVolumeRequest;
    use kvmount_proto::csi::node_client::NodeClient;
    // Ten secrets of 24 KB (Key Vault holds up to 25 KB): 6 pages each, 240 KiB a volume.
    let mut seed = String::from(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app-a\n    clientId: 00000000-0000-0000-0000-00000000000a\n    clientSecret: app-a-password\nvaults:\n  - name: demo\n    access:\n      - { identity: app-a, objects: [\"secret/*\"], permissions: [get, list] }\n    secrets:\n",
    );
    for i in 0..10 {
        seed.push_str(&format!(
            "      - {{ name: big-{i}, versions: [\"{}\"] }}\n",
            "b".repeat(24_000)
        ));
    }
    let vault = Vault::start(Some(Seed::from_yaml(&seed).expect("seed"))).await;
    let per_volume: u64 = 10 * 6 * 4096;
    let mut flags = vault.provider_flags();
    flags.extend(["--tmpfs-budget".into(), (3 * per_volume).to_string()]);
    let daemon = NodeDaemon::start(&flags);
    // The daemon in a memory cgroup of its own, to see what its volumes cost it.
    let guard = MemoryCgroup::holding(daemon.pid());
    let usage = || guard.usage();
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let class = objects(
        &(0..10)
            .map(|i| object(&format!("big-{i}"), ""))
            .collect::<Vec<_>>(),
    );
    let publish = |pod: &str| csi_publish(&vault, &daemon, &class, pod);
    node.node_publish_volume(publish("v0"))
        .await
        .expect("publish");
    let before = usage();
    for pod in ["v1", "v2"] {
        node.node_publish_volume(publish(pod))
            .await
            .expect("publish");
    }
    let charged = usage().saturating_sub(before) / 2;
    println!(
        "each volume of 240 KiB of files cost the daemon's cgroup {} KiB",
        charged / 1024
    );
    assert!(
        charged >= per_volume,
        "the tmpfs pages are charged to the daemon: {charged} bytes a volume"
    );
    let refused = node
        .node_publish_volume(publish("v3"))
        .await
        .expect_err("over the budget");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--tmpfs-budget"),
        "{}",
        refused.message()
    );
    assert!(
        !daemon.target("v3").exists()
            || std::fs::read_dir(daemon.target("v3"))
                .expect("dir")
                .next()
                .is_none()
    );
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "v0".into(),
        target_path: daemon.target("v0").display().to_string(),
    })
    .await
    .expect("unpublish");
    node.node_publish_volume(publish("v3"))
        .await
        .expect("room again after an unpublish");
    drop(guard);
    record_summary(
        "red_team_7",
        &[("closed", 1), ("charged_kib_per_volume", charged / 1024)],
    );
}

/// A memory cgroup (v1, or v2 where there is no v1 memory hierarchy) holding one process; on
/// drop (also when a test fails) the process goes back to the root cgroup and the cgroup is
/// removed (its charges move to the parent).
struct MemoryCgroup {
    root: PathBuf,
    path: PathBuf,
    pid: u32,
}

impl MemoryCgroup {
    fn holding(pid: u32) -> Self {
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let root = if v1.is_dir() {
            v1
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let path = root.join(format!("kvmount-red-team-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a memory cgroup");
        let cgroup = Self { root, path, pid };
        std::fs::write(cgroup.path.join("cgroup.procs"), pid.to_string()).expect("move the daemon");
        cgroup
    }

    /// Memory charged to the cgroup now, bytes.
    fn usage(&self) -> u64 {
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|file| std::fs::read_to_string(self.path.join(file)).ok())
            .expect("a memory usage file")
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Also found: after the last pod using a secret was unpublished, a copy of its value stayed
/// in the daemon's memory while another pod still used another secret of the same vault, so
/// the vault's connection stayed open (its TLS and HTTP/2 buffers). The erase holds with the
/// connection's other users still there.
#[tokio::test]
async fn an_erased_value_leaves_no_copy_while_its_vault_stays_in_use() {
    use kvmount_proto::csi::NodeUnpublishVolumeRequest;
    use kvmount_proto::csi::node_client::NodeClient;
    let seed = Seed::from_yaml(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app-a\n    clientId: 00000000-0000-0000-0000-00000000000a\n    clientSecret: app-a-password\nvaults:\n  - name: demo\n    access:\n      - { identity: app-a, objects: [\"secret/*\"], permissions: [get, list] }\n    secrets:\n      - { name: gone, versions: [\"kvmount-erased-canary-5be1d0\"] }\n      - { name: stays, versions: [\"still-in-use\"] }\n",
    )
    .expect("seed");
    let vault = Vault::start(Some(seed)).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let publish = |pod: &str, name: &str| {
        let class = objects(&[object(name, "")]);
        csi_publish(&vault, &daemon, &class, pod)
    };
    node.node_publish_volume(publish("keeps", "stays"))
        .await
        .expect("publish");
    node.node_publish_volume(publish("leaves", "gone"))
        .await
        .expect("publish");
    let pid = daemon.pid();
    let canary = b"kvmount-erased-canary-5be1d0";
    assert!(
        kvmount_tests::scan_process_memory(pid, canary) > 0,
        "the scanner sees the cached value"
    );
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "leaves".into(),
        target_path: daemon.target("leaves").display().to_string(),
    })
    .await
    .expect("unpublish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = kvmount_tests::scan_process_memory(pid, canary);
    assert_eq!(
        hits, 0,
        "{hits} copies of the erased value while the vault's other secret is in use"
    );
    // The other volume is still served: a republish reads it again over a new connection.
    node.node_publish_volume(publish("keeps", "stays"))
        .await
        .expect("republish");
    assert_eq!(
        std::fs::read_to_string(daemon.target("keeps").join("stays")).expect("file"),
        "still-in-use"
    );
    record_summary("red_team_11", &[("closed", 1)]);
}
