//! The webhook's decisions on the AdmissionReview cases in `fixtures/reviews.json` (shared
//! with the Python schema test): skips, denials naming the annotation, and patches that apply
//! to the original pod and produce what the pod asked for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use kvmount_sidecar::config::{AGENT_CONFIG_ENV, AgentConfig, EXEC_CONFIG_ENV, Plan};
use kvmount_sidecar::webhook::{self, Decision, WebhookConfig};
use serde_json::{Value, json};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reviews.json"
    ))
    .expect("fixtures");
    serde_json::from_str(&text).expect("json")
}

fn case(name: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// RFC 6901 pointer tokens.
fn tokens(path: &str) -> Vec<String> {
    assert!(path.starts_with('/'), "{path}");
    path[1..]
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// A strict RFC 6902 `add`/`replace` applier (the only operations the webhook emits).
fn apply(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        let path = tokens(op["path"].as_str().unwrap());
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut *doc;
        for t in parents {
            target = match target {
                Value::Object(m) => m
                    .get_mut(t)
                    .unwrap_or_else(|| panic!("missing {t} in {op}")),
                Value::Array(a) => &mut a[t.parse::<usize>().unwrap()],
                _ => panic!("cannot walk into {t} for {op}"),
            };
        }
        let value = op["value"].clone();
        match (op["op"].as_str().unwrap(), target) {
            ("add", Value::Object(m)) => {
                m.insert(last.clone(), value);
            }
            ("add", Value::Array(a)) if last == "-" => a.push(value),
            ("add", Value::Array(a)) => {
                let i: usize = last.parse().unwrap();
                assert!(i <= a.len(), "index {i} past the end: {op}");
                a.insert(i, value);
            }
            ("replace", Value::Object(m)) => {
                assert!(m.contains_key(last), "replace of a missing member: {op}");
                m.insert(last.clone(), value);
            }
            ("replace", Value::Array(a)) => a[last.parse::<usize>().unwrap()] = value,
            (other, _) => panic!("unexpected operation {other}: {op}"),
        }
    }
}

fn decide(review: &Value) -> (Decision, Value) {
    let body = serde_json::to_vec(review).unwrap();
    let (parsed, decision) =
        webhook::review_offline(&WebhookConfig::default(), &body).expect("review");
    let response: Value =
        serde_json::from_slice(&webhook::response(&parsed.uid, &decision)).unwrap();
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["response"]["uid"], review["request"]["uid"]);
    (decision, response)
}

/// The pod after the patch, with the patch's operations.
fn patched(name: &str) -> (Value, Value, Vec<Value>) {
    let c = case(name);
    let (decision, response) = decide(&c["review"]);
    assert!(
        matches!(decision, Decision::Patch(_)),
        "{name}: {decision:?}"
    );
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    for op in &ops {
        assert!(matches!(op["op"].as_str(), Some("add" | "replace")), "{op}");
    }
    let original = c["review"]["request"]["object"].clone();
    let mut pod = original.clone();
    apply(&mut pod, &ops);
    (original, pod, ops)
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

fn agent_config(c: &Value) -> Plan {
    let json = env_value(c, AGENT_CONFIG_ENV).expect("agent config");
    Plan::new(&AgentConfig::from_json(AGENT_CONFIG_ENV, &json).unwrap()).unwrap()
}

fn assert_hardened(c: &Value) {
    let s = &c["securityContext"];
    assert_eq!(s["runAsNonRoot"], true);
    assert_eq!(s["readOnlyRootFilesystem"], true);
    assert_eq!(s["allowPrivilegeEscalation"], false);
    assert_eq!(s["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["resources"]["requests"]["memory"].is_string());
}

#[test]
fn every_case_gets_its_expected_decision() {
    let all = cases();
    assert!(all.len() >= 30);
    for c in &all {
        let name = c["name"].as_str().unwrap();
        let (decision, response) = decide(&c["review"]);
        match c["expect"].as_str().unwrap() {
            "skip" => {
                assert!(
                    matches!(decision, Decision::Skip(_)),
                    "{name}: {decision:?}"
                );
                assert_eq!(response["response"]["allowed"], true);
                assert!(response["response"].get("patch").is_none());
            }
            "patch" => {
                assert!(
                    matches!(decision, Decision::Patch(_)),
                    "{name}: {decision:?}"
                );
                let (_, pod, _) = patched(name);
                if let Err(problem) = pod_problems(&pod) {
                    panic!("{name}: the patched pod {problem}");
                }
            }
            "deny" => {
                let Decision::Deny(message) = &decision else {
                    panic!("{name}: expected a denial, got {decision:?}");
                };
                assert_eq!(response["response"]["allowed"], false);
                assert_eq!(response["response"]["status"]["message"], message.as_str());
                let annotation = c["annotation"].as_str().unwrap();
                assert!(
                    message.contains(&format!("annotation {annotation}:")),
                    "{name}: {message:?} does not name {annotation}"
                );
                assert!(
                    message.contains("accepted")
                        || message.contains("required")
                        || message.contains("no "),
                    "{name}: {message}"
                );
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
}

#[test]
fn annotated_pod_gets_volume_agent_token_and_status() {
    let (original, pod, ops) = patched("annotated-pod");
    // Annotations existed: one escaped add, other annotations kept.
    assert!(
        ops.iter()
            .any(|o| o["path"] == "/metadata/annotations/kvmount.io~1status")
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kvmount.io/status"],
        "injected"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["other.example.com/keep"],
        "yes"
    );
    // Volumes and initContainers did not exist: added whole.
    assert!(original["spec"].get("volumes").is_none());
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let secrets = volumes
        .iter()
        .find(|v| v["name"] == webhook::SECRETS_VOLUME)
        .unwrap();
    assert_eq!(secrets["emptyDir"]["medium"], "Memory");
    assert_eq!(secrets["emptyDir"]["sizeLimit"], "4Mi");
    let token = volumes
        .iter()
        .find(|v| v["name"] == webhook::TOKEN_VOLUME)
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "api://AzureADTokenExchange"
    );
    // Native mode by default: one init container that always restarts, whose postStart hook
    // waits for the first render (no startupProbe: its 1 s period delayed the app).
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    let agent = &init[0];
    assert_eq!(agent["name"], webhook::AGENT_CONTAINER);
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(
        agent["lifecycle"]["postStart"]["exec"]["command"],
        json!([
            agent["command"][0],
            "probe",
            "--wait",
            webhook::POST_START_WAIT
        ])
    );
    assert!(agent.get("startupProbe").is_none());
    assert_eq!(agent["args"], json!(["agent"]));
    assert_hardened(agent);
    let plan = agent_config(agent);
    assert_eq!(plan.keyvault_name, "demo");
    assert_eq!(plan.files[0].file_name(), "db-password");
    assert_eq!(plan.files[0].file_mode, Some(0o440));
    assert_eq!(plan.templates[0].path, "db.conn");
    assert_eq!(plan.templates[0].specs.len(), 2);
    assert_eq!(
        plan.token_file.as_deref().unwrap().to_str().unwrap(),
        "/var/run/secrets/kvmount.io/serviceaccount/token"
    );
    // The app container mounts the volume read-only and nothing else changes.
    let app = container(&pod["spec"]["containers"], "app");
    assert_eq!(
        app["volumeMounts"],
        json!([{ "name": "kvmount-secrets", "mountPath": "/mnt/secrets", "readOnly": true }])
    );
    assert_eq!(app["command"], json!(["/app"]));
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn job_in_init_only_mode_has_no_long_running_agent() {
    let (original, pod, _) = patched("job-init-only");
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(
        init.len(),
        2,
        "agent prepended to the existing init container"
    );
    assert_eq!(init[0]["name"], webhook::AGENT_INIT_CONTAINER);
    assert!(init[0].get("restartPolicy").is_none());
    assert!(init[0].get("startupProbe").is_none());
    assert!(init[0].get("lifecycle").is_none());
    assert_eq!(init[0]["args"], json!(["agent", "--init-only"]));
    assert_eq!(init[1], original["spec"]["initContainers"][0]);
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
    // Existing volumes kept, ours appended.
    assert_eq!(pod["spec"]["volumes"][0], original["spec"]["volumes"][0]);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 3);
}

#[test]
fn native_mode_follows_the_pod_user_and_fs_group() {
    let (_, pod, _) = patched("native-mode");
    let agent = &pod["spec"]["initContainers"][0];
    assert_eq!(agent["name"], webhook::AGENT_CONTAINER);
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "setup");
    assert_eq!(agent["securityContext"]["runAsUser"], 1000);
    let plan = agent_config(agent);
    assert_eq!(plan.fs_group, Some(2000));
    assert_eq!(plan.refresh, std::time::Duration::from_secs(60));
    assert_eq!(
        plan.mount_path.as_deref().unwrap().to_str().unwrap(),
        "/etc/app/secrets"
    );
    let app = container(&pod["spec"]["containers"], "app");
    assert_eq!(app["volumeMounts"][0]["mountPath"], "/etc/app/secrets");
}

#[test]
fn sidecar_mode_has_an_init_container_and_a_sidecar() {
    let (_, pod, _) = patched("sidecar-mode");
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"],
        webhook::AGENT_INIT_CONTAINER
    );
    let agent = container(&pod["spec"]["containers"], webhook::AGENT_CONTAINER);
    assert_eq!(agent["args"], json!(["agent"]));
    assert_eq!(
        agent["resources"]["limits"],
        json!({ "memory": "16Mi", "cpu": "50m" })
    );
    assert_hardened(agent);
}

#[test]
fn containers_annotation_selects_app_containers() {
    let (original, pod, ops) = patched("multiple-containers");
    let containers = &pod["spec"]["containers"];
    let app = container(containers, "app");
    // Existing mounts array: appended with "/-".
    assert!(
        ops.iter()
            .any(|o| o["path"] == "/spec/containers/0/volumeMounts/-")
    );
    assert_eq!(
        app["volumeMounts"][0],
        original["spec"]["containers"][0]["volumeMounts"][0]
    );
    assert_eq!(app["volumeMounts"][1]["name"], webhook::SECRETS_VOLUME);
    let worker = container(containers, "worker");
    assert_eq!(worker["volumeMounts"][0]["name"], webhook::SECRETS_VOLUME);
    assert_eq!(worker["env"], original["spec"]["containers"][1]["env"]);
    let metrics = container(containers, "metrics");
    assert_eq!(
        metrics, &original["spec"]["containers"][2],
        "unselected container untouched"
    );
}

#[test]
fn exec_env_rewrites_the_command_and_installs_the_binary() {
    let (_, pod, _) = patched("exec-env");
    let app = container(&pod["spec"]["containers"], "app");
    assert_eq!(
        app["command"],
        json!([
            "/kvmount/bin/kvmount-agent",
            "exec",
            "--",
            "/app",
            "--serve"
        ])
    );
    assert_eq!(app["args"], json!(["--port", "8080"]));
    let exec = env_value(app, EXEC_CONFIG_ENV).unwrap();
    let plan = Plan::new(&AgentConfig::from_json(EXEC_CONFIG_ENV, &exec).unwrap()).unwrap();
    assert_eq!(plan.env[0].0, "DB_PASSWORD");
    let mounts: Vec<&str> = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, [webhook::TOKEN_VOLUME, webhook::BIN_VOLUME]);
    // Only env references: no secrets volume, one installer init container, no agent.
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["name"], webhook::INSTALL_CONTAINER);
    assert!(
        !pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == webhook::SECRETS_VOLUME)
    );
}

#[test]
fn workload_identity_token_and_env_are_reused() {
    let (_, pod, _) = patched("workload-identity-reuse");
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert!(!volumes.iter().any(|v| v["name"] == webhook::TOKEN_VOLUME));
    let agent = &pod["spec"]["initContainers"][0];
    assert!(
        agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == webhook::AZURE_TOKEN_VOLUME)
    );
    assert_eq!(
        env_value(agent, "AZURE_CLIENT_ID").as_deref(),
        Some("00000000-0000-0000-0000-00000000000a")
    );
    let plan = agent_config(agent);
    assert_eq!(
        plan.token_file.unwrap().to_str().unwrap(),
        "/var/run/secrets/azure/tokens/azure-identity-token"
    );
    assert_eq!(
        plan.client_id.as_deref(),
        Some("00000000-0000-0000-0000-00000000000a")
    );
}

#[test]
fn patched_pods_are_not_mutated_twice() {
    for name in ["annotated-pod", "native-mode", "exec-env"] {
        let (_, pod, _) = patched(name);
        let mut again = case(name)["review"].clone();
        again["request"]["object"] = pod;
        let (decision, _) = decide(&again);
        assert!(
            matches!(decision, Decision::Skip("already injected")),
            "{name}: {decision:?}"
        );
    }
}

#[test]
fn malformed_reviews_are_refused_without_echoing_them() {
    let bad = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"}}}"#;
    let err = webhook::review_offline(&WebhookConfig::default(), bad).expect_err("v1beta1");
    assert!(err.to_string().contains("admission.k8s.io/v1"));
    let err = webhook::review_offline(&WebhookConfig::default(), b"{\"canary-secret\": ")
        .expect_err("json");
    assert!(!err.to_string().contains("canary"));
}

/// A Kubernetes quantity as a number (enough precision for comparing requests and limits).
fn quantity(text: &str) -> f64 {
    let suffixes = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().unwrap() * factor;
        }
    }
    text.parse().unwrap()
}

fn array<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x == y || y == "/" || x.starts_with(&format!("{y}/"));
    let canonical = |p: &str| match p.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => p.to_owned(),
    };
    under(a, b) || under(b, a) || {
        let (a, b) = (canonical(a), canonical(b));
        under(&a, &b) || under(&b, &a)
    }
}

/// Paths where a mount of kvmount's breaks the container: the directories of the image's
/// programs, libraries and CA roots, kernel and runtime filesystems, the service-account
/// tree, kubelet's files, and the agent's own binary.
const RESERVED: &[&str] = &[
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr",
    "/proc",
    "/sys",
    "/dev",
    "/etc/ssl",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/var/run/secrets/kubernetes.io/serviceaccount",
];

/// What the apiserver would refuse in `pod`, or what could not run: duplicate container
/// names, two mounts at one path in a container, mounts of volumes that do not exist,
/// duplicate volume names, requests above limits; and kvmount's own mounts at a reserved
/// path, over `/etc`, or over one another.
fn pod_problems(pod: &Value) -> Result<(), String> {
    let spec = &pod["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| array(spec, k))
        .collect();
    let volumes: Vec<&str> = array(spec, "volumes")
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for v in &volumes {
        if !seen.insert(*v) {
            return Err(format!("has two volumes named {v}"));
        }
    }
    let mut names = std::collections::HashSet::new();
    for c in &containers {
        let name = c["name"].as_str().unwrap();
        if !names.insert(name) {
            return Err(format!("has two containers named {name}"));
        }
        let mounts = array(c, "volumeMounts");
        let mut paths = std::collections::HashSet::new();
        for m in &mounts {
            let path = m["mountPath"].as_str().unwrap();
            if !paths.insert(path) {
                return Err(format!("mounts two volumes at {path} in {name}"));
            }
            let volume = m["name"].as_str().unwrap();
            if !volumes.contains(&volume) {
                return Err(format!(
                    "mounts volume {volume} in {name}, which does not exist"
                ));
            }
        }
        let ours: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .filter(|(volume, _)| volume.starts_with("kvmount-"))
            .collect();
        // The directory of the container's program, unless kvmount's volume brings it.
        let program_dir = c["command"][0]
            .as_str()
            .and_then(|p| p.rsplit_once('/'))
            .map(|(dir, _)| dir.to_owned())
            .filter(|dir| !dir.is_empty());
        for (i, (volume, path)) in ours.iter().enumerate() {
            if path.trim_end_matches('/').is_empty()
                || overlaps("/etc", path) && !path.starts_with("/etc/")
            {
                return Err(format!(
                    "mounts kvmount's volume at {path} in {name}, over a system directory"
                ));
            }
            let mut reserved: Vec<String> = RESERVED.iter().map(|p| (*p).to_owned()).collect();
            if *volume != "kvmount-bin" {
                reserved.extend(program_dir.clone());
            }
            if let Some(r) = reserved.iter().find(|r| overlaps(path, r)) {
                return Err(format!(
                    "mounts kvmount's volume at {path} in {name}, over {r}"
                ));
            }
            if let Some((_, other)) = ours[i + 1..].iter().find(|(_, o)| overlaps(path, o)) {
                return Err(format!(
                    "mounts kvmount's volumes at {path} and {other} in {name}"
                ));
            }
        }
        for (kind, limit) in c["resources"]["limits"].as_object().into_iter().flatten() {
            if let Some(request) = c["resources"]["requests"][kind].as_str()
                && quantity(request) > quantity(limit.as_str().unwrap())
            {
                return Err(format!(
                    "requests {kind} {request} above its limit {limit} in {name}"
                ));
            }
        }
    }
    Ok(())
}

fn review_with(annotations: &[(&str, &str)], containers: Value, volumes: Option<Value>) -> Value {
    let mut spec = json!({ "containers": containers });
    if let Some(v) = volumes {
        spec["volumes"] = v;
    }
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (format!("kvmount.io/{k}"), json!(v)))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "uid-combination",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "namespace": "team-a",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "generateName": "app-", "annotations": annotations },
                "spec": spec,
            },
        },
    })
}

/// Every combination of tricky annotation values and pod shapes either is denied with a
/// message that names an annotation and what is accepted, or yields a pod the apiserver
/// accepts and that can run.
#[test]
fn every_combination_yields_a_valid_pod_or_a_clear_denial() {
    let mount_paths = [
        None,
        Some("/mnt/secrets"),
        Some("/etc/app/secrets"),
        Some("/data"),
        Some("/data/secrets"),
        Some("/"),
        Some("/etc"),
        Some("/etc/ssl/certs"),
        Some("/etc/hosts"),
        Some("/usr"),
        Some("/usr/local/bin"),
        Some("/usr/local"),
        Some("/bin"),
        Some("/lib64"),
        Some("/proc/x"),
        Some("/sys"),
        Some("/dev/shm/secrets"),
        Some("/var"),
        Some("/var/run"),
        Some("/run"),
        Some("/var/run/secrets"),
        Some("/var/run/secrets/kubernetes.io/serviceaccount"),
        Some("/var/run/secrets/kvmount.io/serviceaccount"),
        Some("/var/run/secrets/kvmount.io/serviceaccount/x"),
        Some("/var/run/secrets/kvmount.io"),
        Some("/run/secrets/kvmount.io/serviceaccount"),
        Some("/var/run/secrets/azure/tokens"),
        Some("/kvmount/bin"),
        Some("/kvmount"),
        Some("/kvmount/bin/x"),
    ];
    let containers_lists = [
        None,
        Some("app"),
        Some("app,app"),
        Some("app,worker"),
        Some("worker,app,worker"),
    ];
    let resources: &[&[(&str, &str)]] = &[
        &[],
        &[("memory-request", "64Mi")],
        &[("memory-limit", "8Mi")],
        &[("memory-request", "32Mi"), ("memory-limit", "32Mi")],
        &[("cpu-request", "100m"), ("cpu-limit", "0.05")],
        &[("cpu-limit", "1m")],
        &[("cpu-request", "1"), ("cpu-limit", "1000m")],
        &[("memory-request", "1Gi"), ("memory-limit", "1G")],
    ];
    let pods = [
        // Plain.
        (
            json!([{ "name": "app", "command": ["/app"] }, { "name": "worker", "command": ["/w"] }]),
            None,
        ),
        // Existing mounts at /data and at the token directory.
        (
            json!([
                { "name": "app", "command": ["/app"], "volumeMounts": [{ "name": "data", "mountPath": "/data" }] },
                { "name": "worker", "command": ["/w"], "volumeMounts": [
                    { "name": "data", "mountPath": "/var/run/secrets/kvmount.io/serviceaccount" },
                    { "name": "data", "mountPath": "/kvmount/bin" }
                ] }
            ]),
            Some(json!([{ "name": "data", "emptyDir": {} }])),
        ),
        // A container named like the agent.
        (
            json!([{ "name": "app", "command": ["/app"] }, { "name": "kvmount-agent", "command": ["/w"] }]),
            None,
        ),
    ];
    let mut patched_pods = 0;
    let mut denied = 0;
    for mount_path in mount_paths {
        for containers in containers_lists {
            for resource in resources {
                for exec in [false, true] {
                    for (pod_containers, pod_volumes) in &pods {
                        let mut a = vec![
                            ("inject", "true"),
                            ("keyvault", "demo"),
                            ("tenant-id", "00000000-0000-0000-0000-000000000001"),
                            ("client-id", "00000000-0000-0000-0000-00000000000a"),
                            ("secret-db", "secret/db"),
                            ("mode", "sidecar"),
                        ];
                        if exec {
                            a.push(("env-API_KEY", "secret/api-key"));
                        }
                        if let Some(p) = mount_path {
                            a.push(("mount-path", p));
                        }
                        if let Some(c) = containers {
                            a.push(("containers", c));
                        }
                        a.extend_from_slice(resource);
                        let review = review_with(&a, pod_containers.clone(), pod_volumes.clone());
                        let (decision, response) = decide(&review);
                        let label = format!("{a:?} on {pod_containers}");
                        match decision {
                            Decision::Deny(message) => {
                                denied += 1;
                                assert!(
                                    message.starts_with("kvmount: annotation kvmount.io/"),
                                    "{label}: {message}"
                                );
                                assert!(
                                    message.contains("accepted") || message.contains("required"),
                                    "{label}: {message}"
                                );
                            }
                            Decision::Patch(_) => {
                                patched_pods += 1;
                                let patch = base64::engine::general_purpose::STANDARD
                                    .decode(response["response"]["patch"].as_str().unwrap())
                                    .unwrap();
                                let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
                                let mut pod = review["request"]["object"].clone();
                                apply(&mut pod, &ops);
                                if let Err(problem) = pod_problems(&pod) {
                                    panic!("{label}: the patched pod {problem}");
                                }
                            }
                            Decision::Skip(why) => panic!("{label}: skipped ({why})"),
                        }
                    }
                }
            }
        }
    }
    println!("{patched_pods} valid patched pods, {denied} clear denials");
    assert!(
        patched_pods > 100 && denied > 100,
        "{patched_pods} / {denied}"
    );
}
