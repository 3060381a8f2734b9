//! kvmount and the Azure provider side by side through the provider API (the path the upstream
//! Secrets Store CSI Driver uses), against one mock vault, driven with identical MountRequests.
//!
//! Runs inside a network namespace that `bench/run.sh` makes: the mock listens on
//! 127.0.0.1:443 and the namespace's hosts file maps the vault host, the Entra authority of the
//! custom cloud and `login.microsoftonline.com` (MSAL's instance discovery) to it. Both
//! providers get `cloudName: AzureStackCloud` with the same environment file; the Azure
//! provider trusts the mock's CA through `SSL_CERT_FILE`, kvmount through `--ca-file`.
//!
//! Writes `provider.json` into `--out DIR` (rendered by `bench-report`):
//! - mount latency p50/p99 for classes of 1, 10 and 50 secrets, 0 and 20 ms added Key Vault
//!   latency, cold (objects nobody read yet, a new pod) and warm (the same pod mounted again, as
//!   the driver's rotation does);
//! - Key Vault and Entra requests for P pods mounting one class of 5 objects, and for one
//!   rotation interval after it (the driver calls Mount for every pod each interval);
//! - RSS idle and after 100 and 1,000 pods; CPU seconds per 1,000 mounts;
//! - the files of both for one class of every shared object type, compared byte for byte.
//!
//! Usage: `provider-bench --out DIR [--quick] [--azure BIN | --azure-missing REASON]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmount_bench::{cpu_seconds, millis, percentile, rss_kib, status_kib, write_json};
use kvmount_mock_vault::{FaultRule, MockVaultConfig, Seed, ServiceAccountTokenRequest, Stats};
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_proto::provider::{MountResponse, VersionRequest};
use kvmount_tests::{DriverRequest, Provider, object, objects};
use serde_json::{Value, json};
use tonic::transport::Channel;

const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000be";
const VAULT: &str = "bench";
const DNS_SUFFIX: &str = "vault.kvmount.test";
/// The custom cloud's Entra authority.
const AUTHORITY_HOST: &str = "login.kvmount.test";
/// Where MSAL sends instance discovery for an authority it does not know.
const DISCOVERY_HOST: &str = "login.microsoftonline.com";
const NAMESPACE: &str = "bench";
const CLASS_SIZES: [usize; 3] = [1, 10, 50];
const POD_CLASS: usize = 5;
const STREAMS: usize = 8;
/// kvmount's default `--vault-qps`: cold samples are spaced so each starts with the daemon's
/// request budget refilled (the rows measure a mount, not the rate limit; bursts of pods are
/// the pod rows).
const KVMOUNT_DEFAULT_QPS: f64 = kvmount_provider::ratelimit::DEFAULT_VAULT_QPS;
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Rotation intervals counted after each mount wave.
const INTERVALS: u32 = 2;
/// kvmount's rotation interval during the latency rows (longer than they take).
const LATENCY_ROTATION: Duration = Duration::from_secs(3600);

struct Plan {
    quick: bool,
    /// Samples per class size (cold and warm each).
    samples: [usize; 3],
    pods: Vec<usize>,
    interval: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                samples: [3, 3, 2],
                pods: vec![1, 10],
                interval: Duration::from_secs(3),
            }
        } else {
            Plan {
                quick,
                samples: [20, 20, 10],
                pods: vec![1, 10, 100, 1000],
                interval: Duration::from_secs(10),
            }
        }
    }

    /// Secrets the latency rows use: fresh ones per cold sample, one class per warm row.
    fn latency_secrets(&self) -> usize {
        CLASS_SIZES
            .iter()
            .zip(self.samples)
            .map(|(size, n)| 2 * (n + 1) * size)
            .sum()
    }
}

/// The parity class: one object of every type both providers write (file name, YAML extra).
const PARITY: &[(&str, &str, &str)] = &[
    ("secret, utf-8", "p-text", "objectType: secret\n"),
    (
        "secret, objectEncoding base64",
        "p-b64",
        "objectType: secret\nobjectEncoding: base64\n",
    ),
    (
        "secret, objectEncoding hex",
        "p-hex",
        "objectType: secret\nobjectEncoding: hex\n",
    ),
    (
        "secret, objectAlias + filePermission",
        "p-text",
        "objectType: secret\nobjectAlias: aliased\nfilePermission: \"0600\"\n",
    ),
    ("key, RSA 2048", "p-rsa", "objectType: key\n"),
    ("key, EC P-256", "p-ec", "objectType: key\n"),
    ("key, EC P-384", "p-ec384", "objectType: key\n"),
    ("cert (leaf issued by a CA)", "p-leaf", "objectType: cert\n"),
    (
        "secret behind a PKCS#12 certificate (PEM key + chain)",
        "p-leaf",
        "objectType: secret\nobjectAlias: p-leaf.pem\n",
    ),
    (
        "secret behind a PKCS#12 certificate, objectFormat pfx",
        "p-leaf",
        "objectType: secret\nobjectFormat: pfx\nobjectAlias: p-leaf.pfx\n",
    ),
    (
        "secret behind a PKCS#12 certificate, pfx + base64",
        "p-leaf",
        "objectType: secret\nobjectFormat: pfx\nobjectEncoding: base64\nobjectAlias: p-leaf.pfx.bin\n",
    ),
    (
        "secret behind a PEM certificate stored leaf first",
        "p-pem",
        "objectType: secret\n",
    ),
    (
        "secret behind a PEM certificate stored root first",
        "p-pem-rootfirst",
        "objectType: secret\n",
    ),
    (
        "objectVersionHistory 2 of a secret with 3 versions",
        "p-hist",
        "objectType: secret\nobjectVersionHistory: 2\n",
    ),
];

fn seed(plan: &Plan) -> Seed {
    let mut yaml = format!(
        "tenantId: {TENANT}\nidentities:\n  - name: bench\n    clientId: {CLIENT_ID}\n    federated:\n      - {{ issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:{NAMESPACE}:app\" }}\nvaults:\n  - name: {VAULT}\n    access:\n      - {{ identity: bench, objects: [\"secret/*\", \"key/*\", \"certificate/*\"], permissions: [get, list] }}\n    secrets:\n"
    );
    for i in 0..plan.latency_secrets() {
        yaml.push_str(&format!(
            "      - {{ name: s-{i}, versions: [\"value-{i}-0123456789abcdef\"] }}\n"
        ));
    }
    for p in &plan.pods {
        for i in 0..POD_CLASS {
            yaml.push_str(&format!(
                "      - {{ name: pods{p}-{i}, versions: [\"v-{p}-{i}\"] }}\n"
            ));
        }
    }
    yaml.push_str(
        "      - { name: p-text, versions: [\"plain text value \\u00e9\\n\"] }\n      - { name: p-b64, versions: [\"AAECA/79/w==\"] }\n      - { name: p-hex, versions: [\"00ff10abcd\"] }\n      - { name: p-hist, versions: [\"h-0\", \"h-1\", \"h-2\"] }\n    keys:\n      - { name: p-rsa, versions: [{ kty: RSA, size: 2048 }] }\n      - { name: p-ec, versions: [{ kty: EC, curve: P-256 }] }\n      - { name: p-ec384, versions: [{ kty: EC, curve: P-384 }] }\n    certificates:\n      - { name: p-root, ca: true }\n      - { name: p-leaf, issuer: p-root, dnsNames: [leaf.example] }\n      - { name: p-pem, issuer: p-root, dnsNames: [pem.example], contentType: application/x-pem-file }\n      - { name: p-pem-rootfirst, issuer: p-root, dnsNames: [pem.example], contentType: application/x-pem-file, chainOrder: root-first }\n",
    );
    Seed::from_yaml(&yaml).expect("bench seed")
}

/// The Azure SDK environment file of the custom cloud both providers are pointed at.
fn environment_file() -> String {
    json!({
        "name": "AzureStackCloud",
        "activeDirectoryEndpoint": format!("https://{AUTHORITY_HOST}/"),
        "keyVaultEndpoint": format!("https://{DNS_SUFFIX}/"),
        "keyVaultDNSSuffix": DNS_SUFFIX,
        "resourceManagerEndpoint": "https://management.kvmount.test/",
        "tokenAudience": "https://management.kvmount.test/",
        "resourceIdentifiers": {"keyVault": format!("https://{DNS_SUFFIX}")},
    })
    .to_string()
}

/// One provider under test: its name, process id and a client on its socket.
struct Side {
    name: &'static str,
    pid: u32,
    client: CsiDriverProviderClient<Channel>,
}

/// The Azure provider as a child process on its own socket; killed on drop.
struct AzureProvider {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl AzureProvider {
    fn start(bin: &Path, dir: &Path, ca: &Path, env_file: &Path) -> Result<AzureProvider, String> {
        let socket = dir.join("azure.sock");
        let log = dir.join("azure-provider.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .env("SSL_CERT_FILE", ca)
            .env("AZURE_ENVIRONMENT_FILEPATH", env_file)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut azure = AzureProvider { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !azure.socket.exists() {
            if let Ok(Some(status)) = azure.child.try_wait() {
                return Err(format!("exited with {status}: {}", azure.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("no socket after 30 s: {}", azure.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(azure)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for AzureProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mock and everything a request needs.
struct Bench {
    mock: kvmount_mock_vault::MockVault,
    tls_dir: PathBuf,
    env_file: PathBuf,
}

impl Bench {
    fn token(&self, pod: &str) -> String {
        kvmount_mock_vault::mint_service_account_token(
            &self.tls_dir,
            &ServiceAccountTokenRequest {
                pod_name: Some(pod.into()),
                ..ServiceAccountTokenRequest::new(NAMESPACE, "app")
            },
        )
        .expect("mint token")
    }

    /// The driver's MountRequest for `pod` with the class `names` (secrets).
    fn request(&self, pod: &str, token: &str, objs: &str) -> DriverRequest {
        DriverRequest::new(VAULT, TENANT, objs, NAMESPACE, pod)
            .workload_identity(CLIENT_ID, token)
            .attr("cloudName", "AzureStackCloud")
            .attr("cloudEnvFileName", &self.env_file.display().to_string())
    }

    fn set_latency(&self, ms: u64) {
        self.mock.clear_faults();
        if ms > 0 {
            self.mock
                .set_faults(vec![FaultRule {
                    route: Some("secret.get".into()),
                    latency_ms: Some(ms),
                    ..Default::default()
                }])
                .expect("latency fault");
        }
    }
}

fn secret_class(names: &[String]) -> String {
    objects(&names.iter().map(|n| object(n, "")).collect::<Vec<_>>())
}

async fn mount(
    client: &mut CsiDriverProviderClient<Channel>,
    req: &DriverRequest,
) -> Result<(Duration, MountResponse), String> {
    let started = Instant::now();
    match tokio::time::timeout(CALL_TIMEOUT, client.mount(req.build())).await {
        Err(_) => Err(format!("no answer in {} s", CALL_TIMEOUT.as_secs())),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(resp)) => Ok((started.elapsed(), resp.into_inner())),
    }
}

/// Key Vault requests (every route on a vault host, challenges included) and Entra requests
/// (token, OpenID metadata, instance discovery) in `stats`, for objects named by `object`.
fn requests(stats: &Stats, object: impl Fn(&str) -> bool) -> (u64, u64, u64) {
    let mut kv = 0;
    let mut gets = 0;
    let mut entra = 0;
    for e in &stats.entries {
        if e.vault.is_empty() {
            if matches!(e.route.as_str(), "token" | "openid" | "instance_discovery") {
                entra += e.count;
            }
        } else if object(&e.object) {
            kv += e.count;
            if e.route == "secret.get" && e.status == 200 {
                gets += e.count;
            }
        }
    }
    (kv, gets, entra)
}

#[derive(Default)]
struct Row {
    samples: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Row {
    fn record(&mut self, r: Result<(Duration, MountResponse), String>) {
        match r {
            Ok((d, _)) => self.samples.push(d),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn json(&self, provider: &str, size: usize, latency: u64, case: &str) -> Value {
        json!({
            "provider": provider, "secrets": size, "latency_ms": latency, "case": case,
            "p50_ms": millis(percentile(&self.samples, 50.0)),
            "p99_ms": millis(percentile(&self.samples, 99.0)),
            "samples": self.samples.len(), "errors": self.errors, "first_error": self.first_error,
        })
    }
}

/// Latency rows: each request goes to every side in turn, so both see the same sequence.
async fn latency_rows(bench: &Bench, plan: &Plan, sides: &mut [Side]) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut next = 0usize;
    let mut fresh = |n: usize| -> Vec<String> {
        let names = (next..next + n).map(|i| format!("s-{i}")).collect();
        next += n;
        names
    };
    for latency in [0u64, 20] {
        bench.set_latency(latency);
        for (size, samples) in CLASS_SIZES.into_iter().zip(plan.samples) {
            let mut cold: Vec<Row> = sides.iter().map(|_| Row::default()).collect();
            let mut warm: Vec<Row> = sides.iter().map(|_| Row::default()).collect();
            for k in 0..samples {
                let pod = format!("cold-{latency}-{size}-{k}");
                let req = bench.request(&pod, &bench.token(&pod), &secret_class(&fresh(size)));
                for (i, side) in sides.iter_mut().enumerate() {
                    cold[i].record(mount(&mut side.client, &req).await);
                }
                tokio::time::sleep(Duration::from_secs_f64(size as f64 / KVMOUNT_DEFAULT_QPS))
                    .await;
            }
            let pod = format!("warm-{latency}-{size}");
            let req = bench.request(&pod, &bench.token(&pod), &secret_class(&fresh(size)));
            for side in sides.iter_mut() {
                let _ = mount(&mut side.client, &req).await;
            }
            for _ in 0..samples {
                for (i, side) in sides.iter_mut().enumerate() {
                    warm[i].record(mount(&mut side.client, &req).await);
                }
            }
            for (i, side) in sides.iter().enumerate() {
                rows.push(cold[i].json(side.name, size, latency, "cold"));
                rows.push(warm[i].json(side.name, size, latency, "warm"));
                eprintln!(
                    "provider-bench: {} {size} secrets {latency} ms: cold p50 {:.1} ms, warm p50 {:.2} ms, {} errors",
                    side.name,
                    millis(percentile(&cold[i].samples, 50.0)),
                    millis(percentile(&warm[i].samples, 50.0)),
                    cold[i].errors + warm[i].errors
                );
            }
        }
    }
    bench.set_latency(0);
    rows
}

/// `reqs` mounted on `side` over [`STREAMS`] concurrent connections; (time, errors, first error).
async fn wave(side: &Side, reqs: &[DriverRequest]) -> (Duration, usize, Option<String>) {
    let started = Instant::now();
    let mut jobs = Vec::new();
    for stream in 0..STREAMS {
        let mut client = side.client.clone();
        let mine: Vec<DriverRequest> = reqs.iter().skip(stream).step_by(STREAMS).cloned().collect();
        jobs.push(tokio::spawn(async move {
            let mut errors = (0usize, None);
            for req in &mine {
                if let Err(e) = mount(&mut client, req).await {
                    errors.0 += 1;
                    errors.1.get_or_insert(e);
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    let mut first = None;
    for job in jobs {
        let (n, e) = job.await.expect("join");
        errors += n;
        if first.is_none() {
            first = e;
        }
    }
    (started.elapsed(), errors, first)
}

/// Requests for P pods and per rotation interval, RSS and CPU, for one side.
async fn pod_rows(bench: &Bench, plan: &Plan, side: &Side) -> (Vec<Value>, Value) {
    let mut rows = Vec::new();
    let idle = rss_kib(side.pid);
    let mut rss_after = BTreeMap::new();
    let mut cpu = None;
    for &pods in &plan.pods {
        let names: Vec<String> = (0..POD_CLASS).map(|i| format!("pods{pods}-{i}")).collect();
        let class = secret_class(&names);
        let reqs: Vec<DriverRequest> = (0..pods)
            .map(|i| {
                let pod = format!("pod-{pods}-{i}");
                bench.request(&pod, &bench.token(&pod), &class)
            })
            .collect();
        let ours = |o: &str| names.iter().any(|n| o == format!("secret/{n}"));
        bench.mock.reset_stats();
        let cpu_before = cpu_seconds(side.pid);
        let (took, errors, first_error) = wave(side, &reqs).await;
        let cpu_used = cpu_seconds(side.pid) - cpu_before;
        let (kv, gets, entra) = requests(&bench.mock.stats(), ours);
        if pods == *plan.pods.iter().max().unwrap_or(&1) {
            cpu = Some(
                json!({"mounts": pods, "cpu_seconds": cpu_used, "per_1000": cpu_used * 1000.0 / pods as f64}),
            );
        }
        // Rotation intervals: in each, the driver calls Mount again for every pod, and the
        // provider may read on its own; counted from the first round to the end of the last
        // interval, per interval.
        bench.mock.reset_stats();
        let mut round = Duration::ZERO;
        let mut round_errors = 0;
        for _ in 0..INTERVALS {
            let round_start = Instant::now();
            let (took, errors, _) = wave(side, &reqs).await;
            round = round.max(took);
            round_errors += errors;
            if let Some(rest) = plan.interval.checked_sub(round_start.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        let (ikv, igets, ientra) = requests(&bench.mock.stats(), ours);
        let per = |n: u64| n as f64 / INTERVALS as f64;
        rss_after.insert(pods, rss_kib(side.pid));
        eprintln!(
            "provider-bench: {} {pods} pods: wave {kv} Key Vault requests ({gets} GETs), {entra} Entra, {:.1} s; {ikv} Key Vault requests in {INTERVALS} intervals; {errors} errors",
            side.name,
            took.as_secs_f64()
        );
        rows.push(json!({
            "provider": side.name, "pods": pods,
            "wave": {"kv": kv, "gets": gets, "entra": entra, "seconds": took.as_secs_f64(), "errors": errors, "first_error": first_error},
            "interval": {"kv": per(ikv), "gets": per(igets), "entra": per(ientra), "intervals": INTERVALS, "round_seconds": round.as_secs_f64(), "errors": round_errors},
        }));
    }
    let resources = json!({
        "provider": side.name,
        "rss_idle_kib": idle,
        "rss_after_pods_kib": rss_after.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "hwm_kib": status_kib(side.pid, "VmHWM"),
        "cpu": cpu,
    });
    (rows, resources)
}

/// Both sides' files for each parity object (one Mount per object), compared per file.
async fn parity(bench: &Bench, sides: &mut [Side]) -> Vec<Value> {
    let files = |m: &MountResponse| -> BTreeMap<String, (i32, Vec<u8>)> {
        m.files
            .iter()
            .map(|f| (f.path.clone(), (f.mode, f.contents.clone())))
            .collect()
    };
    let mut rows = Vec::new();
    for (what, name, extra) in PARITY {
        let class = objects(&[format!("objectName: {name}\n{extra}")]);
        let req = bench.request("parity", &bench.token("parity"), &class);
        let mut answers = Vec::new();
        for side in sides.iter_mut() {
            answers.push(mount(&mut side.client, &req).await.map(|(_, m)| files(&m)));
        }
        let (a, b) = match (&answers[0], &answers[1]) {
            (Ok(a), Ok(b)) => (a, b),
            (x, y) => {
                let say = |r: &Result<_, String>| match r {
                    Ok(_) => "wrote the files".to_string(),
                    Err(e) => format!("refused ({e})"),
                };
                rows.push(json!({"object": what, "file": "", "result": format!("kvmount {}; Azure provider {}", say(x), say(y))}));
                continue;
            }
        };
        let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let result = match (a.get(path), b.get(path)) {
                (Some(x), Some(y)) if x == y => "equal".to_string(),
                (Some((ma, ca)), Some((mb, cb))) if ca == cb => {
                    format!("mode differs: kvmount {ma:o}, Azure {mb:o}")
                }
                (Some((_, ca)), Some((_, cb))) => {
                    let at = ca
                        .iter()
                        .zip(cb)
                        .position(|(x, y)| x != y)
                        .unwrap_or(ca.len().min(cb.len()));
                    format!(
                        "contents differ from byte {at} (kvmount {} bytes, Azure {} bytes){}",
                        ca.len(),
                        cb.len(),
                        pem_order_note(ca, cb)
                    )
                }
                (Some(_), None) => "only kvmount writes it".to_string(),
                (None, Some(_)) => "only the Azure provider writes it".to_string(),
                (None, None) => continue,
            };
            rows.push(json!({"object": what, "file": path, "result": result}));
        }
    }
    rows
}

/// When both are PEM with the same blocks in another order, say so.
fn pem_order_note(a: &[u8], b: &[u8]) -> &'static str {
    let blocks = |s: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(s)
            .split("-----BEGIN ")
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect()
    };
    let (mut x, mut y) = (blocks(a), blocks(b));
    if x.len() > 1 && x != y {
        x.sort();
        y.sort();
        if x == y {
            return "; the same PEM blocks in another order";
        }
    }
    ""
}

/// A binary measured (the daemon is `KVMOUNT_KVMOUNT_PROVIDER_BIN`, as `Provider::start`
/// runs it): its linking and size.
fn binary(path: &Path) -> Value {
    match kvmount_bench::binary_kind(path) {
        Ok((linking, bytes)) => json!({"linking": linking, "bytes": bytes}),
        Err(e) => json!({"linking": "unknown", "error": e.to_string()}),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let quick = args.iter().any(|a| a == "--quick");
    let out = PathBuf::from(flag("--out").expect("--out DIR"));
    let plan = Plan::new(quick);
    let started = Instant::now();

    // The namespace's hosts file must send the vault and Entra names here.
    for host in [
        format!("{VAULT}.{DNS_SUFFIX}"),
        AUTHORITY_HOST.into(),
        DISCOVERY_HOST.into(),
    ] {
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 443))
            .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
            .unwrap_or_default();
        assert!(
            resolved.iter().all(|ip| ip.is_loopback()) && !resolved.is_empty(),
            "{host} does not resolve to loopback ({resolved:?}): run this through bench/run.sh, which makes the network namespace"
        );
    }

    let dir = tempfile::Builder::new()
        .prefix("kvmount-provider-bench.")
        .tempdir()
        .expect("tempdir");
    let tls_dir = dir.path().join("tls");
    let mut config = MockVaultConfig::new(&tls_dir);
    config.listen = "127.0.0.1:443".parse().expect("addr");
    config.seed = seed(&plan);
    config.dns_suffix = DNS_SUFFIX.into();
    config.entra_hosts = vec![AUTHORITY_HOST.into(), DISCOVERY_HOST.into()];
    let mock = kvmount_mock_vault::start(config)
        .await
        .expect("mock vault on :443");
    let ca = mock.ca_path();
    let env_file = dir.path().join("azurestackcloud.json");
    std::fs::write(&env_file, environment_file()).expect("environment file");
    let bench = Bench {
        mock,
        tls_dir,
        env_file,
    };

    // The Azure provider, when there is one.
    let mut azure_status = match flag("--azure-missing") {
        Some(reason) => json!({"status": "not run", "reason": reason}),
        None => json!({"status": "not run", "reason": "no --azure binary given"}),
    };
    let azure = match flag("--azure") {
        None => None,
        Some(bin) => match AzureProvider::start(Path::new(bin), dir.path(), &ca, &bench.env_file) {
            Ok(a) => Some(a),
            Err(e) => {
                azure_status =
                    json!({"status": "not run", "reason": format!("did not start: {e}")});
                None
            }
        },
    };

    let kvmount_flags = |interval: Duration| {
        let mut flags = vec![
            "--ca-file".to_string(),
            ca.display().to_string(),
            // The classes name the environment file both providers read.
            "--cloud-env-dir".to_string(),
            dir.path().display().to_string(),
        ];
        flags.extend([
            "--rotation-interval".into(),
            format!("{}s", interval.as_secs()),
        ]);
        flags
    };
    // The latency rows measure mounts: kvmount's own rotation waits an hour here, so that its
    // re-reads of earlier rows' objects (due 0.1 to 1 interval after each read) neither share
    // the vault's request budget with nor run beside later samples. The request rows below
    // run with rotation at the benchmark's interval.
    let ours = Provider::start(&kvmount_flags(LATENCY_ROTATION));
    let mut sides = vec![Side {
        name: "kvmount",
        pid: ours.pid(),
        client: ours.client().await,
    }];
    let smoke = bench.request(
        "smoke",
        &bench.token("smoke"),
        &secret_class(&["p-text".into()]),
    );
    if let Err(e) = mount(&mut sides[0].client, &smoke).await {
        panic!(
            "kvmount cannot mount through the mock vault: {e}\n{}",
            ours.output()
        );
    }
    if let Some(a) = &azure {
        let channel = kvmount_provider::server::unix_channel(&a.socket)
            .await
            .expect("connect to the Azure provider socket");
        let mut client = CsiDriverProviderClient::new(channel);
        let version = client
            .version(VersionRequest {
                version: "v1alpha1".into(),
            })
            .await
            .map(|v| v.into_inner().runtime_version)
            .unwrap_or_default();
        match mount(&mut client, &smoke).await {
            Ok(_) => {
                azure_status = json!({"status": "ran", "version": version});
                sides.push(Side {
                    name: "azure",
                    pid: a.child.id(),
                    client,
                });
            }
            Err(e) => {
                azure_status = json!({
                    "status": "not run", "version": version,
                    "reason": format!("it could not be pointed at the mock vault: its first Mount failed with {e}; its log: {}", a.log_tail()),
                })
            }
        }
    }
    eprintln!("provider-bench: Azure provider: {azure_status}");

    let parity_rows = if sides.len() > 1 {
        parity(&bench, &mut sides).await
    } else {
        Vec::new()
    };
    let latency = latency_rows(&bench, &plan, &mut sides).await;
    drop(sides.remove(0));
    drop(ours);

    // The request counts need kvmount's rotation at the benchmark's interval.
    let ours = Provider::start(&kvmount_flags(plan.interval));
    sides.insert(
        0,
        Side {
            name: "kvmount",
            pid: ours.pid(),
            client: ours.client().await,
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pod_results = Vec::new();
    let mut resources = Vec::new();
    // The Azure provider first: kvmount's own rotation reads would land in its counts.
    for side in sides.iter().rev() {
        let (rows, res) = pod_rows(&bench, &plan, side).await;
        pod_results.extend(rows);
        resources.push(res);
    }
    let kvmount_log_errors = ours
        .output()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count();
    drop(sides);
    drop(ours);
    drop(azure);
    bench.mock.shutdown().await;

    let results = json!({
        "quick": plan.quick,
        "interval_seconds": plan.interval.as_secs(),
        "pod_class_objects": POD_CLASS,
        "streams": STREAMS,
        "azure": azure_status,
        "kvmount_binary": binary(&kvmount_tests::workspace_bin("kvmount-provider")),
        "azure_binary": flag("--azure").map(|bin| binary(Path::new(bin))),
        "latency": latency,
        "pods": pod_results,
        "resources": resources,
        "parity": parity_rows,
        "kvmount_log_errors": kvmount_log_errors,
        "seconds": started.elapsed().as_secs_f64(),
    });
    write_json(&out, "provider.json", &results).expect("write provider.json");
    eprintln!(
        "provider-bench: done in {:.0} s; {}",
        started.elapsed().as_secs_f64(),
        out.join("provider.json").display()
    );
}
