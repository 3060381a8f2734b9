//! The provider API over a real Unix socket, served by the real `kvmount-provider serve`
//! process, talking TLS to the mock vault: the wire contract, bad input, Key Vault errors,
//! secrets kept out of logs, and the socket's life cycle.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use kvmount_mock_vault::FaultRule;
use kvmount_proto::provider::VersionRequest;
use kvmount_tests::{DriverRequest, Provider, Vault, object, objects};
use tonic::Code;

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
const APP_B: &str = "00000000-0000-0000-0000-00000000000b";

fn two_secrets() -> String {
    objects(&[
        object("db-password", "filePermission: \"0600\"\n"),
        object("api-key", "objectAlias: config/api-key\n"),
    ])
}

#[tokio::test]
async fn version_and_a_driver_shaped_mount_over_the_socket() {
    let vault = Vault::start(None).await;
    let provider = Provider::start(&vault.provider_flags());
    let mode = std::fs::metadata(&provider.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "provider socket mode");
    let mut client = provider.client().await;

    let version = client
        .version(VersionRequest {
            version: "v1alpha1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(version.runtime_name, "kvmount");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.version, "v1alpha1");

    let token = vault.sa_token("team-a", "app");
    let request = DriverRequest::new(
        "demo",
        vault.mock.tenant_id(),
        &two_secrets(),
        "team-a",
        "pod-1",
    )
    .workload_identity(APP_A, &token)
    .build();
    let response = client.mount(request).await.expect("Mount").into_inner();
    assert!(response.error.is_none());
    let files: Vec<(&str, i32, &[u8])> = response
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.mode, f.contents.as_slice()))
        .collect();
    assert_eq!(
        files,
        vec![
            ("db-password", 0o600, b"current-value".as_slice()),
            ("config/api-key", 420, b"demo-api-key-0001".as_slice()),
        ]
    );
    let ids: Vec<(&str, &str)> = response
        .object_version
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    let db_version = kvmount_mock_vault::seeded_version("demo", "db-password", 1);
    let api_version = kvmount_mock_vault::seeded_version("demo", "api-key", 0);
    assert_eq!(
        ids,
        vec![
            ("secret/db-password", db_version.as_str()),
            ("secret/api-key", api_version.as_str())
        ]
    );

    // The service principal path, and a pinned older version.
    let request = DriverRequest::new(
        "demo",
        vault.mock.tenant_id(),
        &objects(&[object(
            "db-password",
            &format!(
                "objectVersion: {}\n",
                kvmount_mock_vault::seeded_version("demo", "db-password", 0)
            ),
        )]),
        "team-a",
        "pod-2",
    )
    .service_principal(APP_A, "app-a-password")
    .build();
    let response = client.mount(request).await.expect("Mount SP").into_inner();
    assert_eq!(response.files[0].contents, b"old-value");

    // The driver does the writing: the provider must not touch target_path.
    assert!(!std::path::Path::new("/var/lib/kubelet/pods/uid-pod-1").exists());
    let stats = vault.mock.stats();
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(200)
        ),
        2
    );
}

/// The shapes the upstream driver really sends for fields it has nothing for: `secrets` is a nil
/// Go map marshalled as `null` for every class without a nodePublishSecretRef (workload
/// identity), `{}` or empty elsewhere; `permission` may be empty. Each mounts; tokens in
/// `secrets` (Kubernetes 1.35, KEP-5538) work as in the attributes.
#[tokio::test]
async fn every_shape_of_an_empty_field_the_driver_sends_mounts() {
    let vault = Vault::start(None).await;
    let provider = Provider::start(&vault.provider_flags());
    let mut client = provider.client().await;
    let token = vault.sa_token("team-a", "app");
    let request = DriverRequest::new(
        "demo",
        vault.mock.tenant_id(),
        &two_secrets(),
        "team-a",
        "pod-1",
    )
    .workload_identity(APP_A, &token);
    for (secrets, permission) in [("null", "420"), ("", "420"), ("{}", ""), (" null ", "null")] {
        let mut mount = request.build();
        mount.secrets = secrets.into();
        mount.permission = permission.into();
        let response = client
            .mount(mount)
            .await
            .unwrap_or_else(|e| panic!("secrets {secrets:?}, permission {permission:?}: {e}"))
            .into_inner();
        assert_eq!(response.files.len(), 2, "secrets {secrets:?}");
        assert!(
            response.files.iter().any(|f| f.mode == 0o644),
            "default mode 0644"
        );
    }
    // Tokens only in secrets.
    let mut mount = request.build();
    let attributes: std::collections::HashMap<String, String> =
        serde_json::from_str(&mount.attributes).expect("json");
    let tokens = attributes["csi.storage.k8s.io/serviceAccount.tokens"].clone();
    let mut without = attributes.clone();
    without.remove("csi.storage.k8s.io/serviceAccount.tokens");
    mount.attributes = serde_json::to_string(&without).expect("json");
    mount.secrets =
        serde_json::json!({"csi.storage.k8s.io/serviceAccount.tokens": tokens}).to_string();
    let response = client
        .mount(mount)
        .await
        .expect("tokens in secrets")
        .into_inner();
    assert_eq!(response.files.len(), 2);
    // A `null` that is not the whole field is still refused, naming it.
    let mut mount = request.build();
    mount.secrets = r#"{"clientid": null}"#.into();
    let err = client.mount(mount).await.expect_err("a null value");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("secrets:"), "{}", err.message());
}

#[tokio::test]
async fn encodings_are_decoded_before_writing() {
    let seed = kvmount_mock_vault::Seed::from_yaml(
        "tenantId: 00000000-0000-0000-0000-0000000000e1\nidentities:\n  - { name: sp, clientId: 00000000-0000-0000-0000-0000000000c1, clientSecret: s3cret-pass }\nvaults:\n  - name: enc\n    secrets:\n      - { name: b64, versions: [\"AAEC/w==\"] }\n      - { name: hexed, versions: [\"00ff10\"] }\n",
    )
    .expect("seed");
    let vault = Vault::start(Some(seed)).await;
    let provider = Provider::start(&vault.provider_flags());
    let mut client = provider.client().await;
    let request = DriverRequest::new(
        "enc",
        "00000000-0000-0000-0000-0000000000e1",
        &objects(&[
            object("b64", "objectEncoding: base64\n"),
            object("hexed", "objectEncoding: hex\n"),
        ]),
        "ns",
        "p",
    )
    .service_principal("00000000-0000-0000-0000-0000000000c1", "s3cret-pass")
    .build();
    let response = client.mount(request).await.expect("Mount").into_inner();
    assert_eq!(response.files[0].contents, vec![0u8, 1, 2, 255]);
    assert_eq!(response.files[1].contents, vec![0u8, 255, 16]);
}

/// Every kind of bad input answers INVALID_ARGUMENT with a message naming the field.
#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let vault = Vault::start(None).await;
    let provider = Provider::start(&vault.provider_flags());
    let mut client = provider.client().await;
    let tenant = vault.mock.tenant_id().to_owned();
    let good = || {
        DriverRequest::new(
            "demo",
            &tenant,
            &objects(&[object("db-password", "")]),
            "team-a",
            "p",
        )
        .service_principal(APP_A, "app-a-password")
    };
    let with_objects = |yaml: String| good().attr("objects", &yaml);
    let mut cases: Vec<(&str, kvmount_proto::provider::MountRequest, &str)> = vec![];
    let mut not_json = good().build();
    not_json.attributes = "{not json".into();
    cases.push(("attributes not JSON", not_json, "attributes"));
    let mut not_strings = good().build();
    not_strings.attributes = r#"{"keyvaultName": 5}"#.into();
    cases.push(("attributes with a number", not_strings, "attributes"));
    let mut secrets_not_json = good().build();
    secrets_not_json.secrets = "[1,2".into();
    cases.push(("secrets not JSON", secrets_not_json, "secrets"));
    let mut no_vault = good();
    no_vault.attributes.remove("keyvaultName");
    cases.push(("missing keyvaultName", no_vault.build(), "keyvaultName"));
    let mut no_tenant = good();
    no_tenant.attributes.remove("tenantID");
    cases.push(("missing tenantID", no_tenant.build(), "tenantID"));
    cases.push((
        "objects not YAML",
        with_objects("array: [unclosed".into()).build(),
        "objects",
    ));
    cases.push((
        "objects without array",
        with_objects("items: []".into()).build(),
        "objects",
    ));
    cases.push((
        "unknown objectType",
        with_objects(objects(&["objectName: a\nobjectType: blob\n".into()])).build(),
        "objects[0].objectType",
    ));
    cases.push((
        "unknown encoding",
        with_objects(objects(&[object("a", "objectEncoding: utf-16\n")])).build(),
        "objects[0].objectEncoding",
    ));
    cases.push((
        "alias with ..",
        with_objects(objects(&[object("a", "objectAlias: ../../etc/x\n")])).build(),
        "objects[0].objectAlias",
    ));
    cases.push((
        "absolute alias",
        with_objects(objects(&[object("a", "objectAlias: /etc/passwd\n")])).build(),
        "objects[0].objectAlias",
    ));
    let long = "x".repeat(256);
    cases.push((
        "alias over 255 bytes",
        with_objects(objects(&[object("a", &format!("objectAlias: {long}\n"))])).build(),
        "objects[0].objectAlias",
    ));
    cases.push((
        "two objects, one file",
        with_objects(objects(&[object("a", ""), object("b", "objectAlias: a\n")])).build(),
        "objects[1]",
    ));
    cases.push((
        "bad filePermission",
        with_objects(objects(&[object("a", "filePermission: \"0999\"\n")])).build(),
        "objects[0].filePermission",
    ));
    let mut bad_permission = good().build();
    bad_permission.permission = "rw-r--r--".into();
    cases.push(("bad permission", bad_permission, "permission"));
    cases.push((
        "pod identity",
        good().attr("usePodIdentity", "true").build(),
        "usePodIdentity",
    ));
    let mut no_identity = good();
    no_identity.secrets.clear();
    cases.push(("no identity at all", no_identity.build(), "clientID"));
    cases.push((
        "workload identity without a token",
        good().attr("clientID", APP_A).build(),
        "clientID",
    ));
    let count = cases.len();
    for (what, request, field) in cases {
        let status = client.mount(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(field),
            "{what}: message {:?} does not name {field}",
            status.message()
        );
        assert!(
            !status.message().contains("app-a-password"),
            "{what} echoed a secret"
        );
    }
    assert!(count >= 18);
    // Nothing reached Key Vault for any of them.
    assert_eq!(
        vault
            .mock
            .stats()
            .count(Some("demo"), Some("secret.get"), None, None),
        0
    );
}

#[tokio::test]
async fn key_vault_errors_map_to_clear_statuses() {
    let vault = Vault::start(None).await;
    let provider = Provider::start(&vault.provider_flags());
    let mut client = provider.client().await;
    let tenant = vault.mock.tenant_id().to_owned();
    let req = |objs: String, ns: &str, client_id: &str, token: &str| {
        DriverRequest::new("demo", &tenant, &objs, ns, "p")
            .workload_identity(client_id, token)
            .build()
    };
    let token_a = vault.sa_token("team-a", "app");
    let token_b = vault.sa_token("team-b", "app");

    // A missing object fails the whole Mount (all or nothing), naming the object.
    let status = client
        .mount(req(
            objects(&[object("db-password", ""), object("no-such-secret", "")]),
            "team-a",
            APP_A,
            &token_a,
        ))
        .await
        .expect_err("missing object");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("secret/no-such-secret"),
        "{}",
        status.message()
    );

    // app-b is not in the vault's access list: 403 -> PERMISSION_DENIED.
    let status = client
        .mount(req(
            objects(&[object("db-password", "")]),
            "team-b",
            APP_B,
            &token_b,
        ))
        .await
        .expect_err("forbidden");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A token whose subject is not federated with the identity: Entra refuses it.
    let status = client
        .mount(req(
            objects(&[object("db-password", "")]),
            "team-b",
            APP_A,
            &token_b,
        ))
        .await
        .expect_err("wrong federation");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("AADSTS70021"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&token_b));

    // A wrong client secret.
    let status = client
        .mount(
            DriverRequest::new(
                "demo",
                &tenant,
                &objects(&[object("db-password", "")]),
                "team-a",
                "p",
            )
            .service_principal(APP_A, "not-the-password")
            .build(),
        )
        .await
        .expect_err("bad secret");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains("not-the-password"));

    // A disabled secret: Key Vault answers 403 Forbidden (SecretDisabled).
    let status = client
        .mount(req(
            objects(&[object("disabled-secret", "")]),
            "team-a",
            APP_A,
            &token_a,
        ))
        .await
        .expect_err("disabled");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Throttling that outlasts the retries: UNAVAILABLE, after honouring Retry-After.
    // (api-key: db-password is cached by now, and the cache would answer without Key Vault.)
    vault
        .mock
        .set_faults(vec![FaultRule {
            route: Some("secret.get".into()),
            status: Some(429),
            retry_after: Some(1),
            ..Default::default()
        }])
        .expect("faults");
    let status = client
        .mount(req(
            objects(&[object("api-key", "")]),
            "team-a",
            APP_A,
            &token_a,
        ))
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let throttled = vault
        .mock
        .stats()
        .count(Some("demo"), Some("secret.get"), None, Some(429));
    assert!((2..=6).contains(&throttled), "retried {throttled} times");

    // A few 503s, then the vault recovers: the Mount succeeds.
    vault.mock.clear_faults();
    vault
        .mock
        .set_faults(vec![FaultRule {
            route: Some("secret.get".into()),
            status: Some(503),
            times: Some(2),
            ..Default::default()
        }])
        .expect("faults");
    client
        .mount(req(
            objects(&[object("api-key", "")]),
            "team-a",
            APP_A,
            &token_a,
        ))
        .await
        .expect("recovers after 503s");
    vault.mock.clear_faults();
}

#[tokio::test]
async fn an_unreachable_vault_is_unavailable() {
    let vault = Vault::start(None).await;
    // Point the vault hosts at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let mut flags = vault.provider_flags();
    let pos = flags
        .iter()
        .position(|f| f == "--resolve")
        .expect("resolve flag");
    flags[pos + 1] = format!("*.{}={addr}", vault.mock.dns_suffix());
    flags.extend(["--max-retries".into(), "1".into()]);
    let provider = Provider::start(&flags);
    let mut client = provider.client().await;
    let request = DriverRequest::new(
        "demo",
        vault.mock.tenant_id(),
        &objects(&[object("db-password", "")]),
        "team-a",
        "p",
    )
    .service_principal(APP_A, "app-a-password")
    .build();
    let status = client.mount(request).await.expect_err("unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// At the most verbose log level, neither success nor failure paths print a secret value,
/// a service-account token or a client secret.
#[tokio::test]
async fn nothing_secret_in_logs_at_trace_level() {
    let seed = kvmount_mock_vault::Seed::from_yaml(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: 00000000-0000-0000-0000-00000000000c\n    clientSecret: canary-client-secret-7f3a\n    federated:\n      - { issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:ns:app\" }\nvaults:\n  - name: logs\n    secrets:\n      - { name: canary, versions: [\"canary-value-old-19c2\", \"canary-value-5e8d\"] }\n      - { name: canary-b64, versions: [\"Y2FuYXJ5LWI2NC12YWx1ZQ==\"] }\n",
    )
    .expect("seed");
    let vault = Vault::start(Some(seed)).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--log-level".into(), "trace".into()]);
    let provider = Provider::start(&flags);
    let mut client = provider.client().await;
    let token = vault.sa_token("ns", "app");
    let tenant = vault.mock.tenant_id().to_owned();
    let objs = objects(&[
        object("canary", ""),
        object("canary-b64", "objectEncoding: base64\n"),
    ]);
    let wi = DriverRequest::new("logs", &tenant, &objs, "ns", "p")
        .workload_identity("00000000-0000-0000-0000-00000000000c", &token);
    let sp = DriverRequest::new("logs", &tenant, &objs, "ns", "p").service_principal(
        "00000000-0000-0000-0000-00000000000c",
        "canary-client-secret-7f3a",
    );
    client.mount(wi.build()).await.expect("WI mount");
    client.mount(sp.build()).await.expect("SP mount");
    // Failure paths: missing object, bad encoding, wrong secret, bad JSON, throttling.
    let _ = client
        .mount(
            wi.clone()
                .attr("objects", &objects(&[object("nope", "")]))
                .build(),
        )
        .await;
    let _ = client
        .mount(
            wi.clone()
                .attr(
                    "objects",
                    &objects(&[object("canary", "objectEncoding: hex\n")]),
                )
                .build(),
        )
        .await;
    let mut wrong = sp.clone();
    wrong
        .secrets
        .insert("clientsecret".into(), "canary-wrong-secret-2b7e".into());
    let _ = client.mount(wrong.build()).await;
    let mut broken = wi.build();
    broken.attributes.push_str("canary-garbage");
    let _ = client.mount(broken).await;
    vault
        .mock
        .set_faults(vec![FaultRule {
            route: Some("secret.get".into()),
            status: Some(503),
            times: Some(30),
            ..Default::default()
        }])
        .expect("faults");
    let _ = client.mount(wi.build()).await;
    vault.mock.clear_faults();
    drop(client);
    // Terminate off the runtime thread: the client's connection task must run to close.
    let (clean, provider) = tokio::task::spawn_blocking(move || {
        let mut provider = provider;
        (provider.terminate(), provider)
    })
    .await
    .expect("join");
    let output = provider.output();
    assert!(
        clean,
        "clean exit on SIGTERM:\n{}",
        &output[output.len().saturating_sub(3000)..]
    );
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "trace logging was on:\n{}",
        &output[..output.len().min(2000)]
    );
    for needle in [
        "canary-value",
        "Y2FuYXJ5LWI2NC12YWx1ZQ",
        "canary-b64-value",
        "canary-client-secret",
        "canary-wrong-secret",
        token.as_str(),
        &token[token.len() - 20..],
    ] {
        assert!(!output.contains(needle), "the log contains {needle:?}");
    }
    // Object names and versions are logged.
    assert!(output.contains("secret/canary"));
}

/// A stale socket is replaced; SIGTERM drains a call in flight, then removes the socket.
#[tokio::test]
async fn socket_life_cycle_and_graceful_drain() {
    let vault = Vault::start(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("stale.sock");
    let listener = std::os::unix::net::UnixListener::bind(&stale).expect("stale socket");
    drop(listener);
    assert!(stale.exists());
    let mut provider = Provider::start_at(Some(stale.clone()), &vault.provider_flags());
    let socket = stale.clone();
    let channel = kvmount_provider::server::unix_channel(&socket)
        .await
        .expect("connect to replaced socket");
    let mut client =
        kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient::new(channel);
    vault
        .mock
        .set_faults(vec![FaultRule {
            route: Some("secret.get".into()),
            latency_ms: Some(1500),
            ..Default::default()
        }])
        .expect("faults");
    let request = DriverRequest::new(
        "demo",
        vault.mock.tenant_id(),
        &objects(&[object("db-password", "")]),
        "team-a",
        "p",
    )
    .service_principal(APP_A, "app-a-password")
    .build();
    let in_flight = tokio::spawn(async move { client.mount(request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = provider.pid();
    let terminated = tokio::task::spawn_blocking(move || provider.terminate());
    let response = in_flight
        .await
        .expect("task")
        .expect("in-flight Mount completes during drain");
    assert_eq!(response.into_inner().files[0].contents, b"current-value");
    assert!(
        terminated.await.expect("join"),
        "exit 0 after SIGTERM (pid {pid})"
    );
    assert!(!socket.exists(), "socket removed on shutdown");
    vault.mock.clear_faults();
}

/// A path that is not a socket is never removed.
#[test]
fn refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kvmount.sock");
    std::fs::write(&path, "keep me").expect("write");
    let output = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args(["serve", "--provider-socket"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a socket"));
    assert_eq!(
        std::fs::read_to_string(&path).expect("still there"),
        "keep me"
    );
}

/// The upstream-driver path shares the node cache: repeated Mounts (the driver's rotation,
/// other pods) cost no Key Vault read within the interval; entries nobody mounts again are
/// erased after the idle time, and their bytes leave the daemon's memory.
#[tokio::test]
async fn provider_mounts_share_the_cache_and_idle_entries_are_erased() {
    let seed = kvmount_mock_vault::Seed::from_yaml(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: 00000000-0000-0000-0000-00000000000a\n    clientSecret: idle-test-secret\nvaults:\n  - name: demo\n    secrets:\n      - { name: idle-canary, versions: [\"kvmount-idle-canary-3f9a2c\"] }\n",
    )
    .expect("seed");
    let vault = Vault::start(Some(seed)).await;
    let mut flags = vault.provider_flags();
    flags.extend([
        "--cache-idle".into(),
        "1s".into(),
        "--rotation-interval".into(),
        "1h".into(),
    ]);
    let provider = Provider::start(&flags);
    let mut client = provider.client().await;
    for pod in ["p1", "p2", "p3"] {
        let request = DriverRequest::new(
            "demo",
            vault.mock.tenant_id(),
            &objects(&[object("idle-canary", "")]),
            "ns",
            pod,
        )
        .service_principal(APP_A, "idle-test-secret")
        .build();
        let response = client.mount(request).await.expect("mount").into_inner();
        assert_eq!(response.files[0].contents, b"kvmount-idle-canary-3f9a2c");
    }
    let gets = vault
        .mock
        .stats()
        .count(Some("demo"), Some("secret.get"), None, Some(200));
    assert_eq!(gets, 1, "three Mounts, one Key Vault read");
    drop(client);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        provider.output().contains("erased: idle"),
        "{}",
        provider.output()
    );
    let copies = kvmount_tests::scan_process_memory(provider.pid(), b"kvmount-idle-canary-3f9a2c");
    assert_eq!(copies, 0, "{copies} copies left after the idle erase");
}
