//! Renders the benchmark results (`provider.json` from provider-bench, `sidecar.json` from
//! sidecar-bench, `versions.txt` from bench/run.sh) into one Markdown report with SVG plots:
//! the machine, the versions, the goals (ours vs theirs, same run), every table, the raw numbers.
//!
//! Usage: `bench-report RESULTS_DIR REPORT.md` (the plots go next to the report as
//! `bench-*.svg`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kvmount_bench::svg::{AZURE, Chart, KVMOUNT, Scale, Series};
use kvmount_bench::{CLUSTER_BUDGET_HEADING, machine, section};
use serde_json::Value;

fn read_json(dir: &Path, name: &str) -> Value {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x < 10.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn mib(kib: Option<f64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k / 1024.0))
        .unwrap_or_else(|| "–".into())
}

/// `theirs / ours` as "1/N" when ours is smaller, "N×" when larger.
fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(o), Some(t)) if o > 0.0 && t > 0.0 && t >= o => format!("1/{:.1}", t / o),
        (Some(o), Some(t)) if o > 0.0 && t > 0.0 => format!("{:.1}×", o / t),
        (Some(o), Some(t)) if o == 0.0 && t > 0.0 => "0".into(),
        _ => "–".into(),
    }
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// The results of one run.
struct Data {
    provider: Value,
    sidecar: Value,
}

struct Report {
    data: Data,
    md: String,
    svg_dir: PathBuf,
    plots: Vec<(String, String)>,
}

impl Data {
    fn latency(&self, provider: &str, secrets: u64, latency: u64, case: &str) -> Option<&Value> {
        self.provider["latency"].as_array()?.iter().find(|r| {
            r["provider"] == provider
                && r["secrets"] == secrets
                && r["latency_ms"] == latency
                && r["case"] == case
                && r["samples"].as_u64().unwrap_or(0) > 0
        })
    }

    fn pods(&self, provider: &str, pods: u64) -> Option<&Value> {
        self.provider["pods"]
            .as_array()?
            .iter()
            .find(|r| r["provider"] == provider && r["pods"] == pods)
    }

    fn resources(&self, provider: &str) -> Option<&Value> {
        self.provider["resources"]
            .as_array()?
            .iter()
            .find(|r| r["provider"] == provider)
    }

    fn azure_ran(&self) -> bool {
        self.provider["azure"]["status"] == "ran"
    }
}

impl Report {
    fn plot(&mut self, name: &str, alt: &str, svg: String) {
        self.plots.push((name.to_string(), svg));
        let _ = writeln!(self.md, "\n![{alt}]({name})\n");
    }

    fn goals(&mut self) {
        let (d, md) = (&self.data, &mut self.md);
        let kv = |p: &str| d.pods(p, 100).and_then(|r| f(&r["wave"]["kv"]));
        let (kv_ours, kv_theirs) = (kv("kvmount"), kv("azure"));
        let cold = |p: &str| d.latency(p, 10, 20, "cold").and_then(|r| f(&r["p50_ms"]));
        let (cold_ours, cold_theirs) = (cold("kvmount"), cold("azure"));
        let warm_p99 = |p: &str| d.latency(p, 10, 0, "warm").and_then(|r| f(&r["p99_ms"]));
        let rss = |p: &str| {
            d.resources(p)
                .and_then(|r| f(&r["rss_after_pods_kib"]["1000"]))
        };
        let sidecar_rss = f(&d.sidecar["agent_rss_kib"]["max"]);
        let both = |o: Option<f64>, t: Option<f64>, k: f64| match (o, t) {
            (Some(o), Some(t)) => Some(o * k <= t),
            _ => None,
        };
        let _ = writeln!(
            md,
            "## Goals (ours vs theirs, same run)\n\n| goal | kvmount | Azure provider | target | |\n|---|---|---|---|---|"
        );
        let n = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or("–".into());
        let rows = [
            (
                "Key Vault requests for 100 pods mounting one class of 5 objects".to_string(),
                n(kv_ours),
                n(kv_theirs),
                format!("≤ 1/100 of theirs (measured {})", ratio(kv_ours, kv_theirs)),
                met(both(kv_ours, kv_theirs, 100.0)),
            ),
            (
                "cold mount of 10 secrets at 20 ms Key Vault latency (p50)".into(),
                format!("{} ms", ms(cold_ours)),
                format!("{} ms", ms(cold_theirs)),
                format!(
                    "≤ 1/5 of theirs (measured {})",
                    ratio(cold_ours, cold_theirs)
                ),
                met(both(cold_ours, cold_theirs, 5.0)),
            ),
            (
                "warm mount p99 (10 secrets, cached, 0 ms)".into(),
                format!("{} ms", ms(warm_p99("kvmount"))),
                format!("{} ms", ms(warm_p99("azure"))),
                "< 1 ms".into(),
                met(warm_p99("kvmount").map(|v| v < 1.0)),
            ),
            (
                "daemon RSS with 1,000 pods mounted (provider API)".into(),
                mib(rss("kvmount")),
                mib(rss("azure")),
                "< 12 MiB".into(),
                met(rss("kvmount").map(|v| v < 12.0 * 1024.0)),
            ),
            (
                "sidecar agent RSS, steady state (max)".into(),
                mib(sidecar_rss),
                "(no sidecar)".into(),
                "< 5 MiB".into(),
                met(sidecar_rss.map(|v| v < 5.0 * 1024.0)),
            ),
        ];
        for (goal, ours, theirs, target, ok) in rows {
            let _ = writeln!(md, "| {goal} | {ours} | {theirs} | {target} | {ok} |");
        }
        let _ = writeln!(md);
    }

    fn latency_section(&mut self) {
        let (d, md) = (&self.data, &mut self.md);
        let _ = writeln!(
            md,
            "## Mount latency through the provider API\n\nOne Mount call as the upstream driver makes it (workload identity, `cloudName: AzureStackCloud`), sequential. Cold: a new pod whose objects nobody read yet (samples spaced by secrets / 20 s, so each starts with kvmount's default request budget, `--vault-qps 20 --vault-burst 401`, refilled; the burst covers the first mount of any class the daemon accepts, so no row waits for the limit); warm: the same pod mounted again (the driver's rotation). kvmount's own rotation is set to 1 h for these rows (`--rotation-interval`), so its re-reads of earlier rows' objects neither take the request budget nor run beside later samples; the request rows below measure rotation. Added latency is on every secret GET at the mock.\n\n| secrets | added latency | case | kvmount p50 / p99 ms | Azure p50 / p99 ms | kvmount / Azure (p50) | samples |\n|---|---|---|---|---|---|---|"
        );
        let mut cats = Vec::new();
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for latency in [0u64, 20] {
            for secrets in [1u64, 10, 50] {
                for case in ["cold", "warm"] {
                    let o = d.latency("kvmount", secrets, latency, case);
                    let t = d.latency("azure", secrets, latency, case);
                    if o.is_none() && t.is_none() {
                        continue;
                    }
                    let p = |r: Option<&Value>, k: &str| r.and_then(|r| f(&r[k]));
                    let errors = |r: Option<&Value>| {
                        r.and_then(|r| r["errors"].as_u64())
                            .filter(|e| *e > 0)
                            .map(|e| format!(" ({e} failed)"))
                            .unwrap_or_default()
                    };
                    let _ = writeln!(
                        md,
                        "| {secrets} | {latency} ms | {case} | {} / {}{} | {} / {}{} | {} | {} |",
                        ms(p(o, "p50_ms")),
                        ms(p(o, "p99_ms")),
                        errors(o),
                        ms(p(t, "p50_ms")),
                        ms(p(t, "p99_ms")),
                        errors(t),
                        ratio(p(o, "p50_ms"), p(t, "p50_ms")),
                        o.and_then(|r| r["samples"].as_u64()).unwrap_or(0)
                    );
                    cats.push(format!("{secrets}s {latency}ms / {case}"));
                    ours.push(p(o, "p50_ms"));
                    theirs.push(p(t, "p50_ms"));
                }
            }
        }
        let mut series = vec![Series {
            label: "kvmount".into(),
            color: KVMOUNT,
            values: ours,
        }];
        if d.azure_ran() {
            series.push(Series {
                label: "Azure provider".into(),
                color: AZURE,
                values: theirs,
            });
        }
        let chart = Chart {
            title: "Mount latency p50 (ms, log scale); 10s 20ms = 10 secrets, 20 ms added Key Vault latency",
            y_label: "ms",
            scale: Scale::Log,
            categories: &cats,
            series: &series,
        }
        .bars();
        self.plot("bench-latency.svg", "Mount latency p50", chart);
    }

    fn requests_section(&mut self) {
        let (d, md) = (&self.data, &mut self.md);
        let interval = d.provider["interval_seconds"].as_u64().unwrap_or(0);
        let objects = d.provider["pod_class_objects"].as_u64().unwrap_or(5);
        let intervals = d.provider["pods"][0]["interval"]["intervals"]
            .as_u64()
            .unwrap_or(1);
        let _ = writeln!(
            md,
            "## Key Vault requests for P pods (one class of {objects} secrets)\n\nEach pod its own service-account token. Mount wave: every pod mounted once (8 concurrent calls). Per rotation interval ({interval} s, the mean of {intervals} intervals): the driver calls Mount again for every pod, plus whatever the provider reads on its own in that interval. Key Vault requests are every request to the vault host (401 challenges included; GETs answered 200 in brackets); Entra requests are token, OpenID metadata and instance discovery calls. Counted by the mock.\n\n| pods | kvmount wave: Key Vault (GETs) / Entra | Azure wave: Key Vault (GETs) / Entra | kvmount / Azure | kvmount per interval | Azure per interval | kvmount / Azure |\n|---|---|---|---|---|---|---|"
        );
        let mut cats = Vec::new();
        let mut series: Vec<Series> = [
            ("kvmount: mount wave", KVMOUNT),
            ("kvmount: per interval", "#7fb3d5"),
            ("Azure: mount wave", AZURE),
            ("Azure: per interval", "#f1948a"),
        ]
        .into_iter()
        .map(|(label, color)| Series {
            label: label.into(),
            color,
            values: Vec::new(),
        })
        .collect();
        for pods in [1u64, 10, 100, 1000] {
            let o = d.pods("kvmount", pods);
            let t = d.pods("azure", pods);
            if o.is_none() && t.is_none() {
                continue;
            }
            let g = |r: Option<&Value>, phase: &str, k: &str| r.and_then(|r| f(&r[phase][k]));
            let cell = |r: Option<&Value>, phase: &str| match r {
                None => "–".to_string(),
                Some(r) => {
                    let errors = r[phase]["errors"].as_u64().unwrap_or(0);
                    format!(
                        "{} ({}) / {}{}",
                        r[phase]["kv"],
                        r[phase]["gets"],
                        r[phase]["entra"],
                        if errors > 0 {
                            format!(", {errors} failed")
                        } else {
                            String::new()
                        }
                    )
                }
            };
            let _ = writeln!(
                md,
                "| {pods} | {} | {} | {} | {} | {} | {} |",
                cell(o, "wave"),
                cell(t, "wave"),
                ratio(g(o, "wave", "kv"), g(t, "wave", "kv")),
                cell(o, "interval"),
                cell(t, "interval"),
                ratio(g(o, "interval", "kv"), g(t, "interval", "kv")),
            );
            cats.push(pods.to_string());
            series[0].values.push(g(o, "wave", "kv"));
            series[1].values.push(g(o, "interval", "kv"));
            series[2].values.push(g(t, "wave", "kv"));
            series[3].values.push(g(t, "interval", "kv"));
        }
        if !d.azure_ran() {
            series.truncate(2);
        }
        let chart = Chart {
            title: "Key Vault requests (log scale; 0 sits on the bottom line) against pods on the node",
            y_label: "requests",
            scale: Scale::Log,
            categories: &cats,
            series: &series,
        }
        .lines();
        self.plot("bench-requests.svg", "Key Vault requests", chart);
    }

    fn resources_section(&mut self) {
        let (d, md) = (&self.data, &mut self.md);
        let _ = writeln!(
            md,
            "## Daemon memory and CPU (provider API)\n\nRSS after each mount wave and its rotation round (the Azure provider keeps nothing per pod; kvmount keeps the node cache, one set of clients per identity, and per pod token only a digest with the time its proof expires). CPU: user + system seconds of the provider process during the largest wave, per 1,000 mounts.\n\n| | kvmount | Azure provider |\n|---|---|---|"
        );
        let r = |p: &str, k: &str| d.resources(p).and_then(|r| f(&r[k]));
        let after = |p: &str, pods: &str| {
            d.resources(p)
                .and_then(|r| f(&r["rss_after_pods_kib"][pods]))
        };
        let cpu = |p: &str| {
            d.resources(p).and_then(|r| {
                let c = &r["cpu"];
                Some(format!(
                    "{:.2} s (from {} mounts)",
                    f(&c["per_1000"])?,
                    c["mounts"]
                ))
            })
        };
        let binary = |key: &str| {
            let b = &d.provider[key];
            match (b["linking"].as_str(), f(&b["bytes"])) {
                (Some(linking), Some(bytes)) => format!("{linking} / {:.1} MB", bytes / 1e6),
                _ => "not recorded".into(),
            }
        };
        let _ = writeln!(
            md,
            "| binary measured: linking / size | {} | {} |",
            binary("kvmount_binary"),
            binary("azure_binary")
        );
        let mut cats = vec!["idle".to_string()];
        let mut ours = vec![r("kvmount", "rss_idle_kib")];
        let mut theirs = vec![r("azure", "rss_idle_kib")];
        let _ = writeln!(md, "| RSS idle | {} | {} |", mib(ours[0]), mib(theirs[0]));
        for pods in ["1", "10", "100", "1000"] {
            let (o, t) = (after("kvmount", pods), after("azure", pods));
            if o.is_none() && t.is_none() {
                continue;
            }
            let _ = writeln!(md, "| RSS after {pods} pod(s) | {} | {} |", mib(o), mib(t));
            cats.push(format!("{pods} pods"));
            ours.push(o);
            theirs.push(t);
        }
        let _ = writeln!(
            md,
            "| peak RSS (VmHWM) | {} | {} |\n| CPU seconds per 1,000 mounts | {} | {} |",
            mib(r("kvmount", "hwm_kib")),
            mib(r("azure", "hwm_kib")),
            cpu("kvmount").unwrap_or("–".into()),
            cpu("azure").unwrap_or("–".into())
        );
        let mut series = vec![Series {
            label: "kvmount".into(),
            color: KVMOUNT,
            values: ours.iter().map(|v| v.map(|k| k / 1024.0)).collect(),
        }];
        if d.azure_ran() {
            series.push(Series {
                label: "Azure provider".into(),
                color: AZURE,
                values: theirs.iter().map(|v| v.map(|k| k / 1024.0)).collect(),
            });
        }
        let chart = Chart {
            title: "Provider process RSS (MiB)",
            y_label: "MiB",
            scale: Scale::Linear,
            categories: &cats,
            series: &series,
        }
        .bars();
        self.plot("bench-rss.svg", "Provider RSS", chart);
    }

    fn sidecar_section(&mut self) {
        let (d, md) = (&self.data, &mut self.md);
        let s = &d.sidecar;
        if s.is_null() {
            let _ = writeln!(md, "## Sidecar\n\nNot run.\n");
            return;
        }
        let g = |a: &str, b: &str| f(&s[a][b]);
        let _ = writeln!(
            md,
            "## Sidecar agent and webhook (kvmount only; the Azure provider has no sidecar)\n\n| measurement | value |\n|---|---|\n| agent binary measured: linking / size | {} / {} |\n| agent RSS, steady state, refresh every 1 s (max / last) | {} / {} |\n| agent RSS split at the end: anonymous / file-backed | {} / {} |\n| agent time to first render, its own clock from process start (p50 / p95 of {}) | {} / {} ms |\n| agent init-only run, spawn to exit (p50 / p95) | {} / {} ms |\n| the same Key Vault round trips in-process (token + 2 GETs on new TLS connections; p50 / p95) | {} / {} ms |\n| webhook AdmissionReview latency over TLS at {} reviews/s for {} s (p50 / p99, from the scheduled send time) | {} / {} ms |\n| webhook decision time from /metrics (mean / p99, the bound of its histogram bucket) | {} / {} µs |\n| webhook RSS after the run | {} |\n",
            s["agent_binary"]["linking"].as_str().unwrap_or("unknown"),
            g("agent_binary", "bytes")
                .map(|b| format!("{:.1} MB", b / 1e6))
                .unwrap_or_else(|| "–".into()),
            mib(g("agent_rss_kib", "max")),
            mib(g("agent_rss_kib", "last")),
            mib(g("agent_rss_kib", "anon")),
            mib(g("agent_rss_kib", "file")),
            s["runs"],
            ms(g("first_render_ms", "p50")),
            ms(g("first_render_ms", "p95")),
            ms(g("spawn_to_exit_ms", "p50")),
            ms(g("spawn_to_exit_ms", "p95")),
            ms(g("round_trips_ms", "p50")),
            ms(g("round_trips_ms", "p95")),
            s["webhook"]["rate_per_second"],
            s["webhook"]["seconds"],
            ms(g("webhook", "p50_ms")),
            ms(g("webhook", "p99_ms")),
            ms(g("webhook", "decision_mean_us")),
            ms(g("webhook", "decision_p99_le_us")),
            mib(g("webhook", "rss_kib")),
        );
    }

    fn parity_section(&mut self) {
        let (d, md) = (&self.data, &mut self.md);
        let _ = writeln!(
            md,
            "## Files: kvmount against the Azure provider, byte for byte\n\nOne Mount per object, the same request to both; file path, mode and contents compared.\n"
        );
        let rows = d.provider["parity"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            let _ = writeln!(
                md,
                "Not compared: the Azure provider did not run (see Versions).\n"
            );
            return;
        }
        let equal = rows.iter().filter(|r| r["result"] == "equal").count();
        let _ = writeln!(
            md,
            "{equal} of {} files equal.\n\n| object | file | result |\n|---|---|---|",
            rows.len()
        );
        for r in &rows {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} |",
                r["object"].as_str().unwrap_or(""),
                r["file"].as_str().unwrap_or(""),
                r["result"].as_str().unwrap_or("").replace('|', "\\|")
            );
        }
        let _ = writeln!(md);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, report] = args.as_slice() else {
        eprintln!("usage: bench-report RESULTS_DIR REPORT.md");
        std::process::exit(2);
    };
    let results = Path::new(results);
    let report_path = Path::new(report);
    let provider = read_json(results, "provider.json");
    let sidecar = read_json(results, "sidecar.json");
    let versions = std::fs::read_to_string(results.join("versions.txt")).unwrap_or_default();
    let mut r = Report {
        svg_dir: report_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        data: Data { provider, sidecar },
        md: String::new(),
        plots: Vec::new(),
    };
    let quick = r.data.provider["quick"].as_bool().unwrap_or(false);
    let _ = writeln!(
        r.md,
        "# Benchmarks: kvmount and the Azure provider, side by side\n\nWritten by `bench/run.sh{}` (see the README). One run on one machine: the numbers are claims of this benchmark run, not of any test.{}\n",
        if quick { " --quick" } else { "" },
        if quick {
            " **Quick mode**: debug builds and a few samples, to keep the harness working; do not quote these numbers."
        } else {
            ""
        }
    );
    let _ = writeln!(
        r.md,
        "## Machine\n\n{}",
        machine(
            "the providers run in a private network namespace; the mock vault on 127.0.0.1:443",
            "latency rows are noisy; request counts are exact"
        )
    );
    let azure = &r.data.provider["azure"];
    let azure_line = if azure["status"] == "ran" {
        format!(
            "- Azure provider: secrets-store-csi-driver-provider-azure {} (built from the Go module proxy by bench/azure-provider/install.sh), on its own socket, pointed at the mock vault by a custom cloud environment file (`cloudName: AzureStackCloud`, `cloudEnvFileName`, AZURE_ENVIRONMENT_FILEPATH), the mock's CA (SSL_CERT_FILE), and the namespace's hosts file mapping the vault host, the authority and login.microsoftonline.com (MSAL instance discovery) to 127.0.0.1",
            azure["version"].as_str().unwrap_or("?")
        )
    } else {
        format!(
            "- Azure provider: **not run**: {}",
            azure["reason"].as_str().unwrap_or("unknown reason")
        )
    };
    let _ = writeln!(r.md, "## Versions\n\n{versions}{azure_line}\n");
    r.goals();
    r.latency_section();
    r.requests_section();
    r.resources_section();
    r.sidecar_section();
    r.parity_section();
    // `bench/run.sh cluster-budget` writes its own section; a full run keeps it.
    let previous = std::fs::read_to_string(report_path).unwrap_or_default();
    if let Some(cluster) = section(&previous, CLUSTER_BUDGET_HEADING) {
        r.md.push_str(cluster);
    }
    let raw = serde_json::json!({"provider": r.data.provider, "sidecar": r.data.sidecar});
    let _ = writeln!(
        r.md,
        "## Raw numbers\n\n<details><summary>provider.json and sidecar.json of this run</summary>\n\n```json\n{}\n```\n\n</details>",
        serde_json::to_string_pretty(&raw).unwrap_or_default()
    );
    for (name, svg) in &r.plots {
        let path = r.svg_dir.join(name);
        if let Err(e) = std::fs::write(&path, svg) {
            eprintln!("bench-report: {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if let Err(e) = std::fs::write(report_path, &r.md) {
        eprintln!("bench-report: {}: {e}", report_path.display());
        std::process::exit(1);
    }
    eprintln!("bench-report: wrote {}", report_path.display());
}
