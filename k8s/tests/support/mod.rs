//! A small HTTPS server that answers like the Kubernetes API server for
//! SecretProviderClass GETs, and a kubeconfig that points at it.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-token-4f1d2c9a8b7e";
pub const PREFIX: &str = "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/";
/// Requests in this namespace are answered 403, as RBAC would.
pub const FORBIDDEN_NS: &str = "restricted";
/// This name is answered 500.
pub const BROKEN_NAME: &str = "broken";

pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    state: Arc<State>,
    _dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

#[derive(Default)]
struct State {
    requests: AtomicUsize,
    paths: Mutex<Vec<String>>,
    objects: Mutex<HashMap<(String, String), Value>>,
}

/// A SecretProviderClass as the API server returns it.
pub fn spc_object(namespace: &str, name: &str, parameters: Value) -> Value {
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("0d6b6a3e-1111-4c2e-9f0a-{:012}", name.len()),
            "resourceVersion": "48213",
            "generation": 1,
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        },
        "spec": {
            "provider": "azure",
            "parameters": parameters,
        },
    })
}

pub fn azure_parameters() -> Value {
    json!({
        "keyvaultName": "kv-demo",
        "tenantID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "objects": "array:\n  - |\n    objectName: x\n    objectType: secret\n",
    })
}

fn status(code: u16, reason: &str, message: String, details: Value) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": details,
            "code": code,
        }),
    )
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let (ca_pem, server_config) = tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&format!("https://{addr}"), &ca_pem, TOKEN),
        )
        .unwrap();
        Self {
            addr,
            ca_pem,
            state,
            _dir: dir,
            kubeconfig,
        }
    }

    pub fn insert(&self, object: Value) {
        let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        self.state
            .objects
            .lock()
            .unwrap()
            .insert((ns, name), object);
    }

    /// Requests that reached the HTTP layer (after TLS), whatever their answer.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }

    /// A kubeconfig for this server with another token, in `dir`.
    pub fn kubeconfig_with_token(&self, dir: &std::path::Path, token: &str) -> PathBuf {
        let path = dir.join("kubeconfig-other-token");
        std::fs::write(
            &path,
            kubeconfig_yaml(&format!("https://{}", self.addr), &self.ca_pem, token),
        )
        .unwrap();
        path
    }
}

pub fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: kvmount
  user:
    token: {token}
contexts:
- name: fake
  context:
    cluster: fake
    user: kvmount
    namespace: default
current-context: fake
"
    )
}

fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    st.paths.lock().unwrap().push(path.clone());
    let (code, body) = answer(st, &req, &path);
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn answer(st: &State, req: &Request<Incoming>, path: &str) -> (StatusCode, Value) {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return status(401, "Unauthorized", "Unauthorized".into(), json!(null));
    }
    if req.method() != hyper::Method::GET {
        return status(
            405,
            "MethodNotAllowed",
            "method not allowed".into(),
            json!(null),
        );
    }
    let parts: Vec<&str> = path
        .strip_prefix(PREFIX)
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    let [ns, "secretproviderclasses", name] = parts[..] else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!(null),
        );
    };
    let details = json!({"name": name, "group": "secrets-store.csi.x-k8s.io", "kind": "secretproviderclasses"});
    if ns == FORBIDDEN_NS {
        return status(
            403,
            "Forbidden",
            format!(
                "secretproviderclasses.secrets-store.csi.x-k8s.io \"{name}\" is forbidden: User \
                 \"system:serviceaccount:kube-system:kvmount\" cannot get resource \
                 \"secretproviderclasses\" in API group \"secrets-store.csi.x-k8s.io\" in the \
                 namespace \"{ns}\""
            ),
            details,
        );
    }
    if name == BROKEN_NAME {
        return status(
            500,
            "InternalError",
            "Internal error occurred: etcdserver: request timed out".into(),
            details,
        );
    }
    match st
        .objects
        .lock()
        .unwrap()
        .get(&(ns.to_owned(), name.to_owned()))
    {
        Some(obj) => (StatusCode::OK, obj.clone()),
        None => status(
            404,
            "NotFound",
            format!("secretproviderclasses.secrets-store.csi.x-k8s.io \"{name}\" not found"),
            details,
        ),
    }
}

/// A CA and a server certificate for 127.0.0.1, made fresh for each server.
fn tls() -> (String, rustls::ServerConfig) {
    let ca_params = || {
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "fake kubernetes CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_cert.pem(), config)
}

/// An address where nothing listens (bound, then released).
pub async fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A TCP server that accepts and then says nothing, to exercise the timeout.
pub async fn silent_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}
