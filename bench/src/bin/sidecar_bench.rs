//! Sidecar benchmark: the release `kvmount-sidecar` against the mock vault on this machine.
//!
//! - agent time to first render (its own clock from process start, and spawn-to-file), next to
//!   the Key Vault round trips the same reads cost in-process (token + one GET per object);
//! - agent RSS in steady state (refreshing every second for 20 s, 3 objects + 1 template);
//! - webhook: AdmissionReview round trip over TLS (one connection, sequential) and the
//!   decision time the webhook reports in /metrics.
//!
//! Prints a Markdown table. `bench/run.sh sidecar` builds and runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmount_sidecar::config::{
    AGENT_CONFIG_ENV, AgentConfig, ObjectFields, ObjectRef, TemplateFile, object_yaml,
    objects_document,
};
use kvmount_tests::Vault;

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
const RUNS: usize = 20;

fn bin() -> String {
    std::env::var("KVMOUNT_KVMOUNT_SIDECAR_BIN")
        .unwrap_or_else(|_| "target/release/kvmount-sidecar".into())
}

/// The injected binary.
fn agent_bin() -> String {
    std::env::var("KVMOUNT_KVMOUNT_AGENT_BIN")
        .unwrap_or_else(|_| "target/release/kvmount-agent".into())
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

struct Tmpfs(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-bench-sidecar.")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("secrets");
        std::fs::create_dir(&path).expect("dir");
        kvmount_volume::mount_tmpfs(
            &path,
            &kvmount_volume::TmpfsOptions {
                size_bytes: 4 << 20,
                mode: 0o755,
                uid: None,
                gid: None,
            },
        )
        .expect("tmpfs");
        Self(path, dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = kvmount_volume::teardown(&self.0);
    }
}

fn config(vault: &Vault, token: &Path, mount: &Path, refresh: u64) -> String {
    let r = |s: &str| ObjectRef::parse(s).expect("ref");
    AgentConfig {
        keyvault_name: "demo".into(),
        tenant_id: Some(vault.mock.tenant_id().into()),
        client_id: Some(APP_A.into()),
        token_file: Some(token.display().to_string()),
        mount_path: Some(mount.display().to_string()),
        objects: Some(objects_document(&[
            object_yaml(
                &r("secret/db-password"),
                &ObjectFields {
                    alias: Some("db".into()),
                    ..Default::default()
                },
            ),
            object_yaml(&r("secret/api-key"), &ObjectFields::default()),
        ])),
        templates: vec![TemplateFile {
            path: "conn".into(),
            mode: None,
            template: "p={{ secret/db-password }};k={{ secret/api-key }}".into(),
        }],
        refresh_seconds: Some(refresh),
        ..Default::default()
    }
    .to_json()
}

fn spawn_agent(
    vault: &Vault,
    env: &str,
    extra: &[&str],
) -> (std::process::Child, Arc<Mutex<String>>) {
    let mut child = Command::new(agent_bin())
        .arg("agent")
        .args(extra)
        .args(vault.provider_flags())
        .env(AGENT_CONFIG_ENV, env)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let out = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("stderr");
    let o = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut s = o.lock().expect("lock");
            s.push_str(&line);
            s.push('\n');
        }
    });
    (child, out)
}

fn rss_parts_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn in_process_round_trips(vault: &Vault, token: &str) -> Duration {
    let connector = kvmount_vault::Connector::new(kvmount_vault::ConnectorConfig {
        keyvault_dns_suffix: vault.mock.dns_suffix().into(),
        authority_host: url::Url::parse(&vault.mock.base_url()).expect("url"),
        extra_roots_pem: std::fs::read(vault.mock.ca_path()).expect("ca"),
        resolve: vec![
            kvmount_vault::ResolveRule::parse(&format!(
                "*.{}={}",
                vault.mock.dns_suffix(),
                vault.mock.addr()
            ))
            .expect("rule"),
        ],
        ..Default::default()
    })
    .expect("connector");
    let started = Instant::now();
    let auth = kvmount_vault::Auth::WorkloadIdentity {
        client_id: APP_A.into(),
        token: kvmount_vault::SecretString::new(token.into()),
    };
    let credential = connector
        .credential(vault.mock.tenant_id(), &auth)
        .expect("credential");
    let client = connector.secret_client("demo", credential).expect("client");
    let specs = kvmount_vault::params::parse_objects(
        "array:\n  - |\n    objectName: db-password\n    objectType: secret\n  - |\n    objectName: api-key\n    objectType: secret\n",
    )
    .expect("objects");
    let scrub: Vec<&str> = Vec::new();
    let fetches = specs
        .iter()
        .map(|s| kvmount_vault::fetch_object(&client, s, &scrub));
    futures::future::try_join_all(fetches).await.expect("fetch");
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let vault = Vault::start(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = vault.sa_token("team-a", "app");
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &token).expect("token");

    // Time to first render, init-only runs.
    let mut own = Vec::new();
    let mut spawn_to_exit = Vec::new();
    for _ in 0..RUNS {
        let tmpfs = Tmpfs::new();
        let env = config(&vault, &token_path, &tmpfs.0, 300);
        let started = Instant::now();
        let (mut child, out) = spawn_agent(&vault, &env, &["--init-only"]);
        let status = child.wait().expect("wait");
        spawn_to_exit.push(started.elapsed());
        assert!(status.success(), "{}", out.lock().expect("lock"));
        std::thread::sleep(Duration::from_millis(20));
        let text = out.lock().expect("lock").clone();
        let elapsed: u64 = text
            .split("elapsed_ms=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("elapsed_ms in the first render line");
        own.push(Duration::from_millis(elapsed));
    }
    let mut trips = Vec::new();
    for _ in 0..RUNS {
        trips.push(in_process_round_trips(&vault, &token).await);
    }

    // Steady-state RSS.
    let tmpfs = Tmpfs::new();
    let env = config(&vault, &token_path, &tmpfs.0, 1);
    let (mut child, out) = spawn_agent(&vault, &env, &[]);
    let pid = child.id();
    let mut samples = Vec::new();
    let started = Instant::now();
    let window = Duration::from_secs(
        std::env::var("KVMOUNT_BENCH_RSS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() > Duration::from_secs(5) {
            samples.push(rss_kib(pid));
        }
    }
    let refreshes = out.lock().expect("lock").matches("fetch failed").count();
    let (_, hwm) = rss_kib(pid);
    let (anon, file) = rss_parts_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    drop(tmpfs);
    let rss: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let rss_max = rss.iter().copied().max().unwrap_or(0);
    let rss_last = rss.last().copied().unwrap_or(0);
    let gets = vault
        .mock
        .stats()
        .count(Some("demo"), Some("secret.get"), None, Some(200));

    // Webhook.
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_dir.path().join("ca.crt");
    let mut hook = Command::new(bin())
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--tls-self-managed",
            "--tls-dns-name",
            "localhost",
            "--ca-bundle-out",
        ])
        .arg(&ca)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn webhook");
    let mut lines = BufReader::new(hook.stderr.take().expect("stderr")).lines();
    let port: u16 = loop {
        let line = lines.next().expect("webhook output").expect("line");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("port");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let client = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).expect("ca")).expect("pem"),
        )
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .expect("client");
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string("sidecar/tests/fixtures/reviews.json").expect("fixtures"),
    )
    .expect("json");
    let review = cases
        .iter()
        .find(|c| c["name"] == "annotated-pod")
        .expect("case")["review"]
        .to_string();
    let url = format!("https://localhost:{port}/mutate");
    while client
        .get(format!("https://localhost:{port}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hook_times = Vec::new();
    for i in 0..2100 {
        let started = Instant::now();
        let resp = client
            .post(&url)
            .body(review.clone())
            .send()
            .await
            .expect("post");
        resp.bytes().await.expect("body");
        if i >= 100 {
            hook_times.push(started.elapsed());
        }
    }
    let metrics = client
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let decision_mean = metric("kvmount_webhook_admission_seconds_sum")
        / metric("kvmount_webhook_admission_seconds_count");
    let decision_max = metric("kvmount_webhook_admission_seconds_max");
    let (hook_rss, _) = rss_kib(hook.id());
    let _ = hook.kill();
    let _ = hook.wait();

    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| agent first render, its own clock from process start (p50 / p95 of {RUNS}) | {} / {} |",
        ms(percentile(&mut own.clone(), 0.5)),
        ms(percentile(&mut own, 0.95))
    );
    println!(
        "| agent init-only run, spawn to exit (p50 / p95) | {} / {} |",
        ms(percentile(&mut spawn_to_exit.clone(), 0.5)),
        ms(percentile(&mut spawn_to_exit, 0.95))
    );
    println!(
        "| the same Key Vault round trips in-process (token + 2 GETs, new TLS connections; p50 / p95) | {} / {} |",
        ms(percentile(&mut trips.clone(), 0.5)),
        ms(percentile(&mut trips, 0.95))
    );
    println!(
        "| agent RSS, steady state (refresh every 1 s, 15 s sampled: max / last / VmHWM) | {:.2} MiB / {:.2} MiB / {:.2} MiB |",
        rss_max as f64 / 1024.0,
        rss_last as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| agent RSS split at the end: anonymous (heap, stacks) / file-backed (binary and libraries) | {:.2} MiB / {:.2} MiB |",
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    println!(
        "| agent refresh failures during the RSS run / secret GETs served | {refreshes} / {gets} |"
    );
    println!(
        "| webhook AdmissionReview round trip over TLS, keep-alive (p50 / p99 of 2,000) | {} / {} |",
        ms(percentile(&mut hook_times.clone(), 0.5)),
        ms(percentile(&mut hook_times, 0.99))
    );
    println!(
        "| webhook decision time, /metrics (mean / max) | {:.1} µs / {:.1} µs |",
        decision_mean * 1e6,
        decision_max * 1e6
    );
    println!(
        "| webhook RSS after the run | {:.2} MiB |",
        hook_rss as f64 / 1024.0
    );
}
