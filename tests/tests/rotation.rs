//! Rotation that Key Vault can afford: one read per object per interval for the whole node,
//! atomic updates of every volume, client-side rate limits under a 429 storm, last good content
//! kept, and the failure visible in `status` and metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmount_mock_vault::{FaultRule, Seed};
use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_tests::{NodeDaemon, Vault, mounts_under, object, objects, publish_request};
use tonic::transport::Channel;

const CLIENT: &str = "00000000-0000-0000-0000-0000000000a1";

fn seed() -> Seed {
    let mut yaml = String::from(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: 00000000-0000-0000-0000-0000000000a1\n    clientSecret: rotation-test-secret\n    federated:\n      - { issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:rot:app\" }\nvaults:\n  - name: rot\n    access:\n      - { identity: app, objects: [\"secret/*\"], permissions: [get, list, set] }\n    secrets:\n",
    );
    for i in 0..5 {
        yaml.push_str(&format!(
            "      - {{ name: s{i}, versions: [\"v0-{i}\"] }}\n"
        ));
    }
    Seed::from_yaml(&yaml).expect("seed")
}

fn class() -> String {
    objects(
        &(0..5)
            .map(|i| object(&format!("s{i}"), ""))
            .collect::<Vec<_>>(),
    )
}

fn context(vault: &Vault, pod: &str, objs: &str) -> HashMap<String, String> {
    let tokens =
        serde_json::json!({"api://AzureADTokenExchange": {"token": vault.sa_token("rot", "app")}})
            .to_string();
    HashMap::from([
        ("keyvaultName".to_owned(), "rot".to_owned()),
        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
        ("clientID".to_owned(), CLIENT.to_owned()),
        ("objects".to_owned(), objs.to_owned()),
        ("csi.storage.k8s.io/pod.name".to_owned(), pod.to_owned()),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            "rot".to_owned(),
        ),
        (
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            tokens,
        ),
    ])
}

/// Sets a new version of `name` through the mock's Key Vault API.
async fn set_secret(vault: &Vault, name: &str, value: &str) {
    vault
        .set_secret("rot", CLIENT, "rotation-test-secret", name, value)
        .await;
}

fn gets(vault: &Vault) -> u64 {
    vault
        .mock
        .stats()
        .count(Some("rot"), Some("secret.get"), None, Some(200))
}

async fn publish_many(
    node: &NodeClient<Channel>,
    daemon: &NodeDaemon,
    vault: &Vault,
    n: usize,
) -> Vec<(String, PathBuf)> {
    let mut jobs = Vec::new();
    for i in 0..n {
        let pod = format!("pod-{i}");
        let target = daemon.target(&pod);
        let ctx = context(vault, &pod, &class());
        let mut node = node.clone();
        jobs.push(tokio::spawn(async move {
            node.node_publish_volume(publish_request(&target, &pod, &ctx))
                .await
                .expect("publish");
            (pod, target)
        }));
    }
    let mut out = Vec::new();
    for job in jobs {
        out.push(job.await.expect("join"));
    }
    out
}

async fn unpublish_all(node: &mut NodeClient<Channel>, volumes: &[(String, PathBuf)]) {
    for (pod, target) in volumes {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: pod.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");
    }
}

fn read(target: &Path, file: &str) -> String {
    std::fs::read_to_string(target.join(file)).unwrap_or_default()
}

#[tokio::test]
async fn a_hundred_pods_cost_one_read_per_object_per_interval() {
    let vault = Vault::start(Some(seed())).await;
    let interval = Duration::from_secs(2);
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "2s".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let started = Instant::now();
    let volumes = publish_many(&node, &daemon, &vault, 100).await;
    // The wave itself reads each object once. An object's first rotation check comes 0.1 to
    // 1 interval after its read, so a wave slower than 0.1 interval (a loaded machine) may
    // also see rotation's reads: at most one per object per interval after that.
    let wave_reads = gets(&vault);
    let wave = started.elapsed();
    let earliest_check = interval / 10;
    let rotation_rounds = match wave.checked_sub(earliest_check) {
        None => 0,
        Some(late) => 1 + (late.as_secs_f64() / interval.as_secs_f64()) as u64,
    };
    assert!(
        (5..=5 * (1 + rotation_rounds)).contains(&wave_reads),
        "the mount wave of 100 pods x 5 objects costs 5 reads (plus rotation's, when the wave \
         outlasts the earliest check: {rotation_rounds} round(s) in {wave:?}); it cost {wave_reads}"
    );
    // Three intervals of rotation: at most 5 reads per interval (plus the pass in progress).
    let before = gets(&vault);
    tokio::time::sleep(interval * 3).await;
    let during = gets(&vault) - before;
    assert!(
        (5..=20).contains(&during),
        "{during} reads in 3 intervals for 5 objects"
    );

    set_secret(&vault, "s3", "v1-rotated").await;
    let deadline = Instant::now() + interval * 2 + Duration::from_millis(500);
    loop {
        let stale = volumes
            .iter()
            .filter(|(_, t)| read(t, "s3") != "v1-rotated")
            .count();
        if stale == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stale} of 100 volumes still old after one interval"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        volumes.iter().all(|(_, t)| read(t, "s0") == "v0-0"),
        "other files intact"
    );

    // `status` shows every volume with the new version; metrics count the rotation.
    let output = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args(["status", "--json", "--state-dir"])
        .arg(&daemon.state_dir)
        .output()
        .expect("status");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let rows = status["volumes"].as_array().expect("volumes");
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r["lastError"].is_null()));
    let table = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args(["status", "--state-dir"])
        .arg(&daemon.state_dir)
        .output()
        .expect("status table");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("pod-42") && table.contains("secret/s3@"),
        "{table}"
    );
    unpublish_all(&mut node, &volumes).await;
    assert!(mounts_under(daemon.dir()).is_empty());
}

#[tokio::test]
async fn a_429_storm_is_paced_and_keeps_the_old_content() {
    let vault = Vault::start(Some(seed())).await;
    let mut flags = vault.provider_flags();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    flags.extend([
        "--rotation-interval".into(),
        "1s".into(),
        "--vault-qps".into(),
        "4".into(),
        "--vault-burst".into(),
        "4".into(),
        "--max-retries".into(),
        "2".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let volumes = publish_many(&node, &daemon, &vault, 10).await;
    vault.mock.reset_stats();
    vault
        .mock
        .set_faults(vec![FaultRule {
            route: Some("secret.get".into()),
            status: Some(429),
            retry_after: Some(1),
            ..Default::default()
        }])
        .expect("faults");
    set_secret(&vault, "s1", "after-the-storm").await;
    let storm = Duration::from_secs(6);
    tokio::time::sleep(storm).await;
    let stats = vault.mock.stats();
    let storm_requests = stats.count(Some("rot"), Some("secret.get"), None, None);
    // 4 per second plus the burst, at most; backoff and Retry-After keep it well below.
    assert!(
        storm_requests <= 4 * storm.as_secs() + 4,
        "{storm_requests} requests in {storm:?}"
    );
    assert!(storm_requests >= 1, "the daemon kept trying");
    assert!(
        volumes.iter().all(|(_, t)| read(t, "s1") == "v0-1"),
        "old content kept during the storm"
    );
    assert!(
        volumes
            .iter()
            .all(|(_, t)| kvmount_volume::is_mount_point(t).unwrap_or(false)),
        "never unmounted"
    );

    // The failure is visible: status and metrics.
    let output = std::process::Command::new(kvmount_tests::workspace_bin("kvmount-provider"))
        .args(["status", "--json", "--state-dir"])
        .arg(&daemon.state_dir)
        .output()
        .expect("status");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert!(
        status["volumes"]
            .as_array()
            .expect("rows")
            .iter()
            .any(
                |r| r["lastError"].as_str().is_some_and(|e| e.contains("429")
                    || e.contains("Throttled")
                    || e.contains("throttl"))
            ),
        "{status}"
    );
    kvmount_vault::client::use_ring();
    let http = reqwest::Client::new();
    let metrics = scrape(&http, metrics_port).await;
    assert!(
        metrics.contains(
            "kvmount_keyvault_requests_total{vault=\"rot\",operation=\"get\",status=\"429\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("kvmount_rotation_checks_total{outcome=\"failed\"}"));
    assert!(metrics.contains("kvmount_published_volumes 10"));
    // The stale-secret gauge: no good read since the storm began.
    let age = refresh_age(&metrics, "rot", "secret/s1");
    assert!(age >= 3.0, "age {age} after a {storm:?} storm:\n{metrics}");
    let ready = http
        .get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    // The storm ends: everything converges.
    vault.mock.clear_faults();
    let deadline = Instant::now() + Duration::from_secs(40);
    while volumes
        .iter()
        .any(|(_, t)| read(t, "s1") != "after-the-storm")
    {
        assert!(
            Instant::now() < deadline,
            "did not converge after the storm:\n{}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = scrape(&http, metrics_port).await;
    let age = refresh_age(&metrics, "rot", "secret/s1");
    assert!(age < 3.0, "age {age} after the storm:\n{metrics}");
    unpublish_all(&mut node, &volumes).await;
}

/// Readers that resolve `..data` once always see one consistent set: two files filled from the
/// same object (two aliases) are never different during many rotations.
#[tokio::test]
async fn readers_never_see_a_half_updated_set() {
    let vault = Vault::start(Some(seed())).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "300ms".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let objs = objects(&[
        object("s0", "objectAlias: first\n"),
        object("s0", "objectAlias: second\n"),
        object("s2", ""),
    ]);
    let target = daemon.target("reader");
    node.node_publish_volume(publish_request(
        &target,
        "reader",
        &context(&vault, "reader", &objs),
    ))
    .await
    .expect("publish");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        let target = target.clone();
        std::thread::spawn(move || {
            let (mut reads, mut mixed, mut versions) =
                (0u64, 0u64, std::collections::HashSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(dir) = std::fs::read_link(target.join("..data")) else {
                    continue;
                };
                let dir = target.join(dir);
                let (Ok(a), Ok(b)) = (
                    std::fs::read_to_string(dir.join("first")),
                    std::fs::read_to_string(dir.join("second")),
                ) else {
                    continue; // the old payload was removed between readlink and open: retry
                };
                reads += 1;
                if a != b {
                    mixed += 1;
                }
                versions.insert(a);
            }
            (reads, mixed, versions.len())
        })
    };
    for round in 0..6 {
        let value = format!("round-{round}");
        set_secret(&vault, "s0", &value).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&target, "first") != value {
            assert!(
                Instant::now() < deadline,
                "round {round} never reached the volume"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, mixed, seen) = reader.join().expect("reader");
    assert_eq!(
        mixed, 0,
        "{mixed} of {reads} reads saw two versions at once"
    );
    assert!(
        seen >= 3,
        "the reader saw {seen} versions: rotations did happen\n{}",
        daemon.output()
    );
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "reader".into(),
        target_path: target.display().to_string(),
    })
    .await
    .expect("unpublish");
}

/// The daemon's `/metrics`.
async fn scrape(http: &reqwest::Client, port: u16) -> String {
    http.get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body")
}

/// `kvmount_object_refresh_age_seconds` of one object in a scrape.
fn refresh_age(metrics: &str, vault: &str, object: &str) -> f64 {
    let series =
        format!("kvmount_object_refresh_age_seconds{{vault=\"{vault}\",object=\"{object}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series:?} in:\n{metrics}"))
}
