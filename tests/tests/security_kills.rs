//! SIGKILL of the node daemon at random points while volumes are published, unpublished and
//! rotated, for `KVMOUNT_KILL_ROUNDS` rounds (default 60; `KVMOUNT_KILL_SEED` replays a run).
//!
//! Each round flips a random subset of eight pod volumes (publish the absent ones, unpublish
//! the present ones) concurrently, kills the daemon after a random delay, restarts it, and
//! checks what a restart promises: every volume in the state file is a tmpfs mount point with
//! all its files. Then it retries the round's calls the way kubelet does (until OK) and checks
//! the node against what should be there: no leaked mount, no orphaned directory, no volume
//! without its files, the state file listing exactly the published volumes. Every few rounds
//! the secret is rotated in Key Vault, so rotation passes (every second) are killed too. At the
//! end a last rotation reaches every volume still published (the cache entries survived with
//! the right users), and after the last unpublish no value ever served is left in the daemon's
//! memory (no reference leaked).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmount_mock_vault::Seed;
use kvmount_proto::csi::NodeUnpublishVolumeRequest;
use kvmount_proto::csi::node_client::NodeClient;
use kvmount_tests::{
    NodeDaemon, Vault, mounts_under, object, objects, publish_request, record_summary,
    scan_process_memory,
};
use tonic::transport::Channel;

const CLIENT: &str = "00000000-0000-0000-0000-0000000000b1";
const CLIENT_SECRET: &str = "kill-test-secret";
const VOLUMES: usize = 8;
const API_KEY: &str = "kill-api-key-constant";

fn seed() -> Seed {
    Seed::from_yaml(&format!(
        "tenantId: 00000000-0000-0000-0000-000000000001\nidentities:\n  - {{ name: app, clientId: {CLIENT}, clientSecret: {CLIENT_SECRET} }}\nvaults:\n  - name: kill\n    access:\n      - {{ identity: app, objects: [\"secret/*\"], permissions: [get, list, set] }}\n    secrets:\n      - {{ name: db-password, versions: [\"kill-value-0\"] }}\n      - {{ name: api-key, versions: [\"{API_KEY}\"] }}\n"
    ))
    .expect("seed")
}

/// A small xorshift generator: the seed is printed so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn set_secret(vault: &Vault, name: &str, value: &str) {
    vault
        .set_secret("kill", CLIENT, CLIENT_SECRET, name, value)
        .await;
}

fn context(vault: &Vault, pod: usize) -> HashMap<String, String> {
    HashMap::from([
        ("keyvaultName".to_owned(), "kill".to_owned()),
        ("tenantID".to_owned(), vault.mock.tenant_id().to_owned()),
        (
            "objects".to_owned(),
            objects(&[object("db-password", ""), object("api-key", "")]),
        ),
        ("csi.storage.k8s.io/pod.name".to_owned(), format!("k-{pod}")),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            "kill".to_owned(),
        ),
        (
            "csi.storage.k8s.io/pod.uid".to_owned(),
            format!("uid-k-{pod}"),
        ),
    ])
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Publish,
    Unpublish,
}

async fn call(
    channel: Channel,
    op: Op,
    vault_context: HashMap<String, String>,
    target: PathBuf,
    volume: String,
) -> Result<(), tonic::Status> {
    let mut node = NodeClient::new(channel);
    match op {
        Op::Publish => {
            let mut request = publish_request(&target, &volume, &vault_context);
            request.secrets = HashMap::from([
                ("clientid".into(), CLIENT.into()),
                ("clientsecret".into(), CLIENT_SECRET.into()),
            ]);
            node.node_publish_volume(request).await.map(|_| ())
        }
        Op::Unpublish => node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume,
                target_path: target.display().to_string(),
            })
            .await
            .map(|_| ()),
    }
}

/// The targets the daemon's state lists (read with the daemon's own reader: the format is
/// internal).
fn state_targets(daemon: &NodeDaemon) -> Vec<String> {
    kvmount_provider::state::StateStore::open(&daemon.state_dir)
        .and_then(|store| store.load())
        .expect("state readable")
        .into_iter()
        .map(|record| record.target_path)
        .collect()
}

/// The problems of one volume that should be published: not a mount point, a file missing,
/// a value never written to Key Vault.
fn volume_problems(target: &Path, values: &[String]) -> Option<String> {
    if !kvmount_volume::is_mount_point(target).unwrap_or(false) {
        return Some(format!("{}: not a mount point", target.display()));
    }
    match std::fs::read_to_string(target.join("db-password")) {
        Ok(v) if values.contains(&v) => {}
        Ok(v) => return Some(format!("{}: db-password is {v:?}", target.display())),
        Err(e) => return Some(format!("{}: db-password: {e}", target.display())),
    }
    match std::fs::read_to_string(target.join("api-key")) {
        Ok(v) if v == API_KEY => None,
        other => Some(format!("{}: api-key: {other:?}", target.display())),
    }
}

#[tokio::test]
async fn sigkill_at_random_points_leaves_nothing_behind() {
    let rounds: u64 = std::env::var("KVMOUNT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed_value: u64 = std::env::var("KVMOUNT_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("KVMOUNT_KILL_SEED={seed_value}");
    let mut rng = Rng(seed_value);
    let vault = Vault::start(Some(seed())).await;
    let mut flags = vault.provider_flags();
    flags.extend(["--rotation-interval".into(), "1s".into()]);
    let mut daemon = NodeDaemon::start(&flags);
    let targets: Vec<PathBuf> = (0..VOLUMES)
        .map(|i| daemon.target(&format!("uid-k-{i}")))
        .collect();
    let contexts: Vec<_> = (0..VOLUMES).map(|i| context(&vault, i)).collect();
    let mut published = [false; VOLUMES];
    let mut values = vec!["kill-value-0".to_owned()];
    let mut problems: Vec<String> = Vec::new();
    let (mut kills_mid_call, mut calls, mut rotations) = (0u64, 0u64, 0u64);

    for round in 0..rounds {
        if round % 5 == 4 {
            let value = format!("kill-value-{round}-{}", rng.below(1_000_000));
            set_secret(&vault, "db-password", &value).await;
            values.push(value);
            rotations += 1;
        }
        // A random subset flips, all at once.
        let flips: Vec<usize> = (0..VOLUMES).filter(|_| rng.below(3) == 0).collect();
        let channel = daemon.csi_channel().await;
        let mut tasks = Vec::new();
        for &i in &flips {
            let op = if published[i] {
                Op::Unpublish
            } else {
                Op::Publish
            };
            tasks.push((
                i,
                op,
                tokio::spawn(call(
                    channel.clone(),
                    op,
                    contexts[i].clone(),
                    targets[i].clone(),
                    format!("vol-k-{i}"),
                )),
            ));
            calls += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        if tasks.iter().any(|(_, _, t)| !t.is_finished()) {
            kills_mid_call += 1;
        }
        drop(channel);
        daemon.kill_and_restart();
        for (_, _, task) in &tasks {
            task.abort();
        }

        // What the restart promises, before kubelet retries anything.
        for target in state_targets(&daemon) {
            if let Some(p) = volume_problems(Path::new(&target), &values) {
                problems.push(format!("round {round}, after restart: {p}"));
            }
        }

        // kubelet retries every call that did not answer OK, until it does.
        let channel = daemon.csi_channel().await;
        for (i, op, _) in tasks {
            let mut tries = 0;
            loop {
                tries += 1;
                match call(
                    channel.clone(),
                    op,
                    contexts[i].clone(),
                    targets[i].clone(),
                    format!("vol-k-{i}"),
                )
                .await
                {
                    Ok(()) => break,
                    Err(status) if tries < 5 => {
                        problems.push(format!(
                            "round {round}: retry {tries} of {op:?} {i}: {status:?}"
                        ));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => panic!("round {round}: {op:?} {i} keeps failing: {status:?}"),
                }
            }
            published[i] = op == Op::Publish;
        }

        // The node matches what should be there.
        for (i, target) in targets.iter().enumerate() {
            if published[i] {
                if let Some(p) = volume_problems(target, &values) {
                    problems.push(format!("round {round}: {p}"));
                }
            } else if target.exists() {
                problems.push(format!(
                    "round {round}: {} left after unpublish",
                    target.display()
                ));
            }
            let parent = target.parent().expect("parent");
            let extra: Vec<_> = std::fs::read_dir(parent)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name())
                        .filter(|n| n != "mount")
                        .collect()
                })
                .unwrap_or_default();
            if !extra.is_empty() {
                problems.push(format!(
                    "round {round}: orphans next to a target: {extra:?}"
                ));
            }
        }
        let want = published.iter().filter(|p| **p).count();
        let mounts = mounts_under(&daemon.pods_dir).len();
        let state = state_targets(&daemon).len();
        if mounts != want || state != want {
            problems.push(format!(
                "round {round}: {want} published, {mounts} mounts, {state} in the state file"
            ));
        }
        if problems.len() > 20 {
            break;
        }
    }

    // A last rotation reaches every published volume: their cache entries are intact. After a
    // restart the daemon holds no credentials (they are never stored); kubelet's periodic
    // republish of any one pod of the identity brings them, and then rotation serves every
    // re-adopted volume of that identity, including those never republished since.
    let channel = daemon.csi_channel().await;
    if let Some(i) = published.iter().position(|p| *p) {
        call(
            channel.clone(),
            Op::Publish,
            contexts[i].clone(),
            targets[i].clone(),
            format!("vol-k-{i}"),
        )
        .await
        .expect("kubelet's periodic republish of one pod");
    }
    let last = format!("kill-value-last-{}", rng.below(1_000_000));
    set_secret(&vault, "db-password", &last).await;
    values.push(last.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stale: Vec<&PathBuf> = targets
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                published[*i]
                    && std::fs::read_to_string(t.join("db-password")).ok().as_ref() != Some(&last)
            })
            .map(|(_, t)| t)
            .collect();
        if stale.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let output = daemon.output();
            let tail: String = output
                .chars()
                .skip(output.chars().count().saturating_sub(4000))
                .collect();
            problems.push(format!(
                "the last rotation never reached {stale:?}\ndaemon log tail:\n{tail}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last unpublish leaves no value in the daemon's memory.
    let channel = daemon.csi_channel().await;
    for (i, target) in targets.iter().enumerate() {
        if published[i] {
            call(
                channel.clone(),
                Op::Unpublish,
                contexts[i].clone(),
                target.clone(),
                format!("vol-k-{i}"),
            )
            .await
            .expect("final unpublish");
        }
    }
    drop(channel);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every value served starts with "kill-value-": one scan finds a copy of any of them.
    let memory_hits = scan_process_memory(daemon.pid(), b"kill-value-");
    if memory_hits > 0 {
        problems.push(format!(
            "{memory_hits} copies of a served value in the daemon's memory"
        ));
    }
    if !mounts_under(daemon.dir()).is_empty() || !state_targets(&daemon).is_empty() {
        problems.push("mounts or state left after the last unpublish".into());
    }
    let leaks = problems.iter().filter(|p| !p.contains(": retry ")).count();
    record_summary(
        "kills",
        &[
            ("kill_rounds", rounds),
            ("kills_during_a_call", kills_mid_call),
            ("calls", calls),
            ("rotations", rotations),
            ("leaks", leaks as u64),
            ("memory_hits", memory_hits as u64),
        ],
    );
    assert!(
        problems.is_empty(),
        "seed {seed_value}:\n{}",
        problems.join("\n")
    );
}
