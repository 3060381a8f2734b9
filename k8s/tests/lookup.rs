//! ClassResolver against a local HTTPS server that answers like kube-apiserver.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod support;

use std::time::{Duration, Instant};

use kvmount_k8s::{ClassResolver, ErrorKind, LookupError};
use serde_json::json;
use support::{BROKEN_NAME, FORBIDDEN_NS, FakeApiServer, azure_parameters, spc_object};

async fn server_and_resolver() -> (FakeApiServer, ClassResolver) {
    let server = FakeApiServer::start().await;
    server.insert(spc_object("team-a", "app-secrets", azure_parameters()));
    let resolver = ClassResolver::from_kubeconfig(&server.kubeconfig)
        .await
        .unwrap();
    (server, resolver)
}

#[tokio::test]
async fn found_class_has_every_field() {
    let (server, resolver) = server_and_resolver().await;
    let spc = resolver.get("team-a", "app-secrets").await.unwrap();
    assert_eq!(spc.name, "app-secrets");
    assert_eq!(spc.namespace, "team-a");
    assert_eq!(spc.provider, "azure");
    assert_eq!(
        spc.uid.as_deref(),
        Some("0d6b6a3e-1111-4c2e-9f0a-000000000011")
    );
    assert_eq!(spc.resource_version.as_deref(), Some("48213"));
    assert_eq!(spc.parameters.len(), 3);
    assert_eq!(spc.parameters["keyvaultName"], "kv-demo");
    assert_eq!(
        spc.parameters["tenantID"],
        "72f988bf-86f1-41af-91ab-2d7cd011db47"
    );
    assert_eq!(
        spc.parameters["objects"],
        "array:\n  - |\n    objectName: x\n    objectType: secret\n"
    );
    assert_eq!(
        server.paths(),
        ["/apis/secrets-store.csi.x-k8s.io/v1/namespaces/team-a/secretproviderclasses/app-secrets"]
    );

    // Clones share the client and keep working.
    let again = resolver.clone().get("team-a", "app-secrets").await.unwrap();
    assert_eq!(again, spc);
    assert!(!format!("{resolver:?}").contains(support::TOKEN));
}

#[tokio::test]
async fn class_in_another_namespace_is_not_found() {
    let (server, resolver) = server_and_resolver().await;
    let err = resolver.get("team-b", "app-secrets").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    match &err {
        LookupError::NotFound { namespace, name } => {
            assert_eq!(namespace, "team-b");
            assert_eq!(name, "app-secrets");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "SecretProviderClass team-b/app-secrets not found"
    );
    let err = resolver.get("team-a", "missing").await.unwrap_err();
    assert!(matches!(err, LookupError::NotFound { .. }), "{err:?}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn forbidden_is_permission_denied() {
    let (_server, resolver) = server_and_resolver().await;
    let err = resolver.get(FORBIDDEN_NS, "app-secrets").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    match &err {
        LookupError::Forbidden {
            namespace,
            name,
            message,
        } => {
            assert_eq!(namespace, FORBIDDEN_NS);
            assert_eq!(name, "app-secrets");
            assert!(message.contains("cannot get resource"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_token_is_unauthorized() {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = server.kubeconfig_with_token(dir.path(), "not-the-token");
    let resolver = ClassResolver::from_kubeconfig(&path).await.unwrap();
    let err = resolver.get("team-a", "app-secrets").await.unwrap_err();
    assert!(matches!(err, LookupError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(!err.to_string().contains("not-the-token"));
}

#[tokio::test]
async fn server_error_is_unavailable() {
    let (_server, resolver) = server_and_resolver().await;
    let err = resolver.get("team-a", BROKEN_NAME).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.to_string().contains("500"), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let server = FakeApiServer::start().await;
    let addr = support::unused_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        support::kubeconfig_yaml(&format!("https://{addr}"), &server.ca_pem, support::TOKEN),
    )
    .unwrap();
    let resolver = ClassResolver::from_kubeconfig(&path).await.unwrap();
    let err = resolver.get("team-a", "app-secrets").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(matches!(err, LookupError::Unavailable { .. }));
}

#[tokio::test]
async fn silent_server_times_out_as_unavailable() {
    let server = FakeApiServer::start().await;
    let addr = support::silent_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        support::kubeconfig_yaml(&format!("https://{addr}"), &server.ca_pem, support::TOKEN),
    )
    .unwrap();
    let resolver = ClassResolver::from_kubeconfig(&path)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = resolver.get("team-a", "app-secrets").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.to_string().contains("within"), "{err}");
}

#[tokio::test]
async fn invalid_names_are_refused_without_a_request() {
    let (server, resolver) = server_and_resolver().await;
    let cases: &[(&str, &str, &str)] = &[
        ("../..", "app-secrets", "namespace"),
        ("..", "app-secrets", "namespace"),
        ("", "app-secrets", "namespace"),
        ("Team-A", "app-secrets", "namespace"),
        ("team-a/../kube-system", "app-secrets", "namespace"),
        ("a.b", "app-secrets", "namespace"),
        (&"a".repeat(64), "app-secrets", "namespace"),
        (
            "team-a",
            "../../../api/v1/namespaces/kube-system/secrets/x",
            "name",
        ),
        ("team-a", "..", "name"),
        ("team-a", "", "name"),
        ("team-a", "app-secrets?watch=true", "name"),
        ("team-a", "app%2fsecrets", "name"),
        ("team-a", "app secrets", "name"),
        ("team-a", &"a".repeat(254), "name"),
    ];
    for (ns, name, want_field) in cases {
        let err = resolver.get(ns, name).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{ns:?} {name:?}");
        match err {
            LookupError::InvalidName { field, .. } => assert_eq!(field, *want_field),
            other => panic!("{ns:?} {name:?}: {other:?}"),
        }
    }
    assert_eq!(server.requests(), 0, "{:?}", server.paths());
    // The longest valid names do go out.
    let err = resolver
        .get(&"a".repeat(63), &"b".repeat(253))
        .await
        .unwrap_err();
    assert!(matches!(err, LookupError::NotFound { .. }), "{err:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn parameters_not_a_string_map_is_invalid_object() {
    let (server, resolver) = server_and_resolver().await;
    server.insert(spc_object(
        "team-a",
        "numbers",
        json!({"keyvaultName": "kv", "objects": ["x"], "usePodIdentity": false}),
    ));
    server.insert(spc_object("team-a", "list", json!(["keyvaultName=kv"])));
    let err = resolver.get("team-a", "numbers").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    match &err {
        LookupError::InvalidObject {
            namespace,
            name,
            field,
            message,
        } => {
            assert_eq!((namespace.as_str(), name.as_str()), ("team-a", "numbers"));
            // Keys come in order; the first non-string one is named.
            assert_eq!(field, "spec.parameters.objects");
            assert!(
                message.contains("expected a string, found an array"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let err = resolver.get("team-a", "list").await.unwrap_err();
    match &err {
        LookupError::InvalidObject { field, message, .. } => {
            assert_eq!(field, "spec.parameters");
            assert!(message.contains("map of strings"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_kubeconfig_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClassResolver::from_kubeconfig(&dir.path().join("nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, LookupError::Config { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "users: [token: secret-in-a-broken-file\n").unwrap();
    let err = ClassResolver::from_kubeconfig(&bad).await.unwrap_err();
    assert!(matches!(err, LookupError::Config { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("secret-in-a-broken-file"),
        "{err}"
    );
}

/// `infer()` and `in_cluster()` read the environment, which a test may not change in
/// its own process (edition 2024 makes `set_var` unsafe, and unsafe is forbidden), so a
/// child run of this test binary does it with the environment set by the parent.
#[tokio::test]
async fn infer_falls_back_to_kubeconfig_outside_a_pod() {
    let (server, _) = server_and_resolver().await;
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "infer_child", "--ignored", "--nocapture"])
        .env("KUBECONFIG", &server.kubeconfig)
        .env("KVMOUNT_K8S_INFER_CHILD", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
#[ignore = "run by infer_falls_back_to_kubeconfig_outside_a_pod with its environment"]
async fn infer_child() {
    if std::env::var_os("KVMOUNT_K8S_INFER_CHILD").is_none() {
        return;
    }
    let err = ClassResolver::in_cluster().await.unwrap_err();
    assert!(matches!(err, LookupError::Config { .. }), "{err:?}");
    let resolver = ClassResolver::infer().await.unwrap();
    let spc = resolver.get("team-a", "app-secrets").await.unwrap();
    assert_eq!(spc.provider, "azure");
}

#[tokio::test]
async fn untrusted_server_certificate_is_unavailable() {
    let server = FakeApiServer::start().await;
    let other = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    // Right address, another cluster's CA.
    std::fs::write(
        &path,
        support::kubeconfig_yaml(
            &format!("https://{}", server.addr),
            &other.ca_pem,
            support::TOKEN,
        ),
    )
    .unwrap();
    let resolver = ClassResolver::from_kubeconfig(&path).await.unwrap();
    let err = resolver.get("team-a", "app-secrets").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert_eq!(server.requests(), 0);
}
