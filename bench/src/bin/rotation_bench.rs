//! Key Vault requests per rotation interval against the number of pods on a node, for kvmount
//! (measured: the release daemon against the mock vault) and for the per-pod-fetch baseline
//! (what the Azure provider does: every object for every pod on every rotation, pods x objects).
//! Writes `docs/rotation-requests.svg` and prints a Markdown table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

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

/// A log-log line chart of requests per interval against pods, both series.
fn plot(rows: &[(usize, u64, f64, f64)]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 70.0, 50.0, 30.0, 20.0);
    let x = |pods: f64| left + (pods.log10() / 3.0) * (w - left - right);
    let y = |n: f64| h - bottom - (n.max(1.0).log10() / 4.0) * (h - bottom - top);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = write!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Key Vault GETs per rotation interval (5 objects)</text>",
        w / 2.0
    );
    for decade in 0..=4 {
        let n = 10f64.powi(decade);
        let (x2, yy, tx, ty) = (w - right, y(n), left - 6.0, y(n) + 4.0);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{n}</text>"
        );
    }
    for pods in [1.0, 10.0, 100.0, 1000.0] {
        let (xx, y2, ty) = (x(pods), h - bottom, h - bottom + 18.0);
        let _ = write!(
            svg,
            "<line x1=\"{xx}\" x2=\"{xx}\" y1=\"{top}\" y2=\"{y2}\" stroke=\"#ddd\"/><text x=\"{xx}\" y=\"{ty}\" text-anchor=\"middle\">{pods}</text>"
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">pods on the node</text>",
        w / 2.0,
        h - 8.0
    );
    for (color, label, pick) in [
        ("#c0392b", "per-pod fetch (Azure provider)", 3usize),
        ("#2471a3", "kvmount (measured)", 2),
    ] {
        let points: Vec<String> = rows
            .iter()
            .map(|r| {
                let v = if pick == 3 { r.3 } else { r.2 };
                format!("{:.1},{:.1}", x(r.0 as f64), y(v))
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2.5\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"4\" fill=\"{color}\"/>"
            );
        }
        let ly = if pick == 3 { top + 20.0 } else { top + 40.0 };
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            left + 20.0,
            ly - 4.0,
            left + 40.0,
            ly
        );
    }
    svg.push_str("</svg>\n");
    svg
}
