//! `kvmount-sidecar webhook` as a process: HTTPS only, self-managed and file certificates
//! (with reload), `/healthz`, `/readyz`, `/metrics`, AdmissionReviews over the wire, latency,
//! SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (test directories, never secrets)"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;

struct Webhook {
    child: Child,
    output: Arc<Mutex<String>>,
    addr: SocketAddr,
}

impl Webhook {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvmount-sidecar"))
            .arg("webhook")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn webhook");
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = output.lock().unwrap().clone();
            if let Some(rest) = text.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("webhook exited {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "webhook never listened:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            child,
            output,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn terminate(mut self) -> bool {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    kvmount_vault::client::use_ring();
    let builder = reqwest::Client::builder()
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(5));
    match ca_pem {
        Some(pem) => builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(pem).unwrap()),
        None => builder.tls_danger_accept_invalid_certs(true),
    }
    .build()
    .unwrap()
}

fn review(name: &str) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reviews.json"
    ))
    .unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    cases.into_iter().find(|c| c["name"] == name).unwrap()["review"].clone()
}

/// A CA and a localhost serving certificate it signed, as PEM (ca, chain, key).
fn issue(dir: &Path, tag: &str) -> (Vec<u8>, PathBuf, PathBuf) {
    let ca = || {
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, format!("test CA {tag}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca(), ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let cert_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    // Written next to the target and renamed, as cert-manager's kubelet volume does.
    std::fs::write(dir.join(".tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join(".tls.crt.new"), cert.pem()).unwrap();
    std::fs::rename(dir.join(".tls.key.new"), &key_path).unwrap();
    std::fs::rename(dir.join(".tls.crt.new"), &cert_path).unwrap();
    (ca_cert.pem().into_bytes(), cert_path, key_path)
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), reqwest::Error> {
    let resp = client.get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

#[tokio::test]
async fn self_managed_tls_serves_reviews_fast_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let ca_out = dir.path().join("ca.crt");
    let webhook = Webhook::start(&[
        "--tls-self-managed",
        "--tls-dns-name",
        "localhost",
        "--ca-bundle-out",
        ca_out.to_str().unwrap(),
    ]);
    let ca = std::fs::read(&ca_out).unwrap();
    let client = client(Some(&ca));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &webhook.url("/readyz"))
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            webhook.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &webhook.url("/healthz")).await.unwrap().0, 200);

    let body = serde_json::to_vec(&review("annotated-pod")).unwrap();
    let resp = client
        .post(webhook.url("/mutate"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["response"]["uid"], "uid-annotated-pod");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let deny = serde_json::to_vec(&review("invalid-mode")).unwrap();
    let answer: Value = client
        .post(webhook.url("/mutate"))
        .body(deny)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let resp = client
        .post(webhook.url("/mutate"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Latency over the wire, one connection, sequential.
    let mut times = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let resp = client
            .post(webhook.url("/mutate"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "webhook round trip over TLS (debug build): p50 {:?} p99 {:?}",
        times[100], times[198]
    );

    let (status, metrics) = get(&client, &webhook.url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name))
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
            .to_owned()
    };
    assert!(metrics.contains("# TYPE kvmount_webhook_admissions_total counter"));
    assert_eq!(
        line("kvmount_webhook_admissions_total{decision=\"inject\"}"),
        "kvmount_webhook_admissions_total{decision=\"inject\"} 201"
    );
    assert_eq!(
        line("kvmount_webhook_admissions_total{decision=\"deny\"}"),
        "kvmount_webhook_admissions_total{decision=\"deny\"} 1"
    );
    assert_eq!(
        line("kvmount_webhook_admissions_total{decision=\"malformed\"}"),
        "kvmount_webhook_admissions_total{decision=\"malformed\"} 1"
    );
    assert_eq!(line("kvmount_webhook_ready"), "kvmount_webhook_ready 1");
    assert!(metrics.contains("# TYPE kvmount_webhook_admission_seconds histogram"));
    assert_eq!(
        line("kvmount_webhook_admission_seconds_count"),
        "kvmount_webhook_admission_seconds_count 203"
    );
    let expiry: f64 = line("kvmount_webhook_certificate_expiry_timestamp_seconds")
        .split_once(' ')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now,
        "the serving certificate expires in the future: {expiry}"
    );
    println!(
        "webhook decision time (debug build): {}",
        line("kvmount_webhook_admission_seconds_sum")
    );

    // Plain HTTP gets no HTTP answer.
    let mut tcp = std::net::TcpStream::connect(webhook.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&buf)
    );

    // Nothing of the pod's annotations' values is secret, but logs hold no bodies either.
    assert!(
        !webhook.output().contains("db-password"),
        "{}",
        webhook.output()
    );
    assert!(webhook.terminate(), "SIGTERM exits 0");
}

#[tokio::test]
async fn certificate_files_are_waited_for_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let webhook = Webhook::start(&[
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-reload-seconds",
        "1",
    ]);
    // No files yet: alive, not ready.
    let any = client(None);
    assert_eq!(get(&any, &webhook.url("/healthz")).await.unwrap().0, 200);
    assert_eq!(get(&any, &webhook.url("/readyz")).await.unwrap().0, 503);

    for tag in ["first", "rotated"] {
        let (ca, _, _) = issue(dir.path(), tag);
        let trusted = client(Some(&ca));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = get(&trusted, &webhook.url("/readyz")).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tag} certificate never served:\n{}",
                webhook.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A broken replacement keeps the last good pair.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&any, &webhook.url("/readyz")).await.unwrap().0, 200);
    assert!(
        webhook.output().contains("keeping the previous one"),
        "{}",
        webhook.output()
    );
    assert!(webhook.terminate());
}

#[test]
fn refuses_to_start_without_tls() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmount-sidecar"))
        .args(["webhook", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTPS only"));
}

#[path = "../../k8s/tests/support/mod.rs"]
mod fake_api;

#[tokio::test]
async fn secret_provider_class_is_read_through_the_api() {
    let api = fake_api::FakeApiServer::start().await;
    let objects =
        "array:\n  - |\n    objectName: db-password\n    objectType: secret\n    objectAlias: db\n";
    let mut class = fake_api::spc_object(
        "team-a",
        "app-secrets",
        serde_json::json!({
            "keyvaultName": "demo",
            "tenantID": "00000000-0000-0000-0000-000000000001",
            "clientID": "00000000-0000-0000-0000-00000000000a",
            "objects": objects,
        }),
    );
    api.insert(class.clone());
    class["metadata"]["name"] = "other-provider".into();
    class["spec"]["provider"] = "vault".into();
    api.insert(class);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig_with_token(dir.path(), fake_api::TOKEN);
    let ca_out = dir.path().join("ca.crt");
    let webhook = Webhook::start(&[
        "--tls-self-managed",
        "--tls-dns-name",
        "localhost",
        "--ca-bundle-out",
        ca_out.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    let client = client(Some(&std::fs::read(&ca_out).unwrap()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &webhook.url("/readyz"))
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            webhook.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let post = |class: &str| {
        let mut r = review("invalid-secret-provider-class-without-api");
        let annotations = r["request"]["object"]["metadata"]["annotations"]
            .as_object_mut()
            .unwrap();
        annotations.remove("kvmount.io/keyvault");
        annotations.remove("kvmount.io/tenant-id");
        annotations.remove("kvmount.io/client-id");
        annotations.insert("kvmount.io/secret-provider-class".into(), class.into());
        let client = client.clone();
        let url = webhook.url("/mutate");
        async move {
            client
                .post(url)
                .body(r.to_string())
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    let answer = post("app-secrets").await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch: Vec<Value> = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            answer["response"]["patch"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let init = patch
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .unwrap();
    let config_json = init["value"][0]["env"][0]["value"].as_str().unwrap();
    let config: Value = serde_json::from_str(config_json).unwrap();
    assert_eq!(config["keyvaultName"], "demo");
    assert_eq!(config["clientId"], "00000000-0000-0000-0000-00000000000a");
    assert_eq!(
        config["objects"],
        objects.trim_end(),
        "the class's objects, as written"
    );
    assert!(
        api.paths()
            .iter()
            .any(|p| p.ends_with("/namespaces/team-a/secretproviderclasses/app-secrets"))
    );

    for (class, needle) in [
        ("missing", "missing"),
        ("other-provider", "provider \"vault\""),
    ] {
        let answer = post(class).await;
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("annotation kvmount.io/secret-provider-class:")
                && message.contains(needle),
            "{message}"
        );
    }
    assert!(
        !webhook.output().contains(fake_api::TOKEN),
        "the API token is never logged"
    );
}

/// A fake API server for service accounts and the MutatingWebhookConfiguration: records the
/// PUT bodies it gets.
struct FakeKube {
    addr: SocketAddr,
    ca_pem: String,
    puts: Arc<Mutex<Vec<Value>>>,
}

async fn fake_kube() -> FakeKube {
    use http_body_util::BodyExt as _;
    let ca = || {
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "fake kube CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca(), ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let certified =
        kvmount_sidecar::tls::certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
    let store = kvmount_sidecar::tls::CertStore::new().unwrap();
    store.set(certified);
    let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let puts: Arc<Mutex<Vec<Value>>> = Arc::default();
    let recorded = puts.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let method = req.method().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let config = serde_json::json!({
                                "apiVersion": "admissionregistration.k8s.io/v1",
                                "kind": "MutatingWebhookConfiguration",
                                "metadata": {"name": "kvmount", "resourceVersion": "7"},
                                "webhooks": [
                                    {"name": "pods.kvmount.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                                     "clientConfig": {"service": {"name": "kvmount-webhook", "namespace": "kvmount", "path": "/mutate"}}},
                                    {"name": "pods-dry.kvmount.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                                     "clientConfig": {"service": {"name": "kvmount-webhook", "namespace": "kvmount", "path": "/mutate"}}}
                                ]
                            });
                            let (status, answer) = match (method.as_str(), path.as_str()) {
                                ("GET", "/api/v1/namespaces/team-a/serviceaccounts/app") => (
                                    200,
                                    serde_json::json!({
                                        "apiVersion": "v1", "kind": "ServiceAccount",
                                        "metadata": {"name": "app", "namespace": "team-a",
                                            "annotations": {"azure.workload.identity/client-id": "00000000-0000-0000-0000-00000000000a"}}
                                    }),
                                ),
                                (
                                    "GET",
                                    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kvmount",
                                ) => (200, config),
                                (
                                    "PUT",
                                    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kvmount",
                                ) => {
                                    let v: Value = serde_json::from_slice(&body).unwrap();
                                    recorded.lock().unwrap().push(v.clone());
                                    (200, v)
                                }
                                _ => (
                                    404,
                                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": "not found"}),
                                ),
                            };
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(answer.to_string()),
                            ));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeKube {
        addr,
        ca_pem: ca_cert.pem(),
        puts,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_bundle_is_patched_and_service_account_client_ids_are_used() {
    let api = fake_kube().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        fake_api::kubeconfig_yaml(&format!("https://{}", api.addr), &api.ca_pem, "test-token"),
    )
    .unwrap();
    let ca_out = dir.path().join("ca.crt");
    let webhook = Webhook::start(&[
        "--tls-self-managed",
        "--tls-dns-name",
        "localhost",
        "--ca-bundle-out",
        ca_out.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--webhook-config-name",
        "kvmount",
    ]);
    let ca = std::fs::read(&ca_out).unwrap();
    let client = client(Some(&ca));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&client, &webhook.url("/readyz"))
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            webhook.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ready only after the caBundle was written, on every webhook of the configuration.
    let puts = api.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 1, "{puts:?}");
    for w in puts[0]["webhooks"].as_array().unwrap() {
        let bundle = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            w["clientConfig"]["caBundle"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(bundle, ca);
    }
    assert_eq!(
        puts[0]["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );

    let post = |sa: &str| {
        let mut r = review("invalid-client-id-missing");
        r["request"]["object"]["spec"]["serviceAccountName"] = sa.into();
        let client = client.clone();
        let url = webhook.url("/mutate");
        async move {
            client
                .post(url)
                .body(r.to_string())
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let answer = post("app").await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            answer["response"]["patch"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        patch.contains(r#"\"clientId\":\"00000000-0000-0000-0000-00000000000a\""#),
        "{patch}"
    );
    // A service account without the annotation (here: none at all) still needs kvmount.io/client-id.
    let answer = post("other").await;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("annotation kvmount.io/client-id:")
    );
}
