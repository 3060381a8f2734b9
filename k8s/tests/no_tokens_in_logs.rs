//! Every log line, at TRACE and from every crate (kube, hyper, rustls included), during
//! lookups that succeed and fail: the bearer token never appears, the names do.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvmount_k8s::ClassResolver;
use support::{FORBIDDEN_NS, FakeApiServer, TOKEN, azure_parameters, spc_object};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn token_is_never_logged() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let server = FakeApiServer::start().await;
    server.insert(spc_object("team-a", "app-secrets", azure_parameters()));
    let resolver = ClassResolver::from_kubeconfig(&server.kubeconfig)
        .await
        .unwrap();
    resolver.get("team-a", "app-secrets").await.unwrap();
    resolver.get("team-b", "app-secrets").await.unwrap_err();
    resolver.get(FORBIDDEN_NS, "app-secrets").await.unwrap_err();
    resolver.get("../..", "x").await.unwrap_err();

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("resolved SecretProviderClass"), "{logs}");
    assert!(logs.contains("team-a") && logs.contains("app-secrets"));
    // kube's own request span was captured, so its logs are in what we checked.
    assert!(logs.contains("http.url=https://"), "{logs}");
    assert!(!logs.contains(TOKEN), "token in logs");
    assert!(!logs.contains("kv-demo"), "parameters in logs");
    assert!(!logs.contains("72f988bf"), "parameters in logs");
}
