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
    )
    .expect("params")
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
    let params = app_a_db_password(&vault);
    let err = fetch_all(&connector, &params)
        .await
        .expect_err("no CA, no connection");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

/// A new client answers Key Vault's challenge once per type, and the other objects of that
/// type go out as soon as it is answered, while the first object's own read is still in flight.
#[tokio::test]
async fn a_new_client_is_challenged_once_and_the_other_reads_follow_the_challenge() {
    use futures::FutureExt as _;
    use kvmount_vault::client::get_secret;
    use kvmount_vault::params::ObjectType;
    use std::sync::atomic::{AtomicBool, Ordering};

    let vault = Vault::start(None).await;
    // The first object's reads (its challenge too) take a second; the others are quick.
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
    assert!(!client.challenge_known(ObjectType::Secret));
    let first_done = AtomicBool::new(false);
    let (client, first_done) = (&client, &first_done);
    let first = async move {
        let read = get_secret(client, "db-password", None, &[]).await;
        first_done.store(true, Ordering::SeqCst);
        read.map(|_| false)
    };
    // Each of the others reports whether it went out before the first read ended.
    let other = |name: &'static str| async move {
        let overlapped = !first_done.load(Ordering::SeqCst);
        get_secret(client, name, None, &[])
            .await
            .map(|_| overlapped)
    };
    let jobs = vec![
        (ObjectType::Secret, first.boxed_local()),
        (ObjectType::Secret, other("api-key").boxed_local()),
        (ObjectType::Secret, other("api-key").boxed_local()),
    ];
    let overlapped = kvmount_vault::join_objects(client, jobs)
        .await
        .expect("reads");
    assert_eq!(overlapped, [false, true, true]);
    assert!(client.challenge_known(ObjectType::Secret));
    let stats = vault.mock.stats();
    assert_eq!(
        stats.count(Some("demo"), None, None, Some(401)),
        1,
        "one challenge for three objects: {stats:?}"
    );
    assert_eq!(
        stats.count(Some("demo"), Some("secret.get"), None, Some(200)),
        3
    );
}
