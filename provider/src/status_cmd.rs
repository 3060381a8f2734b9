//! `kvmount-provider status`: the node's published volumes, read from the daemon's state file.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::StatusArgs;
use crate::state::StateStore;

/// Prints one row per published volume (or JSON with `--json`).
pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let store = StateStore::open(&args.state_dir)?;
    let records = store.load()?;
    if args.json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "pod": r.pod_name,
                    "namespace": r.pod_namespace,
                    "podUID": r.pod_uid,
                    "class": r.class,
                    "volumeID": r.volume_id,
                    "targetPath": r.target_path,
                    "objects": r.versions.iter().map(|(id, v)| serde_json::json!({"id": id, "version": v})).collect::<Vec<_>>(),
                    "lastRefresh": r.refreshed_at,
                    "lastError": r.last_error,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"volumes": rows}))?
        );
        return Ok(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "{:<24} {:<16} {:<20} {:<44} {:>12}  LAST ERROR",
        "POD", "NAMESPACE", "CLASS", "OBJECTS", "REFRESHED"
    );
    for r in &records {
        let objects: Vec<String> = r
            .versions
            .iter()
            .map(|(id, v)| format!("{id}@{}", &v[..v.len().min(8)]))
            .collect();
        println!(
            "{:<24} {:<16} {:<20} {:<44} {:>10}s  {}",
            r.pod_name,
            r.pod_namespace,
            r.class.as_deref().unwrap_or("(inline)"),
            objects.join(","),
            now.saturating_sub(r.refreshed_at),
            r.last_error.as_deref().unwrap_or("-"),
        );
    }
    if records.is_empty() {
        println!("(no published volumes)");
    }
    Ok(())
}
