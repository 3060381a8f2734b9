//! Replays the hostile-input corpus (`tests/corpus/inputs.jsonl`, written by
//! `tests/corpus/generate.py`) against the real daemon at trace level, through the provider API
//! (`Mount`) and the CSI node plugin (`NodePublishVolume` / `NodeUnpublishVolume`).
//!
//! Every refused input must answer INVALID_ARGUMENT with a message that names the field, never
//! echo the canary client secret or service-account token, make no Key Vault request, and
//! leave the filesystem exactly as it was (a canary file next to the targets is untouched,
//! nothing created or removed). The few odd-looking but harmless names in the corpus must be
//! accepted and land inside the target. At the end the daemon is still alive and serving, and
//! its whole output holds neither canary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_tests::{
    DriverRequest, NodeDaemon, Vault, expand_repeats as expand, mounts_under, object, objects,
    publish_request, record_summary, tree,
};
use serde_json::Value;
use tonic::Code;

const CORPUS: &str = include_str!("../corpus/inputs.jsonl");
const APP_A: &str = "00000000-0000-0000-0000-00000000000a";
const APP_A_SECRET: &str = "app-a-password";
/// The client secret every refused case carries: it must never come back or reach a log.
const CANARY_SECRET: &str = "CANARY-SP-SECRET-7f3a9c";
/// The service-account token of the workload-identity cases.
const CANARY_TOKEN: &str = "CANARY-SA-TOKEN-51d2e0";
/// Longest error message accepted: long enough for any field and problem, short enough for a
/// Kubernetes event and a log line (an echoed 1 MiB input is neither).
const MAX_MESSAGE: usize = 2048;

fn expand_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(expand(s)),
        Value::Array(a) => Value::Array(a.iter().map(expand_value).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (expand(k), expand_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn corpus() -> Vec<Value> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| expand_value(&serde_json::from_str(l).expect("corpus line is JSON")))
        .collect()
}

fn str_of<'a>(case: &'a Value, key: &str) -> Option<&'a str> {
    case.get(key).and_then(Value::as_str)
}

/// Applies `set`-style overrides (null removes) to `map`.
fn apply(map: &mut HashMap<String, String>, overrides: Option<&Value>) {
    let Some(Value::Object(o)) = overrides else {
        return;
    };
    for (k, v) in o {
        match v.as_str() {
            Some(s) => {
                map.insert(k.clone(), s.to_owned());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

/// The valid request a case starts from, with the case's attribute and object changes.
fn base(vault: &Vault, case: &Value, secret: &str) -> DriverRequest {
    let mut request = DriverRequest::new(
        "demo",
        vault.mock.tenant_id(),
        &objects(&[object("db-password", "")]),
        "team-a",
        "hostile",
    )
    .service_principal(APP_A, secret);
    if let Some(yaml) = str_of(case, "object") {
        request = request.attr("objects", &objects(&[yaml.to_owned()]));
    }
    if let Some(yaml) = str_of(case, "objects") {
        request = request.attr("objects", yaml);
    }
    let tokens = serde_json::json!({kvmount_tests::WI_AUDIENCE: {"token": CANARY_TOKEN, "expirationTimestamp": "2099-01-01T00:00:00Z"}});
    if case
        .get("set")
        .and_then(|s| s.get("clientID"))
        .is_some_and(Value::is_string)
    {
        request.attributes.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".into(),
            tokens.to_string(),
        );
    }
    apply(&mut request.attributes, case.get("set"));
    apply(&mut request.secrets, case.get("secrets_set"));
    request
}

#[derive(Default)]
struct Tally {
    runs: u64,
    refused: u64,
    accepted: u64,
    failures: Vec<String>,
    longest_message: usize,
}

impl Tally {
    fn check_error(&mut self, case: &Value, path: &str, status: &tonic::Status) {
        let name = str_of(case, "name").unwrap_or("?");
        let field = str_of(case, "field").unwrap_or("");
        let expected = match str_of(case, "expect") {
            Some("ok") => {
                self.failures.push(format!(
                    "[{path}] {name}: refused ({status:?}), expected OK"
                ));
                return;
            }
            Some("NotFound") => Code::NotFound,
            _ => Code::InvalidArgument,
        };
        let message = status.message();
        self.longest_message = self.longest_message.max(message.len());
        let shown: String = message.chars().take(300).collect();
        if status.code() != expected {
            self.failures.push(format!(
                "[{path}] {name}: code {:?}, expected {expected:?}: {shown}",
                status.code()
            ));
        } else if !message.contains(field) {
            self.failures.push(format!(
                "[{path}] {name}: message does not name {field:?}: {shown}"
            ));
        } else if message.contains(CANARY_SECRET) || message.contains(CANARY_TOKEN) {
            self.failures
                .push(format!("[{path}] {name}: message echoes a credential"));
        } else if message.len() > MAX_MESSAGE {
            self.failures.push(format!(
                "[{path}] {name}: message is {} bytes (at most {MAX_MESSAGE}): {shown}...",
                message.len()
            ));
        } else {
            self.refused += 1;
        }
    }
}

fn target_for(daemon: &NodeDaemon, shape: Option<&str>) -> String {
    let pods = daemon.pods_dir.display().to_string();
    match shape {
        None => daemon.target("hostile").display().to_string(),
        Some("empty") => String::new(),
        Some("relative") => "relative/mount".into(),
        Some("dot-relative") => "./mount".into(),
        Some("dotdot") => format!("{pods}/uid-hostile/../escape"),
        Some("dotdot-middle") => format!("{pods}/a/../../b/mount"),
        Some("root") => "/".into(),
        Some(other) => panic!("unknown target shape {other}"),
    }
}

/// Whether `file` in the volume at `target` resolves to a regular file inside it.
fn resolved_inside(target: &Path, file: &str) -> bool {
    let Ok(real) = std::fs::canonicalize(target.join(file)) else {
        return false;
    };
    let Ok(root) = std::fs::canonicalize(target) else {
        return false;
    };
    real.starts_with(&root) && real.is_file()
}

#[tokio::test]
async fn hostile_inputs_are_refused_naming_the_field() {
    let cases = corpus();
    assert!(cases.len() >= 200, "the corpus has {} inputs", cases.len());
    let vault = Vault::start(None).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--log-level".into(), "trace".into()]);
    let daemon = NodeDaemon::start(&flags);
    let mut provider = CsiDriverProviderClient::new(
        kvmount_provider::server::unix_channel(&daemon.provider_socket)
            .await
            .expect("provider socket"),
    );
    let mut node = NodeClient::new(daemon.csi_channel().await);

    // Canaries next to the targets: never touched, never removed.
    let canary_dir = daemon.target("hostile");
    let canary_dir = canary_dir.parent().expect("parent").to_owned();
    let canary = canary_dir.join("canary.txt");
    std::fs::write(&canary, "canary-content").expect("canary");
    let escape = daemon.pods_dir.join("escape");
    let mount_target: PathBuf = daemon.dir().join("driver-target");

    // The base request is valid: with real credentials it mounts.
    let good = base(&vault, &Value::Null, APP_A_SECRET);
    let mut good_mount = good.build();
    good_mount.target_path = mount_target.display().to_string();
    provider
        .mount(good_mount)
        .await
        .expect("the corpus's base request mounts");
    vault.mock.reset_stats();

    let before = tree(daemon.dir());
    let mut tally = Tally::default();
    for case in &cases {
        let name = str_of(case, "name").unwrap_or("?");
        let ok_case = str_of(case, "expect") == Some("ok");
        let secret = if case.get("expect").is_some() {
            APP_A_SECRET
        } else {
            CANARY_SECRET
        };
        let paths: Vec<&str> = case["paths"]
            .as_array()
            .expect("paths")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for path in paths {
            tally.runs += 1;
            let requests_before = vault.mock.stats().count(None, None, None, None);
            let request = base(&vault, case, secret);
            if path == "mount" {
                let mut wire = request.build();
                wire.target_path = mount_target.display().to_string();
                if let Some(raw) = str_of(case, "attributes_raw") {
                    wire.attributes = raw.to_owned();
                }
                if let Some(raw) = str_of(case, "secrets_raw") {
                    wire.secrets = raw.to_owned();
                }
                if let Some(raw) = str_of(case, "permission") {
                    wire.permission = raw.to_owned();
                }
                match provider.mount(wire).await {
                    Ok(response) if ok_case => {
                        let response = response.into_inner();
                        let paths: Vec<&str> =
                            response.files.iter().map(|f| f.path.as_str()).collect();
                        if paths == [str_of(case, "file").unwrap_or("?")]
                            && kvmount_volume::validate_relative_path(paths[0]).is_ok()
                        {
                            tally.accepted += 1;
                        } else {
                            tally
                                .failures
                                .push(format!("[mount] {name}: returned paths {paths:?}"));
                        }
                    }
                    Ok(_) => tally.failures.push(format!("[mount] {name}: accepted")),
                    Err(status) => tally.check_error(case, path, &status),
                }
            } else {
                let csi = case.get("csi").cloned().unwrap_or(Value::Null);
                let target = target_for(&daemon, csi.get("target").and_then(Value::as_str));
                let volume_id = csi
                    .get("volume_id")
                    .and_then(Value::as_str)
                    .unwrap_or("vol-hostile")
                    .to_owned();
                let result = if str_of(case, "op") == Some("unpublish") {
                    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                        volume_id: volume_id.clone(),
                        target_path: target.clone(),
                    })
                    .await
                    .map(|_| ())
                } else {
                    let mut context = request.attributes.clone();
                    context.remove("secretProviderClass");
                    apply(&mut context, case.get("set"));
                    let mut wire = publish_request(Path::new(&target), &volume_id, &context);
                    wire.target_path = target.clone();
                    wire.secrets = request.secrets.clone();
                    if let Some(readonly) = csi.get("readonly").and_then(Value::as_bool) {
                        wire.readonly = readonly;
                    }
                    use kvmount_proto::csi::volume_capability::{AccessType, BlockVolume};
                    match csi.get("capability").and_then(Value::as_str) {
                        Some("none") => wire.volume_capability = None,
                        Some("block") => {
                            if let Some(cap) = wire.volume_capability.as_mut() {
                                cap.access_type = Some(AccessType::Block(BlockVolume {}));
                            }
                        }
                        _ => {}
                    }
                    if let Some(group) = csi.get("mount_group").and_then(Value::as_str)
                        && let Some(cap) = wire.volume_capability.as_mut()
                        && let Some(AccessType::Mount(mount)) = cap.access_type.as_mut()
                    {
                        mount.volume_mount_group = group.to_owned();
                    }
                    node.node_publish_volume(wire).await.map(|_| ())
                };
                match result {
                    Ok(()) if ok_case => {
                        let alias = str_of(case, "file").unwrap_or("?");
                        let target = PathBuf::from(&target);
                        if resolved_inside(&target, alias) {
                            tally.accepted += 1;
                        } else {
                            tally.failures.push(format!(
                                "[csi] {name}: {alias:?} is not a file inside the target"
                            ));
                        }
                        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                            volume_id,
                            target_path: target.display().to_string(),
                        })
                        .await
                        .expect("unpublish an accepted case");
                        if target.exists() {
                            tally
                                .failures
                                .push(format!("[csi] {name}: target left after unpublish"));
                        }
                    }
                    Ok(()) => tally.failures.push(format!("[csi] {name}: accepted")),
                    Err(status) => tally.check_error(case, path, &status),
                }
            }
            // A refused input is refused before any Key Vault or Entra request.
            let requests = vault.mock.stats().count(None, None, None, None) - requests_before;
            if str_of(case, "expect").is_none() && requests != 0 {
                tally.failures.push(format!(
                    "[{path}] {name}: {requests} Key Vault/Entra requests for a refused input"
                ));
            }
            // Nothing written, created or removed anywhere under the test's directory.
            let after = tree(daemon.dir());
            if after != before {
                let added: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
                let removed: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
                tally.failures.push(format!(
                    "[{path}] {name}: filesystem changed: added {added:?}, removed {removed:?}"
                ));
            }
        }
    }

    // The daemon survived all of it and still serves.
    assert!(!daemon.output().contains("panicked"), "{}", daemon.output());
    let mut again = good.build();
    again.target_path = mount_target.display().to_string();
    provider.mount(again).await.expect("still serving");
    assert_eq!(
        std::fs::read_to_string(&canary).expect("canary survives"),
        "canary-content"
    );
    assert!(!escape.exists(), "nothing created outside the targets");
    assert!(!mount_target.exists(), "the provider API never writes");
    assert!(mounts_under(daemon.dir()).is_empty(), "no mount left");
    let output = daemon.output();
    assert!(output.contains("TRACE"), "trace level was on");
    for needle in [CANARY_SECRET, CANARY_TOKEN, "current-value"] {
        assert!(!output.contains(needle), "the log contains {needle:?}");
    }
    record_summary(
        "inputs",
        &[
            ("corpus_inputs", cases.len() as u64),
            ("inputs_tried", tally.runs),
            ("refused_as_expected", tally.refused),
            ("harmless_accepted_inside_target", tally.accepted),
            ("longest_error_message", tally.longest_message as u64),
            ("failures", tally.failures.len() as u64),
        ],
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} runs failed:\n{}",
        tally.failures.len(),
        tally.runs,
        tally.failures.join("\n")
    );
}

/// The checked-in corpus is exactly what its generator writes: an edit to one without the other
/// fails here. The generator runs on a copy in a temp dir, so the tree is never rewritten.
#[test]
fn the_corpus_is_what_its_generator_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("generate.py");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/generate.py"),
        &script,
    )
    .expect("copy the generator");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs (tests/run.sh needs it anyway)");
    assert!(
        output.status.success(),
        "generate.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fresh = std::fs::read_to_string(dir.path().join("inputs.jsonl")).expect("fresh corpus");
    if fresh != CORPUS {
        let (fresh_lines, old_lines): (Vec<_>, Vec<_>) =
            (fresh.lines().collect(), CORPUS.lines().collect());
        let first = fresh_lines
            .iter()
            .zip(&old_lines)
            .position(|(a, b)| a != b)
            .unwrap_or(fresh_lines.len().min(old_lines.len()));
        panic!(
            "tests/corpus/inputs.jsonl differs from a fresh run of generate.py ({} lines vs {} \
             committed; first difference at line {}): run python3 tests/corpus/generate.py and \
             commit both",
            fresh_lines.len(),
            old_lines.len(),
            first + 1
        );
    }
}
