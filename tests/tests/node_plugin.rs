//! The CSI node plugin end to end: the real daemon on real sockets, real tmpfs mounts, the
//! mock vault over TLS. Shared fetches, identity isolation, erase on last unpublish (checked
//! in the daemon's memory from outside), restart after SIGKILL, SecretProviderClass lookups,
//! CSI idempotency rules, and secrets kept out of logs.

#[path = "../../k8s/tests/support/mod.rs"]
mod fake_apiserver;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::identity_client::IdentityClient;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_tests::{
    NodeDaemon, Vault, mounts_under, object, objects, publish_request, scan_process_memory,
};
use tonic::Code;

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
const APP_B: &str = "00000000-0000-0000-0000-00000000000b";

fn context(
    vault: &Vault,
    namespace: &str,
    pod: &str,
    client_id: &str,
    token: &str,
    objs: &str,
) -> HashMap<String, String> {
    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}});
    HashMap::from([
        ("keyvaultName".to_owned(), "demo".to_owned()),
        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
        ("clientID".to_owned(), client_id.to_owned()),
        ("objects".to_owned(), objs.to_owned()),
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
        (
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            tokens.to_string(),
        ),
    ])
}

fn two_objects() -> String {
    objects(&[
        object("db-password", "filePermission: \"0640\"\n"),
        object("api-key", ""),
    ])
}

fn read(target: &Path, file: &str) -> String {
    std::fs::read_to_string(target.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", target.display()))
}

fn unpublish(volume: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    }
}

/// How many volumes the daemon's state lists (read with the daemon's own reader).
fn state_volumes(daemon: &NodeDaemon) -> usize {
    kvmount_provider::state::StateStore::open(&daemon.state_dir)
        .and_then(|store| store.load())
        .expect("state readable")
        .len()
}

/// Key Vault reads of `object`, by status.
fn gets(vault: &Vault, object: &str, status: u16) -> u64 {
    vault
        .mock
        .stats()
        .count(Some("demo"), Some("secret.get"), Some(object), Some(status))
}

/// Token requests at Entra ID that succeeded.
fn tokens_issued(vault: &Vault) -> u64 {
    vault
        .mock
        .stats()
        .count(None, Some("token"), None, Some(200))
}

#[tokio::test]
async fn a_new_pod_of_a_proven_identity_costs_one_token_and_one_get_per_object() {
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let (t1, t2) = (daemon.target("pod-1"), daemon.target("pod-2"));
    // Two entries (the newest and the oldest version), so two reads through one new client.
    let first = objects(&[
        object("db-password", ""),
        object(
            "db-password",
            &format!(
                "objectAlias: db-old\nobjectVersion: {}\n",
                kvmount_mock_vault::seeded_version("demo", "db-password", 0)
            ),
        ),
    ]);
    let ctx1 = context(
        &vault,
        "team-a",
        "pod-1",
        APP_A,
        &vault.sa_token("team-a", "app"),
        &first,
    );
    node.node_publish_volume(publish_request(&t1, "vol-1", &ctx1))
        .await
        .expect("publish pod-1");
    assert_eq!(gets(&vault, "secret/db-password", 200), 2);
    let challenges = vault
        .mock
        .stats()
        .count(Some("demo"), None, None, Some(401));
    assert_eq!(
        challenges, 1,
        "a new identity's reads go out with its token; one challenge, to the copy that opened the vault's connection"
    );
    assert_eq!(tokens_issued(&vault), 1);

    // Another pod of the same identity with its own token, and an object nobody read yet:
    // its own token exchange (proof), then one GET, with no second challenge.
    let second = objects(&[object("api-key", "")]);
    let ctx2 = context(
        &vault,
        "team-a",
        "pod-2",
        APP_A,
        &vault.sa_token("team-a", "app"),
        &second,
    );
    node.node_publish_volume(publish_request(&t2, "vol-2", &ctx2))
        .await
        .expect("publish pod-2");
    assert_eq!(read(&t2, "api-key"), "demo-api-key-0001");
    assert_eq!(gets(&vault, "secret/api-key", 200), 1);
    assert_eq!(
        vault
            .mock
            .stats()
            .count(Some("demo"), None, None, Some(401)),
        challenges,
        "no new challenge for the identity's next pod: the vault's connection is open"
    );
    assert_eq!(tokens_issued(&vault), 2, "pod-2 proved its own token");

    // kubelet's republish with the same token: the proof is still valid, nothing at Entra ID.
    node.node_publish_volume(publish_request(&t2, "vol-2", &ctx2))
        .await
        .expect("republish pod-2");
    assert_eq!(tokens_issued(&vault), 2);

    // A garbage token of the same identity is still refused: proofs are per credential.
    let t3 = daemon.target("pod-3");
    let ctx3 = context(&vault, "team-a", "pod-3", APP_A, "not-a-token", &second);
    let err = node
        .node_publish_volume(publish_request(&t3, "vol-3", &ctx3))
        .await
        .expect_err("garbage token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!t3.join("api-key").exists());

    // A garbage token as the first pod of an identity: its proof and its reads overlap, but
    // the reads get no token, so Key Vault serves nothing and the pod gets nothing.
    let served = vault
        .mock
        .stats()
        .count(Some("demo"), Some("secret.get"), None, Some(200));
    let t4 = daemon.target("pod-4");
    let ctx4 = context(&vault, "team-b", "pod-4", APP_B, "not-a-token", &second);
    let err = node
        .node_publish_volume(publish_request(&t4, "vol-4", &ctx4))
        .await
        .expect_err("garbage token of a new identity");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(!t4.join("api-key").exists());
    assert_eq!(
        vault
            .mock
            .stats()
            .count(Some("demo"), Some("secret.get"), None, Some(200)),
        served,
        "nothing read for an unproved pod"
    );

    for (volume, target) in [
        ("vol-1", &t1),
        ("vol-2", &t2),
        ("vol-3", &t3),
        ("vol-4", &t4),
    ] {
        node.node_unpublish_volume(unpublish(volume, target))
            .await
            .expect("unpublish");
    }
    assert!(mounts_under(daemon.dir()).is_empty(), "no mount left");
    assert_eq!(state_volumes(&daemon), 0);
}

#[tokio::test]
async fn two_pods_share_one_fetch_and_the_last_unpublish_erases() {
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let channel = daemon.csi_channel().await;
    let mut node = NodeClient::new(channel.clone());
    let probe = IdentityClient::new(channel)
        .probe(kvmount_proto::csi::ProbeRequest {})
        .await
        .expect("probe")
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    let token_1 = vault.sa_token("team-a", "app");
    let token_2 = vault.sa_token("team-a", "app");
    let (t1, t2) = (daemon.target("pod-1"), daemon.target("pod-2"));
    let ctx1 = context(&vault, "team-a", "pod-1", APP_A, &token_1, &two_objects());
    let ctx2 = context(&vault, "team-a", "pod-2", APP_A, &token_2, &two_objects());
    // Concurrent first mounts of the same objects collapse into one Key Vault read each.
    let (mut n1, mut n2) = (node.clone(), node.clone());
    let (r1, r2) = tokio::join!(
        n1.node_publish_volume(publish_request(&t1, "vol-1", &ctx1)),
        n2.node_publish_volume(publish_request(&t2, "vol-2", &ctx2)),
    );
    r1.expect("publish pod-1");
    r2.expect("publish pod-2");
    let stats = vault.mock.stats();
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(200)
        ),
        1,
        "{stats:?}"
    );
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/api-key"),
            Some(200)
        ),
        1
    );
    for target in [&t1, &t2] {
        assert_eq!(read(target, "db-password"), "current-value");
        assert_eq!(read(target, "api-key"), "demo-api-key-0001");
        let mode = std::fs::metadata(target.join("db-password"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        assert!(kvmount_volume::is_mount_point(target).expect("mount check"));
        assert!(
            kvmount_volume::memory_fs_kind(target).is_ok(),
            "volume is tmpfs"
        );
    }
    // The same publish again is OK and costs nothing at Key Vault.
    node.node_publish_volume(publish_request(&t1, "vol-1", &ctx1))
        .await
        .expect("idempotent publish");
    assert_eq!(
        vault
            .mock
            .stats()
            .count(Some("demo"), Some("secret.get"), None, Some(200)),
        2
    );
    assert_eq!(state_volumes(&daemon), 2);

    node.node_unpublish_volume(unpublish("vol-1", &t1))
        .await
        .expect("unpublish pod-1");
    assert!(!t1.exists(), "pod-1 target removed");
    assert_eq!(read(&t2, "db-password"), "current-value", "pod-2 intact");
    assert!(
        !daemon.output().contains("erased: no volume uses it"),
        "nothing erased while pod-2 uses it"
    );

    node.node_unpublish_volume(unpublish("vol-2", &t2))
        .await
        .expect("unpublish pod-2");
    assert!(!t2.exists());
    assert!(mounts_under(daemon.dir()).is_empty(), "no mount left");
    assert_eq!(state_volumes(&daemon), 0);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        daemon.output().matches("erased: no volume uses it").count(),
        2,
        "both entries erased:\n{}",
        daemon.output()
    );
    // Unpublish is idempotent: again, and for a target never published.
    node.node_unpublish_volume(unpublish("vol-2", &t2))
        .await
        .expect("unpublish twice");
    node.node_unpublish_volume(unpublish("vol-x", &daemon.target("never")))
        .await
        .expect("unknown target");
}

#[tokio::test]
async fn another_identity_never_sees_a_cached_object() {
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let objs = objects(&[object("db-password", "")]);
    let t_a = daemon.target("pod-a");
    node.node_publish_volume(publish_request(
        &t_a,
        "vol-a",
        &context(
            &vault,
            "team-a",
            "pod-a",
            APP_A,
            &vault.sa_token("team-a", "app"),
            &objs,
        ),
    ))
    .await
    .expect("team-a publish");

    // team-b's service account maps to app-b, which the vault's access list does not allow.
    let t_b = daemon.target("pod-b");
    let status = node
        .node_publish_volume(publish_request(
            &t_b,
            "vol-b",
            &context(
                &vault,
                "team-b",
                "pod-b",
                APP_B,
                &vault.sa_token("team-b", "app"),
                &objs,
            ),
        ))
        .await
        .expect_err("app-b may not read");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(!t_b.exists(), "no directory, no file for the denied pod");

    // A team-b pod claiming app-a's client ID: its token is not federated with app-a.
    let t_c = daemon.target("pod-c");
    let status = node
        .node_publish_volume(publish_request(
            &t_c,
            "vol-c",
            &context(
                &vault,
                "team-b",
                "pod-c",
                APP_A,
                &vault.sa_token("team-b", "app"),
                &objs,
            ),
        ))
        .await
        .expect_err("not federated");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!t_c.exists());
    // A garbage token is refused too, although app-a's entry is cached.
    let t_d = daemon.target("pod-d");
    let status = node
        .node_publish_volume(publish_request(
            &t_d,
            "vol-d",
            &context(&vault, "team-a", "pod-d", APP_A, "not-a-jwt", &objs),
        ))
        .await
        .expect_err("garbage token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!t_d.exists());
    assert_eq!(
        vault.mock.stats().count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(200)
        ),
        1
    );
    node.node_unpublish_volume(unpublish("vol-a", &t_a))
        .await
        .expect("unpublish");
}

#[tokio::test]
async fn no_copy_of_the_secret_survives_the_last_unpublish() {
    let seed = kvmount_mock_vault::Seed::from_yaml(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: 00000000-0000-0000-0000-00000000000a\n    federated:\n      - { issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:team-a:app\" }\nvaults:\n  - name: demo\n    secrets:\n      - { name: canary, versions: [\"kvmount-canary-7d1f0b9e5a3c\"] }\n      - { name: canary-b64, versions: [\"a3Ztb3VudC1iNjQtY2FuYXJ5LTRlOGE=\"] }\n",
    )
    .expect("seed");
    let vault = Vault::start(Some(seed)).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let objs = objects(&[
        object("canary", ""),
        object("canary-b64", "objectEncoding: base64\n"),
    ]);
    let targets: Vec<_> = (0..2)
        .map(|i| daemon.target(&format!("canary-{i}")))
        .collect();
    for (i, target) in targets.iter().enumerate() {
        let ctx = context(
            &vault,
            "team-a",
            &format!("canary-{i}"),
            APP_A,
            &vault.sa_token("team-a", "app"),
            &objs,
        );
        node.node_publish_volume(publish_request(target, &format!("vol-{i}"), &ctx))
            .await
            .expect("publish");
        assert_eq!(read(target, "canary"), "kvmount-canary-7d1f0b9e5a3c");
        assert_eq!(read(target, "canary-b64"), "kvmount-b64-canary-4e8a");
    }
    let pid = daemon.pid();
    // While published, the cache holds the values: the scanner must see them.
    assert!(
        scan_process_memory(pid, b"kvmount-canary-7d1f0b9e5a3c") > 0,
        "scanner sees the cached value"
    );
    for (i, target) in targets.iter().enumerate() {
        node.node_unpublish_volume(unpublish(&format!("vol-{i}"), target))
            .await
            .expect("unpublish");
    }
    drop(node);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for canary in [
        &b"kvmount-canary-7d1f0b9e5a3c"[..],
        b"a3Ztb3VudC1iNjQtY2FuYXJ5LTRlOGE",
        b"kvmount-b64-canary-4e8a",
    ] {
        let hits = scan_process_memory(pid, canary);
        assert_eq!(
            hits,
            0,
            "{} copies of {:?} in the daemon's memory after the last unpublish",
            hits,
            String::from_utf8_lossy(canary)
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        !daemon.output().contains("kvmount-canary"),
        "value not logged"
    );
    // Hardening: not dumpable (core dumps off, no ptrace by other users).
    let stat = std::fs::metadata(format!("/proc/{pid}/mem")).expect("mem");
    assert_eq!(stat.uid(), 0);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    assert!(
        core.split_whitespace().nth(4) == Some("0"),
        "core limit 0: {core}"
    );
    assert!(status.contains("State:"));
}

#[tokio::test]
async fn sigkill_and_restart_keep_volumes_served_and_refreshed() {
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "1s".into()]);
    let mut daemon = NodeDaemon::start(&flags);
    let objs = two_objects();
    let targets = [daemon.target("r-1"), daemon.target("r-2")];
    let contexts: Vec<_> = (0..2)
        .map(|i| {
            context(
                &vault,
                "team-a",
                &format!("r-{}", i + 1),
                APP_A,
                &vault.sa_token("team-a", "app"),
                &objs,
            )
        })
        .collect();
    {
        let mut node = NodeClient::new(daemon.csi_channel().await);
        for i in 0..2 {
            node.node_publish_volume(publish_request(
                &targets[i],
                &format!("vol-r{i}"),
                &contexts[i],
            ))
            .await
            .expect("publish");
        }
    }
    daemon.kill_and_restart();
    assert!(daemon.output().contains("adopted=2"), "{}", daemon.output());
    for target in &targets {
        assert_eq!(
            read(target, "db-password"),
            "current-value",
            "still served after the crash"
        );
    }
    // Rotate, then kubelet's republish (fresh call, same parameters) refreshes both volumes.
    vault
        .set_secret(
            "demo",
            APP_A,
            "app-a-password",
            "db-password",
            "after-restart",
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut node = NodeClient::new(daemon.csi_channel().await);
    for i in 0..2 {
        node.node_publish_volume(publish_request(
            &targets[i],
            &format!("vol-r{i}"),
            &contexts[i],
        ))
        .await
        .expect("republish");
        assert_eq!(read(&targets[i], "db-password"), "after-restart");
    }
    for (i, target) in targets.iter().enumerate() {
        node.node_unpublish_volume(unpublish(&format!("vol-r{i}"), target))
            .await
            .expect("unpublish");
    }
    assert!(mounts_under(daemon.dir()).is_empty());
    assert!(targets.iter().all(|t| !t.exists()));
    assert_eq!(state_volumes(&daemon), 0);
    // A target recorded but gone by the time the daemon restarts is dropped from the state.
    node.node_publish_volume(publish_request(&targets[0], "vol-r0", &contexts[0]))
        .await
        .expect("publish again");
    drop(node);
    kvmount_volume::teardown(&targets[0]).expect("kubelet-side cleanup");
    daemon.kill_and_restart();
    assert!(daemon.output().contains("cleaned=1"), "{}", daemon.output());
    assert_eq!(state_volumes(&daemon), 0);
}

#[tokio::test]
async fn csi_rules_for_publish() {
    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let token = vault.sa_token("team-a", "app");
    let ctx = context(
        &vault,
        "team-a",
        "p",
        APP_A,
        &token,
        &objects(&[object("db-password", "")]),
    );
    let target = daemon.target("rules");

    let mut writable = publish_request(&target, "vol", &ctx);
    writable.readonly = false;
    let status = node
        .node_publish_volume(writable)
        .await
        .expect_err("readonly false");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("readonly"));

    let mut no_capability = publish_request(&target, "vol", &ctx);
    no_capability.volume_capability = None;
    assert_eq!(
        node.node_publish_volume(no_capability)
            .await
            .expect_err("cap")
            .code(),
        Code::InvalidArgument
    );
    let mut relative = publish_request(&target, "vol", &ctx);
    relative.target_path = "relative/mount".into();
    assert_eq!(
        node.node_publish_volume(relative)
            .await
            .expect_err("relative")
            .code(),
        Code::InvalidArgument
    );
    let mut bad_class = ctx.clone();
    bad_class.insert("objects".into(), "array: [".into());
    let status = node
        .node_publish_volume(publish_request(&target, "vol", &bad_class))
        .await
        .expect_err("bad objects");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!target.exists(), "nothing created for a refused publish");

    // fsGroup: files group-owned and group-readable for non-root pods.
    let mut grouped = ctx.clone();
    grouped.insert("fsGroup".into(), "2345".into());
    node.node_publish_volume(publish_request(&target, "vol", &grouped))
        .await
        .expect("publish");
    let meta = std::fs::metadata(target.join("db-password")).expect("meta");
    assert_eq!(meta.gid(), 2345);
    assert_eq!(meta.permissions().mode() & 0o040, 0o040);
    // Same target, other parameters: ALREADY_EXISTS; same again: OK.
    let mut other = grouped.clone();
    other.insert("objects".into(), objects(&[object("api-key", "")]));
    let status = node
        .node_publish_volume(publish_request(&target, "vol", &other))
        .await
        .expect_err("other params");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(read(&target, "db-password"), "current-value", "kept");
    node.node_publish_volume(publish_request(&target, "vol", &grouped))
        .await
        .expect("same again");
    // A failed refresh (vault down) keeps the last good content and the mount.
    vault
        .mock
        .set_faults(vec![kvmount_mock_vault::FaultRule {
            route: Some("secret.get".into()),
            status: Some(503),
            ..Default::default()
        }])
        .expect("faults");
    let mut new_token = grouped.clone();
    new_token.insert("csi.storage.k8s.io/serviceAccount.tokens".into(), serde_json::json!({"api://AzureADTokenExchange": {"token": vault.sa_token("team-a", "app")}}).to_string());
    node.node_publish_volume(publish_request(&target, "vol", &new_token))
        .await
        .expect("served from cache within the interval");
    vault.mock.clear_faults();
    node.node_unpublish_volume(unpublish("vol", &target))
        .await
        .expect("unpublish");
    assert!(!target.exists());
}

#[tokio::test]
async fn secret_provider_class_from_the_kubernetes_api() {
    let api = fake_apiserver::FakeApiServer::start().await;
    let vault = Vault::start(None).await;
    api.insert(fake_apiserver::spc_object(
        "team-a",
        "app-secrets",
        serde_json::json!({
            "keyvaultName": "demo",
            "tenantID": vault.mock.tenant_id(),
            "clientID": APP_A,
            "objects": objects(&[object("db-password", "")]),
        }),
    ));
    let mut spc = fake_apiserver::spc_object(
        "team-b",
        "only-in-b",
        serde_json::json!({"keyvaultName": "demo", "tenantID": vault.mock.tenant_id(), "objects": objects(&[object("db-password", "")])}),
    );
    spc["spec"]["provider"] = "kvmount".into();
    api.insert(spc);
    let mut flags = vault.provider_flags();
    flags.extend(["--kubeconfig".into(), api.kubeconfig.display().to_string()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let token = vault.sa_token("team-a", "app");
    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": token}}).to_string();
    let volume_context = |class: &str| {
        HashMap::from([
            ("secretProviderClass".to_owned(), class.to_owned()),
            ("csi.storage.k8s.io/pod.name".to_owned(), "p".to_owned()),
            (
                "csi.storage.k8s.io/pod.namespace".to_owned(),
                "team-a".to_owned(),
            ),
            (
                "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
                tokens.clone(),
            ),
        ])
    };
    let target = daemon.target("spc");
    node.node_publish_volume(publish_request(
        &target,
        "vol-spc",
        &volume_context("app-secrets"),
    ))
    .await
    .expect("publish with class");
    assert_eq!(read(&target, "db-password"), "current-value");
    let other = daemon.target("spc-other");
    let status = node
        .node_publish_volume(publish_request(
            &other,
            "vol-other",
            &volume_context("only-in-b"),
        ))
        .await
        .expect_err("a class of another namespace");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        api.paths()
            .iter()
            .all(|p| p.contains("/namespaces/team-a/")),
        "{:?}",
        api.paths()
    );
    node.node_unpublish_volume(unpublish("vol-spc", &target))
        .await
        .expect("unpublish");
}

/// Every publish/unpublish path, success and failure, at trace level: no secret value, token or
/// client secret in the output.
#[tokio::test]
async fn nothing_secret_in_node_plugin_logs() {
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--log-level".into(), "trace".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let token = vault.sa_token("team-a", "app");
    let token_b = vault.sa_token("team-b", "app");
    let objs = objects(&[object("db-password", ""), object("api-key", "")]);
    let target = daemon.target("logs");
    node.node_publish_volume(publish_request(
        &target,
        "vol",
        &context(&vault, "team-a", "p", APP_A, &token, &objs),
    ))
    .await
    .expect("publish");
    let _ = node
        .node_publish_volume(publish_request(
            &daemon.target("l2"),
            "v2",
            &context(&vault, "team-b", "p", APP_B, &token_b, &objs),
        ))
        .await;
    let _ = node
        .node_publish_volume(publish_request(
            &daemon.target("l3"),
            "v3",
            &context(&vault, "team-b", "p", APP_A, &token_b, &objs),
        ))
        .await;
    let _ = node
        .node_publish_volume(publish_request(
            &daemon.target("l4"),
            "v4",
            &context(
                &vault,
                "team-a",
                "p",
                APP_A,
                &token,
                &objects(&[object("missing", "")]),
            ),
        ))
        .await;
    let mut sp = context(&vault, "team-a", "p", APP_A, &token, &objs);
    sp.remove("clientID");
    sp.remove("csi.storage.k8s.io/serviceAccount.tokens");
    let mut request = publish_request(&daemon.target("l5"), "v5", &sp);
    request.secrets = HashMap::from([
        ("clientid".into(), APP_A.into()),
        ("clientsecret".into(), "wrong-canary-secret-91ab".into()),
    ]);
    let _ = node.node_publish_volume(request).await;
    node.node_unpublish_volume(unpublish("vol", &target))
        .await
        .expect("unpublish");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let output = daemon.output();
    assert!(output.contains("TRACE"), "trace level was on");
    for needle in [
        "current-value",
        "demo-api-key-0001",
        "wrong-canary-secret",
        &token,
        &token_b,
        &token[token.len() - 24..],
    ] {
        assert!(!output.contains(needle), "log contains {needle:?}");
    }
}

/// Kubernetes 1.35+ with `serviceAccountTokenInSecrets: true` (KEP-5538, set by the chart from
/// 1.35): kubelet puts the service-account tokens in the CSI `secrets` field and not in the
/// volume context. A publish takes them from there, a wrong identity is still refused, and at
/// trace level no token reaches the output.
#[tokio::test]
async fn tokens_only_in_csi_secrets_publish_and_never_reach_the_log() {
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--log-level".into(), "trace".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let token = vault.sa_token("team-a", "app");
    let token_b = vault.sa_token("team-b", "app");
    let objs = objects(&[object("db-password", "")]);
    let in_secrets = |token: &str, pod: &str, client_id: &str, volume: &str| {
        let mut context = context(&vault, "team-a", pod, client_id, token, &objs);
        let tokens = context
            .remove("csi.storage.k8s.io/serviceAccount.tokens")
            .expect("tokens");
        let mut request = publish_request(&daemon.target(pod), volume, &context);
        request.secrets =
            HashMap::from([("csi.storage.k8s.io/serviceAccount.tokens".into(), tokens)]);
        request
    };
    node.node_publish_volume(in_secrets(&token, "kep", APP_A, "vol"))
        .await
        .expect("publish with the tokens in secrets");
    assert_eq!(
        std::fs::read_to_string(daemon.target("kep").join("db-password")).expect("file"),
        "current-value"
    );
    // team-b's token is not federated with app A: refused, with no fallback to the cache.
    let refused = node
        .node_publish_volume(in_secrets(&token_b, "kep-b", APP_A, "vol-b"))
        .await
        .expect_err("a token of another identity");
    assert_ne!(refused.code(), Code::Ok);
    node.node_unpublish_volume(unpublish("vol", &daemon.target("kep")))
        .await
        .expect("unpublish");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let output = daemon.output();
    assert!(output.contains("TRACE"), "trace level was on");
    for needle in [
        token.as_str(),
        token_b.as_str(),
        &token[token.len() - 24..],
        &token_b[token_b.len() - 24..],
    ] {
        assert!(!output.contains(needle), "log contains a token");
    }
    assert!(!output.contains("current-value"), "log contains a value");
}

/// A metrics port in use stops the daemon at start with an error that names the flag.
#[test]
fn a_metrics_port_in_use_is_named_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("addr");
    let sockets = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args(["serve", "--provider-socket"])
        .arg(sockets.path().join("p.sock"))
        .args(["--metrics-addr", &addr.to_string()])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("--metrics-addr {addr}: cannot listen")),
        "{stderr}"
    );
    assert!(
        !sockets.path().join("p.sock").exists(),
        "the socket is removed"
    );
}

/// Every binary refuses a log level it does not know at start, naming the flag (before, a
/// typo such as `warning2` silently turned logging off and the process ran on), and takes
/// `warning` as `warn`, as Go and Python users type it.
#[test]
fn an_unknown_log_level_is_refused_by_every_binary() {
    let binaries = [
        ("kvmount-provider", &["serve"][..]),
        ("kvmount-sidecar", &["webhook"][..]),
        ("kvmount-agent", &["agent"][..]),
        ("kvmount-agent", &["exec"][..]),
    ];
    for (binary, command) in binaries {
        let output = std::process::Command::new(kvmount_tests::workspace_bin(binary))
            .args(command)
            .args(["--log-level", "warning2"])
            .args(if command == ["exec"] {
                &["--", "true"][..]
            } else {
                &[][..]
            })
            .env_remove("RUST_LOG")
            .env_remove("KVMOUNT_LOG_LEVEL")
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{binary} {command:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("'--log-level <LOG_LEVEL>'"), "{stderr}");
        assert!(
            stderr.contains("accepted: error, warn (or warning), info"),
            "{stderr}"
        );
    }
    // `warning` is accepted: the daemon gets past its flags (and stops later for another
    // reason, a provider socket it cannot create).
    let output = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args([
            "serve",
            "--log-level",
            "warning",
            "--provider-socket",
            "/proc/kvmount.sock",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("--log-level"), "{stderr}");
    assert!(stderr.contains("/proc/kvmount.sock"), "{stderr}");
}

#[test]
fn a_state_dir_not_on_tmpfs_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("disk dir");
    let sockets = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args(["serve", "--node-id", "n", "--provider-socket"])
        .arg(sockets.path().join("p.sock"))
        .arg("--csi-socket")
        .arg(sockets.path().join("c.sock"))
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not on tmpfs"), "{stderr}");
}

/// The kubelet sends the pod's `securityContext.fsGroup` as `volume_mount_group` only to a
/// driver that advertises VOLUME_MOUNT_GROUP (checked against kubelet 1.34's csi_mounter in the
/// cluster suite); the volume's `fsGroup` attribute still overrides it.
#[tokio::test]
async fn the_pods_fs_group_arrives_as_volume_mount_group() {
    use kvmount_proto::csi::NodeGetCapabilitiesRequest;
    use kvmount_proto::csi::node_service_capability::{Rpc, Type, rpc};
    use kvmount_proto::csi::volume_capability::AccessType;

    let vault = Vault::start(None).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let capabilities = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner()
        .capabilities;
    assert!(
        capabilities.iter().any(|c| matches!(
            c.r#type,
            Some(Type::Rpc(Rpc { r#type })) if r#type == rpc::Type::VolumeMountGroup as i32
        )),
        "{capabilities:?}"
    );
    let token = vault.sa_token("team-a", "app");
    let ctx = context(
        &vault,
        "team-a",
        "p",
        APP_A,
        &token,
        &objects(&[object("db-password", "")]),
    );
    let with_group = |ctx: &HashMap<String, String>, group: &str, target: &Path| {
        let mut request = publish_request(target, "vol-g", ctx);
        if let Some(AccessType::Mount(mount)) = request
            .volume_capability
            .as_mut()
            .and_then(|c| c.access_type.as_mut())
        {
            mount.volume_mount_group = group.into();
        }
        request
    };

    let target = daemon.target("pod-fsgroup");
    node.node_publish_volume(with_group(&ctx, "2000", &target))
        .await
        .expect("publish");
    // The group may enter the mount and read the files.
    for (path, bits) in [(target.clone(), 0o050), (target.join("db-password"), 0o040)] {
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(meta.gid(), 2000, "{}", path.display());
        assert_eq!(meta.permissions().mode() & bits, bits, "{}", path.display());
    }
    node.node_unpublish_volume(unpublish("vol-g", &target))
        .await
        .expect("unpublish");

    let mut overridden = ctx.clone();
    overridden.insert("fsGroup".into(), "3456".into());
    let target = daemon.target("attr-fsgroup");
    node.node_publish_volume(with_group(&overridden, "2000", &target))
        .await
        .expect("publish");
    assert_eq!(
        std::fs::metadata(target.join("db-password"))
            .expect("meta")
            .gid(),
        3456,
        "the attribute overrides the pod's fsGroup"
    );
    node.node_unpublish_volume(unpublish("vol-g", &target))
        .await
        .expect("unpublish");

    let target = daemon.target("bad-fsgroup");
    let status = node
        .node_publish_volume(with_group(&ctx, "wheel-and-then-some-more-text", &target))
        .await
        .expect_err("not a number");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("volume_capability.mount.volume_mount_group"),
        "{status:?}"
    );
    assert!(
        !status.message().contains("some-more-text"),
        "a short prefix"
    );
    assert!(!target.exists());
}
