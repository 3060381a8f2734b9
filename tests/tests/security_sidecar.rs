//! The sidecar agent's memory and logs, from outside the real `kvmount-agent` process (mock vault
//! over TLS, a real tmpfs, the most verbose log level):
//!
//! - between rounds the agent holds no copy of a secret value (zero-on-free allocator, the
//!   round's connections closed, the runtime stack overwritten): a scan of its memory through
//!   `/proc/<pid>/mem` finds the canary while a round holds it (the scanner works) and zero
//!   copies after the first render, after an unchanged round, and after the object was deleted
//!   from the vault (the failed round keeps the file);
//! - the whole log at `trace` for every crate holds neither the canary value nor the
//!   service-account token; SIGTERM exits 0 and leaves the files to the app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sidecar_support;

use std::time::{Duration, Instant};

use kvmount_mock_vault::FaultRule;
use kvmount_sidecar::config::{
    AGENT_CONFIG_ENV, AgentConfig, ObjectFields, ObjectRef, object_yaml, objects_document,
};
use kvmount_tests::{Vault, scan_process_memory};
use sidecar_support::{APP_A, Sidecar, Tmpfs, read, token_file};

const CANARY: &str = "kvmount-agent-canary-3b9e71c4";

fn seed() -> kvmount_mock_vault::Seed {
    kvmount_mock_vault::Seed::from_yaml(&format!(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: {APP_A}\n    clientSecret: app-a-password\n    federated:\n      - {{ issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:team-a:app\" }}\nvaults:\n  - name: demo\n    access:\n      - {{ identity: app, objects: [\"secret/*\"], permissions: [all] }}\n    secrets:\n      - {{ name: canary, versions: [\"{CANARY}\"] }}\n      - {{ name: slow, versions: [\"slow-value\"] }}\n"
    ))
    .unwrap()
}

/// Waits until `done()` holds, checking every 20 ms.
async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_keeps_no_secret_between_rounds_and_logs_none() {
    let vault = Vault::start(Some(seed())).await;
    let tmpfs = Tmpfs::new();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let objects = ["secret/canary", "secret/slow"]
        .map(|r| object_yaml(&ObjectRef::parse(r).unwrap(), &ObjectFields::default()));
    let config = AgentConfig {
        keyvault_name: "demo".into(),
        tenant_id: Some(vault.mock.tenant_id().into()),
        client_id: Some(APP_A.into()),
        token_file: Some(token.display().to_string()),
        mount_path: Some(tmpfs.path.display().to_string()),
        objects: Some(objects_document(&objects)),
        refresh_seconds: Some(1),
        ..Default::default()
    }
    .to_json();
    let mut args = vec!["agent".to_owned()];
    args.extend(vault.provider_flags());
    args.extend(["--log-level".into(), "trace".into()]);
    let mut agent = Sidecar::spawn_bin(
        &kvmount_tests::workspace_bin("kvmount-agent"),
        &args,
        &[(AGENT_CONFIG_ENV, config)],
        None,
    );
    agent.wait_for("first render", Duration::from_secs(20));
    assert_eq!(read(&tmpfs.path, "canary"), CANARY);
    let pid = agent.pid();
    let scan = || scan_process_memory(pid, CANARY.as_bytes());
    // "first render" is logged after the round's cleanup.
    let after_first = scan();

    // While a round holds the value (the slow object keeps it waiting), the scan finds it.
    let canary_reads = || {
        vault
            .mock
            .stats()
            .count(None, Some("secret.get"), Some("secret/canary"), Some(200))
    };
    let unchanged = || agent.output().matches("unchanged").count();
    // Every round from now on waits 2.5 s for the slow object; the second canary read after
    // this point belongs to a round that started under the fault, so it is still running.
    vault
        .mock
        .set_faults(vec![FaultRule {
            route: Some("secret.get".into()),
            object: Some("secret/slow".into()),
            latency_ms: Some(2500),
            ..Default::default()
        }])
        .unwrap();
    let reads = canary_reads();
    until(
        "a slow round reads the canary",
        Duration::from_secs(15),
        || canary_reads() >= reads + 2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during_round = scan();
    // Once that round is over (an unchanged round logs after its cleanup), none is left.
    let rounds = unchanged();
    vault.mock.clear_faults();
    until("the slow round ends", Duration::from_secs(10), || {
        unchanged() > rounds
    })
    .await;
    let after_unchanged = scan();

    // The object is deleted from the vault: the next round fails, the file stays.
    let connector = vault.connector();
    let credential = connector
        .credential(
            vault.mock.tenant_id(),
            &kvmount_vault::Auth::ServicePrincipal {
                client_id: APP_A.into(),
                client_secret: kvmount_vault::SecretString::new("app-a-password".into()),
            },
        )
        .unwrap();
    connector
        .secret_client("demo", credential)
        .unwrap()
        .secrets()
        .delete_secret("canary", None)
        .await
        .expect("delete");
    let failures = || agent.output().matches("fetch failed").count();
    let before = failures();
    until(
        "a round fails after the delete",
        Duration::from_secs(10),
        || failures() > before,
    )
    .await;
    let after_delete = scan();
    assert_eq!(
        read(&tmpfs.path, "canary"),
        CANARY,
        "the last content stays"
    );

    println!(
        "canary copies in the agent: {after_first} after the first render, {during_round} during a round, {after_unchanged} after an unchanged round, {after_delete} after the object was deleted"
    );
    kvmount_tests::record_summary(
        "agent_memory",
        &[(
            "memory_hits",
            (after_first + after_unchanged + after_delete) as u64,
        )],
    );
    assert!(
        during_round > 0,
        "the scanner sees the value while a round holds it"
    );
    assert_eq!(after_first, 0, "copies after the first render");
    assert_eq!(after_unchanged, 0, "copies after an unchanged round");
    assert_eq!(after_delete, 0, "copies after the object was deleted");

    agent.signal(rustix::process::Signal::TERM);
    assert!(
        agent.wait(Duration::from_secs(10)).success(),
        "SIGTERM exits 0"
    );
    assert_eq!(
        read(&tmpfs.path, "canary"),
        CANARY,
        "files stay for the app"
    );
    let output = agent.output();
    assert!(
        output.contains("TRACE") && output.contains("reqwest"),
        "every crate logged at trace"
    );
    let sa_token = std::fs::read_to_string(&token).unwrap();
    for needle in [CANARY, sa_token.trim(), &sa_token[sa_token.len() - 24..]] {
        assert!(!output.contains(needle), "the log holds {needle:?}");
    }
}
