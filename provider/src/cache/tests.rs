//! The entries and rotation with a fake reader and paused time (proofs and per-identity
//! clients: `identity_tests`; against the mock vault's Entra ID: the multi-process tests in
//! `tests/tests/`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kvmount_vault::secret::SecretBytes;
use kvmount_vault::{ErrorKind, FetchedObject, MountParams, ObjectSpec, VaultError};

use super::config::lock;
use super::entries::{Entries, Reader};
use super::error::RotationError;
use super::jitter::backoff;
use super::rotation::pass;
use super::*;

fn params(extra: &[(&str, &str)]) -> MountParams {
    mount("Demo", extra, &[("clientid", "app"), ("clientsecret", "s")])
}

/// The parameters of a class reading `db-password` from `vault`, with `extra` attributes and
/// the node-publish `secrets`.
pub(super) fn mount(vault: &str, extra: &[(&str, &str)], secrets: &[(&str, &str)]) -> MountParams {
    let attributes: HashMap<String, String> = [
        ("keyvaultName", vault),
        ("tenantID", "tenant"),
        (
            "objects",
            "array:\n  - |\n    objectName: db-password\n    objectType: secret\n",
        ),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let secrets = secrets
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    kvmount_vault::params::mount_params(
        &attributes,
        &secrets,
        0o644,
        kvmount_vault::cloud::EnvFile::Beneath(None),
    )
    .expect("valid")
}

const INTERVAL: Duration = Duration::from_secs(60);

fn config() -> CacheConfig {
    CacheConfig {
        refresh_after: INTERVAL,
        idle_ttl: INTERVAL,
    }
}

fn entries() -> Entries {
    Entries::new(config(), Arc::default())
}

/// A Key Vault stand-in: answers each read with its current version (or error), after a
/// delay, and counts the reads.
struct FakeReader {
    version: Mutex<Result<String, ErrorKind>>,
    reads: AtomicUsize,
    delay: Duration,
}

impl FakeReader {
    fn new(version: &str) -> Self {
        Self {
            version: Mutex::new(Ok(version.to_owned())),
            reads: AtomicUsize::new(0),
            delay: Duration::from_millis(50),
        }
    }

    fn set(&self, answer: Result<&str, ErrorKind>) {
        *lock(&self.version) = answer.map(str::to_owned);
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Reader for FakeReader {
    async fn read(&self, _spec: &ObjectSpec) -> Result<FetchedObject, VaultError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let answer = lock(&self.version).clone();
        match answer {
            Ok(version) => Ok(FetchedObject {
                contents: SecretBytes::new(format!("value of {version}").into_bytes()),
                version,
                side: Vec::new(),
                present: true,
            }),
            Err(kind) => Err(VaultError::new(kind, "refused")),
        }
    }
}

/// Every identity reads through `reader`.
fn by<'r>(reader: &'r FakeReader) -> impl Fn(&IdentityKey) -> Option<Box<dyn Reader + 'r>> + 'r {
    move |_| Some(Box::new(reader) as Box<dyn Reader + 'r>)
}

/// The entry of `params`' first object through `reader`: its key and version.
async fn get(entries: &Entries, p: &MountParams, reader: &FakeReader) -> (ObjectKey, String) {
    let spec = &p.objects[0];
    entries
        .get(ObjectKey::new(p, spec), spec, reader, |o| o.version.clone())
        .await
        .expect("read")
}

/// The entry of the default class's object, read once and used by volume `/pods/a`.
async fn published(entries: &Entries, reader: &FakeReader) -> ObjectKey {
    let (key, _) = get(entries, &params(&[]), reader).await;
    entries.retain("/pods/a", vec![key.clone()]);
    key
}

fn version(entries: &Entries, key: &ObjectKey) -> Option<String> {
    let slot = entries.slot(key)?;
    let value = slot.value.try_lock().ok()?;
    value.as_ref().map(|c| c.object.version.clone())
}

#[tokio::test(start_paused = true)]
async fn concurrent_readers_share_one_read_and_one_key() {
    let entries = entries();
    let reader = FakeReader::new("v1");
    let p = params(&[]);
    let (a, b) = tokio::join!(get(&entries, &p, &reader), get(&entries, &p, &reader));
    assert_eq!(reader.reads(), 1, "one read for both");
    assert_eq!((a.1.as_str(), b.1.as_str()), ("v1", "v1"));
    assert!(a.0.same_copy(&b.0), "one copy of the key per entry");
    // Fresh within two intervals: a hit.
    tokio::time::advance(INTERVAL).await;
    get(&entries, &p, &reader).await;
    assert_eq!(reader.reads(), 1);
    assert_eq!(entries.counters.hits.load(Ordering::Relaxed), 2);
    // Older than that (rotation fell behind): read again.
    tokio::time::advance(INTERVAL * 2).await;
    get(&entries, &p, &reader).await;
    assert_eq!(reader.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_last_release_erases() {
    let entries = entries();
    let reader = FakeReader::new("v1");
    let p = params(&[]);
    let (key, _) = get(&entries, &p, &reader).await;
    entries.retain("/pods/a", vec![key.clone()]);
    entries.retain("/pods/b", vec![key.clone()]);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries.release("/pods/a").count, 0, "b still uses it");
    let erased = entries.release("/pods/b");
    assert_eq!(erased.count, 1, "erased with the last volume");
    assert!(erased.vaults.contains("demo"));
    assert_eq!(entries.len(), 0);
    assert!(entries.live_identities().is_empty());
    // A republish that no longer uses a key lets it go too.
    let (key, _) = get(&entries, &p, &reader).await;
    entries.retain("/pods/a", vec![key]);
    assert_eq!(entries.retain("/pods/a", Vec::new()).count, 1);
}

#[tokio::test(start_paused = true)]
async fn unused_entries_are_swept_after_the_idle_time() {
    let entries = entries();
    let reader = FakeReader::new("v1");
    let (used, _) = get(&entries, &params(&[]), &reader).await;
    let other = params(&[("cloudName", "AzureChinaCloud")]);
    let (idle, _) = get(&entries, &other, &reader).await;
    assert_ne!(used, idle, "two clouds, two entries");
    entries.retain("/pods/a", vec![used.clone()]);
    tokio::time::advance(INTERVAL / 2).await;
    assert_eq!(entries.sweep().count, 0, "not idle long enough");
    tokio::time::advance(INTERVAL).await;
    assert_eq!(entries.sweep().count, 1, "the unused one goes");
    assert!(entries.slot(&used).is_some(), "a volume's entry stays");
}

#[tokio::test(start_paused = true)]
async fn rotation_reads_due_entries_once_per_interval() {
    let (entries, reader) = (entries(), FakeReader::new("v1"));
    let key = published(&entries, &reader).await;
    let rotate = || pass(&entries, INTERVAL, by(&reader));
    assert_eq!(rotate().await.checked, 0, "not due yet");
    tokio::time::advance(INTERVAL * 3 / 2).await;
    let report = rotate().await;
    assert_eq!((report.checked, report.changed.len()), (1, 0));
    reader.set(Ok("v2"));
    tokio::time::advance(INTERVAL).await;
    let report = rotate().await;
    assert_eq!(report.changed, vec![key.clone()]);
    assert_eq!(version(&entries, &key).as_deref(), Some("v2"));
    assert_eq!(reader.reads(), 3);
}

#[tokio::test(start_paused = true)]
async fn failed_reads_back_off_and_keep_the_last_value() {
    let (entries, reader) = (entries(), FakeReader::new("v1"));
    let key = published(&entries, &reader).await;
    let rotate = || pass(&entries, INTERVAL, by(&reader));
    reader.set(Err(ErrorKind::Unavailable));
    tokio::time::advance(INTERVAL * 3 / 2).await;
    let report = rotate().await;
    assert!(matches!(report.failed[..], [(_, RotationError::Read(_))]));
    assert_eq!(version(&entries, &key).as_deref(), Some("v1"), "kept");
    // 1st failure: 4 s (+-10%) before the next try; 2nd: 8 s.
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(rotate().await.checked, 0, "backing off");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(rotate().await.failed.len(), 1, "retried");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(rotate().await.checked, 0, "backing off longer");
    tokio::time::advance(Duration::from_secs(3)).await;
    reader.set(Ok("v1"));
    let report = rotate().await;
    assert_eq!((report.checked, report.failed.len()), (1, 0), "recovered");
    assert!(
        entries
            .slot(&key)
            .expect("slot")
            .users()
            .last_error
            .is_none()
    );
    assert_eq!(backoff(1, INTERVAL), Duration::from_secs(4));
    assert_eq!(backoff(30, INTERVAL), INTERVAL, "capped at the interval");
}

#[tokio::test(start_paused = true)]
async fn a_revoked_value_is_erased_and_no_credential_waits() {
    let (entries, reader) = (entries(), FakeReader::new("v1"));
    let key = published(&entries, &reader).await;
    reader.set(Err(ErrorKind::Unauthenticated));
    tokio::time::advance(INTERVAL * 3 / 2).await;
    let report = pass(&entries, INTERVAL, by(&reader)).await;
    assert!(matches!(
        report.failed[..],
        [(_, RotationError::Unauthenticated(_))]
    ));
    assert_eq!(
        version(&entries, &key).as_deref(),
        Some("v1"),
        "not revoked"
    );
    reader.set(Err(ErrorKind::PermissionDenied));
    tokio::time::advance(INTERVAL).await;
    pass(&entries, INTERVAL, by(&reader)).await;
    assert_eq!(version(&entries, &key), None, "revoked: erased");
    assert!(
        entries.slot(&key).is_some(),
        "the volume still uses the entry"
    );
    // An identity without clients (after a restart) is not read.
    tokio::time::advance(INTERVAL).await;
    let report = pass(&entries, INTERVAL, |_| None).await;
    assert!(matches!(
        report.failed[..],
        [(_, RotationError::NoCredential)]
    ));
}

#[test]
fn volumes_share_the_cache_copy_of_a_key() {
    let cache = NodeCache::new(
        crate::access::VaultAccess::new(
            kvmount_vault::Connector::new(kvmount_vault::ConnectorConfig::default())
                .expect("connector"),
            None,
        ),
        config(),
    );
    let p = params(&[]);
    let first = cache.interned(ObjectKey::new(&p, &p.objects[0]));
    let second = cache.interned(ObjectKey::new(&p, &p.objects[0]));
    assert!(first.same_copy(&second), "one copy per entry");
    cache.retain("/pods/a", vec![first]);
    cache.retain("/pods/b", vec![second]);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.release("/pods/a"), 0, "b still uses it");
    assert_eq!(cache.release("/pods/b"), 1, "erased with the last volume");
    assert!(cache.is_empty());
}

#[test]
fn vaults_of_the_same_name_in_two_clouds_are_two_entries() {
    let public = params(&[]);
    let china = params(&[("cloudName", "AzureChinaCloud")]);
    let public_key = ObjectKey::new(&public, &public.objects[0]);
    let china_key = ObjectKey::new(&china, &china.objects[0]);
    assert_eq!(public_key.vault(), "demo");
    assert_eq!(public_key.identity.cloud, "");
    assert_eq!(china_key.identity.cloud, "vault.azure.cn");
    assert_ne!(public_key, china_key);
    assert_ne!(public_key.identity, china_key.identity);
    assert_eq!(china_key.identity, IdentityKey::of_mount(&china));
}
