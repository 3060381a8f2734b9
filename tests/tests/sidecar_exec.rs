//! `kvmount-sidecar exec`: the child sees the Key Vault values in its environment, the exec
//! configuration is removed from it, and nothing is written anywhere: the working directory,
//! HOME and TMPDIR are a read-only tmpfs that stays empty.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sidecar_support;

use std::collections::BTreeMap;
use std::time::Duration;

use kvmount_sidecar::config::{AgentConfig, EXEC_CONFIG_ENV};
use kvmount_tests::Vault;
use sidecar_support::{APP_A, Sidecar, Tmpfs, token_file};

fn exec_config(vault: &Vault, token: &std::path::Path, env: &[(&str, &str)]) -> String {
    AgentConfig {
        keyvault_name: "demo".into(),
        tenant_id: Some(vault.mock.tenant_id().into()),
        client_id: Some(APP_A.into()),
        token_file: Some(token.display().to_string()),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
    .to_json()
}

fn exec_args(vault: &Vault, command: &[&str]) -> Vec<String> {
    let mut args = vec!["exec".to_owned()];
    args.extend(vault.provider_flags());
    args.push("--".into());
    args.extend(command.iter().map(|s| (*s).to_owned()));
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn child_gets_the_values_and_nothing_is_written() {
    let vault = Vault::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let sandbox = Tmpfs::new();
    sandbox.make_read_only();
    let ro = sandbox.path.display().to_string();
    let script = r#"printf 'db=%s key=%s config=%s pid=%s\n' "$DB_PASSWORD" "$API_KEY" "${KVMOUNT_EXEC_CONFIG-unset}" "$$"; touch probe-write 2>/dev/null && echo WROTE || echo read-only"#;
    let env = [
        (
            EXEC_CONFIG_ENV,
            exec_config(
                &vault,
                &token,
                &[
                    ("DB_PASSWORD", "secret/db-password"),
                    ("API_KEY", "secret/api-key"),
                ],
            ),
        ),
        ("HOME", ro.clone()),
        ("TMPDIR", ro.clone()),
    ];
    let mut child = Sidecar::spawn(
        &exec_args(&vault, &["/bin/sh", "-c", script]),
        &env,
        Some(&sandbox.path),
    );
    let pid = child.pid();
    let status = child.wait(Duration::from_secs(20));
    let out = child.output();
    assert!(status.success(), "{status}\n{out}");
    assert!(
        out.contains("db=current-value key=demo-api-key-0001 config=unset"),
        "{out}"
    );
    // exec replaced the process: the shell has the agent's pid.
    assert!(out.contains(&format!("pid={pid}")), "{out}");
    assert!(out.contains("read-only"), "the sandbox is read-only: {out}");
    assert!(
        std::fs::read_dir(&sandbox.path).unwrap().next().is_none(),
        "nothing written"
    );
    // Only the child printed the values; exec itself logged none.
    assert_eq!(out.matches("current-value").count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_clear_and_start_nothing() {
    let vault = Vault::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let marker = dir.path().join("started");
    let touch = format!("touch {}", marker.display());

    // A missing object: the app does not start.
    let env = [(
        EXEC_CONFIG_ENV,
        exec_config(&vault, &token, &[("X", "secret/no-such-secret")]),
    )];
    let mut child = Sidecar::spawn(&exec_args(&vault, &["/bin/sh", "-c", &touch]), &env, None);
    assert!(!child.wait(Duration::from_secs(20)).success());
    assert!(
        child.output().contains("secret/no-such-secret"),
        "{}",
        child.output()
    );
    assert!(!marker.exists());

    // A disabled secret (403 class of errors) also names the object.
    let env = [(
        EXEC_CONFIG_ENV,
        exec_config(&vault, &token, &[("X", "secret/disabled-secret")]),
    )];
    let mut child = Sidecar::spawn(&exec_args(&vault, &["/bin/sh", "-c", &touch]), &env, None);
    assert!(!child.wait(Duration::from_secs(20)).success());
    assert_eq!(
        child.output().matches("secret/disabled-secret").count(),
        1,
        "named once: {}",
        child.output()
    );
    assert!(!child.output().contains("you-cannot-read-me"));

    // A program that does not exist.
    let env = [(
        EXEC_CONFIG_ENV,
        exec_config(&vault, &token, &[("X", "secret/api-key")]),
    )];
    let mut child = Sidecar::spawn(&exec_args(&vault, &["/nonexistent/app"]), &env, None);
    assert!(!child.wait(Duration::from_secs(20)).success());
    assert!(
        child.output().contains("cannot run \"/nonexistent/app\""),
        "{}",
        child.output()
    );
    assert!(!child.output().contains("demo-api-key-0001"));

    // No configuration.
    let mut child = Sidecar::spawn(&exec_args(&vault, &["/bin/true"]), &[], None);
    assert!(!child.wait(Duration::from_secs(10)).success());
    assert!(
        child.output().contains("KVMOUNT_EXEC_CONFIG is not set"),
        "{}",
        child.output()
    );
}
