//! Sidecar benchmark: the release `kvmount-sidecar` against the mock vault on this machine.
//!
//! - agent time to first render (its own clock from process start, and spawn-to-file), next to
//!   the Key Vault round trips the same reads cost in-process (token + one GET per object);
//! - agent RSS in steady state (refreshing every second for 20 s, 3 objects + 1 template);
//! - webhook: AdmissionReview latency over TLS at a fixed rate (open loop: each review is sent
//!   at its scheduled time whether or not the earlier ones were answered, and timed from that
//!   time) and the decision time the webhook reports in /metrics.
//!
//! Prints a Markdown table; `--json PATH` also writes the numbers for `bench-report`;
//! `--quick` takes fewer samples. `bench/run.sh sidecar` builds and runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmount_bench::{binary_kind, millis, percentile, status_kib};
use kvmount_sidecar::config::{
    AGENT_CONFIG_ENV, AgentConfig, ObjectFields, ObjectRef, TemplateFile, object_yaml,
    objects_document,
};
use kvmount_tests::Vault;

const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
/// AdmissionReviews per second in the webhook run.
const REVIEW_RATE: u32 = 100;

fn bin() -> String {
    std::env::var("KVMOUNT_KVMOUNT_SIDECAR_BIN")
        .unwrap_or_else(|_| "target/release/kvmount-sidecar".into())
}

/// The injected binary.
fn agent_bin() -> String {
    std::env::var("KVMOUNT_KVMOUNT_AGENT_BIN")
        .unwrap_or_else(|_| "target/release/kvmount-agent".into())
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

fn rss_kib(pid: u32) -> (u64, u64) {
    (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"))
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    let runs = if quick { 3 } else { 20 };
    let review_seconds: u32 = if quick { 3 } else { 20 };
    let vault = Vault::start(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = vault.sa_token("team-a", "app");
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &token).expect("token");

    // Time to first render, init-only runs.
    let mut own = Vec::new();
    let mut spawn_to_exit = Vec::new();
    for _ in 0..runs {
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
    for _ in 0..runs {
        trips.push(in_process_round_trips(&vault, &token).await);
    }

    // Steady-state RSS.
    let tmpfs = Tmpfs::new();
    let env = config(&vault, &token_path, &tmpfs.0, 1);
    let (mut child, out) = spawn_agent(&vault, &env, &[]);
    let pid = child.id();
    let mut samples = Vec::new();
    let started = Instant::now();
    let (window, settle) = if quick { (6, 3) } else { (20, 5) };
    let window = Duration::from_secs(
        std::env::var("KVMOUNT_BENCH_RSS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(window),
    );
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() > Duration::from_secs(settle) {
            samples.push(rss_kib(pid));
        }
    }
    let refreshes = out.lock().expect("lock").matches("fetch failed").count();
    let (_, hwm) = rss_kib(pid);
    let (anon, file) = (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"));
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
    kvmount_vault::client::use_ring();
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
    // Warm the connection pool, then send at a fixed rate without waiting for answers.
    for _ in 0..100 {
        let resp = client
            .post(&url)
            .body(review.clone())
            .send()
            .await
            .expect("post");
        resp.bytes().await.expect("body");
    }
    let period = Duration::from_secs(1) / REVIEW_RATE;
    let t0 = tokio::time::Instant::now();
    let mut sends = Vec::new();
    for i in 0..REVIEW_RATE * review_seconds {
        let scheduled = t0 + period * i;
        tokio::time::sleep_until(scheduled).await;
        let (client, url, body) = (client.clone(), url.clone(), review.clone());
        sends.push(tokio::spawn(async move {
            let resp = client.post(&url).body(body).send().await.expect("post");
            resp.bytes().await.expect("body");
            scheduled.elapsed()
        }));
    }
    let mut hook_times = Vec::new();
    for send in sends {
        hook_times.push(send.await.expect("join"));
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
    let decisions = metric("kvmount_webhook_admission_seconds_count");
    let decision_mean = metric("kvmount_webhook_admission_seconds_sum") / decisions;
    // The histogram's p99: the upper bound of the first bucket that holds 99% of the decisions.
    let decision_p99_le = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("kvmount_webhook_admission_seconds_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} "))
        .find(|(_, n)| n.parse::<f64>().is_ok_and(|n| n >= 0.99 * decisions))
        .and_then(|(le, _)| le.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    let (hook_rss, _) = rss_kib(hook.id());
    let _ = hook.kill();
    let _ = hook.wait();

    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| agent first render, its own clock from process start (p50 / p95 of {runs}) | {} / {} |",
        ms(percentile(&own, 50.0)),
        ms(percentile(&own, 95.0))
    );
    println!(
        "| agent init-only run, spawn to exit (p50 / p95) | {} / {} |",
        ms(percentile(&spawn_to_exit, 50.0)),
        ms(percentile(&spawn_to_exit, 95.0))
    );
    println!(
        "| the same Key Vault round trips in-process (token + 2 GETs, new TLS connections; p50 / p95) | {} / {} |",
        ms(percentile(&trips, 50.0)),
        ms(percentile(&trips, 95.0))
    );
    let (linking, binary_bytes) =
        binary_kind(Path::new(&agent_bin())).expect("read the agent binary");
    println!(
        "| agent binary measured: linking / size | {linking} / {:.1} MB |",
        binary_bytes as f64 / 1e6
    );
    println!(
        "| agent RSS, steady state (refresh every 1 s, {} s sampled: max / last / VmHWM) | {:.2} MiB / {:.2} MiB / {:.2} MiB |",
        window.as_secs() - settle,
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
        "| webhook AdmissionReview over TLS at {REVIEW_RATE}/s for {review_seconds} s, from the scheduled send (p50 / p99) | {} / {} |",
        ms(percentile(&hook_times, 50.0)),
        ms(percentile(&hook_times, 99.0))
    );
    println!(
        "| webhook decision time, /metrics (mean / p99 at most) | {:.1} µs / {:.1} µs |",
        decision_mean * 1e6,
        decision_p99_le * 1e6
    );
    println!(
        "| webhook RSS after the run | {:.2} MiB |",
        hook_rss as f64 / 1024.0
    );
    if let Some(path) = json_out {
        let pct = |v: &[Duration]| serde_json::json!({"p50": millis(percentile(v, 50.0)), "p95": millis(percentile(v, 95.0))});
        let results = serde_json::json!({
            "quick": quick,
            "runs": runs,
            "first_render_ms": pct(&own),
            "spawn_to_exit_ms": pct(&spawn_to_exit),
            "round_trips_ms": pct(&trips),
            "agent_rss_kib": {"max": rss_max, "last": rss_last, "hwm": hwm, "anon": anon, "file": file},
            "agent_binary": {"linking": linking, "bytes": binary_bytes},
            "agent_refresh_failures": refreshes,
            "webhook": {
                "rate_per_second": REVIEW_RATE, "seconds": review_seconds,
                "p50_ms": millis(percentile(&hook_times, 50.0)),
                "p99_ms": millis(percentile(&hook_times, 99.0)),
                "decision_mean_us": decision_mean * 1e6, "decision_p99_le_us": decision_p99_le * 1e6,
                "rss_kib": hook_rss,
            },
        });
        let text = serde_json::to_string_pretty(&results).expect("json");
        std::fs::write(path, text + "\n").expect("write the --json file");
    }
}
