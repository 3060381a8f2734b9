//! Key Vault requests per rotation interval against the number of pods on a node, for kvmount
//! (measured: the release daemon against the mock vault) and for the per-pod-fetch baseline
//! (what the Azure provider does: every object for every pod on every rotation, pods x objects).
//! Writes `docs/rotation-requests.svg` and prints a Markdown table.

use std::collections::HashMap;
use std::time::Duration;

use kvmount_bench::svg::{self, Chart, Scale, Series};
use kvmount_mock_vault::Seed;
use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_tests::{NodeDaemon, Vault, object, objects, publish_request};

const OBJECTS: usize = 5;
const PODS: [usize; 4] = [1, 10, 100, 1000];
const INTERVAL_SECONDS: u64 = 2;
const INTERVALS: u64 = 3;

fn seed() -> Seed {
    let mut yaml = String::from(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: 00000000-0000-0000-0000-0000000000a1\n    federated:\n      - { issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:rot:app\" }\nvaults:\n  - name: rot\n    secrets:\n",
    );
    for i in 0..OBJECTS {
        yaml.push_str(&format!(
            "      - {{ name: s{i}, versions: [\"v-{i}\"] }}\n"
        ));
    }
    Seed::from_yaml(&yaml).expect("seed")
}

fn gets(vault: &Vault) -> u64 {
    vault
        .mock
        .stats()
        .count(Some("rot"), Some("secret.get"), None, Some(200))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let class = objects(
        &(0..OBJECTS)
            .map(|i| object(&format!("s{i}"), ""))
            .collect::<Vec<_>>(),
    );
    let mut rows = Vec::new();
    for pods in PODS {
        let vault = Vault::start(Some(seed())).await;
        let mut flags = vault.provider_flags();
        flags.extend(["--rotation-interval".into(), format!("{INTERVAL_SECONDS}s")]);
        let daemon = NodeDaemon::start(&flags);
        let node = NodeClient::new(daemon.csi_channel().await);
        let mut jobs = Vec::new();
        for stream in 0..8usize {
            let mut node = node.clone();
            let mine: Vec<(String, std::path::PathBuf, HashMap<String, String>)> = (0..pods)
                .filter(|i| i % 8 == stream)
                .map(|i| {
                    let pod = format!("pod-{i}");
                    let target = daemon.target(&pod);
                    let tokens = serde_json::json!({"api://AzureADTokenExchange": {"token": vault.sa_token("rot", "app")}}).to_string();
                    let ctx = HashMap::from([
                        ("keyvaultName".to_owned(), "rot".to_owned()),
                        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
                        ("clientID".to_owned(), "00000000-0000-0000-0000-0000000000a1".to_owned()),
                        ("objects".to_owned(), class.clone()),
                        ("csi.storage.k8s.io/pod.name".to_owned(), pod.clone()),
                        ("csi.storage.k8s.io/pod.namespace".to_owned(), "rot".to_owned()),
                        ("csi.storage.k8s.io/serviceAccount.tokens".to_owned(), tokens),
                    ]);
                    (pod, target, ctx)
                })
                .collect();
            jobs.push(tokio::spawn(async move {
                for (pod, target, ctx) in &mine {
                    node.node_publish_volume(publish_request(target, pod, ctx))
                        .await
                        .expect("publish");
                }
                mine
            }));
        }
        let mut published = Vec::new();
        for job in jobs {
            published.extend(job.await.expect("join"));
        }
        let wave = gets(&vault);
        let before = gets(&vault);
        tokio::time::sleep(Duration::from_secs(INTERVAL_SECONDS * INTERVALS)).await;
        let per_interval = (gets(&vault) - before) as f64 / INTERVALS as f64;
        let mut node = node.clone();
        for (pod, target, _) in &published {
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: pod.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .expect("unpublish");
        }
        drop(daemon);
        vault.mock.shutdown().await;
        let baseline = (pods * OBJECTS) as f64;
        rows.push((pods, wave, per_interval, baseline));
        eprintln!("{pods} pods: mount wave {wave} GETs, {per_interval:.1} GETs per interval");
    }

    println!(
        "### Key Vault requests per rotation interval (class of {OBJECTS} objects, one identity)\n"
    );
    println!(
        "| pods on the node | kvmount: mount wave | kvmount: per interval (measured) | per-pod fetch (Azure provider model: pods x objects) | ratio |"
    );
    println!("|---|---|---|---|---|");
    for (pods, wave, per, base) in &rows {
        println!(
            "| {pods} | {wave} | {per:.1} | {base:.0} | 1/{:.0} |",
            base / per.max(1.0)
        );
    }
    let svg = plot(&rows);
    std::fs::create_dir_all("docs").expect("docs dir");
    std::fs::write("docs/rotation-requests.svg", svg).expect("write svg");
    println!("\n![Key Vault requests per rotation interval](docs/rotation-requests.svg)");
}

/// Requests per interval against pods (log scale), both series.
fn plot(rows: &[(usize, u64, f64, f64)]) -> String {
    let pods: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
    let series = [
        Series {
            label: "per-pod fetch (Azure provider model)".into(),
            color: svg::AZURE,
            values: rows.iter().map(|r| Some(r.3)).collect(),
        },
        Series {
            label: "kvmount (measured)".into(),
            color: svg::KVMOUNT,
            values: rows.iter().map(|r| Some(r.2)).collect(),
        },
    ];
    Chart {
        title: &format!("Key Vault GETs per rotation interval ({OBJECTS} objects)"),
        y_label: "GETs per interval",
        scale: Scale::Log,
        categories: &pods,
        series: &series,
    }
    .lines()
}
