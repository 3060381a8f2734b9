//! The official Rust SDK, through our `vault` crate, against the mock vault: the TLS
//! challenge flow, both credential types, host overrides, and version reads.

use std::collections::HashMap;

use kvmount_tests::{Vault, object, objects};
use kvmount_vault::params::{TOKENS_ATTRIBUTE, mount_params};
use kvmount_vault::{Connector, ConnectorConfig, ErrorKind, ResolveRule, fetch_all};

fn attrs(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test]
async fn challenge_then_token_then_secret_with_both_credentials() {
    let vault = Vault::start(None).await;
    let connector = vault.connector();
    let tenant = vault.mock.tenant_id().to_owned();
    let objs = objects(&[object("db-password", ""), object("api-key", "")]);
    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": vault.sa_token("team-a", "app"), "expirationTimestamp": "2099-01-01T00:00:00Z"}}).to_string();
    let wi = mount_params(
        &attrs(&[
            ("keyvaultName", "demo".into()),
            ("tenantID", tenant.clone()),
            ("clientID", "00000000-0000-0000-0000-00000000000a".into()),
            ("objects", objs.clone()),
            (TOKENS_ATTRIBUTE, tokens),
        ]),
        &HashMap::new(),
        0o644,
    )
    .expect("params");
    let rendered = fetch_all(&connector, &wi)
        .await
        .expect("workload identity fetch");
    assert_eq!(rendered[0].files[0].contents.expose(), b"current-value");
    assert_eq!(rendered[1].files[0].contents.expose(), b"demo-api-key-0001");
    let stats = vault.mock.stats();
    // The SDK sends the first request without a token on purpose and gets the challenge.
    assert!(
        stats.count(Some("demo"), None, None, Some(401)) >= 1,
        "{stats:?}"
    );
    assert_eq!(
        stats.count(None, Some("token"), None, Some(200)),
        1,
        "one token for both objects"
    );

    let sp = mount_params(
        &attrs(&[
            ("keyvaultName", "demo".into()),
            ("tenantID", tenant),
            ("objects", objs),
        ]),
        &attrs(&[
            ("clientid", "00000000-0000-0000-0000-00000000000a".into()),
            ("clientsecret", "app-a-password".into()),
        ]),
        0o644,
    )
    .expect("params");
    let rendered = fetch_all(&connector, &sp)
        .await
        .expect("service principal fetch");
    assert_eq!(
        rendered[0].version,
        kvmount_mock_vault::seeded_version("demo", "db-password", 1)
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let vault = Vault::start(None).await;
    let connector = Connector::new(ConnectorConfig {
        keyvault_dns_suffix: vault.mock.dns_suffix().into(),
        authority_host: url::Url::parse(&vault.mock.base_url()).expect("url"),
        resolve: vec![
            ResolveRule::parse(&format!(
                "*.{}={}",
                vault.mock.dns_suffix(),
                vault.mock.addr()
            ))
            .expect("rule"),
        ],
        max_retries: 0,
        ..ConnectorConfig::default()
    })
    .expect("connector");
    let params = mount_params(
        &attrs(&[
            ("keyvaultName", "demo".into()),
            ("tenantID", vault.mock.tenant_id().into()),
            ("objects", objects(&[object("db-password", "")])),
        ]),
        &attrs(&[
            ("clientid", "00000000-0000-0000-0000-00000000000a".into()),
            ("clientsecret", "app-a-password".into()),
        ]),
        0o644,
    )
    .expect("params");
    let err = fetch_all(&connector, &params)
        .await
        .expect_err("no CA, no connection");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}
