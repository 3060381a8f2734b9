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

/// The webhook's `--agent-arg` flags (here the mock's DNS suffix, authority, CA file and
/// address, as a sovereign cloud or a private endpoint needs them) reach `exec`: the rewritten
/// command, run exactly as the patch writes it (the binary installed the way the install
/// container does), reads from the vault those flags name.
#[tokio::test(flavor = "multi_thread")]
async fn the_rewritten_command_carries_the_webhooks_agent_args() {
    use base64::Engine as _;
    use kvmount_sidecar::webhook::{self, Decision, WebhookConfig};
    let vault = Vault::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&vault, dir.path());
    let config = WebhookConfig {
        agent_args: vault.provider_flags(),
        ..Default::default()
    };
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "uid-exec-flags",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "namespace": "team-a",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "generateName": "app-", "annotations": {
                    "kvmount.io/inject": "true",
                    "kvmount.io/keyvault": "demo",
                    "kvmount.io/tenant-id": vault.mock.tenant_id(),
                    "kvmount.io/client-id": APP_A,
                    "kvmount.io/env-DB_PASSWORD": "secret/db-password",
                } },
                "spec": { "containers": [ {
                    "name": "app",
                    "command": ["/bin/sh", "-c", "printf 'db=%s\\n' \"$DB_PASSWORD\""],
                } ] },
            },
        },
    });
    let (parsed, decision) =
        webhook::review_offline(&config, &serde_json::to_vec(&review).unwrap()).unwrap();
    assert!(matches!(decision, Decision::Patch(_)), "{decision:?}");
    let response: serde_json::Value =
        serde_json::from_slice(&webhook::response(&parsed.uid, &decision)).unwrap();
    let ops: Vec<serde_json::Value> = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(response["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let value_at = |path: &str| {
        ops.iter()
            .find(|o| o["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {ops:?}"))["value"]
            .clone()
    };
    let command: Vec<String> =
        serde_json::from_value(value_at("/spec/containers/0/command")).unwrap();
    let exec_env = value_at("/spec/containers/0/env")[0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let installer = value_at("/spec/initContainers")[0].clone();
    let install_args: Vec<String> = serde_json::from_value(installer["args"].clone()).unwrap();
    assert_eq!(install_args[0], "install");

    // The install container's copy, in a directory of the test's instead of the pod's volume.
    let bin = tempfile::tempdir().unwrap();
    let mut install = Sidecar::spawn_bin(
        &kvmount_tests::workspace_bin("kvmount-agent"),
        &["install".into(), bin.path().display().to_string()],
        &[],
        None,
    );
    assert!(install.wait(Duration::from_secs(10)).success());
    let program = command[0]
        .strip_prefix(&format!("{}/", install_args[1]))
        .map(|name| bin.path().join(name))
        .unwrap_or_else(|| panic!("{command:?} does not run from {}", install_args[1]));
    // The injected configuration, with the token at the test's path (the pod's is the
    // projected volume).
    let mut exec_config = AgentConfig::from_json(EXEC_CONFIG_ENV, &exec_env).unwrap();
    exec_config.token_file = Some(token.display().to_string());
    let mut child = Sidecar::spawn_bin(
        &program,
        &command[1..],
        &[(EXEC_CONFIG_ENV, exec_config.to_json())],
        None,
    );
    let status = child.wait(Duration::from_secs(60));
    let out = child.output();
    assert!(status.success(), "{command:?}: {status}\n{out}");
    assert!(out.contains("db=current-value"), "{out}");
}
