//! Keys, certificates and IMDS over the wire: the REST shapes clients parse, access patterns per
//! object type, and the IMDS token endpoint (Metadata header, identity choice, string numbers).

mod common;

use kvmount_mock_vault::Seed;
use serde_json::Value;

const SEED: &str = r#"
tenantId: 00000000-0000-0000-0000-000000000001
identities:
  - { name: app-a, clientId: 00000000-0000-0000-0000-00000000000a, clientSecret: app-a-password }
  - { name: node, clientId: 00000000-0000-0000-0000-0000000000c1, managedIdentity: system }
  - { name: uami, clientId: 00000000-0000-0000-0000-0000000000c2, managedIdentity: user }
vaults:
  - name: demo
    access:
      - { identity: app-a, objects: ["key/*", "certificate/*", "secret/*"] }
      - { identity: node, objects: ["secret/*"] }
      - { identity: uami, objects: ["key/ec"] }
    secrets:
      - { name: plain, versions: ["v"] }
    keys:
      - { name: ec, versions: [{ kty: EC, curve: P-384 }, { kty: EC, curve: P-521 }] }
      - { name: off, versions: [{ kty: EC }], enabled: false }
    certificates:
      - { name: root, ca: true }
      - { name: leaf, issuer: root, dnsNames: [leaf.example] }
"#;

async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn token(mock: &common::Mock, client_id: &str) -> String {
    let http = mock.http(&[]);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", "app-a-password"),
        ("scope", "https://vault.localhost/.default"),
    ];
    let resp = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            mock.vault.base_url(),
            common::TENANT
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        )
        .send()
        .await
        .expect("token");
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn keys_and_certificates_are_served_like_key_vault() {
    let mock = common::start(Seed::from_yaml(SEED).expect("seed")).await;
    let http = mock.http(&["demo"]);
    let base = mock.vault.vault_url("demo");
    let t = token(&mock, common::APP_A).await;

    let (status, key) = get(&http, &format!("{base}keys/ec?api-version=7.5"), Some(&t)).await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(key["key"]["kty"], "EC");
    assert_eq!(key["key"]["crv"], "P-521");
    let (status, versions) = get(
        &http,
        &format!("{base}keys/ec/versions?api-version=7.5"),
        Some(&t),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(versions["value"].as_array().map(Vec::len), Some(2));
    let (status, off) = get(&http, &format!("{base}keys/off?api-version=7.5"), Some(&t)).await;
    assert_eq!(status, 403, "{off}");

    let (status, cert) = get(
        &http,
        &format!("{base}certificates/leaf/?api-version=7.5"),
        Some(&t),
    )
    .await;
    assert_eq!(status, 200, "{cert}");
    assert!(cert["cer"].as_str().is_some_and(|c| !c.is_empty()));
    let version = cert["id"]
        .as_str()
        .expect("id")
        .rsplit('/')
        .next()
        .expect("v");
    // The certificate created its secret and key with the same version.
    let (status, secret) = get(
        &http,
        &format!("{base}secrets/leaf/{version}?api-version=7.5"),
        Some(&t),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(secret["contentType"], "application/x-pkcs12");
    assert!(secret["kid"].as_str().is_some_and(|k| k.ends_with(version)));
    let (status, _) = get(
        &http,
        &format!("{base}keys/leaf/{version}?api-version=7.5"),
        Some(&t),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = get(
        &http,
        &format!("{base}certificates/ghost?api-version=7.5"),
        Some(&t),
    )
    .await;
    assert_eq!(status, 404);
    mock.vault.shutdown().await;
}

#[tokio::test]
async fn imds_serves_the_seeds_managed_identities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = kvmount_mock_vault::MockVaultConfig::new(dir.path().join("tls"));
    config.seed = Seed::from_yaml(SEED).expect("seed");
    let vault =
        kvmount_mock_vault::start_with_imds(config, Some("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("start");
    let imds = vault.imds_addr().expect("imds");
    let url = |extra: &str| {
        format!(
            "http://{imds}/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https://vault.localhost{extra}"
        )
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let ask = |u: String, metadata: bool| {
        let mut r = http.get(u);
        if metadata {
            r = r.header("Metadata", "true");
        }
        async move {
            let resp = r.send().await.expect("send");
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.expect("json"),
            )
        }
    };
    let (status, body) = ask(url(""), false).await;
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("metadata"))
    );
    let (status, body) = ask(url(""), true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], "00000000-0000-0000-0000-0000000000c1");
    assert!(body["expires_in"].is_string() && body["expires_on"].is_string());
    let (status, body) = ask(url("&client_id=00000000-0000-0000-0000-0000000000c2"), true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], "00000000-0000-0000-0000-0000000000c2");
    let (status, _) = ask(url("&client_id=00000000-0000-0000-0000-00000000000a"), true).await;
    assert_eq!(status, 400, "app-a is not a managed identity");
    let (status, _) = ask(
        format!("http://{imds}/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https://elsewhere"),
        true,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        vault
            .stats()
            .count(None, Some("imds.token"), None, Some(200)),
        2
    );
    vault.shutdown().await;
}
