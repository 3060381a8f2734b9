//! A whole cluster's Key Vault budget, simulated: many node daemons (`kvmount-provider serve`,
//! one process per node, each with its own socket and its own pods) against one mock vault,
//! with the rotation interval scaled down. The mock's counters are sampled every second, so
//! the vault's requests can be summed per 10 s window (Key Vault's limit is per vault per
//! 10 s) and plotted over time.
//!
//! Each node mounts its pods through the provider API as the upstream driver does (one
//! MountRequest per pod, each pod its own service-account token, one identity and one class
//! for the whole cluster), then, like the driver's rotation, mounts every pod again once per
//! interval. Beside the measurement: the Azure provider's arithmetic for the same cluster (it
//! reads every object for every pod at every rotation) and the largest cluster each stays
//! under Key Vault's limit with.
//!
//! Usage: `cluster-budget [--quick] [--out DIR]`. Without `--quick` it writes
//! `docs/bench-cluster-budget.svg` and its section of `docs/benchmarks.md`; with it, the
//! section is printed (debug builds, a small cluster: it checks the harness). `--out DIR`
//! also keeps `cluster-budget.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kvmount_bench::svg::{self, Chart, Scale, Series};
use kvmount_bench::{
    CLUSTER_BUDGET_HEADING, cpu_seconds, load_average, machine, replace_section, rss_kib,
    write_json,
};
use kvmount_mock_vault::{Seed, ServiceAccountTokenRequest, Stats};
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_tests::{DriverRequest, Provider, Vault, object, objects};
use serde_json::{Value, json};
use tonic::transport::Channel;

const VAULT: &str = "cluster";
const NAMESPACE: &str = "cc";
const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000cc";
/// Key Vault's limit: requests per vault per this window.
const WINDOW_SECONDS: u64 = 10;
const KEY_VAULT_LIMIT: f64 = 4_000.0;
/// kvmount's and the upstream driver's default rotation interval, for the arithmetic.
const DEFAULT_INTERVAL_SECONDS: f64 = 120.0;
/// Entra requests per Mount of the Azure provider (token, OpenID metadata, instance
/// discovery, as the pod rows of `bench/run.sh` count them).
const AZURE_ENTRA_PER_MOUNT: f64 = 4.0;
/// Mounts in flight at once during the wave (the whole cluster's kubelets).
const WAVE_CONCURRENCY: usize = 16;

struct Plan {
    quick: bool,
    nodes: usize,
    pods: usize,
    objects: usize,
    interval: Duration,
    /// Rotation intervals counted once every entry reads at its own phase.
    intervals: u32,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                nodes: 10,
                pods: 2,
                objects: 5,
                interval: Duration::from_secs(4),
                intervals: 3,
            }
        } else {
            Plan {
                quick,
                nodes: 100,
                pods: 10,
                objects: 10,
                interval: Duration::from_secs(30),
                intervals: 4,
            }
        }
    }

    fn seed(&self) -> Seed {
        let mut yaml = format!(
            "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - name: app\n    clientId: {CLIENT_ID}\n    federated:\n      - {{ issuer: {}, subject: \"system:serviceaccount:{NAMESPACE}:app\" }}\nvaults:\n  - name: {VAULT}\n    secrets:\n",
            kvmount_mock_vault::DEV_ISSUER
        );
        for i in 0..self.objects {
            let _ = writeln!(yaml, "      - {{ name: s{i}, versions: [\"v-{i}\"] }}");
        }
        Seed::from_yaml(&yaml).expect("seed")
    }
}

/// The mock's counters at one moment: Key Vault requests (every request to the vault host),
/// its GETs answered 200, its 401 challenges, and Entra requests (token, metadata, discovery).
#[derive(Clone, Copy, Default)]
struct Counts {
    keyvault: u64,
    gets: u64,
    challenges: u64,
    entra: u64,
}

impl Counts {
    fn of(stats: &Stats) -> Counts {
        let mut c = Counts::default();
        for e in &stats.entries {
            if e.vault == VAULT {
                c.keyvault += e.count;
                c.gets += if e.status == 200 { e.count } else { 0 };
                c.challenges += if e.status == 401 { e.count } else { 0 };
            } else if e.vault.is_empty() {
                c.entra += e.count;
            }
        }
        c
    }

    fn minus(self, o: Counts) -> Counts {
        Counts {
            keyvault: self.keyvault.saturating_sub(o.keyvault),
            gets: self.gets.saturating_sub(o.gets),
            challenges: self.challenges.saturating_sub(o.challenges),
            entra: self.entra.saturating_sub(o.entra),
        }
    }

    fn json(self) -> Value {
        json!({"keyvault": self.keyvault, "gets": self.gets, "challenges": self.challenges, "entra": self.entra})
    }
}

/// One node: its daemon and its pods' MountRequests.
struct Node {
    daemon: Provider,
    client: CsiDriverProviderClient<Channel>,
    pods: Vec<DriverRequest>,
}

fn token(vault: &Vault, pod: &str) -> String {
    kvmount_mock_vault::mint_service_account_token(
        &vault.tls_dir(),
        &ServiceAccountTokenRequest {
            pod_name: Some(pod.into()),
            ..ServiceAccountTokenRequest::new(NAMESPACE, "app")
        },
    )
    .expect("mint token")
}

/// Mounts every pod of `node` once; the number that failed.
async fn mount_pods(node: &mut Node) -> usize {
    let mut failed = 0;
    for pod in &node.pods {
        if let Err(status) = node.client.mount(pod.build()).await {
            failed += 1;
            eprintln!("cluster-budget: Mount failed: {}", status.message());
        }
    }
    failed
}

fn arg_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    let vault = Arc::new(Vault::start(Some(plan.seed())).await);
    let class = objects(
        &(0..plan.objects)
            .map(|i| object(&format!("s{i}"), ""))
            .collect::<Vec<_>>(),
    );
    let interval = plan.interval.as_secs();
    let mut flags = vault.provider_flags();
    flags.extend([
        "--rotation-interval".into(),
        format!("{interval}s"),
        // The driver mounts every pod again each interval; entries stay in use well past it.
        "--cache-idle".into(),
        format!("{}s", 3 * interval),
    ]);

    // The nodes: one daemon each, started one after another.
    let load_before = load_average();
    let mut nodes = Vec::with_capacity(plan.nodes);
    for n in 0..plan.nodes {
        let daemon = Provider::start(&flags);
        let client = daemon.client().await;
        let pods = (0..plan.pods)
            .map(|p| {
                let pod = format!("n{n}-p{p}");
                DriverRequest::new(VAULT, vault.mock.tenant_id(), &class, NAMESPACE, &pod)
                    .workload_identity(CLIENT_ID, &token(&vault, &pod))
            })
            .collect();
        nodes.push(Node {
            daemon,
            client,
            pods,
        });
    }
    let startup = started.elapsed();
    let rss_idle: u64 = nodes.iter().map(|n| rss_kib(n.daemon.pid())).sum();
    eprintln!(
        "cluster-budget: {} daemons up in {:.1} s, {:.0} MiB together",
        plan.nodes,
        startup.as_secs_f64(),
        rss_idle as f64 / 1024.0
    );

    // The counters, every second from the wave's start.
    let t0 = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, Counts)>::new()));
    let sampler = {
        let samples = Arc::clone(&samples);
        let vault = Arc::clone(&vault);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let c = Counts::of(&vault.mock.stats());
                samples
                    .lock()
                    .expect("samples")
                    .push((t0.elapsed().as_secs_f64(), c));
            }
        })
    };

    // The mount wave: every pod of every node, the nodes in parallel.
    let cpu_before: f64 = nodes.iter().map(|n| cpu_seconds(n.daemon.pid())).sum();
    let wave_failed: usize = futures::stream::iter(nodes.iter_mut())
        .map(mount_pods)
        .buffer_unordered(WAVE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    let wave_seconds = t0.elapsed().as_secs_f64();
    let cpu_wave: f64 = nodes
        .iter()
        .map(|n| cpu_seconds(n.daemon.pid()))
        .sum::<f64>()
        - cpu_before;
    eprintln!(
        "cluster-budget: mount wave of {} pods in {wave_seconds:.1} s ({wave_failed} failed)",
        plan.nodes * plan.pods
    );

    // Steady state: from the first whole window after every entry's first rotation read
    // (at most one interval after its mount), `intervals` intervals long. Meanwhile the
    // driver's rotation mounts every pod again once per interval.
    let settle = wave_seconds + plan.interval.as_secs_f64();
    let first_window = (settle / WINDOW_SECONDS as f64).ceil() as u64;
    let windows = (u64::from(plan.intervals) * interval).div_ceil(WINDOW_SECONDS);
    let end = Duration::from_secs((first_window + windows) * WINDOW_SECONDS + 1);
    let steady_start = Duration::from_secs(first_window * WINDOW_SECONDS);
    let mut cpu_steady_start = None;
    let mut remount_failed = 0;
    let mut remounts = 0;
    let mut next_remount = Instant::now() + plan.interval;
    while t0.elapsed() < end {
        if cpu_steady_start.is_none() && t0.elapsed() >= steady_start {
            let cpu: f64 = nodes.iter().map(|n| cpu_seconds(n.daemon.pid())).sum();
            cpu_steady_start = Some((t0.elapsed(), cpu));
        }
        if Instant::now() >= next_remount {
            next_remount += plan.interval;
            for node in nodes.iter_mut() {
                remount_failed += mount_pods(node).await;
                remounts += node.pods.len();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cpu_since, cpu_at_start) = cpu_steady_start.unwrap_or((steady_start, 0.0));
    let cpu_steady = nodes
        .iter()
        .map(|n| cpu_seconds(n.daemon.pid()))
        .sum::<f64>()
        - cpu_at_start;
    let cpu_span = (t0.elapsed() - cpu_since).as_secs_f64();
    sampler.abort();
    let _ = sampler.await;
    let rss: Vec<u64> = nodes.iter().map(|n| rss_kib(n.daemon.pid())).collect();
    let bench_cpu = cpu_seconds(std::process::id());
    let load_after = load_average();
    let log_errors: usize = nodes
        .iter()
        .map(|n| {
            n.daemon
                .output()
                .lines()
                .filter(|l| l.contains("ERROR"))
                .count()
        })
        .sum();
    drop(nodes);
    if let Ok(vault) = Arc::try_unwrap(vault) {
        vault.mock.shutdown().await;
    }

    let samples = samples.lock().expect("samples").clone();
    // The counts at second `s` of the run: the first sample taken then or later (the sampler
    // may run late on a busy machine; it is never early).
    let at = |s: u64| {
        samples
            .iter()
            .find(|(t, _)| *t >= s as f64 - 0.01)
            .or(samples.last())
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };
    let last = samples.last().map_or(0.0, |(t, _)| *t);
    let total_windows = (last as u64) / WINDOW_SECONDS;
    let per_window: Vec<Counts> = (0..total_windows)
        .map(|w| at((w + 1) * WINDOW_SECONDS).minus(at(w * WINDOW_SECONDS)))
        .collect();
    let steady: Vec<Counts> = per_window
        .iter()
        .skip(first_window as usize)
        .take(windows as usize)
        .copied()
        .collect();
    // Every 10 s window of the steady state, starting at each second (not just the fixed ones).
    let sliding: Vec<u64> = (first_window * WINDOW_SECONDS
        ..(first_window + windows - 1) * WINDOW_SECONDS + 1)
        .map(|s| at(s + WINDOW_SECONDS).minus(at(s)).keyvault)
        .collect();
    let steady_total = steady.iter().fold(Counts::default(), |a, c| Counts {
        keyvault: a.keyvault + c.keyvault,
        gets: a.gets + c.gets,
        challenges: a.challenges + c.challenges,
        entra: a.entra + c.entra,
    });
    let steady_seconds = (steady.len() as u64 * WINDOW_SECONDS) as f64;
    let mean = steady_total.keyvault as f64 / steady.len().max(1) as f64;
    let peak = steady.iter().map(|c| c.keyvault).max().unwrap_or(0);
    let sliding_peak = sliding.iter().copied().max().unwrap_or(0);
    let per_interval = steady_total.keyvault as f64 * plan.interval.as_secs_f64() / steady_seconds;
    let wave = at(first_window * WINDOW_SECONDS);

    let results = json!({
        "quick": plan.quick,
        "nodes": plan.nodes,
        "pods_per_node": plan.pods,
        "objects": plan.objects,
        "interval_seconds": interval,
        "window_seconds": WINDOW_SECONDS,
        "startup_seconds": startup.as_secs_f64(),
        "wave_seconds": wave_seconds,
        "wave_failed": wave_failed,
        "remounts": remounts,
        "remount_failed": remount_failed,
        "first_steady_window": first_window,
        "steady_windows": steady.len(),
        "until_steady": wave.json(),
        "steady_total": steady_total.json(),
        "mean_per_window": mean,
        "peak_window": peak,
        "peak_sliding_window": sliding_peak,
        "per_interval": per_interval,
        "expected_per_interval": plan.nodes * plan.objects,
        "windows": per_window.iter().map(|c| c.json()).collect::<Vec<_>>(),
        "rss_kib": {"idle_total": rss_idle, "total": rss.iter().sum::<u64>(), "max": rss.iter().max(), "min": rss.iter().min()},
        "cpu_seconds": {"wave": cpu_wave, "steady": cpu_steady, "steady_seconds": cpu_span, "bench_process_with_mock": bench_cpu},
        "load_average": {"before": load_before, "after": load_after},
        "daemon_log_errors": log_errors,
        "seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(out) = arg_value("--out") {
        write_json(Path::new(&out), "cluster-budget.json", &results)
            .expect("write cluster-budget.json");
    }
    let svg_name = "bench-cluster-budget.svg";
    let md = report(
        &plan,
        &results,
        &per_window,
        first_window,
        windows,
        svg_name,
    );
    if plan.quick {
        println!("{md}");
    } else {
        let docs = PathBuf::from("docs");
        std::fs::write(docs.join(svg_name), plot(&plan, &per_window)).expect("write svg");
        let path = docs.join("benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, replace_section(&doc, &md, "## Raw numbers"))
            .expect("write docs/benchmarks.md");
        println!("{md}");
        eprintln!(
            "cluster-budget: wrote {} and docs/{svg_name}",
            path.display()
        );
    }
    eprintln!(
        "cluster-budget: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// Key Vault requests per 10 s of the Azure provider for this cluster at `interval` seconds:
/// every pod's Mount at every rotation reads every object (a GET each) after one challenge.
fn azure_per_window(plan: &Plan, interval: f64) -> f64 {
    (plan.nodes * plan.pods * (plan.objects + 1)) as f64 * WINDOW_SECONDS as f64 / interval
}

/// The largest number of nodes whose requests per 10 s (`per_node` each) stay under the limit.
fn largest(per_node: f64) -> u64 {
    (KEY_VAULT_LIMIT / per_node).floor() as u64
}

fn report(
    plan: &Plan,
    r: &Value,
    per_window: &[Counts],
    first: u64,
    windows: u64,
    svg_name: &str,
) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let (nodes, pods, objects) = (plan.nodes, plan.pods, plan.objects);
    let interval = plan.interval.as_secs_f64();
    let mean = f(&r["mean_per_window"]);
    let peak = f(&r["peak_window"]);
    let sliding = f(&r["peak_sliding_window"]);
    let steady = &r["steady_total"];
    let kvmount_node = mean / nodes as f64;
    let kvmount_node_default = kvmount_node * interval / DEFAULT_INTERVAL_SECONDS;
    let azure_here = azure_per_window(plan, interval);
    let azure_default = azure_per_window(plan, DEFAULT_INTERVAL_SECONDS);
    let azure_gets_default =
        (nodes * pods * objects) as f64 * WINDOW_SECONDS as f64 / DEFAULT_INTERVAL_SECONDS;
    let rss = &r["rss_kib"];
    let cpu = &r["cpu_seconds"];
    let steady_seconds = f(&cpu["steady_seconds"]).max(1.0);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{CLUSTER_BUDGET_HEADING}\n\nWritten by `bench/run.sh cluster-budget{}` in {:.0} s; not part of the full run. {nodes} node daemons (`kvmount-provider serve`, the `{}` build, one process per node, each with its own provider socket and its own {pods} pods) against one mock vault in the benchmark's process (the harness in its {} build); one identity and one class of {objects} secrets for the whole cluster, each pod its own service-account token. Every pod mounted once through the provider API ({WAVE_CONCURRENCY} Mounts in flight across the cluster), then, as the driver's rotation does, every pod mounted again each interval. Rotation scaled down from 2m to `--rotation-interval {}s` (`--cache-idle {}s`); the mock's counters are read every second and summed per 10 s window (Key Vault's limit: 4,000 requests per vault per 10 s). Key Vault requests are every request to the vault host (401 challenges included).\n",
        if plan.quick { " --quick" } else { "" },
        f(&r["seconds"]),
        if plan.quick { "debug" } else { "dist" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        interval,
        3.0 * interval,
    );
    let _ = writeln!(
        md,
        "{}- load average before the run: {}\n",
        machine(
            "the daemons and the mock vault on loopback, no network namespace",
            "CPU seconds are noisy; request counts are exact"
        ),
        r["load_average"]["before"].as_str().unwrap_or(""),
    );
    let _ = writeln!(
        md,
        "| measured (steady state: windows {} to {}, {} s after the wave's start) | value |\n|---|---|",
        first,
        first + windows - 1,
        first * WINDOW_SECONDS
    );
    let rows = [
        (
            "Key Vault requests per rotation interval (mean)".to_string(),
            format!(
                "{:.1} (expected nodes x objects in use = {nodes} x {objects} = {})",
                f(&r["per_interval"]),
                nodes * objects
            ),
        ),
        (
            "of them GETs answered 200 / 401 challenges / Entra requests (whole steady state)"
                .into(),
            format!(
                "{} / {} / {}",
                steady["gets"], steady["challenges"], steady["entra"]
            ),
        ),
        (
            "Key Vault requests per 10 s window: mean / peak (fixed windows) / peak (any 10 s)"
                .into(),
            format!(
                "{mean:.1} / {peak:.0} ({:.2}x the mean) / {sliding:.0} ({:.2}x)",
                peak / mean.max(1.0),
                sliding / mean.max(1.0)
            ),
        ),
        (
            "the mount wave and the first intervals (until the steady state): Key Vault (GETs, challenges) / Entra".into(),
            format!(
                "{} ({}, {}) / {} in {:.1} s of wave, {} of {} Mounts failed",
                r["until_steady"]["keyvault"],
                r["until_steady"]["gets"],
                r["until_steady"]["challenges"],
                r["until_steady"]["entra"],
                f(&r["wave_seconds"]),
                r["wave_failed"],
                nodes * pods
            ),
        ),
        (
            "driver remounts during the run (served from each node's cache)".into(),
            format!("{} ({} failed)", r["remounts"], r["remount_failed"]),
        ),
        (
            "daemons' RSS together: idle / at the end (min / max per daemon)".into(),
            format!(
                "{:.0} MiB / {:.0} MiB ({:.1} / {:.1} MiB)",
                f(&rss["idle_total"]) / 1024.0,
                f(&rss["total"]) / 1024.0,
                f(&rss["min"]) / 1024.0,
                f(&rss["max"]) / 1024.0
            ),
        ),
        (
            "daemons' CPU together: mount wave / steady state".into(),
            format!(
                "{:.2} s / {:.2} s in {:.0} s ({:.1}% of one core)",
                f(&cpu["wave"]),
                f(&cpu["steady"]),
                steady_seconds,
                100.0 * f(&cpu["steady"]) / steady_seconds
            ),
        ),
        (
            "the benchmark's own process (mock vault, sampler, driver calls), whole run".into(),
            format!("{:.2} s CPU", f(&cpu["bench_process_with_mock"])),
        ),
        (
            "errors in the daemons' logs".into(),
            r["daemon_log_errors"].to_string(),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n![Key Vault requests per 10 s window]({svg_name})\n\nThe same cluster, kvmount measured beside the Azure provider's arithmetic. Its assumptions: the driver's rotation (`--rotation-poll-interval`, default 2m) calls Mount for every pod; each Mount makes a new client and reads every object (one GET each) after one 401 challenge, plus {AZURE_ENTRA_PER_MOUNT:.0} Entra requests (as the pod rows above count them: 100 pods of 5 secrets cost 600 Key Vault requests); nothing is shared between pods or Mounts. kvmount's per-node rate is the measured one, scaled to the interval. Largest cluster: nodes like these ({pods} pods, {objects} objects) whose requests per 10 s stay under 4,000.\n"
    );
    let _ = writeln!(
        md,
        "| | kvmount (measured) | Azure provider (arithmetic) | kvmount / Azure |\n|---|---|---|---|"
    );
    let table = [
        (
            format!("Key Vault requests per 10 s, this cluster at a {interval:.0} s interval"),
            mean,
            azure_here,
        ),
        (
            "the same at the default 2m interval".to_string(),
            mean * interval / DEFAULT_INTERVAL_SECONDS,
            azure_default,
        ),
        (
            "of them GETs, at 2m".to_string(),
            f(&steady["gets"]) / steady_seconds * WINDOW_SECONDS as f64 * interval
                / DEFAULT_INTERVAL_SECONDS,
            azure_gets_default,
        ),
        (
            "Entra requests per 10 s at 2m".to_string(),
            f(&steady["entra"]) / steady_seconds * WINDOW_SECONDS as f64 * interval
                / DEFAULT_INTERVAL_SECONDS,
            (nodes * pods) as f64 * AZURE_ENTRA_PER_MOUNT * WINDOW_SECONDS as f64
                / DEFAULT_INTERVAL_SECONDS,
        ),
    ];
    for (k, ours, theirs) in table {
        let ratio = if ours > 0.0 {
            format!("1/{:.0}", theirs / ours)
        } else {
            "(none for kvmount)".into()
        };
        let _ = writeln!(md, "| {k} | {ours:.1} | {theirs:.1} | {ratio} |");
    }
    let _ = writeln!(
        md,
        "| largest cluster under 4,000 per 10 s at a {interval:.0} s interval | {} nodes | {} nodes | |\n| largest cluster under 4,000 per 10 s at 2m | {} nodes | {} nodes | |\n",
        largest(kvmount_node),
        largest(azure_here / nodes as f64),
        largest(kvmount_node_default),
        largest(azure_default / nodes as f64),
    );
    let _ = writeln!(
        md,
        "Per window ({WINDOW_SECONDS} s each, from the wave's start; Key Vault requests, GETs, challenges, Entra): {}\n",
        per_window
            .iter()
            .map(|c| format!("{}/{}/{}/{}", c.keyvault, c.gets, c.challenges, c.entra))
            .collect::<Vec<_>>()
            .join(", ")
    );
    md
}

/// Key Vault requests per 10 s window over the run: measured, expected (nodes x objects per
/// interval) and the Azure provider's arithmetic for the same cluster.
fn plot(plan: &Plan, per_window: &[Counts]) -> String {
    let categories: Vec<String> = (0..per_window.len())
        .map(|w| {
            if w % 3 == 0 {
                format!("{} s", w as u64 * WINDOW_SECONDS)
            } else {
                String::new()
            }
        })
        .collect();
    let interval = plan.interval.as_secs_f64();
    let expected = (plan.nodes * plan.objects) as f64 * WINDOW_SECONDS as f64 / interval;
    let series = [
        Series {
            label: "Azure provider (arithmetic: pods x (objects + 1) per interval)".into(),
            color: svg::AZURE,
            values: vec![Some(azure_per_window(plan, interval)); per_window.len()],
        },
        Series {
            label: "kvmount, measured at the mock".into(),
            color: svg::KVMOUNT,
            values: per_window.iter().map(|c| Some(c.keyvault as f64)).collect(),
        },
        Series {
            label: "nodes x objects per interval".into(),
            color: "#7f8c8d",
            values: vec![Some(expected); per_window.len()],
        },
        Series {
            label: "Key Vault's limit".into(),
            color: "#000000",
            values: vec![Some(KEY_VAULT_LIMIT); per_window.len()],
        },
    ];
    Chart {
        title: &format!(
            "Key Vault requests per 10 s: {} nodes, {} pods each, {} objects, rotation every {} s",
            plan.nodes,
            plan.pods,
            plan.objects,
            plan.interval.as_secs()
        ),
        y_label: "requests per 10 s",
        scale: Scale::Log,
        categories: &categories,
        series: &series,
    }
    .lines()
}
