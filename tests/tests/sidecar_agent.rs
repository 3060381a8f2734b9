//! `kvmount-sidecar agent` end to end: the real binary against the mock vault over TLS, with a
//! workload-identity token file, writing into a real tmpfs: first render, rotation within the
//! refresh interval, SIGTERM, init-only mode, retries with a clear log, a non-tmpfs refusal, and
//! keys and certificates rendered byte for byte as the provider renders them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sidecar_support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kvmount_sidecar::config::{
    AGENT_CONFIG_ENV, AgentConfig, ObjectFields, ObjectRef, TemplateFile, object_yaml,
    objects_document,
};
use kvmount_tests::Vault;
use sidecar_support::{APP_A, Sidecar, Tmpfs, read, rotate, token_file};

fn config(vault: &Vault, token: &std::path::Path, mount: &std::path::Path, refresh: u64) -> String {
    let db = ObjectRef::parse("secret/db-password").unwrap();
    let key = ObjectRef::parse("secret/api-key").unwrap();
    AgentConfig {
        keyvault_name: "demo".into(),
        tenant_id: Some(vault.mock.tenant_id().into()),
        client_id: Some(APP_A.into()),
        token_file: Some(token.display().to_string()),
        mount_path: Some(mount.display().to_string()),
        objects: Some(objects_document(&[
            object_yaml(
                &db,
                &ObjectFields {
                    alias: Some("db".into()),
                    permission: Some("0640".into()),
                    ..Default::default()
                },
            ),
            object_yaml(&key, &ObjectFields::default()),
        ])),
        templates: vec![TemplateFile {
            path: "conn".into(),
            mode: None,
            template: "password={{ secret/db-password }};key={{ secret/api-key }}".into(),
        }],
        refresh_seconds: Some(refresh),
        ..Default::default()
    }
    .to_json()
}

fn agent_args(vault: &Vault, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["agent".to_owned()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(vault.provider_flags());
    args.push("--log-level".into());
    args.push("kvmount=trace,info".into());
    args
}

fn assert_no_secrets(output: &str, token: &str) {
    for canary in ["current-value", "demo-api-key-0001", "rotated-value", token] {
        assert!(!output.contains(canary), "log contains a secret:\n{output}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renders_rotates_and_stops_on_sigterm() {
    let vault = Vault::start(None).await;
    let tmpfs = Tmpfs::new();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let env = [(AGENT_CONFIG_ENV, config(&vault, &token, &tmpfs.path, 1))];
    let started = Instant::now();
    // kvmount-agent: the binary the webhook injects.
    let mut agent = Sidecar::spawn_bin(
        &kvmount_tests::workspace_bin("kvmount-agent"),
        &agent_args(&vault, &[]),
        &env,
        None,
    );
    agent.wait_for("first render", Duration::from_secs(20));
    println!(
        "first render after {:?} (debug build, process start to log line)",
        started.elapsed()
    );

    assert_eq!(read(&tmpfs.path, "db"), "current-value");
    assert_eq!(read(&tmpfs.path, "api-key"), "demo-api-key-0001");
    assert_eq!(
        read(&tmpfs.path, "conn"),
        "password=current-value;key=demo-api-key-0001"
    );
    let mode = std::fs::metadata(tmpfs.path.join("db"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    assert!(
        std::fs::symlink_metadata(tmpfs.path.join("..data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // The probe passes once the render is on disk.
    let mut probe = Sidecar::spawn(
        &[
            "probe".into(),
            "--mount-path".into(),
            tmpfs.path.display().to_string(),
        ],
        &[],
        None,
    );
    assert!(probe.wait(Duration::from_secs(5)).success());

    // db-password is fetched once per round although two files use it.
    let reads = |name: &str| {
        vault.mock.stats().count(
            Some("demo"),
            Some("secret.get"),
            Some(&format!("secret/{name}")),
            Some(200),
        )
    };
    let payload_before = std::fs::read_link(tmpfs.path.join("..data")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        reads("db-password") >= 2,
        "refreshes happened: {:?}",
        vault.mock.stats()
    );
    assert_eq!(
        reads("db-password"),
        reads("api-key"),
        "one read per object per round"
    );
    assert_eq!(
        std::fs::read_link(tmpfs.path.join("..data")).unwrap(),
        payload_before,
        "unchanged content is not rewritten"
    );

    rotate(&vault, "db-password", "rotated-value").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while read(&tmpfs.path, "db") != "rotated-value" {
        assert!(
            Instant::now() < deadline,
            "no rotation within 5s (refresh 1s):\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        read(&tmpfs.path, "conn"),
        "password=rotated-value;key=demo-api-key-0001"
    );
    agent.wait_for("rotated", Duration::from_secs(2));

    // A rotated token file is picked up (kubelet rewrites it).
    std::fs::write(&token, vault.sa_token("team-a", "app")).unwrap();
    agent.wait_for("service-account token changed", Duration::from_secs(5));

    agent.signal(rustix::process::Signal::TERM);
    let status = agent.wait(Duration::from_secs(5));
    assert!(
        status.success(),
        "SIGTERM exits 0: {status}\n{}",
        agent.output()
    );
    assert!(agent.output().contains("SIGTERM"));
    assert_eq!(
        read(&tmpfs.path, "db"),
        "rotated-value",
        "files stay for the app"
    );
    assert_no_secrets(&agent.output(), &std::fs::read_to_string(&token).unwrap());
}

/// The demo identities with a vault that also holds a key and a certificate.
const KEYS_AND_CERTS_SEED: &str = r#"
tenantId: 00000000-0000-0000-0000-000000000001
identities:
  - name: app-a
    clientId: 00000000-0000-0000-0000-00000000000a
    clientSecret: app-a-password
    federated:
      - { issuer: https://oidc.kvmount.local, subject: "system:serviceaccount:team-a:app" }
vaults:
  - name: demo
    access:
      - { identity: app-a, objects: ["secret/*", "key/*", "certificate/*"] }
    keys:
      - { name: signing, versions: [{ kty: EC, curve: P-384 }] }
    certificates:
      - { name: web, dnsNames: [web.example], key: { kty: EC, curve: P-256 }, contentType: application/x-pem-file }
"#;

/// The PEM block labels of `text`, in order.
fn pem_labels(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_certificates_render_like_the_provider() {
    let seed = kvmount_mock_vault::Seed::from_yaml(KEYS_AND_CERTS_SEED).unwrap();
    let vault = Vault::start(Some(seed)).await;
    let tmpfs = Tmpfs::new();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let refs = ["key/signing", "cert/web", "secret/web"];
    let files = ["signing.pem", "web.crt", "web.pem"];
    let fields = |alias: &str| ObjectFields {
        alias: Some(alias.into()),
        ..Default::default()
    };
    let env = AgentConfig {
        keyvault_name: "demo".into(),
        tenant_id: Some(vault.mock.tenant_id().into()),
        client_id: Some(APP_A.into()),
        token_file: Some(token.display().to_string()),
        mount_path: Some(tmpfs.path.display().to_string()),
        objects: Some(objects_document(
            &refs
                .iter()
                .zip(files)
                .map(|(r, f)| object_yaml(&ObjectRef::parse(r).unwrap(), &fields(f)))
                .collect::<Vec<_>>(),
        )),
        refresh_seconds: Some(300),
        ..Default::default()
    }
    .to_json();
    let mut agent = Sidecar::spawn_bin(
        &kvmount_tests::workspace_bin("kvmount-agent"),
        &agent_args(&vault, &["--init-only"]),
        &[(AGENT_CONFIG_ENV, env)],
        None,
    );
    let status = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", agent.output());
    assert_eq!(
        pem_labels(&read(&tmpfs.path, "signing.pem")),
        ["PUBLIC KEY"]
    );
    assert_eq!(pem_labels(&read(&tmpfs.path, "web.crt")), ["CERTIFICATE"]);
    assert_eq!(
        pem_labels(&read(&tmpfs.path, "web.pem")),
        ["PRIVATE KEY", "CERTIFICATE"]
    );
    // The same bytes as the node daemon's rendering of the same objects (the Azure
    // provider's formats).
    let class = kvmount_tests::objects(
        &refs
            .iter()
            .zip(files)
            .map(|(r, f)| {
                let (kind, name) = r.split_once('/').unwrap();
                format!("objectName: {name}\nobjectType: {kind}\nobjectAlias: {f}\n")
            })
            .collect::<Vec<_>>(),
    );
    let request =
        kvmount_tests::DriverRequest::new("demo", vault.mock.tenant_id(), &class, "team-a", "pod")
            .workload_identity(APP_A, &std::fs::read_to_string(&token).unwrap())
            .build();
    let provider = kvmount_tests::Provider::start(&vault.provider_flags());
    let mounted = provider
        .client()
        .await
        .mount(request)
        .await
        .expect("provider mount")
        .into_inner();
    for file in files {
        let theirs = mounted
            .files
            .iter()
            .find(|f| f.path == file)
            .unwrap_or_else(|| panic!("{file} missing from the provider's answer"));
        assert_eq!(
            read(&tmpfs.path, file).as_bytes(),
            &theirs.contents[..],
            "{file} differs from the provider's"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_only_renders_once_and_exits() {
    let vault = Vault::start(None).await;
    let tmpfs = Tmpfs::new();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let env = [(AGENT_CONFIG_ENV, config(&vault, &token, &tmpfs.path, 300))];
    let mut agent = Sidecar::spawn(&agent_args(&vault, &["--init-only"]), &env, None);
    let status = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", agent.output());
    assert!(agent.output().contains("first render"));
    assert_eq!(read(&tmpfs.path, "db"), "current-value");
    assert_no_secrets(&agent.output(), &std::fs::read_to_string(&token).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_vault_is_retried_with_logs_then_given_up() {
    let vault = Vault::start(None).await;
    let tmpfs = Tmpfs::new();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let env = [(AGENT_CONFIG_ENV, config(&vault, &token, &tmpfs.path, 300))];
    // Every vault host resolves to a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut args = vec![
        "agent".to_owned(),
        "--init-only".into(),
        "--init-timeout-seconds".into(),
        "2".into(),
        "--max-retries".into(),
        "0".into(),
        "--keyvault-dns-suffix".into(),
        vault.mock.dns_suffix().into(),
        "--authority-host".into(),
        vault.mock.base_url(),
        "--ca-file".into(),
        vault.mock.ca_path().display().to_string(),
        "--resolve".into(),
        format!("*.{}=127.0.0.1:{port}", vault.mock.dns_suffix()),
    ];
    args.push("--resolve".into());
    args.push(format!(
        "{}={}",
        url::Url::parse(&vault.mock.base_url())
            .unwrap()
            .host_str()
            .unwrap(),
        vault.mock.addr()
    ));
    let mut agent = Sidecar::spawn(&args, &env, None);
    let status = agent.wait(Duration::from_secs(30));
    let out = agent.output();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("fetch failed") && out.contains("retry_in_ms"),
        "each attempt is logged:\n{out}"
    );
    assert!(out.contains("no render after"), "the exit says why:\n{out}");
    assert!(
        std::fs::read_dir(&tmpfs.path).unwrap().next().is_none(),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_volume_that_is_not_memory_backed() {
    let vault = Vault::start(None).await;
    let dir = tempfile::Builder::new()
        .prefix("kvmount-test-disk.")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let token = token_file(&vault, dir.path());
    let env = [(AGENT_CONFIG_ENV, config(&vault, &token, dir.path(), 300))];
    let mut agent = Sidecar::spawn(&agent_args(&vault, &["--init-only"]), &env, None);
    let status = agent.wait(Duration::from_secs(20));
    assert!(!status.success());
    assert!(agent.output().contains("tmpfs"), "{}", agent.output());
    assert_eq!(
        vault
            .mock
            .stats()
            .count(None, Some("secret.get"), None, None),
        0
    );
}

#[test]
fn a_bad_configuration_names_the_field() {
    let mut agent = Sidecar::spawn(
        &["agent".into()],
        &[(
            AGENT_CONFIG_ENV,
            r#"{"keyvaultName":"demo","env":{"9X":"secret/a"}}"#.into(),
        )],
        None,
    );
    assert!(!agent.wait(Duration::from_secs(10)).success());
    assert!(agent.output().contains("env.9X"), "{}", agent.output());
}

/// `probe --wait`, the native agent's postStart hook: it returns as soon as the first render
/// is published, and fails, naming the volume, when none comes within the wait. The agent
/// binary the webhook injects is the one run here.
#[test]
fn probe_waits_for_the_first_render_within_its_bound() {
    let dir = tempfile::tempdir().expect("dir");
    let mount = dir.path().display().to_string();
    let probe = |wait: &str| {
        Sidecar::spawn_bin(
            &kvmount_tests::workspace_bin("kvmount-agent"),
            &[
                "probe".into(),
                "--mount-path".into(),
                mount.clone(),
                "--wait".into(),
                wait.into(),
            ],
            &[],
            None,
        )
    };
    // Nothing rendered: it fails once its wait is over, not before.
    let started = Instant::now();
    let mut empty = probe("300ms");
    assert!(!empty.wait(Duration::from_secs(30)).success());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        empty.output().contains("no render yet"),
        "{}",
        empty.output()
    );
    // Rendered while it waits: it passes.
    let mut waiting = probe("5m");
    std::thread::sleep(Duration::from_millis(200));
    assert!(waiting.try_status().is_none(), "{}", waiting.output());
    std::os::unix::fs::symlink("..2026_12_07", dir.path().join("..data")).expect("..data");
    assert!(waiting.wait(Duration::from_secs(30)).success());
    // A wait past its bound is refused, naming the flag.
    let mut long = probe("2h");
    assert!(!long.wait(Duration::from_secs(30)).success());
    assert!(long.output().contains("--wait"), "{}", long.output());
}

/// A vault with every kind of object the node plugin renders: secrets with several versions
/// and encodings, RSA and EC keys (one with two versions), certificates stored as PKCS#12
/// (leaf first and root first, one with two versions) and as PEM (root first).
const EVERY_KIND_SEED: &str = r#"
tenantId: 00000000-0000-0000-0000-000000000001
identities:
  - name: app-a
    clientId: 00000000-0000-0000-0000-00000000000a
    clientSecret: app-a-password
    federated:
      - { issuer: https://oidc.kvmount.local, subject: "system:serviceaccount:team-a:app" }
vaults:
  - name: demo
    access:
      - { identity: app-a, objects: ["secret/*", "key/*", "certificate/*"] }
    secrets:
      - { name: text, versions: ["text-0", "text-1", "text-2"] }
      - { name: b64, versions: ["AAEC/w=="] }
      - { name: hexval, versions: ["00ff10ab"] }
    keys:
      - { name: rsa, versions: [{ kty: RSA, size: 2048 }] }
      - { name: ec, versions: [{ kty: EC, curve: P-256 }, { kty: EC, curve: P-384 }] }
    certificates:
      - { name: root, ca: true }
      - { name: inter, ca: true, issuer: root }
      - { name: web, issuer: inter, dnsNames: [web.example], versions: 2 }
      - { name: web-rootfirst, issuer: inter, dnsNames: [rf.example], chainOrder: root-first }
      - { name: web-pem, issuer: inter, dnsNames: [pem.example], contentType: application/x-pem-file, chainOrder: root-first }
"#;

/// One `objects` entry per kind and option; an object used by several entries (plain, as
/// history slots, with certKeyFiles, pinned) comes plain first.
fn every_kind_objects() -> String {
    let text_1 = kvmount_mock_vault::seeded_version("demo", "text", 1);
    let entry = |kind: &str, name: &str, extra: &str| {
        format!("objectName: {name}\nobjectType: {kind}\n{extra}")
    };
    kvmount_tests::objects(&[
        entry("secret", "text", ""),
        entry(
            "secret",
            "text",
            "objectAlias: text-history\nobjectVersionHistory: 3\n",
        ),
        entry(
            "secret",
            "text",
            "objectAlias: text-history-5\nobjectVersionHistory: 5\n",
        ),
        entry(
            "secret",
            "text",
            &format!(
                "objectAlias: text-pinned-history\nobjectVersion: {text_1}\nobjectVersionHistory: 2\n"
            ),
        ),
        entry(
            "secret",
            "text",
            &format!("objectAlias: text-pinned\nobjectVersion: {text_1}\n"),
        ),
        entry(
            "secret",
            "text",
            "objectAlias: text-0600\nfilePermission: \"0600\"\n",
        ),
        entry("secret", "b64", "objectEncoding: base64\n"),
        entry("secret", "hexval", "objectEncoding: hex\n"),
        entry("key", "rsa", "objectAlias: rsa.pem\n"),
        entry("key", "ec", "objectAlias: ec.pem\n"),
        entry(
            "key",
            "ec",
            "objectAlias: ec-history\nobjectVersionHistory: 2\n",
        ),
        entry("cert", "web", "objectAlias: web.crt\n"),
        entry(
            "cert",
            "web",
            "objectAlias: web-crt-history\nobjectVersionHistory: 2\n",
        ),
        entry("secret", "web", "objectAlias: web.pem\n"),
        entry("secret", "web", "objectAlias: web.pfx\nobjectFormat: pfx\n"),
        entry(
            "secret",
            "web",
            "objectAlias: web.pfx.bin\nobjectFormat: pfx\nobjectEncoding: base64\n",
        ),
        entry(
            "secret",
            "web",
            "objectAlias: web-pair\ncertKeyFiles: \"true\"\n",
        ),
        entry(
            "secret",
            "web",
            "objectAlias: web-history\nobjectVersionHistory: 2\ncertKeyFiles: \"true\"\n",
        ),
        entry(
            "secret",
            "web-rootfirst",
            "objectAlias: rootfirst.pem\ncertKeyFiles: \"true\"\n",
        ),
        entry("secret", "web-pem", "objectAlias: pem.pem\n"),
        entry(
            "secret",
            "web-pem",
            "objectAlias: pem-pair\ncertKeyFiles: \"true\"\n",
        ),
    ])
}

/// Every visible file under `root` (following the writer's links), with its bytes and mode.
fn visible_tree(root: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<u8>, u32)> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("..")
            {
                continue;
            }
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o777;
            out.insert(relative, (std::fs::read(&path).unwrap(), mode));
        }
    }
    out
}

/// The agent and the node plugin write the same files, byte for byte and mode for mode, for
/// the same objects: every object kind, encoding and format, version history (with and
/// without a pinned version, past the last version), certKeyFiles, filePermission.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_renders_every_kind_and_option_as_the_node_plugin_does() {
    let seed = kvmount_mock_vault::Seed::from_yaml(EVERY_KIND_SEED).unwrap();
    let vault = Vault::start(Some(seed)).await;
    let objects = every_kind_objects();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());

    let tmpfs = Tmpfs::new();
    let env = AgentConfig {
        keyvault_name: "demo".into(),
        tenant_id: Some(vault.mock.tenant_id().into()),
        client_id: Some(APP_A.into()),
        token_file: Some(token.display().to_string()),
        mount_path: Some(tmpfs.path.display().to_string()),
        objects: Some(objects.clone()),
        ..Default::default()
    }
    .to_json();
    let mut agent = Sidecar::spawn_bin(
        &kvmount_tests::workspace_bin("kvmount-agent"),
        &agent_args(&vault, &["--init-only"]),
        &[(AGENT_CONFIG_ENV, env)],
        None,
    );
    let status = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", agent.output());

    let daemon = kvmount_tests::NodeDaemon::start(&vault.provider_flags());
    let mut node = kvmount_proto::csi::node_client::NodeClient::new(daemon.csi_channel().await);
    let target = daemon.target("pod-every-kind");
    let token_text = std::fs::read_to_string(&token).unwrap();
    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": token_text, "expirationTimestamp": "2099-01-01T00:00:00Z"}});
    let context = std::collections::HashMap::from([
        ("keyvaultName".to_owned(), "demo".to_owned()),
        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
        ("clientID".to_owned(), APP_A.to_owned()),
        ("objects".to_owned(), objects),
        ("csi.storage.k8s.io/pod.name".to_owned(), "pod".to_owned()),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            "team-a".to_owned(),
        ),
        (
            "csi.storage.k8s.io/pod.uid".to_owned(),
            "uid-pod".to_owned(),
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
    ]);
    node.node_publish_volume(kvmount_tests::publish_request(
        &target,
        "vol-every-kind",
        &context,
    ))
    .await
    .expect("node plugin publish");

    let theirs = visible_tree(&target);
    let ours = visible_tree(&tmpfs.path);
    // The slots and side files are there at all (not a vacuous comparison).
    for file in [
        "text-history/2",
        "text-pinned-history/1",
        "web-history/1.crt",
        "web-pair.key",
        "pem-pair.crt",
    ] {
        assert!(
            theirs.contains_key(file),
            "the node plugin wrote no {file}: {:?}",
            theirs.keys()
        );
    }
    assert!(
        !theirs.contains_key("text-history-5/3"),
        "no file past the last version"
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same files"
    );
    for (file, (bytes, mode)) in &theirs {
        let (our_bytes, our_mode) = &ours[file];
        assert!(
            our_bytes == bytes,
            "{file}: the agent's bytes differ from the node plugin's"
        );
        assert_eq!(our_mode, mode, "{file}: mode");
    }
    let _ = node
        .node_unpublish_volume(kvmount_proto::csi::NodeUnpublishVolumeRequest {
            volume_id: "vol-every-kind".into(),
            target_path: target.display().to_string(),
        })
        .await;
}

/// A seed whose objects each fail in its own way.
const FAILING_SEED: &str = r#"
tenantId: 00000000-0000-0000-0000-000000000001
identities:
  - name: app-a
    clientId: 00000000-0000-0000-0000-00000000000a
    clientSecret: app-a-password
    federated:
      - { issuer: https://oidc.kvmount.local, subject: "system:serviceaccount:team-a:app" }
vaults:
  - name: demo
    access:
      - { identity: app-a, objects: ["secret/*", "key/*", "certificate/*"] }
    secrets:
      - { name: notbase64, versions: ["not base64 !!"] }
      - { name: nothex, versions: ["zz"] }
      - { name: plain, versions: ["p"] }
      - { name: expired, versions: ["gone"], exp: 1000000000 }
      - { name: notyet, versions: ["later"], nbf: 4000000000 }
      - { name: disabled, versions: ["off"], enabled: false }
    keys:
      - { name: signing, versions: [{ kty: EC, curve: P-256 }] }
    certificates:
      - { name: web-pem, dnsNames: [pem.example], contentType: application/x-pem-file }
"#;

/// Each failing object's message names it once: `secret/x: <what>`, never
/// `secret/x: secret/x: ...`, and no field twice.
fn assert_names_once(message: &str, id: &str) {
    println!("{id}: {message}");
    assert_eq!(
        message.matches(id).count(),
        1,
        "{id} not named exactly once: {message}"
    );
    for field in [
        "objectVersion",
        "objectEncoding",
        "objectFormat",
        "certKeyFiles",
    ] {
        assert!(
            message.matches(field).count() <= 1,
            "{field} twice: {message}"
        );
    }
    let parts: Vec<&str> = message.split(": ").collect();
    assert!(
        parts.windows(2).all(|w| w[0] != w[1]),
        "a repeated prefix: {message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_names_its_object_once() {
    let seed = kvmount_mock_vault::Seed::from_yaml(FAILING_SEED).unwrap();
    let vault = Vault::start(Some(seed)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let token_text = std::fs::read_to_string(&token).unwrap();
    let missing_version = "0123456789abcdef0123456789abcdef";
    let cases: Vec<(&str, String)> = vec![
        (
            "secret/notbase64",
            "objectName: notbase64\nobjectType: secret\nobjectEncoding: base64\n".into(),
        ),
        (
            "secret/nothex",
            "objectName: nothex\nobjectType: secret\nobjectEncoding: hex\n".into(),
        ),
        (
            "secret/plain",
            "objectName: plain\nobjectType: secret\ncertKeyFiles: \"true\"\n".into(),
        ),
        (
            "secret/web-pem",
            "objectName: web-pem\nobjectType: secret\nobjectFormat: pfx\n".into(),
        ),
        (
            "secret/expired",
            "objectName: expired\nobjectType: secret\n".into(),
        ),
        (
            "secret/notyet",
            "objectName: notyet\nobjectType: secret\n".into(),
        ),
        (
            "secret/disabled",
            "objectName: disabled\nobjectType: secret\n".into(),
        ),
        (
            "secret/absent",
            "objectName: absent\nobjectType: secret\n".into(),
        ),
        (
            "secret/plain/",
            format!(
                "objectName: plain\nobjectType: secret\nobjectVersion: {missing_version}\nobjectVersionHistory: 2\n"
            ),
        ),
        (
            "key/signing",
            format!("objectName: signing\nobjectType: key\nobjectVersion: {missing_version}\n"),
        ),
    ];
    let provider = kvmount_tests::Provider::start(&vault.provider_flags());
    let mut client = provider.client().await;
    for (id, object) in &cases {
        let objects = kvmount_tests::objects(std::slice::from_ref(object));
        // The provider API (the node plugin's code path).
        let request = kvmount_tests::DriverRequest::new(
            "demo",
            vault.mock.tenant_id(),
            &objects,
            "team-a",
            "pod",
        )
        .workload_identity(APP_A, &token_text)
        .build();
        let status = client.mount(request).await.expect_err(id);
        assert_names_once(status.message(), id);
        // The agent: its last error when it gives up.
        let tmpfs = Tmpfs::new();
        let env = AgentConfig {
            keyvault_name: "demo".into(),
            tenant_id: Some(vault.mock.tenant_id().into()),
            client_id: Some(APP_A.into()),
            token_file: Some(token.display().to_string()),
            mount_path: Some(tmpfs.path.display().to_string()),
            objects: Some(objects),
            ..Default::default()
        }
        .to_json();
        let mut agent = Sidecar::spawn_bin(
            &kvmount_tests::workspace_bin("kvmount-agent"),
            &agent_args(&vault, &["--init-only", "--init-timeout-seconds", "0"]),
            &[(AGENT_CONFIG_ENV, env)],
            None,
        );
        assert!(!agent.wait(Duration::from_secs(20)).success());
        let output = agent.output();
        let last = output
            .lines()
            .find_map(|l| l.split_once("last error: ").map(|(_, e)| e.to_owned()))
            .unwrap_or_else(|| panic!("{id}: no last error:\n{output}"));
        assert_names_once(&last, id);
    }
}
