//! Raw HTTP tests (reqwest) of the wire shapes: challenge, token endpoint, federation, admin API.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use kvmount_mock_vault::{
    AccessTokenRequest, MockVaultConfig, ServiceAccountTokenRequest, mint_access_token,
    mint_service_account_token, mint_service_account_token_at, seeded_version,
};
use serde_json::Value;

/// (form fields, expected `error`, expected AADSTS code)
type TokenCase<'a> = (Vec<(&'a str, &'a str)>, &'a str, u64);

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn decode_claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).expect("claims part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("b64");
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test]
async fn challenge_header_has_the_exact_shape() {
    let m = start_demo().await;
    let resp = m
        .kv_get("demo", "/secrets/db-password?api-version=7.5", None)
        .await;
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"{}/{TENANT}\", resource=\"https://vault.localhost\"",
            m.vault.base_url()
        )
    );
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(resp.headers().contains_key("x-ms-request-id"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert_eq!(
        m.vault.stats().count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(401)
        ),
        1
    );
    m.vault.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_errors_look_like_entra() {
    let m = start_demo().await;
    let scope = "https://vault.localhost/.default";
    let cases: Vec<TokenCase<'_>> = vec![
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", APP_A),
                ("client_secret", "nope"),
                ("scope", scope),
            ],
            "invalid_client",
            7000215,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "00000000-0000-0000-0000-0000000000ff"),
                ("client_secret", "x"),
                ("scope", scope),
            ],
            "unauthorized_client",
            700016,
        ),
        (
            vec![
                ("client_id", APP_A),
                ("client_secret", "app-a-password"),
                ("scope", scope),
            ],
            "invalid_request",
            900144,
        ),
        (
            vec![
                ("grant_type", "password"),
                ("client_id", APP_A),
                ("client_secret", "app-a-password"),
                ("scope", scope),
            ],
            "unsupported_grant_type",
            70003,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", APP_A),
                ("client_secret", "app-a-password"),
                ("scope", "https://vault.localhost/read"),
            ],
            "invalid_scope",
            1002012,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", APP_A),
                ("client_secret", "app-a-password"),
                ("scope", "https://vault.azure.net/.default"),
            ],
            "invalid_resource",
            500011,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", APP_A),
                ("scope", scope),
            ],
            "invalid_client",
            7000218,
        ),
    ];
    for (form, error, code) in cases {
        let (status, body) = m.token_request(&form).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert_eq!(body["error_codes"], serde_json::json!([code]), "{body}");
        let desc = body["error_description"].as_str().expect("description");
        assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
        for field in ["timestamp", "trace_id", "correlation_id"] {
            assert!(body[field].is_string(), "{field} in {body}");
        }
        assert!(
            !desc.contains("app-a-password"),
            "a secret leaked into {desc}"
        );
    }
    // Unknown tenant.
    let url = format!(
        "{}/11111111-1111-1111-1111-111111111111/oauth2/v2.0/token",
        m.vault.base_url()
    );
    let resp = m
        .http(&[])
        .post(url)
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error_codes"], serde_json::json!([90002]));

    // Success shape.
    let (status, body) = m
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP_A),
            ("client_secret", "app-a-password"),
            ("scope", scope),
        ])
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let claims = decode_claims(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "https://vault.localhost");
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(claims["appid"], APP_A);
    assert_eq!(claims["azp"], APP_A);
    assert_eq!(claims["tid"], TENANT);
    for c in ["iat", "nbf", "exp", "oid", "sub"] {
        assert!(!claims[c].is_null(), "{c}");
    }
    m.vault.shutdown().await;
}

async fn assertion_token(m: &Mock, client_id: &str, assertion: &str) -> (u16, Value) {
    m.token_request(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", "https://vault.localhost/.default"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ])
    .await
}

#[tokio::test]
async fn federated_assertions_are_checked_like_entra() {
    let m = start_demo().await;
    let dir = m.tls_dir();

    // Good: team-a/app may act as app-a, and the token reads the vault.
    let good = mint_service_account_token(&dir, &ServiceAccountTokenRequest::new("team-a", "app"))
        .expect("mint");
    let claims = decode_claims(&good);
    assert_eq!(claims["iss"], "https://oidc.kvmount.local");
    assert_eq!(claims["sub"], "system:serviceaccount:team-a:app");
    assert_eq!(
        claims["aud"],
        serde_json::json!(["api://AzureADTokenExchange"])
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], "team-a");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "app");
    let (status, body) = assertion_token(&m, APP_A, &good).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("token");
    let resp = m
        .kv_get(
            "demo",
            "/secrets/api-key?api-version=2025-07-01",
            Some(token),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(decode_claims(token)["appidacr"], "2");

    // Wrong subject: team-b/app is app-b's, not app-a's.
    let wrong_sub =
        mint_service_account_token(&dir, &ServiceAccountTokenRequest::new("team-b", "app"))
            .expect("mint");
    let (status, body) = assertion_token(&m, APP_A, &wrong_sub).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(70021)),
        "{body}"
    );
    // ... but it is fine for app-b.
    assert_eq!(assertion_token(&m, APP_B, &wrong_sub).await.0, 200);

    // Wrong audience.
    let mut req = ServiceAccountTokenRequest::new("team-a", "app");
    req.audience = "https://kubernetes.default.svc".into();
    let wrong_aud = mint_service_account_token(&dir, &req).expect("mint");
    let (status, body) = assertion_token(&m, APP_A, &wrong_aud).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700212)),
        "{body}"
    );

    // Expired.
    let mut req = ServiceAccountTokenRequest::new("team-a", "app");
    req.ttl = Duration::from_secs(3600);
    let expired =
        mint_service_account_token_at(&dir, &req, SystemTime::now() - Duration::from_secs(7200))
            .expect("mint");
    let (status, body) = assertion_token(&m, APP_A, &expired).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700024)),
        "{body}"
    );

    // Bad signature: the right claims, signed by another dev issuer key.
    let other = tempfile::tempdir().expect("tmp");
    let forged = mint_service_account_token(
        other.path(),
        &ServiceAccountTokenRequest::new("team-a", "app"),
    )
    .expect("mint");
    let (status, body) = assertion_token(&m, APP_A, &forged).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(50013)),
        "{body}"
    );

    // Unknown issuer.
    let mut req = ServiceAccountTokenRequest::new("team-a", "app");
    req.issuer = Some("https://elsewhere.example".into());
    let foreign = mint_service_account_token(&dir, &req).expect("mint");
    let (status, body) = assertion_token(&m, APP_A, &foreign).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(70021)),
        "{body}"
    );

    // Garbage.
    let (status, body) = assertion_token(&m, APP_A, "not.a.jwt").await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(50027)),
        "{body}"
    );
    m.vault.shutdown().await;
}

#[tokio::test]
async fn seed_declared_issuer_is_trusted() {
    // A second issuer whose public key comes from the seed; tokens are minted with that folder's key.
    let other = tempfile::tempdir().expect("tmp");
    let token_for_other = |ns: &str| {
        let mut req = ServiceAccountTokenRequest::new(ns, "app");
        req.issuer = Some("https://cluster.example".into());
        mint_service_account_token(other.path(), &req).expect("mint")
    };
    let _ = token_for_other("warmup");
    let pem = std::fs::read_to_string(other.path().join("issuer.pub.pem")).expect("pub key");
    let yaml = format!(
        "tenantId: {TENANT}\nissuers:\n  - issuer: https://cluster.example\n    publicKeyPem: |\n{}\nidentities:\n  - name: c\n    clientId: {APP_A}\n    federated: [{{ issuer: https://cluster.example, subject: \"system:serviceaccount:x:app\" }}]\nvaults: [{{ name: demo, secrets: [{{ name: s, versions: [v] }}] }}]\n",
        pem.lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let m = start(kvmount_mock_vault::Seed::from_yaml(&yaml).expect("seed")).await;
    assert_eq!(
        assertion_token(&m, APP_A, &token_for_other("x")).await.0,
        200
    );
    assert_eq!(
        assertion_token(&m, APP_A, &token_for_other("y")).await.1["error_codes"][0],
        70021
    );
    m.vault.shutdown().await;
}

#[tokio::test]
async fn bad_access_tokens_get_the_challenge() {
    let m = start_demo().await;
    let dir = m.tls_dir();
    let base = AccessTokenRequest {
        tenant_id: TENANT.into(),
        client_id: APP_A.into(),
        audience: "https://vault.localhost".into(),
        ttl: Duration::from_secs(3600),
        issued_at: None,
    };
    let good = mint_access_token(&dir, &base).expect("mint");
    assert_eq!(
        m.kv_get("demo", "/secrets/api-key?api-version=7.6", Some(&good))
            .await
            .status()
            .as_u16(),
        200
    );
    // Trailing slash on the audience is fine.
    let slash = mint_access_token(
        &dir,
        &AccessTokenRequest {
            audience: "https://vault.localhost/".into(),
            ..base.clone()
        },
    )
    .expect("mint");
    assert_eq!(
        m.kv_get("demo", "/secrets/api-key?api-version=7.6", Some(&slash))
            .await
            .status()
            .as_u16(),
        200
    );

    let expired = mint_access_token(
        &dir,
        &AccessTokenRequest {
            issued_at: Some(SystemTime::now() - Duration::from_secs(7200)),
            ..base.clone()
        },
    )
    .expect("mint");
    let other = tempfile::tempdir().expect("tmp");
    let foreign_key = mint_access_token(other.path(), &base).expect("mint");
    let wrong_aud = mint_access_token(
        &dir,
        &AccessTokenRequest {
            audience: "https://vault.azure.net".into(),
            ..base.clone()
        },
    )
    .expect("mint");
    let wrong_tenant = mint_access_token(
        &dir,
        &AccessTokenRequest {
            tenant_id: "11111111-1111-1111-1111-111111111111".into(),
            ..base.clone()
        },
    )
    .expect("mint");
    for (what, token) in [
        ("expired", expired),
        ("foreign key", foreign_key),
        ("audience", wrong_aud),
        ("tenant", wrong_tenant),
        ("garbage", "abc".into()),
    ] {
        let resp = m
            .kv_get("demo", "/secrets/api-key?api-version=7.6", Some(&token))
            .await;
        assert_eq!(resp.status().as_u16(), 401, "{what}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .expect("ascii")
                .starts_with("Bearer authorization="),
            "{what}"
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "Unauthorized", "{what}");
    }
    m.vault.shutdown().await;
}

#[tokio::test]
async fn api_version_rules_and_trailing_slash() {
    let m = start_demo().await;
    let t = m.access_token(APP_A, "app-a-password").await;
    let resp = m.kv_get("demo", "/secrets/db-password", Some(&t)).await;
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "BadParameter");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("api-version")
    );
    for v in ["7.0", "7.2", "7.3", "2016-10-01"] {
        let resp = m
            .kv_get(
                "demo",
                &format!("/secrets/db-password?api-version={v}"),
                Some(&t),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 400, "{v}");
    }
    for v in ["7.4", "7.5", "7.6", "2025-07-01"] {
        let resp = m
            .kv_get(
                "demo",
                &format!("/secrets/db-password/?api-version={v}"),
                Some(&t),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 200, "{v}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["value"], "current-value");
        let version = seeded_version("demo", "db-password", 1);
        assert_eq!(
            body["id"],
            format!(
                "https://demo.vault.localhost:{}/secrets/db-password/{version}",
                m.vault.addr().port()
            )
        );
        assert_eq!(body["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
        assert!(body["attributes"]["created"].is_i64());
    }
    m.vault.shutdown().await;
}

#[tokio::test]
async fn hosts_pick_vaults() {
    let m = start_demo().await;
    let t = m.access_token(APP_A, "app-a-password").await;
    let resp = m
        .kv_get("ghost", "/secrets/db-password?api-version=7.4", Some(&t))
        .await;
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "VaultNotFound");
    // An IP host goes to the first vault.
    let url = format!("{}/secrets/db-password?api-version=7.4", m.vault.base_url());
    let resp = m
        .http(&[])
        .get(url)
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    m.vault.shutdown().await;
}

#[tokio::test]
async fn stats_and_faults_over_the_admin_api() {
    let m = start_demo().await;
    let http = m.http(&[]);
    let base = m.vault.base_url();
    let t = m.access_token(APP_A, "app-a-password").await;
    let rules = serde_json::json!({"rules": [
        {"vault": "demo", "route": "secret.get", "object": "secret/db-password", "status": 429, "retryAfter": 2, "times": 3},
        {"route": "secret.list", "latencyMs": 200, "times": 1}
    ]});
    let resp = http
        .put(format!("{base}/_mock/faults"))
        .body(rules.to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 200);
    let bad = http
        .put(format!("{base}/_mock/faults"))
        .body(r#"{"rules":[{"route":"x"}]}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status().as_u16(), 400);

    for _ in 0..3 {
        let resp = m
            .kv_get("demo", "/secrets/db-password?api-version=7.4", Some(&t))
            .await;
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "Throttled");
    }
    assert_eq!(
        m.kv_get("demo", "/secrets/db-password?api-version=7.4", Some(&t))
            .await
            .status()
            .as_u16(),
        200
    );
    let started = std::time::Instant::now();
    assert_eq!(
        m.kv_get("demo", "/secrets?api-version=7.4", Some(&t))
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let stats: kvmount_mock_vault::Stats = http
        .get(format!("{base}/_mock/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats, m.vault.stats());
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(429)
        ),
        3
    );
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(200)
        ),
        1
    );
    assert_eq!(
        stats.count(Some("demo"), Some("secret.list"), None, Some(200)),
        1
    );
    assert_eq!(stats.count(None, Some("token"), None, None), 1);
    assert_eq!(stats.total, 6);

    assert_eq!(
        http.delete(format!("{base}/_mock/stats"))
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16(),
        204
    );
    assert_eq!(m.vault.stats().total, 0);
    http.put(format!("{base}/_mock/faults"))
        .body(r#"{"rules":[{"status":503}]}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(
        m.kv_get("demo", "/secrets?api-version=7.4", Some(&t))
            .await
            .status()
            .as_u16(),
        503
    );
    assert_eq!(
        http.delete(format!("{base}/_mock/faults"))
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16(),
        204
    );
    assert_eq!(
        m.kv_get("demo", "/secrets?api-version=7.4", Some(&t))
            .await
            .status()
            .as_u16(),
        200
    );
    m.vault.shutdown().await;
}

#[tokio::test]
async fn delete_recover_purge() {
    let m = start_demo().await;
    let t = m.access_token(APP_A, "app-a-password").await;
    let http = m.http(&["demo"]);
    let vault = m.vault.vault_url("demo");
    let url = |p: &str| format!("{vault}{p}?api-version=7.5");

    let resp = http
        .delete(url("secrets/api-key"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["recoveryId"], format!("{vault}deletedsecrets/api-key"));
    assert!(body["deletedDate"].is_i64() && body["scheduledPurgeDate"].is_i64());
    assert!(body.get("value").is_none());

    assert_eq!(
        http.get(url("secrets/api-key"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        http.get(url("deletedsecrets/api-key"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16(),
        200
    );
    let listed: Value = http
        .get(url("deletedsecrets"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["value"].as_array().map(Vec::len), Some(1));
    let put = http
        .put(url("secrets/api-key"))
        .bearer_auth(&t)
        .body(r#"{"value":"x"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 409);

    let resp = http
        .post(url("deletedsecrets/api-key/recover"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("recover");
    assert_eq!(resp.status().as_u16(), 200);
    let resp = http
        .get(url("secrets/api-key"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("get");
    assert_eq!(
        resp.json::<Value>().await.expect("json")["value"],
        "demo-api-key-0001"
    );

    assert_eq!(
        http.delete(url("secrets/api-key"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        http.delete(url("deletedsecrets/api-key"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("purge")
            .status()
            .as_u16(),
        204
    );
    assert_eq!(
        http.get(url("deletedsecrets/api-key"))
            .bearer_auth(&t)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16(),
        404
    );

    // Bad bodies are clear 400s.
    for body in ["", "{", r#"{"contentType":"x"}"#, r#"{"value":5}"#] {
        let resp = http
            .put(url("secrets/new-one"))
            .bearer_auth(&t)
            .body(body)
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status().as_u16(), 400, "{body}");
    }
    let stats = m.vault.stats();
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.delete"),
            Some("secret/api-key"),
            Some(200)
        ),
        2
    );
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("deleted_secret.purge"),
            Some("secret/api-key"),
            Some(204)
        ),
        1
    );
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("deleted_secret.recover"),
            Some("secret/api-key"),
            Some(200)
        ),
        1
    );
    m.vault.shutdown().await;
}

#[tokio::test]
async fn default_access_is_read_only() {
    let yaml = format!(
        "tenantId: {TENANT}\nidentities: [{{ name: a, clientId: {APP_A}, clientSecret: pw }}]\nvaults: [{{ name: open, secrets: [{{ name: s, versions: [v] }}] }}]\n"
    );
    let m = start(kvmount_mock_vault::Seed::from_yaml(&yaml).expect("seed")).await;
    let t = m.access_token(APP_A, "pw").await;
    assert_eq!(
        m.kv_get("open", "/secrets/s?api-version=7.4", Some(&t))
            .await
            .status()
            .as_u16(),
        200
    );
    let put = m
        .http(&["open"])
        .put(format!(
            "{}secrets/s?api-version=7.4",
            m.vault.vault_url("open")
        ))
        .bearer_auth(&t)
        .body(r#"{"value":"x"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 403);
    let body: Value = put.json().await.expect("json");
    let msg = body["error"]["message"].as_str().expect("msg");
    assert!(
        msg.contains(&format!("appid={APP_A}"))
            && msg.contains("secrets set permission")
            && msg.contains("'open;"),
        "{msg}"
    );
    m.vault.shutdown().await;
}

#[tokio::test]
async fn entra_documents() {
    let m = start_demo().await;
    let http = m.http(&[]);
    let base = m.vault.base_url();
    let doc: Value = http
        .get(format!(
            "{base}/{TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        doc["token_endpoint"],
        format!("{base}/{TENANT}/oauth2/v2.0/token")
    );
    let disc: Value = http
        .get(format!("{base}/common/discovery/instance?api-version=1.1&authorization_endpoint={base}/{TENANT}/oauth2/v2.0/authorize"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        disc["tenant_discovery_endpoint"],
        format!("{base}/{TENANT}/v2.0/.well-known/openid-configuration")
    );
    let jwks: Value = http
        .get(format!("{base}/{TENANT}/discovery/v2.0/keys"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    m.vault.shutdown().await;
}

#[tokio::test]
async fn tls_dir_is_reused_and_follows_the_suffix() {
    let dir = tempfile::tempdir().expect("tmp");
    let tls = dir.path().join("tls");
    let first = kvmount_mock_vault::start(MockVaultConfig::new(&tls))
        .await
        .expect("start");
    let ca = std::fs::read(first.ca_path()).expect("ca");
    let server = std::fs::read(tls.join("server.pem")).expect("server");
    first.shutdown().await;
    for f in [
        "ca-key.pem",
        "server-key.pem",
        "token-signing-key.pem",
        "issuer-key.pem",
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tls.join(f))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let again = kvmount_mock_vault::start(MockVaultConfig::new(&tls))
        .await
        .expect("start");
    assert_eq!(std::fs::read(again.ca_path()).expect("ca"), ca);
    assert_eq!(
        std::fs::read(tls.join("server.pem")).expect("server"),
        server
    );
    again.shutdown().await;
    let mut config = MockVaultConfig::new(&tls);
    config.dns_suffix = "kv.test".into();
    let other = kvmount_mock_vault::start(config).await.expect("start");
    assert_eq!(std::fs::read(other.ca_path()).expect("ca"), ca);
    assert_ne!(
        std::fs::read(tls.join("server.pem")).expect("server"),
        server
    );
    assert_eq!(
        other.vault_url("demo"),
        format!("https://demo.kv.test:{}/", other.addr().port())
    );
    other.shutdown().await;
}

#[tokio::test]
async fn certificate_backed_secrets_carry_kid() {
    let yaml = format!(
        "tenantId: {TENANT}\nidentities: [{{ name: a, clientId: {APP_A}, clientSecret: pw }}]\nvaults:\n  - name: demo\n    secrets:\n      - {{ name: web, versions: [pem-data], contentType: application/x-pem-file, certificateBacked: true }}\n      - {{ name: plain, versions: [v] }}\n"
    );
    let m = start(kvmount_mock_vault::Seed::from_yaml(&yaml).expect("seed")).await;
    let t = m.access_token(APP_A, "pw").await;
    let web: Value = m
        .kv_get("demo", "/secrets/web?api-version=7.4", Some(&t))
        .await
        .json()
        .await
        .expect("json");
    let version = seeded_version("demo", "web", 0);
    assert_eq!(
        web["kid"],
        format!(
            "https://demo.vault.localhost:{}/keys/web/{version}",
            m.vault.addr().port()
        )
    );
    assert_eq!(web["managed"], true);
    assert_eq!(web["contentType"], "application/x-pem-file");
    let plain: Value = m
        .kv_get("demo", "/secrets/plain?api-version=7.4", Some(&t))
        .await
        .json()
        .await
        .expect("json");
    assert!(plain.get("kid").is_none() && plain.get("managed").is_none());
    m.vault.shutdown().await;
}

#[tokio::test]
async fn reset_faults_cut_the_response_mid_body() {
    let m = start_demo().await;
    let t = m.access_token(APP_A, "app-a-password").await;
    m.vault
        .set_faults(vec![kvmount_mock_vault::FaultRule {
            route: Some("secret.get".into()),
            reset: true,
            times: Some(2),
            ..Default::default()
        }])
        .expect("faults");
    // The status line and headers arrive (the whole length promised), then the body ends early.
    for _ in 0..2 {
        let resp = m
            .kv_get("demo", "/secrets/db-password?api-version=7.5", Some(&t))
            .await;
        assert_eq!(resp.status().as_u16(), 200);
        let promised = resp.content_length().expect("content-length");
        assert!(promised > 20, "{promised}");
        let err = resp.bytes().await.expect_err("the body never completes");
        assert!(!err.to_string().contains("current-value"), "{err}");
    }
    // Used up: the next read is whole.
    let resp = m
        .kv_get("demo", "/secrets/db-password?api-version=7.5", Some(&t))
        .await;
    let body: Value = resp.json().await.expect("whole json");
    assert_eq!(body["value"], "current-value");
    // A reset rule alone is valid over the admin API too.
    let resp = m
        .http(&[])
        .put(format!("{}/_mock/faults", m.vault.base_url()))
        .body(r#"{"rules":[{"route":"token","reset":true}]}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn entra_hosts_name_the_authority_and_are_in_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = MockVaultConfig::new(dir.path().join("tls"));
    config.entra_hosts = vec![
        "login.stack.test".into(),
        "login.microsoftonline.com".into(),
    ];
    let vault = kvmount_mock_vault::start(config).await.expect("start mock");
    let port = vault.addr().port();
    assert_eq!(vault.base_url(), format!("https://login.stack.test:{port}"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(vault.ca_path()).expect("ca"))
        .expect("ca pem");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("login.stack.test", vault.addr())
        .resolve("login.microsoftonline.com", vault.addr())
        .build()
        .expect("client");
    // MSAL's instance discovery goes to login.microsoftonline.com for an unknown authority.
    let discovery: Value = http
        .get(format!(
            "https://login.microsoftonline.com:{port}/common/discovery/instance?api-version=1.1"
        ))
        .send()
        .await
        .expect("discovery over TLS for the second name")
        .json()
        .await
        .expect("json");
    let openid_url = discovery["tenant_discovery_endpoint"]
        .as_str()
        .expect("url");
    assert_eq!(
        openid_url,
        format!("https://login.stack.test:{port}/{TENANT}/v2.0/.well-known/openid-configuration")
    );
    let openid: Value = http
        .get(openid_url)
        .send()
        .await
        .expect("openid over TLS for the first name")
        .json()
        .await
        .expect("json");
    assert_eq!(
        openid["token_endpoint"],
        format!("https://login.stack.test:{port}/{TENANT}/oauth2/v2.0/token")
    );
    vault.shutdown().await;
    let bad = MockVaultConfig {
        entra_hosts: vec!["not a name".into()],
        ..MockVaultConfig::new(dir.path().join("tls"))
    };
    let err = kvmount_mock_vault::start(bad).await.expect_err("refused");
    assert!(err.to_string().contains("entra_hosts"), "{err}");
}

/// `--tls-san`: the server certificate also covers the names and addresses pods reach the mock
/// by (a node IP in the cluster suite); openssl, not our TLS stack, verifies it against the CA.
#[tokio::test]
async fn extra_names_and_addresses_are_in_the_server_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = MockVaultConfig::new(dir.path().join("tls"));
    config.listen = "127.0.0.2:0".parse().expect("addr");
    config.tls_sans = vec!["127.0.0.2".into(), "mock.cluster.test".into()];
    let vault = kvmount_mock_vault::start(config).await.expect("start mock");
    let connect = vault.addr().to_string();
    let ca = vault.ca_path();
    let verify = |check: &[&str]| {
        let connect = connect.clone();
        let ca = ca.clone();
        let check: Vec<String> = check.iter().map(|s| (*s).to_owned()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new("openssl")
                    .args(["s_client", "-connect", &connect, "-CAfile"])
                    .arg(&ca)
                    .args(&check)
                    .args(["-verify_return_error", "-brief"])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .expect("openssl");
                String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout)
            })
            .await
            .expect("join")
        }
    };
    let by_ip = verify(&["-verify_ip", "127.0.0.2"]).await;
    assert!(by_ip.contains("Verification: OK"), "{by_ip}");
    let by_name = verify(&[
        "-verify_hostname",
        "mock.cluster.test",
        "-servername",
        "mock.cluster.test",
    ])
    .await;
    assert!(by_name.contains("Verification: OK"), "{by_name}");
    let other = verify(&["-verify_hostname", "other.cluster.test"]).await;
    assert!(
        !other.contains("Verification: OK"),
        "a name not asked for: {other}"
    );
    vault.shutdown().await;
    let bad = MockVaultConfig {
        tls_sans: vec!["not a name".into()],
        ..MockVaultConfig::new(dir.path().join("tls"))
    };
    let err = kvmount_mock_vault::start(bad).await.expect_err("refused");
    assert!(err.to_string().contains("tls_sans"), "{err}");
}
