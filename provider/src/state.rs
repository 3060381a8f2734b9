//! The daemon's state file: which targets are published, for which pod, with which
//! (non-secret) parameters and cache keys. Kept on tmpfs under `--state-dir`, written
//! atomically (temp file + rename). Never holds a secret value, token or client secret.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::ObjectKey;

const FILE_NAME: &str = "volumes.json";
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
    /// The cache entry.
    pub key: ObjectKey,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
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

/// The state directory and its file.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    /// Saves replace one temp file: never two at once.
    saving: std::sync::Arc<std::sync::Mutex<()>>,
}

impl StateStore {
    /// Opens (creating) the state directory, which must be memory-backed.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        kvmount_volume::memory_fs_kind(dir)
            .map_err(|_| StateError::NotMemoryBacked(dir.to_owned()))?;
        Ok(Self {
            dir: dir.to_owned(),
            saving: std::sync::Arc::default(),
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The records, or none when there is no file yet.
    pub fn load(&self) -> Result<Vec<VolumeRecord>, StateError> {
        let path = self.file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if state.version != FORMAT_VERSION {
            return Err(StateError::Corrupt {
                path,
                message: format!(
                    "format version {} (this daemon reads {FORMAT_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state.volumes)
    }

    /// Replaces the file with `records`, atomically.
    pub fn save(&self, records: &[VolumeRecord]) -> Result<(), StateError> {
        let _one_at_a_time = self
            .saving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = self.file();
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let body = serde_json::to_vec_pretty(&StateFile {
            version: FORMAT_VERSION,
            volumes: records.to_vec(),
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
}
