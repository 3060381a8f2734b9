//! Node plugin benchmark: NodePublishVolume latency for a class of 10 secrets (cold and warm
//! cache, mock vault with 0 and 20 ms added latency), daemon RSS idle and with 1,000
//! published volumes, and those 1,000 published and unpublished 8 at a time (latency, and
//! nothing left behind). Runs the release daemon against the mock vault on this machine and
//! prints a Markdown table. `bench/run.sh node` builds and runs it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kvmount_bench::{millis, percentile, rss_kib, status_kib};
use kvmount_mock_vault::{FaultRule, Seed};
use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_tests::{NodeDaemon, Vault, object, objects, publish_request};
use tonic::transport::Channel;

const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000be";
const OBJECTS_PER_CLASS: usize = 10;
const SAMPLES: usize = 40;
const VOLUMES: usize = 1000;

fn seed(secrets: usize) -> Seed {
    let mut yaml = String::from(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: bench\n    clientId: 00000000-0000-0000-0000-0000000000be\n    federated:\n      - { issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:bench:app\" }\nvaults:\n  - name: bench\n    secrets:\n",
    );
    for i in 0..secrets {
        yaml.push_str(&format!(
            "      - {{ name: s-{i}, versions: [\"value-{i}-0123456789abcdef\"] }}\n"
        ));
    }
    Seed::from_yaml(&yaml).expect("bench seed")
}

fn class(first: usize) -> String {
    let docs: Vec<String> = (first..first + OBJECTS_PER_CLASS)
        .map(|i| object(&format!("s-{i}"), ""))
        .collect();
    objects(&docs)
}

fn context(vault: &Vault, pod: &str, token: &str, objs: &str) -> HashMap<String, String> {
    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": token}}).to_string();
    HashMap::from([
        ("keyvaultName".to_owned(), "bench".to_owned()),
        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
        ("clientID".to_owned(), CLIENT_ID.to_owned()),
        ("objects".to_owned(), objs.to_owned()),
        ("csi.storage.k8s.io/pod.name".to_owned(), pod.to_owned()),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            "bench".to_owned(),
        ),
        (
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            tokens,
        ),
    ])
}

fn ms(d: Duration) -> String {
    format!("{:.2}", millis(d))
}

async fn publish(
    node: &mut NodeClient<Channel>,
    target: &Path,
    id: &str,
    ctx: &HashMap<String, String>,
) -> Duration {
    let start = Instant::now();
    node.node_publish_volume(publish_request(target, id, ctx))
        .await
        .expect("publish");
    start.elapsed()
}

async fn unpublish(node: &mut NodeClient<Channel>, target: &Path, id: &str) -> Duration {
    let start = Instant::now();
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    })
    .await
    .expect("unpublish");
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secrets = OBJECTS_PER_CLASS * (4 * SAMPLES + 5);
    let vault = Vault::start(Some(seed(secrets))).await;
    let daemon = NodeDaemon::start(&vault.provider_flags());
    let pid = daemon.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(pid);
    let idle = memory_split(pid);
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let mut rows = Vec::new();
    let mut next_class = 0usize;
    for latency in [0u64, 20] {
        vault.mock.clear_faults();
        if latency > 0 {
            vault
                .mock
                .set_faults(vec![FaultRule {
                    route: Some("secret.get".into()),
                    latency_ms: Some(latency),
                    ..Default::default()
                }])
                .expect("latency fault");
        }
        // Cold: a new pod whose 10 objects nobody on the node has read yet. First the first
        // pod of its identity on the node (new connections, Key Vault's challenge answered
        // once), then with another pod of the identity running (its clients are kept).
        let mut cold_first = Vec::new();
        let mut cold = Vec::new();
        for resident in [false, true] {
            let keeper = format!("resident-{latency}");
            let keeper_target = daemon.target(&keeper);
            if resident {
                let ctx = context(
                    &vault,
                    &keeper,
                    &vault.sa_token("bench", "app"),
                    &class(next_class * OBJECTS_PER_CLASS),
                );
                next_class += 1;
                publish(&mut node, &keeper_target, &keeper, &ctx).await;
            }
            for i in 0..SAMPLES {
                let pod = format!("cold-{latency}-{resident}-{i}");
                let target = daemon.target(&pod);
                let ctx = context(
                    &vault,
                    &pod,
                    &vault.sa_token("bench", "app"),
                    &class(next_class * OBJECTS_PER_CLASS),
                );
                next_class += 1;
                let took = publish(&mut node, &target, &pod, &ctx).await;
                if resident { &mut cold } else { &mut cold_first }.push(took);
                unpublish(&mut node, &target, &pod).await;
                // Spaced so each cold publish starts with the default request budget
                // (`--vault-qps 20`) refilled, its challenge and a spare included: the row
                // measures a publish, not the rate limit.
                let spacing = (OBJECTS_PER_CLASS + 2) as f64 / 20.0;
                tokio::time::sleep(Duration::from_secs_f64(spacing)).await;
            }
            if resident {
                unpublish(&mut node, &keeper_target, &keeper).await;
            }
        }
        // Warm: the objects are cached (one pod keeps them); kubelet's republish of a pod, and a
        // new pod of the same identity (which still proves its own token at Entra ID first).
        let keeper = format!("keeper-{latency}");
        let keeper_target = daemon.target(&keeper);
        let shared = class(next_class * OBJECTS_PER_CLASS);
        next_class += 1;
        let keeper_ctx = context(&vault, &keeper, &vault.sa_token("bench", "app"), &shared);
        publish(&mut node, &keeper_target, &keeper, &keeper_ctx).await;
        let mut republish = Vec::new();
        for _ in 0..SAMPLES {
            republish.push(publish(&mut node, &keeper_target, &keeper, &keeper_ctx).await);
        }
        let mut new_pod = Vec::new();
        for i in 0..SAMPLES {
            let pod = format!("warm-{latency}-{i}");
            let target = daemon.target(&pod);
            let ctx = context(&vault, &pod, &vault.sa_token("bench", "app"), &shared);
            new_pod.push(publish(&mut node, &target, &pod, &ctx).await);
            unpublish(&mut node, &target, &pod).await;
        }
        unpublish(&mut node, &keeper_target, &keeper).await;
        for (name, samples) in [
            (
                "cold, first pod of its identity on the node (objects not cached)",
                &cold_first,
            ),
            (
                "cold, another pod of its identity on the node (objects not cached)",
                &cold,
            ),
            ("warm (republish of a pod)", &republish),
            ("warm (new pod, same identity)", &new_pod),
        ] {
            rows.push(format!(
                "| {latency} ms | {name} | {} | {} |",
                ms(percentile(samples, 50.0)),
                ms(percentile(samples, 99.0))
            ));
        }
    }
    vault.mock.clear_faults();

    // 1,000 published volumes, each its own pod (own token) of one identity and class.
    let shared = class(next_class * OBJECTS_PER_CLASS);
    let mut handles = Vec::new();
    let started = Instant::now();
    for chunk in (0..VOLUMES).collect::<Vec<_>>().chunks(VOLUMES / 8) {
        let mut node = node.clone();
        let jobs: Vec<(String, std::path::PathBuf, HashMap<String, String>)> = chunk
            .iter()
            .map(|i| {
                let pod = format!("many-{i}");
                let target = daemon.target(&pod);
                let ctx = context(&vault, &pod, &vault.sa_token("bench", "app"), &shared);
                (pod, target, ctx)
            })
            .collect();
        handles.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for (pod, target, ctx) in &jobs {
                took.push(publish(&mut node, target, pod, ctx).await);
            }
            (jobs, took)
        }));
    }
    let mut published = Vec::new();
    let mut publish_times = Vec::new();
    for handle in handles {
        let (jobs, took) = handle.await.expect("join");
        published.extend(jobs);
        publish_times.extend(took);
    }
    let publish_all = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded_rss = rss_kib(pid);
    let loaded = memory_split(pid);
    if let Ok(secs) = std::env::var("KVMOUNT_BENCH_PAUSE") {
        // For a look at the loaded daemon (smaps, gdb): it stays up this many seconds.
        eprintln!("node-bench: daemon {pid} holds {VOLUMES} volumes; pausing {secs} s");
        tokio::time::sleep(Duration::from_secs(secs.parse().unwrap_or(60))).await;
    }
    let gets = vault
        .mock
        .stats()
        .count(Some("bench"), Some("secret.get"), None, Some(200));
    // Unpublished again, also 8 at a time.
    let started = Instant::now();
    let mut handles = Vec::new();
    for chunk in published.chunks(VOLUMES / 8) {
        let mut node = node.clone();
        let jobs: Vec<(String, std::path::PathBuf)> = chunk
            .iter()
            .map(|(p, t, _)| (p.clone(), t.clone()))
            .collect();
        handles.push(tokio::spawn(async move {
            let mut took = Vec::new();
            for (pod, target) in &jobs {
                took.push(unpublish(&mut node, target, pod).await);
            }
            took
        }));
    }
    let mut unpublish_times = Vec::new();
    for handle in handles {
        unpublish_times.extend(handle.await.expect("join"));
    }
    let unpublish_all = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_rss = rss_kib(pid);
    // Nothing may be left: no mount, no target directory, no state record.
    let mounts_left = kvmount_tests::mounts_under(daemon.dir()).len();
    let dirs_left = published.iter().filter(|(_, t, _)| t.exists()).count();
    let records_left = kvmount_provider::state::StateStore::open(&daemon.state_dir)
        .and_then(|store| store.load())
        .expect("state readable")
        .len();
    assert_eq!(
        (mounts_left, dirs_left, records_left),
        (0, 0, 0),
        "left behind after unpublishing: mounts, target directories, state records"
    );

    println!(
        "### Node plugin (daemon {}, mock vault on loopback, {SAMPLES} samples per row)\n",
        kvmount_tests::workspace_bin("kvmount-provider").display()
    );
    println!(
        "| added Key Vault latency | NodePublishVolume, class of {OBJECTS_PER_CLASS} secrets | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    let after = memory_split(pid);
    println!("| daemon RSS | KiB | anonymous | file-backed | threads |");
    println!("|---|---|---|---|---|");
    for (name, rss, (anon, file, threads)) in [
        ("idle".to_owned(), idle_rss, idle),
        (format!("{VOLUMES} published volumes"), loaded_rss, loaded),
        ("after unpublishing them".to_owned(), after_rss, after),
    ] {
        println!("| {name} | {rss} | {anon} | {file} | {threads} |");
    }
    println!();
    println!(
        "| {VOLUMES} volumes, 8 concurrent streams | total s | p50 ms | p99 ms |\n|---|---|---|---|"
    );
    for (name, total, samples) in [
        ("NodePublishVolume", publish_all, &publish_times),
        ("NodeUnpublishVolume", unpublish_all, &unpublish_times),
    ] {
        println!(
            "| {name} | {:.1} | {} | {} |",
            total.as_secs_f64(),
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0))
        );
    }
    println!();
    println!(
        "All {VOLUMES} succeeded; left behind after unpublishing: {mounts_left} mounts, {dirs_left} target directories, {records_left} state records. Key Vault secret GETs in total for the run: {gets}."
    );
}

/// Resident KiB that are anonymous (heap, stacks) and file-backed (the binary, libraries), and
/// the thread count, from `/proc/<pid>/status`.
fn memory_split(pid: u32) -> (u64, u64, u64) {
    (
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
        status_kib(pid, "Threads"),
    )
}
