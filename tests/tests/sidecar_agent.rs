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
