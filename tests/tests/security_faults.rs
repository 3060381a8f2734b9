//! Key Vault and Entra faults from the mock, against the real daemon: 429 storms with
//! Retry-After, 503s, added latency, a slow and a failing token endpoint, expired and refused
//! credentials, and connections cut mid-response (the mock's `reset` fault). A Mount either
//! succeeds once the fault passes or fails with a clear status within the daemon's deadline; a
//! published volume keeps its last good content through a vault outage or resets during
//! rotation, and takes the new version once they stop. The count of injected faults goes to the
//! suite summary.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use kvmount_mock_vault::{FaultRule, Seed, ServiceAccountTokenRequest};
use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_proto::provider::csi_driver_provider_client::CsiDriverProviderClient;
use kvmount_tests::{
    DriverRequest, NodeDaemon, Vault, mounts_under, object, objects, publish_request,
    record_summary,
};
use tonic::Code;
use tonic::transport::Channel;

const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const APP: &str = "00000000-0000-0000-0000-0000000000f1";
const SLOW: &str = "00000000-0000-0000-0000-0000000000f2";
const FLAKY: &str = "00000000-0000-0000-0000-0000000000f3";
const WI: &str = "00000000-0000-0000-0000-0000000000f4";
const SECRET: &str = "fault-test-secret";
/// The daemon's deadline for one Mount (`--mount-timeout-seconds`).
const DEADLINE_SECONDS: u64 = 6;

fn seed() -> Seed {
    let mut yaml = format!(
        "tenantId: {TENANT}\nidentities:\n  - {{ name: app, clientId: {APP}, clientSecret: {SECRET} }}\n  - {{ name: slow, clientId: {SLOW}, clientSecret: {SECRET} }}\n  - {{ name: flaky, clientId: {FLAKY}, clientSecret: {SECRET} }}\n  - name: wi\n    clientId: {WI}\n    federated:\n      - {{ issuer: https://oidc.kvmount.local, subject: \"system:serviceaccount:flt:app\" }}\nvaults:\n  - name: flt\n    access:\n      - {{ identity: app, objects: [\"secret/*\"], permissions: [get, set] }}\n      - {{ identity: slow, objects: [\"secret/*\"], permissions: [get] }}\n      - {{ identity: flaky, objects: [\"secret/*\"], permissions: [get] }}\n      - {{ identity: wi, objects: [\"secret/*\"], permissions: [get] }}\n    secrets:\n"
    );
    for i in 0..12 {
        yaml.push_str(&format!(
            "      - {{ name: s{i}, versions: [\"fault-value-{i}\"] }}\n"
        ));
    }
    yaml.push_str("      - { name: off, versions: [\"x\"], enabled: false }\n");
    Seed::from_yaml(&yaml).expect("seed")
}

fn fault(route: &str, object: Option<&str>) -> FaultRule {
    FaultRule {
        route: Some(route.into()),
        object: object.map(Into::into),
        ..Default::default()
    }
}

struct Faults<'a> {
    vault: &'a Vault,
    provider: CsiDriverProviderClient<Channel>,
    injected: u64,
}

impl Faults<'_> {
    /// Mounts object `name` as `client`, with `rules` active; returns the result, the time it
    /// took, and how many requests the rules answered (or delayed).
    async fn mount(
        &mut self,
        name: &str,
        client: &str,
        rules: Vec<FaultRule>,
    ) -> (Result<Vec<u8>, tonic::Status>, Duration) {
        let before = self.vault.mock.stats();
        self.vault.mock.set_faults(rules.clone()).expect("faults");
        let request = DriverRequest::new("flt", TENANT, &objects(&[object(name, "")]), "flt", name)
            .service_principal(client, SECRET)
            .build();
        let started = Instant::now();
        let result = self
            .provider
            .mount(request)
            .await
            .map(|r| r.into_inner().files[0].contents.clone());
        let took = started.elapsed();
        self.vault.mock.clear_faults();
        let after = self.vault.mock.stats();
        for rule in &rules {
            let route = rule.route.as_deref();
            let object = rule.object.as_deref();
            let count = |s: &kvmount_mock_vault::Stats| match rule.status {
                Some(status) => s.count(None, route, object, Some(status)),
                None => s.count(None, route, object, None),
            };
            let hits = count(&after) - count(&before);
            self.injected += rule.times.map_or(hits, |t| hits.min(t));
        }
        (result, took)
    }
}

/// The daemon these tests run: the short mount deadline, few retries, a 1 s rotation interval,
/// every log line.
fn faulty_daemon(vault: &Vault) -> NodeDaemon {
    let mut flags = vault.provider_flags();
    flags.extend([
        "--mount-timeout-seconds".into(),
        DEADLINE_SECONDS.to_string(),
        "--max-retries".into(),
        "3".into(),
        "--rotation-interval".into(),
        "1s".into(),
        "--log-level".into(),
        "trace".into(),
    ]);
    NodeDaemon::start(&flags)
}

async fn provider_client(
    daemon: &NodeDaemon,
) -> CsiDriverProviderClient<tonic::transport::Channel> {
    CsiDriverProviderClient::new(
        kvmount_provider::server::unix_channel(&daemon.provider_socket)
            .await
            .expect("provider socket"),
    )
}

/// NodePublishVolume of `object_name` in vault `flt` for `pod`, as the service principal
/// (inline parameters, the secret through nodePublishSecretRef).
fn sp_publish(
    target: &std::path::Path,
    object_name: &str,
    pod: &str,
    volume: &str,
) -> kvmount_proto::csi::NodePublishVolumeRequest {
    let mut context: HashMap<String, String> = DriverRequest::new(
        "flt",
        TENANT,
        &objects(&[object(object_name, "")]),
        "flt",
        pod,
    )
    .attributes;
    context.remove("secretProviderClass");
    let mut request = publish_request(target, volume, &context);
    request.secrets = HashMap::from([
        ("clientid".into(), APP.into()),
        ("clientsecret".into(), SECRET.into()),
    ]);
    request
}

/// Unpublishes `volume`, then checks nothing is mounted and the daemon's log holds no client
/// secret, no value and no panic.
async fn unpublish_and_check(
    node: &mut NodeClient<Channel>,
    daemon: &NodeDaemon,
    volume: &str,
    target: &std::path::Path,
) {
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    })
    .await
    .expect("unpublish");
    assert!(mounts_under(daemon.dir()).is_empty());
    let output = daemon.output();
    assert!(!output.contains(SECRET), "the log holds the client secret");
    assert!(!output.contains("fault-value-"), "the log holds a value");
    assert!(!output.contains("panicked"), "{output}");
}

fn within_deadline(took: Duration) -> bool {
    // The daemon's deadline plus slack for a loaded machine: a hang would take far longer.
    took < Duration::from_secs(DEADLINE_SECONDS + 20)
}

#[tokio::test]
async fn mounts_succeed_after_faults_or_fail_clearly_within_the_deadline() {
    let vault = Vault::start(Some(seed())).await;
    let daemon = faulty_daemon(&vault);
    let mut f = Faults {
        vault: &vault,
        provider: provider_client(&daemon).await,
        injected: 0,
    };
    let mut scenarios = 0u64;

    // Transient faults: the Mount succeeds once they pass.
    let transient: Vec<(&str, &str, &str, Vec<FaultRule>)> = vec![
        (
            "429 storm with Retry-After",
            "s0",
            APP,
            vec![FaultRule {
                status: Some(429),
                retry_after: Some(1),
                times: Some(3),
                ..fault("secret.get", Some("secret/s0"))
            }],
        ),
        (
            "503 twice",
            "s1",
            APP,
            vec![FaultRule {
                status: Some(503),
                times: Some(2),
                ..fault("secret.get", Some("secret/s1"))
            }],
        ),
        (
            "500 then 502",
            "s2",
            APP,
            vec![
                FaultRule {
                    status: Some(500),
                    times: Some(1),
                    ..fault("secret.get", Some("secret/s2"))
                },
                FaultRule {
                    status: Some(502),
                    times: Some(1),
                    ..fault("secret.get", Some("secret/s2"))
                },
            ],
        ),
        (
            "added latency 800 ms",
            "s3",
            APP,
            vec![FaultRule {
                latency_ms: Some(800),
                ..fault("secret.get", Some("secret/s3"))
            }],
        ),
        (
            "slow token endpoint 1.5 s",
            "s4",
            SLOW,
            vec![FaultRule {
                latency_ms: Some(1500),
                ..fault("token", None)
            }],
        ),
        (
            "token endpoint 503 once",
            "s5",
            FLAKY,
            vec![FaultRule {
                status: Some(503),
                times: Some(1),
                ..fault("token", None)
            }],
        ),
    ];
    for (what, name, client, rules) in transient {
        let (result, took) = f.mount(name, client, rules).await;
        let value = result.unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!(
            value,
            format!("fault-value-{}", &name[1..]).as_bytes(),
            "{what}"
        );
        assert!(within_deadline(took), "{what}: {took:?}");
        scenarios += 1;
    }

    // Lasting faults: a clear status within the deadline.
    let lasting: Vec<(&str, &str, &str, Vec<FaultRule>, Code)> = vec![
        (
            "503 forever",
            "s6",
            APP,
            vec![FaultRule {
                status: Some(503),
                ..fault("secret.get", Some("secret/s6"))
            }],
            Code::Unavailable,
        ),
        (
            "429 forever",
            "s7",
            APP,
            vec![FaultRule {
                status: Some(429),
                retry_after: Some(1),
                ..fault("secret.get", Some("secret/s7"))
            }],
            Code::Unavailable,
        ),
        (
            "latency past the deadline",
            "s8",
            APP,
            vec![FaultRule {
                latency_ms: Some((DEADLINE_SECONDS + 4) * 1000),
                ..fault("secret.get", Some("secret/s8"))
            }],
            Code::Unavailable,
        ),
        (
            "403 from Key Vault",
            "s9",
            APP,
            vec![FaultRule {
                status: Some(403),
                ..fault("secret.get", Some("secret/s9"))
            }],
            Code::PermissionDenied,
        ),
        (
            "token endpoint 400 (refused)",
            "s10",
            FLAKY,
            vec![FaultRule {
                status: Some(400),
                ..fault("token", None)
            }],
            Code::Unauthenticated,
        ),
    ];
    for (what, name, client, rules, code) in lasting {
        // A fresh identity for token faults: no cached token may hide the fault.
        let (result, took) = f.mount(name, client, rules).await;
        let status = result.expect_err(what);
        assert!(
            status.code() == code
                || (what.contains("deadline") && status.code() == Code::DeadlineExceeded),
            "{what}: {status:?}"
        );
        assert!(!status.message().is_empty(), "{what}: a message");
        assert!(!status.message().contains(SECRET), "{what}: no credential");
        assert!(within_deadline(took), "{what}: {took:?}");
        scenarios += 1;
    }

    // An expired service-account token and a disabled secret: refused with a clear status.
    let expired = kvmount_mock_vault::mint_service_account_token_at(
        &vault.tls_dir(),
        &ServiceAccountTokenRequest::new("flt", "app"),
        SystemTime::now() - Duration::from_secs(7200),
    )
    .expect("token");
    let request = DriverRequest::new("flt", TENANT, &objects(&[object("s11", "")]), "flt", "exp")
        .workload_identity(WI, &expired)
        .build();
    let status = f.provider.mount(request).await.expect_err("expired token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains(&expired[expired.len() - 20..]));
    let request = DriverRequest::new("flt", TENANT, &objects(&[object("off", "")]), "flt", "off")
        .service_principal(APP, SECRET)
        .build();
    let status = f.provider.mount(request).await.expect_err("disabled");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    scenarios += 2;

    // A published volume keeps its last good content through an outage during rotation.
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let target = daemon.target("outage");
    let request = sp_publish(&target, "s0", "outage", "vol-outage");
    node.node_publish_volume(request.clone())
        .await
        .expect("publish");
    let mut lost_content = 0u64;
    for (status, latency) in [(Some(503), None), (Some(429), None), (None, Some(3000))] {
        let rule = FaultRule {
            status,
            latency_ms: latency,
            retry_after: status.filter(|s| *s == 429).map(|_| 1),
            ..fault("secret.get", None)
        };
        let before = vault
            .mock
            .stats()
            .count(None, Some("secret.get"), None, None);
        vault.mock.set_faults(vec![rule]).expect("faults");
        // Two rotation intervals and more: every read of the file finds the last content.
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            match std::fs::read_to_string(target.join("s0")) {
                Ok(v) if v == "fault-value-0" => {}
                _ => lost_content += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // kubelet's periodic republish during the outage: OK from the cache, or a clear
        // UNAVAILABLE once the cached read is older than the interval; either way the volume
        // keeps its mount and its last content.
        if let Err(status) = node.node_publish_volume(request.clone()).await {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        if std::fs::read_to_string(target.join("s0")).ok().as_deref() != Some("fault-value-0") {
            lost_content += 1;
        }
        vault.mock.clear_faults();
        f.injected += vault
            .mock
            .stats()
            .count(None, Some("secret.get"), None, None)
            - before;
        scenarios += 1;
    }
    assert_eq!(lost_content, 0, "reads that did not find the last content");
    unpublish_and_check(&mut node, &daemon, "vol-outage", &target).await;
    record_summary(
        "faults",
        &[
            ("fault_scenarios", scenarios),
            ("faults_injected", f.injected),
            ("lost_content", lost_content),
        ],
    );
}

/// Connections cut mid-response (status line and headers sent, half the body, then closed) at
/// Key Vault and at the token endpoint: a Mount succeeds once the resets stop, or fails with
/// UNAVAILABLE within the deadline while they last; a rotation pass during resets keeps the last
/// good content, and the next pass after them publishes the new version.
#[tokio::test]
async fn connection_resets_mid_response() {
    let vault = Vault::start(Some(seed())).await;
    let daemon = faulty_daemon(&vault);
    let mut f = Faults {
        vault: &vault,
        provider: provider_client(&daemon).await,
        injected: 0,
    };
    let reset = |route: &str, object: Option<&str>, times: Option<u64>| FaultRule {
        reset: true,
        times,
        ..fault(route, object)
    };
    // Transient: the retries get through.
    for (what, name, client, rule) in [
        (
            "Key Vault reset twice",
            "s0",
            APP,
            reset("secret.get", Some("secret/s0"), Some(2)),
        ),
        (
            "token endpoint reset once",
            "s1",
            FLAKY,
            reset("token", None, Some(1)),
        ),
    ] {
        let (result, took) = f.mount(name, client, vec![rule]).await;
        let value = result.unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!(
            value,
            format!("fault-value-{}", &name[1..]).as_bytes(),
            "{what}"
        );
        assert!(within_deadline(took), "{what}: {took:?}");
    }
    // Lasting: UNAVAILABLE within the deadline, with a message and no credential.
    for (what, name, client, rule) in [
        (
            "Key Vault resets forever",
            "s2",
            APP,
            reset("secret.get", Some("secret/s2"), None),
        ),
        (
            "token endpoint resets forever",
            "s3",
            SLOW,
            reset("token", None, None),
        ),
    ] {
        let (result, took) = f.mount(name, client, vec![rule]).await;
        let status = result.expect_err(what);
        println!(
            "{what}: {:?} after {took:?}: {}",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}: a message");
        assert!(!status.message().contains(SECRET), "{what}: no credential");
        assert!(within_deadline(took), "{what}: {took:?}");
    }

    // Rotation during resets: the volume keeps its content, then takes the new version.
    let mut node = NodeClient::new(daemon.csi_channel().await);
    let target = daemon.target("resets");
    let request = sp_publish(&target, "s4", "resets", "vol-resets");
    node.node_publish_volume(request.clone())
        .await
        .expect("publish");
    let gets = || {
        vault
            .mock
            .stats()
            .count(None, Some("secret.get"), None, None)
    };
    let before = gets();
    vault
        .mock
        .set_faults(vec![reset("secret.get", None, None)])
        .expect("faults");
    vault
        .set_secret("flt", APP, SECRET, "s4", "reset-rotated")
        .await;
    let mut lost_content = 0u64;
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        match std::fs::read_to_string(target.join("s4")) {
            Ok(v) if v == "fault-value-4" => {}
            _ => lost_content += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = gets() - before;
    vault.mock.clear_faults();
    f.injected += during;
    assert!(during > 0, "rotation passes read during the resets");
    assert_eq!(lost_content, 0, "reads that did not find the last content");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(target.join("s4")).ok().as_deref() != Some("reset-rotated") {
        assert!(
            Instant::now() < deadline,
            "the new version never arrived:\n{}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unpublish_and_check(&mut node, &daemon, "vol-resets", &target).await;
    record_summary(
        "resets",
        &[
            ("faults_injected", f.injected),
            ("lost_content", lost_content),
        ],
    );
}
