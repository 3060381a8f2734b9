//! The daemon's state: which targets are published, for which pod, with which (non-secret)
//! parameters and cache keys. One small file per volume under `--state-dir`/volumes (on
//! tmpfs), written atomically (temp file + rename), so a publish costs the same however many
//! volumes the node has. Never holds a secret value, token or client secret.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use kvmount_vault::params::{HistorySlot, ObjectEncoding, ObjectFormat, ObjectType};

use crate::cache::ObjectKey;
use crate::cache::key::{IdentityKey, ObjectId, ObjectKeyFields};

/// The file of releases before per-volume files.
const LEGACY_FILE_NAME: &str = "volumes.json";
/// The directory of per-volume files.
const VOLUMES_DIR: &str = "volumes";
const FORMAT_VERSION: u32 = 1;

/// One published volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// CSI volume id.
    pub volume_id: String,
    /// Where the tmpfs is mounted.
    pub target_path: String,
    /// Pod name, namespace, uid (from the volume context).
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod UID.
    pub pod_uid: String,
    /// SecretProviderClass name, if the volume named one.
    pub class: Option<String>,
    /// SHA-256 (hex) of the volume's non-secret attributes: a publish with other parameters
    /// for the same target is refused.
    pub attributes_digest: String,
    /// Group owning the files (fsGroup).
    pub fs_group: Option<u32>,
    /// The files of the volume and the cache entries they come from.
    pub files: Vec<VolumeFile>,
    /// Object versions last written, `id -> version`.
    pub versions: BTreeMap<String, String>,
    /// Unix seconds of the last successful write.
    pub refreshed_at: u64,
    /// The last refresh failure, cleared by the next success.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Memory the volume's files take on its tmpfs (each file rounded up to whole pages): the
    /// kernel charges it to the daemon's memory cgroup, which wrote them.
    #[serde(default)]
    pub tmpfs_bytes: u64,
}

impl VolumeRecord {
    /// The cache entries the volume uses.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = Vec::new();
        for file in &self.files {
            if !keys.contains(&file.key) {
                keys.push(file.key.clone());
            }
        }
        keys
    }
}

/// One file of a volume: where it is, its mode, and which entry fills it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFile {
    /// `ObjectVersion`-style id, e.g. `secret/db-password`.
    pub id: String,
    /// Path relative to the volume.
    pub path: String,
    /// File mode.
    pub mode: u32,
    /// The cache entry (stored as a [`StoredKey`]).
    #[serde(with = "stored_key")]
    pub key: ObjectKey,
}

/// A cache key as the state file stores it: the format of every release so far, kept apart
/// from [`ObjectKey`] so that a change of the cache is not a change of the format on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Vault name.
    pub vault: String,
    /// Key Vault DNS suffix of the class's cloud; empty for the daemon's own (and in files of
    /// releases before clouds were keys).
    #[serde(default)]
    pub cloud: String,
    /// Entra authority of the class's cloud; empty for the daemon's own.
    #[serde(default)]
    pub authority: String,
    /// Entra tenant.
    pub tenant: String,
    /// Entra client ID.
    pub client_id: String,
    /// `secret`, `key` or `cert`.
    pub object_type: String,
    /// Object name.
    pub name: String,
    /// Pinned version.
    pub version: Option<String>,
    /// `utf-8`, `base64` or `hex`.
    pub encoding: String,
    /// `pem` or `pfx`.
    pub format: String,
    /// `history=I/N` and `cert-key-files`, comma-separated; empty for a plain object.
    #[serde(default)]
    pub variant: String,
}

impl From<&ObjectKey> for StoredKey {
    fn from(key: &ObjectKey) -> Self {
        let (identity, object) = (&key.identity, &key.object);
        let mut variant: Vec<String> = Vec::new();
        if let Some(h) = object.history {
            variant.push(format!("history={}/{}", h.index, h.count));
        }
        if object.cert_key_files {
            variant.push("cert-key-files".to_owned());
        }
        Self {
            vault: identity.vault.clone(),
            cloud: identity.cloud.clone(),
            authority: identity.authority.clone(),
            tenant: identity.tenant.clone(),
            client_id: identity.client_id.clone(),
            object_type: object.object_type.as_str().to_owned(),
            name: object.name.clone(),
            version: object.version.clone(),
            encoding: match object.encoding {
                ObjectEncoding::Utf8 => "utf-8",
                ObjectEncoding::Base64 => "base64",
                ObjectEncoding::Hex => "hex",
            }
            .to_owned(),
            format: match object.format {
                ObjectFormat::Pem => "pem",
                ObjectFormat::Pfx => "pfx",
            }
            .to_owned(),
            variant: variant.join(","),
        }
    }
}

impl TryFrom<StoredKey> for ObjectKey {
    type Error = String;

    fn try_from(stored: StoredKey) -> Result<Self, String> {
        let object_type = match stored.object_type.as_str() {
            "secret" => ObjectType::Secret,
            "key" => ObjectType::Key,
            "cert" => ObjectType::Cert,
            other => return Err(format!("object_type {other:?}")),
        };
        let encoding = match stored.encoding.as_str() {
            "utf-8" => ObjectEncoding::Utf8,
            "base64" => ObjectEncoding::Base64,
            "hex" => ObjectEncoding::Hex,
            other => return Err(format!("encoding {other:?}")),
        };
        let format = match stored.format.as_str() {
            "pem" => ObjectFormat::Pem,
            "pfx" => ObjectFormat::Pfx,
            other => return Err(format!("format {other:?}")),
        };
        let mut history = None;
        let mut cert_key_files = false;
        for part in stored.variant.split(',').filter(|p| !p.is_empty()) {
            if part == "cert-key-files" {
                cert_key_files = true;
                continue;
            }
            let slot = part
                .strip_prefix("history=")
                .and_then(|h| h.split_once('/'))
                .and_then(|(index, count)| {
                    Some(HistorySlot {
                        index: index.parse().ok()?,
                        count: count.parse().ok()?,
                    })
                });
            history = Some(slot.ok_or_else(|| format!("variant {part:?}"))?);
        }
        Ok(ObjectKeyFields {
            identity: IdentityKey {
                vault: stored.vault,
                cloud: stored.cloud,
                authority: stored.authority,
                tenant: stored.tenant,
                client_id: stored.client_id,
            },
            object: ObjectId {
                object_type,
                name: stored.name,
                version: stored.version,
                encoding,
                format,
                history,
                cert_key_files,
            },
        }
        .into())
    }
}

/// `serde(with)` for [`VolumeFile::key`]: through [`StoredKey`].
mod stored_key {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ObjectKey, StoredKey};

    pub fn serialize<S: Serializer>(key: &ObjectKey, serializer: S) -> Result<S::Ok, S::Error> {
        StoredKey::from(key).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectKey, D::Error> {
        let stored = StoredKey::deserialize(deserializer)?;
        ObjectKey::try_from(stored)
            .map_err(|e| serde::de::Error::custom(format!("cache key: unknown {e}")))
    }
}

/// One volume's file.
#[derive(Debug, Serialize, Deserialize)]
struct VolumeFileV1 {
    version: u32,
    volume: VolumeRecord,
}

/// The single file of earlier releases, read once and then split into one file per volume.
#[derive(Debug, Serialize, Deserialize)]
struct LegacyStateFile {
    version: u32,
    volumes: Vec<VolumeRecord>,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory is not on tmpfs or ramfs.
    #[error(
        "--state-dir {0}: not on tmpfs or ramfs; choose a memory-backed directory such as /run/kvmount on a node or /dev/shm/kvmount"
    )]
    NotMemoryBacked(PathBuf),
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("state file {path}: not a kvmount state file ({message})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating) the state directory, which must be memory-backed.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let create = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| StateError::Io {
                path: path.to_owned(),
                source,
            })
        };
        create(dir)?;
        kvmount_volume::memory_fs_kind(dir)
            .map_err(|_| StateError::NotMemoryBacked(dir.to_owned()))?;
        create(&dir.join(VOLUMES_DIR))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The file of the volume at `target`: named by a digest, so any target path maps to one
    /// plain file name.
    fn file_of(&self, target: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, target.as_bytes());
        self.dir
            .join(VOLUMES_DIR)
            .join(format!("{}.json", hex::encode(digest.as_ref())))
    }

    /// The records, in no particular order. A file left by an earlier release is split into
    /// per-volume files first.
    pub fn load(&self) -> Result<Vec<VolumeRecord>, StateError> {
        self.migrate_legacy()?;
        let dir = self.dir.join(VOLUMES_DIR);
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue; // a temp file a crash left behind
            }
            let text = std::fs::read_to_string(&path).map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
            let file: VolumeFileV1 =
                serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            check_version(&path, file.version)?;
            records.push(file.volume);
        }
        Ok(records)
    }

    fn migrate_legacy(&self) -> Result<(), StateError> {
        let path = self.dir.join(LEGACY_FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let state: LegacyStateFile =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        check_version(&path, state.version)?;
        for record in &state.volumes {
            self.put(record)?;
        }
        std::fs::remove_file(&path).map_err(|source| StateError::Io { path, source })
    }

    /// Writes (replaces) the record of one volume, atomically.
    pub fn put(&self, record: &VolumeRecord) -> Result<(), StateError> {
        let path = self.file_of(&record.target_path);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&VolumeFileV1 {
            version: FORMAT_VERSION,
            volume: record.clone(),
        })
        .map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let io = |source| StateError::Io {
            path: tmp.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&body).map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Io { path, source })
    }

    /// Forgets the volume at `target` (nothing to do when it has no record).
    pub fn remove(&self, target: &str) -> Result<(), StateError> {
        let path = self.file_of(target);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

fn check_version(path: &Path, version: u32) -> Result<(), StateError> {
    if version == FORMAT_VERSION {
        return Ok(());
    }
    Err(StateError::Corrupt {
        path: path.to_owned(),
        message: format!("format version {version} (this daemon reads {FORMAT_VERSION})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shm_dir() -> tempfile::TempDir {
        let base =
            std::env::var_os("KVMOUNT_TEST_SHM").map_or_else(|| "/dev/shm".into(), PathBuf::from);
        tempfile::Builder::new()
            .prefix("kvmount-state-test.")
            .tempdir_in(base)
            .expect("tempdir on tmpfs")
    }

    fn record(target: &str) -> VolumeRecord {
        VolumeRecord {
            volume_id: format!("vol-{target}"),
            target_path: target.to_owned(),
            pod_name: "pod".into(),
            pod_namespace: "ns".into(),
            pod_uid: "uid".into(),
            class: None,
            attributes_digest: "digest".into(),
            fs_group: None,
            files: Vec::new(),
            versions: BTreeMap::from([("secret/a".to_owned(), "v1".to_owned())]),
            refreshed_at: 1,
            last_error: None,
            tmpfs_bytes: 4096,
        }
    }

    fn sorted_targets(store: &StateStore) -> Vec<String> {
        let mut targets: Vec<String> = store
            .load()
            .expect("load")
            .into_iter()
            .map(|r| r.target_path)
            .collect();
        targets.sort();
        targets
    }

    #[test]
    fn one_file_per_volume_replaced_and_removed() {
        let dir = shm_dir();
        let store = StateStore::open(dir.path()).expect("open");
        assert!(store.load().expect("empty").is_empty());
        store.put(&record("/pods/a/vol")).expect("put a");
        store.put(&record("/pods/b/vol")).expect("put b");
        let mut changed = record("/pods/a/vol");
        changed.refreshed_at = 2;
        store.put(&changed).expect("replace a");
        assert_eq!(sorted_targets(&store), ["/pods/a/vol", "/pods/b/vol"]);
        let a = store.load().expect("load");
        assert_eq!(
            a.iter()
                .find(|r| r.target_path == "/pods/a/vol")
                .map(|r| r.refreshed_at),
            Some(2)
        );
        store.remove("/pods/a/vol").expect("remove a");
        store.remove("/pods/a/vol").expect("removing twice is fine");
        assert_eq!(sorted_targets(&store), ["/pods/b/vol"]);
        // A temp file a crash left behind is not a record.
        std::fs::write(dir.path().join(VOLUMES_DIR).join("x.tmp"), b"{").expect("tmp");
        assert_eq!(sorted_targets(&store), ["/pods/b/vol"]);
    }

    #[test]
    fn the_single_file_of_earlier_releases_is_split() {
        let dir = shm_dir();
        let legacy = LegacyStateFile {
            version: FORMAT_VERSION,
            volumes: vec![record("/pods/a/vol"), record("/pods/b/vol")],
        };
        std::fs::write(
            dir.path().join(LEGACY_FILE_NAME),
            serde_json::to_vec(&legacy).expect("json"),
        )
        .expect("write legacy");
        let store = StateStore::open(dir.path()).expect("open");
        assert_eq!(sorted_targets(&store), ["/pods/a/vol", "/pods/b/vol"]);
        assert!(!dir.path().join(LEGACY_FILE_NAME).exists());
        assert_eq!(sorted_targets(&store), ["/pods/a/vol", "/pods/b/vol"]);
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = shm_dir();
        let store = StateStore::open(dir.path()).expect("open");
        store.put(&record("/pods/a/vol")).expect("put");
        let path = store.file_of("/pods/a/vol");
        std::fs::write(&path, b"{\"version\": 1}").expect("corrupt");
        match store.load() {
            Err(StateError::Corrupt { path: named, .. }) => assert_eq!(named, path),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let mut future = serde_json::to_value(VolumeFileV1 {
            version: FORMAT_VERSION,
            volume: record("/pods/a/vol"),
        })
        .expect("json");
        future["version"] = 2.into();
        std::fs::write(&path, future.to_string()).expect("future");
        let err = store.load().expect_err("newer format");
        assert!(err.to_string().contains("format version 2"), "{err}");
    }

    /// A volume file as the release before typed cache keys wrote it (one key without the
    /// cloud fields, as releases before clouds wrote them).
    const OLD_FILE: &str = r#"{
  "version": 1,
  "volume": {
    "volume_id": "vol", "target_path": "/pods/a/vol", "pod_name": "pod",
    "pod_namespace": "ns", "pod_uid": "uid", "class": "spc", "attributes_digest": "d",
    "fs_group": 1000,
    "files": [
      {"id": "secret/db", "path": "db", "mode": 420, "key": {
        "vault": "demo", "tenant": "t", "client_id": "app", "object_type": "secret",
        "name": "db", "version": null, "encoding": "utf-8", "format": "pem"}},
      {"id": "secret/tls", "path": "tls/1", "mode": 420, "key": {
        "vault": "demo", "cloud": "vault.azure.cn", "authority": "https://login.chinacloudapi.cn",
        "tenant": "t", "client_id": "app", "object_type": "secret", "name": "tls",
        "version": "v7", "encoding": "base64", "format": "pfx",
        "variant": "history=1/3,cert-key-files"}}
    ],
    "versions": {"secret/db": "v1"}, "refreshed_at": 5
  }
}"#;

    #[test]
    fn a_state_file_of_an_earlier_release_still_recovers() {
        let dir = shm_dir();
        let store = StateStore::open(dir.path()).expect("open");
        std::fs::write(store.file_of("/pods/a/vol"), OLD_FILE).expect("old file");
        let records = store.load().expect("old file reads");
        let keys = records[0].keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].identity.cloud, "");
        assert_eq!(keys[0].object.object_type, ObjectType::Secret);
        assert_eq!(keys[0].object.history, None);
        let tls = &keys[1].object;
        assert_eq!(keys[1].identity.authority, "https://login.chinacloudapi.cn");
        assert_eq!(
            (tls.encoding, tls.format, tls.version.as_deref()),
            (ObjectEncoding::Base64, ObjectFormat::Pfx, Some("v7"))
        );
        assert_eq!(tls.history, Some(HistorySlot { index: 1, count: 3 }));
        assert!(tls.cert_key_files);
        // Written again, the keys read back the same, in the same stored form.
        store.put(&records[0]).expect("put");
        let again = store.load().expect("load");
        assert_eq!(again, records);
        let old: serde_json::Value = serde_json::from_str(OLD_FILE).expect("json");
        let new: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.file_of("/pods/a/vol")).expect("read"))
                .expect("json");
        assert_eq!(
            new["volume"]["files"][1]["key"],
            old["volume"]["files"][1]["key"]
        );
    }

    #[test]
    fn an_unknown_stored_key_is_corrupt() {
        let dir = shm_dir();
        let store = StateStore::open(dir.path()).expect("open");
        let bad = OLD_FILE.replace(
            r#""object_type": "secret",
        "name": "db""#,
            r#""object_type": "blob",
        "name": "db""#,
        );
        assert_ne!(bad, OLD_FILE);
        std::fs::write(store.file_of("/pods/a/vol"), bad).expect("bad file");
        let err = store.load().expect_err("unknown type");
        assert!(err.to_string().contains("object_type \"blob\""), "{err}");
    }

    #[test]
    fn a_disk_directory_is_refused() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("disk dir");
        let err = StateStore::open(dir.path()).expect_err("not tmpfs");
        assert!(matches!(err, StateError::NotMemoryBacked(_)), "{err}");
        assert!(
            !dir.path().join(VOLUMES_DIR).exists(),
            "nothing created on disk"
        );
    }
}
