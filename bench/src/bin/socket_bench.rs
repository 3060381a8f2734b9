//! Two daemon binaries side by side in one run, on the calls that cross a Unix socket warm:
//! CSI NodePublishVolume republished onto a published volume (kubelet's periodic republish),
//! a provider-API Mount of the same class (cache hit) and Version. Built to compare a change
//! to the socket path (the `:authority` adapter, `kvmount-unix-h2`) against the binary before
//! it: the two daemons run against one mock vault, and their samples are taken in alternating
//! rounds so that load on this shared machine falls on both alike.
//!
//!   socket-bench --baseline OLD_BIN [--candidate NEW_BIN] [--rounds 20] [--samples 50] [--gap-ms 0]
//!
//! `--gap-ms` idles that long before every timed call, as a node's daemon waits between the
//! driver's calls (its caches and the CPU's go cold); 0 sends them back to back.
//!
//! The candidate defaults to the daemon `KVMOUNT_KVMOUNT_PROVIDER_BIN` names (bench/run.sh sets
//! it), else target/<profile>/kvmount-provider. Prints a Markdown table; checks nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kvmount_bench::{millis, percentile};
use kvmount_mock_vault::Seed;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_proto::provider::VersionRequest;
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_tests::{
    DriverRequest, NodeDaemon, Vault, object, objects, publish_request, workspace_bin,
};

const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000be";
const OBJECTS: usize = 10;

fn seed() -> Seed {
    let mut yaml = String::from(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: bench\n    clientId: 00000000-0000-0000-0000-0000000000be\n    federated:\n      - { issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:bench:app\" }\nvaults:\n  - name: bench\n    secrets:\n",
    );
    for i in 0..OBJECTS {
        yaml.push_str(&format!(
            "      - {{ name: s-{i}, versions: [\"value-{i}-0123456789abcdef\"] }}\n"
        ));
    }
    Seed::from_yaml(&yaml).expect("bench seed")
}

/// The class inline in the CSI volume context (no SecretProviderClass to look up).
fn csi_context(request: &DriverRequest) -> HashMap<String, String> {
    let mut context = request.attributes.clone();
    context.remove("secretProviderClass");
    context
}

struct Side {
    name: &'static str,
    binary: String,
    daemon: NodeDaemon,
    request: DriverRequest,
    republish: Vec<Duration>,
    mount: Vec<Duration>,
    version: Vec<Duration>,
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(baseline) = arg(&args, "--baseline") else {
        eprintln!(
            "usage: socket-bench --baseline OLD_BIN [--candidate NEW_BIN] [--rounds N] [--samples N]"
        );
        std::process::exit(2);
    };
    let candidate = arg(&args, "--candidate")
        .unwrap_or_else(|| workspace_bin("kvmount-provider").display().to_string());
    let rounds: usize = arg(&args, "--rounds").map_or(20, |n| n.parse().expect("--rounds"));
    let samples: usize = arg(&args, "--samples").map_or(50, |n| n.parse().expect("--samples"));
    let gap =
        Duration::from_millis(arg(&args, "--gap-ms").map_or(0, |n| n.parse().expect("--gap-ms")));

    let vault = Vault::start(Some(seed())).await;
    let docs: Vec<String> = (0..OBJECTS)
        .map(|i| object(&format!("s-{i}"), ""))
        .collect();
    let class = objects(&docs);
    let mut sides = Vec::new();
    for (name, binary) in [("baseline", baseline), ("candidate", candidate)] {
        let daemon = NodeDaemon::start_binary(binary.clone().into(), &vault.provider_flags());
        let request = DriverRequest::new("bench", vault.mock.tenant_id(), &class, "bench", name)
            .workload_identity(CLIENT_ID, &vault.sa_token("bench", "app"));
        sides.push(Side {
            name,
            binary,
            daemon,
            request,
            republish: Vec::new(),
            mount: Vec::new(),
            version: Vec::new(),
        });
    }
    for side in &mut sides {
        // The first publish fills the cache: every timed call after it is warm.
        let mut node = NodeClient::new(side.daemon.csi_channel().await);
        let target = side.daemon.target("warm");
        let context = csi_context(&side.request);
        node.node_publish_volume(publish_request(&target, "warm", &context))
            .await
            .expect("first publish");
    }
    for _ in 0..rounds {
        for side in &mut sides {
            let mut node = NodeClient::new(side.daemon.csi_channel().await);
            let mut provider = CsiDriverProviderClient::new(
                kvmount_provider::server::unix_channel(&side.daemon.provider_socket)
                    .await
                    .expect("provider socket"),
            );
            let target = side.daemon.target("warm");
            let context = csi_context(&side.request);
            for _ in 0..samples {
                tokio::time::sleep(gap).await;
                let start = Instant::now();
                node.node_publish_volume(publish_request(&target, "warm", &context))
                    .await
                    .expect("republish");
                side.republish.push(start.elapsed());
                tokio::time::sleep(gap).await;
                let start = Instant::now();
                provider.mount(side.request.build()).await.expect("mount");
                side.mount.push(start.elapsed());
                tokio::time::sleep(gap).await;
                let start = Instant::now();
                provider
                    .version(VersionRequest {
                        version: "v1alpha1".into(),
                    })
                    .await
                    .expect("version");
                side.version.push(start.elapsed());
            }
        }
    }
    println!(
        "{} rounds x {} samples per call and daemon, alternating; class of {OBJECTS} secrets, cache warm, no added latency, {} ms idle before each call",
        rounds,
        samples,
        gap.as_millis()
    );
    println!();
    println!(
        "| daemon | warm republish p50 / p99 (ms) | warm provider Mount p50 / p99 (ms) | Version p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|");
    for side in &sides {
        let cell = |d: &[Duration]| {
            format!(
                "{:.3} / {:.3}",
                millis(percentile(d, 50.0)),
                millis(percentile(d, 99.0))
            )
        };
        println!(
            "| {} (`{}`) | {} | {} | {} |",
            side.name,
            side.binary,
            cell(&side.republish),
            cell(&side.mount),
            cell(&side.version)
        );
    }
}
