//! The official Rust SDK (azure_security_keyvault_secrets + azure_identity) against the mock.

mod common;

use azure_security_keyvault_secrets::ResourceExt;
use azure_security_keyvault_secrets::models::{
    SecretClientGetSecretOptions, SecretClientListSecretPropertiesVersionsOptions,
    SetSecretParameters,
};
use common::*;
use futures::TryStreamExt;
use kvmount_mock_vault::{Seed, seeded_version};

#[tokio::test]
async fn get_latest_and_by_version() {
    let m = start_demo().await;
    let client = m.secret_client("demo", APP_A, "app-a-password");
    let latest = client
        .get_secret("db-password", None)
        .await
        .expect("get")
        .into_model()
        .expect("model");
    assert_eq!(latest.value.as_deref(), Some("current-value"));
    let id = latest.resource_id().expect("id");
    assert_eq!(id.name, "db-password");
    assert_eq!(
        id.version.as_deref(),
        Some(seeded_version("demo", "db-password", 1).as_str())
    );

    let old = seeded_version("demo", "db-password", 0);
    let opts = SecretClientGetSecretOptions {
        secret_version: Some(old.clone()),
        ..Default::default()
    };
    let first = client
        .get_secret("db-password", Some(opts))
        .await
        .expect("get old")
        .into_model()
        .expect("model");
    assert_eq!(first.value.as_deref(), Some("old-value"));

    // The challenge was answered once, then one token, then two authorised gets.
    let stats = m.vault.stats();
    assert_eq!(
        stats.count(Some("demo"), Some("secret.get"), None, Some(401)),
        1
    );
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/db-password"),
            Some(200)
        ),
        2
    );
    assert_eq!(stats.count(None, Some("token"), Some(APP_A), Some(200)), 1);
    m.vault.shutdown().await;
}

#[tokio::test]
async fn set_creates_a_new_version() {
    let m = start_demo().await;
    let client = m.secret_client("demo", APP_A, "app-a-password");
    let params = SetSecretParameters {
        value: Some("rotated-value".into()),
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    let set = client
        .set_secret("db-password", params.try_into().expect("body"), None)
        .await
        .expect("set")
        .into_model()
        .expect("model");
    let version = set.resource_id().expect("id").version.expect("version");
    assert_eq!(version.len(), 32);
    assert!(
        version
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let latest = client
        .get_secret("db-password", None)
        .await
        .expect("get")
        .into_model()
        .expect("model");
    assert_eq!(latest.value.as_deref(), Some("rotated-value"));
    assert_eq!(latest.content_type.as_deref(), Some("text/plain"));

    let mut pager = client
        .list_secret_properties_versions("db-password", None)
        .expect("pager");
    let mut n = 0;
    while let Some(_p) = pager.try_next().await.expect("page") {
        n += 1;
    }
    assert_eq!(n, 3);
    m.vault.shutdown().await;
}

#[tokio::test]
async fn list_versions_follows_next_links() {
    let mut yaml = String::from(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - { name: app-a, clientId: 00000000-0000-0000-0000-00000000000a, clientSecret: pw }\nvaults:\n  - name: demo\n    secrets:\n      - name: many\n        versions: [",
    );
    yaml.push_str(
        &(0..60)
            .map(|i| format!("v{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    yaml.push_str("]\n");
    let m = start(Seed::from_yaml(&yaml).expect("seed")).await;
    let client = m.secret_client("demo", APP_A, "pw");

    let mut pager = client
        .list_secret_properties_versions("many", None)
        .expect("pager");
    let mut ids = Vec::new();
    while let Some(p) = pager.try_next().await.expect("page") {
        ids.push(p.resource_id().expect("id").version.expect("version"));
    }
    let expected: Vec<String> = (0..60).map(|i| seeded_version("demo", "many", i)).collect();
    assert_eq!(ids, expected);
    // 60 versions at the default 25 per page: three pages.
    assert_eq!(
        m.vault
            .stats()
            .count(Some("demo"), Some("secret.list_versions"), None, Some(200)),
        3
    );

    let opts = SecretClientListSecretPropertiesVersionsOptions {
        maxresults: Some(7),
        ..Default::default()
    };
    let mut pager = client
        .list_secret_properties_versions("many", Some(opts))
        .expect("pager");
    let mut n = 0;
    while pager.try_next().await.expect("page").is_some() {
        n += 1;
    }
    assert_eq!(n, 60);
    assert_eq!(
        m.vault
            .stats()
            .count(Some("demo"), Some("secret.list_versions"), None, Some(200)),
        3 + 9
    );

    let mut pager = client.list_secret_properties(None).expect("pager");
    let mut names = Vec::new();
    while let Some(p) = pager.try_next().await.expect("page") {
        names.push(p.resource_id().expect("id").name);
    }
    assert_eq!(names, vec!["many"]);
    m.vault.shutdown().await;
}

#[tokio::test]
async fn forbidden_identity_gets_403() {
    let m = start_demo().await;
    let client = m.secret_client("demo", APP_B, "app-b-password");
    let err = client
        .get_secret("db-password", None)
        .await
        .expect_err("app-b must be refused");
    assert_eq!(err.http_status().map(u16::from), Some(403), "{err}");
    let text = format!("{err:?}");
    assert!(text.contains(APP_B), "{text}");
    m.vault.shutdown().await;
}

#[tokio::test]
async fn missing_secret_is_404() {
    let m = start_demo().await;
    let client = m.secret_client("demo", APP_A, "app-a-password");
    let err = client
        .get_secret("no-such-secret", None)
        .await
        .expect_err("404");
    assert_eq!(err.http_status().map(u16::from), Some(404), "{err}");
    m.vault.shutdown().await;
}

#[tokio::test]
async fn disabled_secret_is_403() {
    let m = start_demo().await;
    let client = m.secret_client("demo", APP_A, "app-a-password");
    let err = client
        .get_secret("disabled-secret", None)
        .await
        .expect_err("403");
    assert_eq!(err.http_status().map(u16::from), Some(403), "{err}");
    m.vault.shutdown().await;
}

#[tokio::test]
async fn wrong_client_secret_fails_to_authenticate() {
    let m = start_demo().await;
    let client = m.secret_client("demo", APP_A, "wrong");
    let err = client
        .get_secret("db-password", None)
        .await
        .expect_err("auth must fail");
    assert!(format!("{err:?}").contains("AADSTS7000215"), "{err:?}");
    m.vault.shutdown().await;
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk() {
    let m = start_demo().await;
    m.vault
        .set_faults(vec![kvmount_mock_vault::FaultRule {
            route: Some("secret.get".into()),
            status: Some(429),
            retry_after: Some(1),
            times: Some(2),
            ..Default::default()
        }])
        .expect("faults");
    let client = m.secret_client("demo", APP_A, "app-a-password");
    let s = client
        .get_secret("api-key", None)
        .await
        .expect("get after retries")
        .into_model()
        .expect("model");
    assert_eq!(s.value.as_deref(), Some("demo-api-key-0001"));
    let stats = m.vault.stats();
    assert_eq!(
        stats.count(
            Some("demo"),
            Some("secret.get"),
            Some("secret/api-key"),
            Some(429)
        ),
        2
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
    m.vault.shutdown().await;
}
