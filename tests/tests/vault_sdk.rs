//! The official Rust SDK, through our `vault` crate, against the mock vault: the TLS
//! challenge flow, both credential types, host overrides, and version reads.

use std::collections::HashMap;

use kvmount_tests::{Vault, object, objects};
use kvmount_vault::cloud::EnvFile;
use kvmount_vault::params::{TOKENS_ATTRIBUTE, mount_params};
use kvmount_vault::{Connector, ConnectorConfig, ErrorKind, ResolveRule, fetch_all};

fn attrs(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A mount of `db-password` in the demo vault as app-a (service principal).
fn app_a_db_password(vault: &Vault) -> kvmount_vault::MountParams {
    mount_params(
        &attrs(&[
            ("keyvaultName", "demo".into()),
            ("tenantID", vault.mock.tenant_id().to_owned()),
            ("objects", objects(&[object("db-password", "")])),
        ]),
        &attrs(&[
            ("clientid", "00000000-0000-0000-0000-00000000000a".into()),
            ("clientsecret", "app-a-password".into()),
        ]),
        0o644,
        EnvFile::Beneath(None),
    )
    .expect("params")
}

#[tokio::test]
async fn token_then_secrets_with_both_credentials() {
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
        EnvFile::Beneath(None),
    )
    .expect("params");
    let rendered = fetch_all(&connector, &wi)
        .await
        .expect("workload identity fetch");
    assert_eq!(rendered[0].files[0].contents.expose(), b"current-value");
    assert_eq!(rendered[1].files[0].contents.expose(), b"demo-api-key-0001");
    let stats = vault.mock.stats();
    // The reads go out with a token for the cloud's Key Vault scope; the only challenge is
    // the answer to the unauthorized copy that opened the connection.
    assert_eq!(
        stats.count(Some("demo"), None, None, Some(401)),
        1,
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
        EnvFile::Beneath(None),
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
    let params = app_a_db_password(&vault);
    let err = fetch_all(&connector, &params)
        .await
        .expect_err("no CA, no connection");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

/// A new client's reads go out authorized, together, and on one connection: the first one
/// also sends an unauthorized copy of itself, which opens the connection (Key Vault answers it
/// with its challenge), and none of the reads waits for that answer.
#[tokio::test]
async fn a_new_clients_reads_share_one_connection_and_do_not_wait_for_the_challenge() {
    use futures::FutureExt as _;
    let vault = Vault::start(None).await;
    // Everything about the first object takes a second, the challenge to its copy too; the
    // others are quick.
    vault
        .mock
        .set_faults(vec![kvmount_mock_vault::FaultRule {
            route: Some("secret.get".into()),
            object: Some("secret/db-password".into()),
            latency_ms: Some(1_000),
            ..Default::default()
        }])
        .expect("latency fault");
    let connector = vault.connector();
    let params = app_a_db_password(&vault);
    let credential = connector.credential_for(&params).expect("credential");
    let client = connector
        .vault_client_for(&params, credential)
        .expect("client");
    let mock = &vault.mock;
    let challenges = || mock.stats().count(Some("demo"), None, None, Some(401));
    let client = &client;
    // Each read reports whether Key Vault had answered the challenge when it ended.
    let read = |name: &'static str| async move {
        let read = client.read_secret(name, None, &[]).await;
        read.map(|_| challenges() > 0)
    };
    let after_challenge = futures::future::try_join_all(vec![
        read("db-password").boxed_local(),
        read("api-key").boxed_local(),
        read("api-key").boxed_local(),
    ])
    .await
    .expect("reads");
    assert_eq!(
        after_challenge[1..],
        [false, false],
        "the quick reads ended before the challenge was answered"
    );
    let stats = vault.mock.stats();
    assert_eq!(
        stats.count(Some("demo"), None, None, Some(401)),
        1,
        "one challenge, to the copy: {stats:?}"
    );
    assert_eq!(
        stats.count(Some("demo"), Some("secret.get"), None, Some(200)),
        3,
        "{stats:?}"
    );
    assert_eq!(
        stats.count(None, Some("token"), None, Some(200)),
        1,
        "one token for three reads: {stats:?}"
    );
    let host = format!("demo.{}", mock.dns_suffix());
    assert_eq!(
        stats.connections.get(&host),
        Some(&1),
        "one connection to the vault: {stats:?}"
    );
}

/// A vault's new HTTP client whose credential already holds a token: the first read opens the
/// connection itself, with its token, and the other waits for it; no unauthorized copy.
#[tokio::test]
async fn with_the_token_at_hand_the_first_read_opens_the_connection_itself() {
    let vault = Vault::start(None).await;
    let connector = vault.connector();
    let params = app_a_db_password(&vault);
    let credential = connector.credential_for(&params).expect("credential");
    let first = connector
        .vault_client_for(&params, std::sync::Arc::clone(&credential))
        .expect("client");
    first
        .read_secret("db-password", None, &[])
        .await
        .expect("first read");
    drop(first);
    // The daemon does this when the vault's last entry goes: a new HTTP client next time.
    connector.forget_vault("demo");
    vault.mock.reset_stats();
    let client = connector
        .vault_client_for(&params, credential)
        .expect("client");
    let (a, b) = futures::join!(
        client.read_secret("db-password", None, &[]),
        client.read_secret("api-key", None, &[])
    );
    a.expect("db-password");
    b.expect("api-key");
    let stats = vault.mock.stats();
    assert_eq!(
        stats.count(Some("demo"), None, None, Some(401)),
        0,
        "no copy, no challenge: {stats:?}"
    );
    assert_eq!(stats.count(None, Some("token"), None, None), 0, "{stats:?}");
    assert_eq!(
        stats.count(Some("demo"), Some("secret.get"), None, Some(200)),
        2,
        "{stats:?}"
    );
    let host = format!("demo.{}", vault.mock.dns_suffix());
    assert_eq!(
        stats.connections.get(&host),
        Some(&1),
        "one connection for both reads: {stats:?}"
    );
}

/// A vault that turns the first token down answers with its challenge, and the SDK's retry,
/// authorized from that challenge, reads the object: one 401 to the token, then the value.
#[tokio::test]
async fn a_token_the_vault_turns_down_is_retried_through_its_challenge() {
    let vault = Vault::start(None).await;
    vault
        .mock
        .set_faults(vec![kvmount_mock_vault::FaultRule {
            route: Some("secret.get".into()),
            status: Some(401),
            times: Some(1),
            ..Default::default()
        }])
        .expect("401 fault");
    let connector = vault.connector();
    let params = app_a_db_password(&vault);
    let rendered = fetch_all(&connector, &params).await.expect("fetch");
    assert_eq!(rendered[0].files[0].contents.expose(), b"current-value");
    let stats = vault.mock.stats();
    // The challenge to the copy that opened the connection, and the injected one.
    assert_eq!(
        stats.count(Some("demo"), Some("secret.get"), None, Some(401)),
        2,
        "{stats:?}"
    );
    assert_eq!(
        stats.count(Some("demo"), Some("secret.get"), None, Some(200)),
        1,
        "{stats:?}"
    );
}
