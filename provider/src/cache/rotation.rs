//! Rotation: one pass re-reads every entry that is due, keeps the last good value when a
//! read fails and backs off (exponentially, with jitter, capped at the interval), and erases
//! a value Key Vault no longer lets its identity read. The loop that runs the passes is
//! `crate::refresh`.

use std::sync::Arc;
use std::time::Duration;

use kvmount_vault::ErrorKind;
use tokio::time::Instant;

use super::entries::{Cached, Entries, Reader, Slot};
use super::error::RotationError;
use super::jitter::{backoff, jitter, next_check};
use super::key::{IdentityKey, ObjectKey};

/// The result of one rotation pass.
#[derive(Debug, Default)]
pub struct RotationReport {
    /// Entries read (one Key Vault read each).
    pub checked: usize,
    /// Entries whose version changed: the volumes that use them must be rewritten.
    pub changed: Vec<ObjectKey>,
    /// Entries whose read failed, with the error (their last good value is kept).
    pub failed: Vec<(ObjectKey, RotationError)>,
}

/// One pass: every due entry is read once with the reader of its identity (`reader_of`,
/// `None` when the identity has no clients yet).
pub(super) async fn pass<'r>(
    entries: &Entries,
    interval: Duration,
    reader_of: impl Fn(&IdentityKey) -> Option<Box<dyn Reader + 'r>>,
) -> RotationReport {
    let checks = entries.due().into_iter().map(|(key, slot)| {
        let reader = reader_of(&key.identity);
        async move {
            let outcome = match reader {
                Some(reader) => check_one(entries, &key, &slot, reader.as_ref()).await,
                None => Err(RotationError::NoCredential),
            };
            record(&slot, &outcome, interval);
            (key, outcome)
        }
    });
    let mut report = RotationReport::default();
    for (key, outcome) in futures::future::join_all(checks).await {
        report.checked += 1;
        match outcome {
            Ok(true) => report.changed.push(key),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(object = %key.id(), vault = %key.vault(), error = %error, "rotation read failed; keeping the last good content");
                report.failed.push((key, error));
            }
        }
    }
    report
}

/// Sets the entry's next check after a read: one interval after it was due on a success (the
/// entry keeps its phase: one read per object per interval on average), a growing backoff
/// after a failure.
fn record(slot: &Slot, outcome: &Result<bool, RotationError>, interval: Duration) {
    let mut users = slot.users();
    match outcome {
        Ok(_) => {
            users.failures = 0;
            users.last_error = None;
            users.next_check = next_check(users.next_check, Instant::now(), interval);
        }
        Err(error) => {
            users.failures = users.failures.saturating_add(1);
            users.last_error = Some(error.clone());
            users.next_check = Instant::now() + jitter(backoff(users.failures, interval));
        }
    }
}

/// Reads `key` again; Ok(true) when the version changed.
async fn check_one(
    entries: &Entries,
    key: &ObjectKey,
    slot: &Arc<Slot>,
    reader: &dyn Reader,
) -> Result<bool, RotationError> {
    let fetched = match reader.read(&key.object.spec()).await {
        Ok(fetched) => fetched,
        Err(e) => {
            if matches!(e.kind, ErrorKind::PermissionDenied | ErrorKind::NotFound)
                && slot.value.lock().await.take().is_some()
            {
                // Revoked (disabled, expired, deleted, or no longer readable by this
                // identity): the value is erased, so no new mount is served from it (each
                // reads Key Vault and is refused); published volumes keep their last content
                // and report the error, as for any failed refresh.
                tracing::warn!(object = %key.id(), vault = %key.vault(), error = %e, "revoked in Key Vault: erased from the cache");
            }
            return Err(e.into());
        }
    };
    entries.count_miss();
    let mut value = slot.value.lock().await;
    let changed = value
        .as_ref()
        .is_none_or(|c| c.object.version != fetched.version);
    if changed {
        tracing::info!(object = %key.id(), vault = %key.vault(), version = %fetched.version, "rotated: new version");
    }
    *value = Some(Cached {
        object: fetched,
        fetched_at: Instant::now(),
    });
    slot.users().refreshed = Some(Instant::now());
    Ok(changed)
}
