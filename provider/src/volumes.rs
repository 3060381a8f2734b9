//! Published volumes (the CSI node plugin's domain): a fresh tmpfs per pod volume, files
//! written with the atomic writer from the node cache, fsGroup ownership, idempotent publish
//! and unpublish, and recovery after a restart. Plain Rust types; `grpc/node.rs` wraps it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvmount_vault::params::{POD_NAME, POD_NAMESPACE, POD_UID, TOKENS_ATTRIBUTE};
use kvmount_vault::{FetchedObject, ObjectError, ParamError, RenderedObject};
use kvmount_volume::{AtomicWriter, FileSpec, Ownership, PinnedTarget, TmpfsOptions};

use crate::blocking::Late;
use zeroize::Zeroize;

use crate::cache::{FetchError, NodeCache, ObjectKey, RotationError};
use crate::state::{StateError, StateStore, VolumeFile, VolumeRecord};

/// Volume attribute naming the group that owns the files (fsGroup style).
pub const FS_GROUP_ATTRIBUTE: &str = "fsGroup";
/// Volume attribute naming a SecretProviderClass in the pod's namespace.
pub const CLASS_ATTRIBUTE: &str = "secretProviderClass";
/// Class providers kvmount serves (`spec.provider`).
pub const ACCEPTED_PROVIDERS: [&str; 2] = ["kvmount", "azure"];

/// A SecretProviderClass as the lookup returns it.
#[derive(Debug, Clone)]
pub struct ClassParameters {
    /// `spec.provider`.
    pub provider: String,
    /// `spec.parameters`.
    pub parameters: BTreeMap<String, String>,
}

/// A class lookup failure, already classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClassError {
    /// Classification, as the Kubernetes lookup made it: a class the cluster cannot serve as
    /// it is (a malformed object, a refused request, a bad client configuration) is
    /// FAILED_PRECONDITION, not a caller's bad argument.
    pub kind: ClassErrorKind,
    /// For the user.
    pub message: String,
}

/// How a class lookup failed (the Kubernetes lookup's own classification).
pub use kvmount_k8s::ErrorKind as ClassErrorKind;

/// Where SecretProviderClasses come from (the Kubernetes API in production).
#[tonic::async_trait]
pub trait ClassLookup: Send + Sync {
    /// The class `name` in `namespace`.
    async fn get(&self, namespace: &str, name: &str) -> Result<ClassParameters, ClassError>;
}

/// A NodePublishVolume, as plain data. Secret-bearing maps are zeroed on drop.
pub struct PublishRequest {
    /// CSI volume id.
    pub volume_id: String,
    /// Where to mount.
    pub target_path: String,
    /// Must be true.
    pub readonly: bool,
    /// The capability: `None` when absent; `Some(true)` for a mount volume, `Some(false)` for block.
    pub mount_capability: Option<bool>,
    /// `volume_capability.mount.volume_mount_group`, if kubelet sent one.
    pub mount_group: Option<String>,
    /// The volume context (attributes, pod info, tokens).
    pub context: HashMap<String, String>,
    /// Node-publish secrets.
    pub secrets: HashMap<String, String>,
}

impl Drop for PublishRequest {
    fn drop(&mut self) {
        for value in self.context.values_mut().chain(self.secrets.values_mut()) {
            value.zeroize();
        }
    }
}

/// Why a node volume operation (publish, unpublish) failed; the file-system errors inside it are
/// [`kvmount_volume::VolumeError`].
#[derive(Debug, thiserror::Error)]
pub enum NodeVolumeError {
    /// A required field is missing or wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// A class parameter is wrong.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The target is published with other parameters.
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on this target is running.
    #[error("an operation on {0} is already running; retry")]
    Aborted(String),
    /// The SecretProviderClass lookup failed.
    #[error("secretProviderClass: {0}")]
    Class(#[from] ClassError),
    /// Key Vault or Entra failed.
    #[error(transparent)]
    Fetch(#[from] ObjectError),
    /// Mounting or writing failed.
    #[error(transparent)]
    Volume(#[from] kvmount_volume::VolumeError),
    /// The state file could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node's volumes would take more memory than the daemon's tmpfs budget.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A volume's file-system work did not finish in time (it goes on in the background).
    #[error("{0}")]
    Deadline(String),
    /// A volume's file-system work ended without an answer (a bug).
    #[error("{0}")]
    Internal(String),
}

impl From<FetchError> for NodeVolumeError {
    fn from(err: FetchError) -> Self {
        match err {
            FetchError::Object(object) => Self::Fetch(object),
            FetchError::Deadline(_) => Self::Deadline(err.to_string()),
        }
    }
}

/// Tuning of published volumes.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// tmpfs size limit per volume, bytes.
    pub tmpfs_bytes: u64,
    /// The files classes may name as `cloudEnvFileName`.
    pub cloud_files: Arc<crate::cloud_files::CloudFiles>,
    /// Most memory all published volumes' files may take together (`--tmpfs-budget`): the
    /// kernel charges tmpfs pages to the daemon's memory cgroup, which writes them, so past
    /// its limit the daemon itself would be killed. `None`: no budget.
    pub tmpfs_budget: Option<u64>,
    /// How long reading a volume's objects may take (`--mount-timeout-seconds`, the provider
    /// API's Mount deadline too).
    pub fetch_deadline: Duration,
}

/// Page size the tmpfs charges in.
const PAGE: u64 = 4096;

/// Memory a file of `len` bytes takes on a tmpfs: whole pages.
fn pages(len: usize) -> u64 {
    (len as u64).div_ceil(PAGE).max(1) * PAGE
}

/// Memory files of these lengths take on a tmpfs.
fn tmpfs_charge(lengths: impl IntoIterator<Item = usize>) -> u64 {
    lengths.into_iter().map(pages).sum()
}

/// The published volumes of this node.
pub struct Volumes {
    cache: Arc<NodeCache>,
    classes: Option<Arc<dyn ClassLookup>>,
    state: StateStore,
    config: VolumeConfig,
    records: Mutex<BTreeMap<String, VolumeRecord>>,
    busy: Arc<Mutex<HashSet<String>>>,
    /// Writes of the state: one at a time, so the file of a volume follows its record.
    persisting: Mutex<()>,
}

/// Marks a target busy for the lifetime of the guard.
struct Busy {
    set: Arc<Mutex<HashSet<String>>>,
    target: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.target);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a target path: absolute, no `..`, not `/`.
fn validate_target(target: &str) -> Result<PathBuf, NodeVolumeError> {
    let path = Path::new(target);
    if target.is_empty() {
        return Err(NodeVolumeError::InvalidArgument(
            "target_path is required".into(),
        ));
    }
    if !path.is_absolute()
        || path.components().any(|c| matches!(c, Component::ParentDir))
        || path.parent().is_none()
    {
        return Err(NodeVolumeError::InvalidArgument(format!(
            "target_path {target:?}: must be an absolute path without '..' elements"
        )));
    }
    Ok(path.to_owned())
}

/// SHA-256 (hex) of the attributes that define the volume's content: everything but the
/// tokens (kubelet renews them) and the pod's own identity fields.
fn attributes_digest(attributes: &HashMap<String, String>, fs_group: Option<u32>) -> String {
    let mut keys: Vec<&String> = attributes
        .keys()
        .filter(|k| k.as_str() != TOKENS_ATTRIBUTE)
        .collect();
    keys.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for key in keys {
        ctx.update(key.as_bytes());
        ctx.update(&[0]);
        ctx.update(attributes[key].as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(format!("{fs_group:?}").as_bytes());
    hex::encode(ctx.finish().as_ref())
}

impl Volumes {
    /// Opens the state, and recovers what a previous run left (see [`Volumes::recover`]).
    pub fn new(
        cache: Arc<NodeCache>,
        classes: Option<Arc<dyn ClassLookup>>,
        state: StateStore,
        config: VolumeConfig,
    ) -> Self {
        Self {
            cache,
            classes,
            state,
            config,
            records: Mutex::default(),
            busy: Arc::default(),
            persisting: Mutex::default(),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VolumeRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the state of the volume at `target` as its record is now (removes it when
    /// there is none).
    fn persist(&self, target: &str) -> Result<(), StateError> {
        let _one_at_a_time = self
            .persisting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let record = self.records().get(target).cloned();
        match record {
            Some(record) => self.state.put(&record),
            None => self.state.remove(target),
        }
    }

    fn claim(&self, target: &str) -> Result<Busy, NodeVolumeError> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy.insert(target.to_owned()) {
            return Err(NodeVolumeError::Aborted(target.to_owned()));
        }
        Ok(Busy {
            set: Arc::clone(&self.busy),
            target: target.to_owned(),
        })
    }

    /// Re-adopts the volumes a previous run published: targets that are still tmpfs mounts
    /// keep their files and get their cache references back (the entries fill again on the
    /// next publish, which brings fresh credentials); targets that are gone or no longer
    /// mounted are cleaned up. Returns (adopted, cleaned).
    pub fn recover(&self) -> Result<(usize, usize), NodeVolumeError> {
        let mut adopted = 0;
        let mut cleaned = 0;
        for record in self.state.load()? {
            // Through the parent held open, like every other use of a target.
            let pinned = validate_target(&record.target_path)
                .ok()
                .and_then(|t| PinnedTarget::open(&t).ok().flatten());
            let target = pinned.as_ref().map(|p| p.path().to_owned());
            // A mount whose files are not all there was being torn down (or first written)
            // when the daemon died: it is removed, and kubelet's retry redoes the call.
            let live = target.as_ref().is_some_and(|target| {
                kvmount_volume::is_mount_point(target).unwrap_or(false)
                    && kvmount_volume::memory_fs_kind(target).is_ok()
                    && record.files.iter().all(|f| target.join(&f.path).exists())
            });
            if live {
                self.cache.retain(&record.target_path, record.keys());
                tracing::info!(target = %record.target_path, pod = %record.pod_name, namespace = %record.pod_namespace, "re-adopted a published volume");
                self.records().insert(record.target_path.clone(), record);
                adopted += 1;
            } else {
                if let (Some(pinned), Some(target)) = (&pinned, &target)
                    && let Err(err) = kvmount_volume::teardown(target)
                {
                    let err = pinned.explain(err);
                    tracing::warn!(target = %record.target_path, error = %err, "could not clean up a stale target");
                }
                tracing::info!(target = %record.target_path, pod = %record.pod_name, "dropped a stale volume");
                self.persist(&record.target_path)?;
                cleaned += 1;
            }
        }
        Ok((adopted, cleaned))
    }

    /// NodePublishVolume, in named steps: check the request, claim the target, read every
    /// object (vault -> cache), write the volume, record it.
    pub async fn publish(&self, request: PublishRequest) -> Result<(), NodeVolumeError> {
        let started = std::time::Instant::now();
        let (target, fs_group) = check_publish(&request)?;
        let busy = self.claim(&request.target_path)?;
        let digest = attributes_digest(&request.context, fs_group);
        self.refuse_other_parameters(&request, &digest)?;
        let (objects, keys, class) = self.read_objects(&request).await?;
        let charge = tmpfs_charge(
            objects
                .iter()
                .flat_map(|o| o.files.iter())
                .map(|f| f.contents.expose().len()),
        );
        self.check_budget(&request.target_path, charge)?;
        let (files, versions) = volume_files(&objects, &keys);
        let tmpfs_bytes = self.config.tmpfs_bytes;
        let (outcome, busy) = off_thread("publish", move || {
            let written = write_volume(&target, &objects, fs_group, tmpfs_bytes);
            drop(objects);
            (written, busy)
        })
        .await?;
        let outcome = outcome?;
        self.cache.retain(&request.target_path, keys);
        let record = VolumeRecord {
            volume_id: request.volume_id.clone(),
            target_path: request.target_path.clone(),
            pod_name: context_value(&request, POD_NAME),
            pod_namespace: context_value(&request, POD_NAMESPACE),
            pod_uid: context_value(&request, POD_UID),
            class,
            attributes_digest: digest,
            fs_group,
            versions,
            files,
            refreshed_at: now_secs(),
            last_error: None,
            tmpfs_bytes: charge,
        };
        tracing::info!(
            target = %request.target_path,
            pod = %record.pod_name,
            namespace = %record.pod_namespace,
            class = record.class.as_deref().unwrap_or(""),
            changed = outcome.changed,
            files = outcome.files_written,
            // The daemon's share of the kubelet's volume SetUp (bench/podstart.py reads it).
            took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "published"
        );
        self.records().insert(request.target_path.clone(), record);
        self.persist(&request.target_path)?;
        drop(busy);
        crate::hardening::scrub_stack();
        Ok(())
    }

    /// Refuses a publish of a target already published with another volume or other
    /// parameters (a republish with the same ones is idempotent).
    fn refuse_other_parameters(
        &self,
        request: &PublishRequest,
        digest: &str,
    ) -> Result<(), NodeVolumeError> {
        let records = self.records();
        match records.get(&request.target_path) {
            Some(existing)
                if existing.volume_id != request.volume_id
                    || existing.attributes_digest != digest =>
            {
                Err(NodeVolumeError::AlreadyExists(format!(
                    "target_path {}: already published for volume {} with other parameters",
                    request.target_path, existing.volume_id
                )))
            }
            _ => Ok(()),
        }
    }

    /// Every object of the volume, rendered, with the cache entries they came from and the
    /// class named (if any): the class is looked up, the parameters parsed, and the node cache
    /// reads within the same deadline as a provider-API Mount.
    async fn read_objects(
        &self,
        request: &PublishRequest,
    ) -> Result<(Vec<RenderedObject>, Vec<ObjectKey>, Option<String>), NodeVolumeError> {
        let (attributes, class) = self.attributes(request).await?;
        let params = crate::provider_api::parse_mount_params(
            &attributes,
            &request.secrets,
            0o644,
            &self.config.cloud_files,
        )
        .await?;
        let (objects, keys) = self
            .cache
            .fetch_within(&params, self.config.fetch_deadline)
            .await?;
        Ok((objects, keys, class))
    }

    /// The parameter map: the class's parameters (when the volume names one), overwritten
    /// key by key by the volume context, as the upstream driver merges them.
    async fn attributes(
        &self,
        request: &PublishRequest,
    ) -> Result<(HashMap<String, String>, Option<String>), NodeVolumeError> {
        let mut attributes = HashMap::new();
        let class = request
            .context
            .get(CLASS_ATTRIBUTE)
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        if let Some(name) = &class {
            let namespace = request
                .context
                .get(POD_NAMESPACE)
                .map(String::as_str)
                .unwrap_or("");
            if namespace.is_empty() {
                return Err(NodeVolumeError::InvalidArgument(format!(
                    "{POD_NAMESPACE} is required to look up secretProviderClass {name:?} (set podInfoOnMount: true on the CSIDriver)"
                )));
            }
            let Some(classes) = &self.classes else {
                return Err(NodeVolumeError::Class(ClassError {
                    kind: ClassErrorKind::Unavailable,
                    message: format!(
                        "cannot look up {name:?}: the daemon has no Kubernetes API access (run in a cluster or pass --kubeconfig)"
                    ),
                }));
            };
            let found = classes.get(namespace, name).await?;
            if !ACCEPTED_PROVIDERS
                .iter()
                .any(|p| found.provider.eq_ignore_ascii_case(p))
            {
                return Err(NodeVolumeError::Class(ClassError {
                    kind: ClassErrorKind::InvalidArgument,
                    message: format!(
                        "{namespace}/{name}: spec.provider is {:?}; accepted: kvmount or azure",
                        found.provider
                    ),
                }));
            }
            attributes.extend(found.parameters);
        }
        for (key, value) in &request.context {
            attributes.insert(key.clone(), value.clone());
        }
        Ok((attributes, class))
    }

    /// NodeUnpublishVolume: remove the files, unmount, remove the directory; OK for a target
    /// that is unknown, already gone, or left from before a restart.
    pub async fn unpublish(
        &self,
        volume_id: &str,
        target_path: &str,
    ) -> Result<(), NodeVolumeError> {
        if volume_id.is_empty() {
            return Err(NodeVolumeError::InvalidArgument(
                "volume_id is required".into(),
            ));
        }
        let target = validate_target(target_path)?;
        let busy = self.claim(target_path)?;
        // A missing parent: nothing was ever there, or kubelet removed it. A symlink at the
        // parent is refused (FAILED_PRECONDITION) rather than followed into someone's files.
        let (torn_down, busy) =
            off_thread("unpublish", move || (teardown_volume(&target), busy)).await?;
        // The daemon's own copies go whatever happened on the node: a teardown that failed part
        // way keeps the record (and the state file), so kubelet's retry finishes it.
        let erased = self.cache.release(target_path);
        if let Err(err) = torn_down {
            tracing::warn!(target = %target_path, erased, error = %err, "unpublish: the volume is not fully removed yet; kubelet retries");
            return Err(err);
        }
        let known = self.records().remove(target_path);
        if let Some(record) = &known {
            tracing::info!(target = %target_path, pod = %record.pod_name, namespace = %record.pod_namespace, erased, "unpublished");
        }
        self.persist(target_path)?;
        drop(busy);
        crate::hardening::scrub_stack();
        Ok(())
    }

    /// Refuses a volume whose files (`charge` bytes of tmpfs) would take the node's volumes
    /// past the daemon's budget; a republish counts its new size instead of its old one.
    fn check_budget(&self, target_path: &str, charge: u64) -> Result<(), NodeVolumeError> {
        let Some(budget) = self.config.tmpfs_budget else {
            return Ok(());
        };
        let others: u64 = self
            .records()
            .values()
            .filter(|r| r.target_path != target_path)
            .map(|r| r.tmpfs_bytes)
            .sum();
        if others.saturating_add(charge) > budget {
            return Err(NodeVolumeError::ResourceExhausted(format!(
                "the volume's files take {charge} bytes of memory and the node's published volumes {others}; together over the daemon's --tmpfs-budget of {budget} bytes (tmpfs pages count against the daemon's memory limit)"
            )));
        }
        Ok(())
    }

    /// The published volumes.
    pub fn list(&self) -> Vec<VolumeRecord> {
        self.records().values().cloned().collect()
    }

    /// After a rotation pass: rewrites (atomically) every volume whose files are older than the
    /// cache, and records failures on the volumes whose entries could not be read. A volume is
    /// compared with the cache, not with the pass's list of changes, so one that was busy
    /// (publish or unpublish running) or failed to rewrite is caught by a later pass. A volume
    /// whose rewrite fails keeps its last content. Returns (rewritten, failed, still pending).
    pub async fn apply_rotation(
        &self,
        failed: &[(ObjectKey, RotationError)],
    ) -> (usize, usize, usize) {
        let records: Vec<VolumeRecord> = self.records().values().cloned().collect();
        let (mut rewritten, mut failures, mut pending) = (0, 0, 0);
        for record in records {
            let keys = record.keys();
            let error = failed
                .iter()
                .find(|(k, _)| keys.contains(k))
                .map(|(k, e)| format!("{}: {e}", k.id()));
            let stale = record.files.iter().any(|file| {
                self.cache
                    .cached_version(&file.key)
                    .is_some_and(|v| record.versions.get(&file.id) != Some(&v))
            });
            if !stale {
                if error.is_some() && error != record.last_error {
                    self.update_record(&record.target_path, |r| r.last_error = error.clone());
                    failures += 1;
                }
                continue;
            }
            let Ok(busy) = self.claim(&record.target_path) else {
                pending += 1;
                continue;
            };
            match self.rewrite(&record, busy).await {
                Ok((versions, charge)) => {
                    rewritten += 1;
                    tracing::info!(target = %record.target_path, pod = %record.pod_name, namespace = %record.pod_namespace, "rotated volume rewritten");
                    self.update_record(&record.target_path, |r| {
                        r.tmpfs_bytes = charge;
                        r.versions = versions.clone();
                        r.refreshed_at = now_secs();
                        r.last_error = error.clone();
                    });
                }
                Err(err) => {
                    failures += 1;
                    pending += 1;
                    tracing::warn!(target = %record.target_path, error = %err, "rewriting a rotated volume failed; it keeps its last content");
                    self.update_record(&record.target_path, |r| {
                        r.last_error = Some(err.to_string())
                    });
                }
            }
        }
        crate::hardening::scrub_stack();
        (rewritten, failures, pending)
    }

    /// Changes the record of `target` (if it still has one) and writes its state.
    fn update_record(&self, target: &str, change: impl FnOnce(&mut VolumeRecord)) {
        let Some(()) = self.records().get_mut(target).map(change) else {
            return;
        };
        if let Err(err) = self.persist(target) {
            tracing::warn!(target = %target, error = %err, "saving the volume's state failed");
        }
    }

    /// Writes a volume's whole file set from the cache, in one atomic switch.
    async fn rewrite(
        &self,
        record: &VolumeRecord,
        busy: Busy,
    ) -> Result<(BTreeMap<String, String>, u64), NodeVolumeError> {
        let mut values = Vec::with_capacity(record.files.len());
        let mut versions = BTreeMap::new();
        for file in &record.files {
            let Some(value) = self.cache.peek(&file.key).await else {
                return Err(NodeVolumeError::InvalidArgument(format!(
                    "{}: not cached",
                    file.id
                )));
            };
            versions.insert(file.id.clone(), value.version.clone());
            values.push(value);
        }
        // A rotated value can be larger: the budget holds for rewrites too.
        let charge = tmpfs_charge(values.iter().map(|v| v.contents.expose().len()));
        self.check_budget(&record.target_path, charge)?;
        let record = record.clone();
        off_thread("rotation", move || {
            let rewritten = rewrite_volume(&record, &values);
            drop(values);
            drop(busy);
            rewritten
        })
        .await??;
        Ok((versions, charge))
    }
}

/// How long a volume's file-system work (mount, write, teardown) may take before the caller is
/// answered. tmpfs work takes milliseconds; the bound is for what cannot be foreseen.
const FS_DEADLINE: Duration = Duration::from_secs(20);

/// Runs a volume's file-system work on a blocking thread: nothing one volume's file system does
/// (nor anything a pod does to it) holds up the runtime, so Probe and other pods' calls go on.
/// Past [`FS_DEADLINE`] the caller gets DEADLINE_EXCEEDED while the work finishes on its
/// thread (holding the target's claim, when it was handed one, so a retry waits for it). The
/// blocking thread's stack is not scrubbed: the writer passes file bytes from the heap to the
/// kernel and compares them in `Zeroizing` heap buffers, so none land on it (a scrub there
/// cost 0.2 ms per warm republish, measured with socket-bench).
async fn off_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeVolumeError> {
    crate::blocking::within(FS_DEADLINE, work)
        .await
        .map_err(|late| match late {
            Late::Panicked => {
                NodeVolumeError::Internal(format!("{what}: the file-system work failed"))
            }
            Late::TimedOut => NodeVolumeError::Deadline(format!(
                "{what}: the file-system work did not finish within {FS_DEADLINE:?}; it goes on, retry later"
            )),
        })
}

/// The node-side work of a publish: mounts a tmpfs at `target` (when it is not one yet) and
/// writes `objects`' files into it atomically. Every step goes through the target's parent
/// held open: a symlink swapped in at the parent (or refused there) cannot send the mkdir, the
/// mount, the files or a cleanup anywhere else. A failed first write leaves nothing mounted.
fn write_volume(
    target: &Path,
    objects: &[RenderedObject],
    fs_group: Option<u32>,
    tmpfs_bytes: u64,
) -> Result<kvmount_volume::WriteOutcome, NodeVolumeError> {
    let Some(pinned) = PinnedTarget::open(target)? else {
        return Err(NodeVolumeError::InvalidArgument(format!(
            "target_path {}: its parent directory does not exist (kubelet creates it)",
            target.display()
        )));
    };
    let path = pinned.path();
    let explain = |e| NodeVolumeError::from(pinned.explain(e));
    let mounted_here = !kvmount_volume::is_mount_point(path).map_err(explain)?;
    if mounted_here {
        if let Err(e) = std::fs::create_dir(path)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(NodeVolumeError::InvalidArgument(format!(
                "target_path {}: cannot create: {e}",
                target.display()
            )));
        }
        kvmount_volume::mount_tmpfs(
            path,
            &TmpfsOptions {
                size_bytes: tmpfs_bytes,
                mode: 0o750,
                uid: None,
                gid: fs_group,
            },
        )
        .map_err(explain)?;
    }
    let specs: Vec<FileSpec<'_>> = objects
        .iter()
        .flat_map(|o| o.files.iter())
        .map(|f| FileSpec {
            path: &f.path,
            mode: f.mode,
            contents: f.contents.expose(),
        })
        .collect();
    let owner = Ownership {
        uid: None,
        gid: fs_group,
    };
    let written = AtomicWriter::open(path).and_then(|writer| writer.write(&specs, &owner));
    written.map_err(|err| {
        if mounted_here {
            let _ = kvmount_volume::teardown(path);
        }
        explain(err)
    })
}

/// The node-side work of an unpublish: the volume's files, its tmpfs and its directory go,
/// through its parent held open; nothing to do when the parent is gone.
fn teardown_volume(target: &Path) -> Result<(), NodeVolumeError> {
    if let Some(pinned) = PinnedTarget::open(target)? {
        kvmount_volume::teardown(pinned.path()).map_err(|e| pinned.explain(e))?;
    }
    Ok(())
}

/// The node-side work of a rotation: writes `values` (one per file of `record`, in order) into
/// the volume, which must still be a mount, through its parent held open.
fn rewrite_volume(record: &VolumeRecord, values: &[FetchedObject]) -> Result<(), NodeVolumeError> {
    let no_longer =
        || NodeVolumeError::InvalidArgument(format!("{}: no longer mounted", record.target_path));
    let Some(pinned) = PinnedTarget::open(Path::new(&record.target_path))? else {
        return Err(no_longer());
    };
    let explain = |e| NodeVolumeError::from(pinned.explain(e));
    if !kvmount_volume::is_mount_point(pinned.path()).map_err(explain)? {
        return Err(no_longer());
    }
    let writer = AtomicWriter::open(pinned.path()).map_err(explain)?;
    let specs: Vec<FileSpec<'_>> = record
        .files
        .iter()
        .zip(values)
        .map(|(file, value)| FileSpec {
            path: &file.path,
            mode: file.mode,
            contents: value.contents.expose(),
        })
        .collect();
    let owner = Ownership {
        uid: None,
        gid: record.fs_group,
    };
    writer.write(&specs, &owner).map_err(explain)?;
    Ok(())
}

/// The request checks that need no I/O: ids, target, capability, read-only, group. Returns
/// the target path and the files' group.
fn check_publish(request: &PublishRequest) -> Result<(PathBuf, Option<u32>), NodeVolumeError> {
    if request.volume_id.is_empty() {
        return Err(NodeVolumeError::InvalidArgument(
            "volume_id is required".into(),
        ));
    }
    let target = validate_target(&request.target_path)?;
    match request.mount_capability {
        None => {
            return Err(NodeVolumeError::InvalidArgument(
                "volume_capability is required".into(),
            ));
        }
        Some(false) => {
            return Err(NodeVolumeError::InvalidArgument(
                "volume_capability: block volumes are not supported; accepted: a mount volume"
                    .into(),
            ));
        }
        Some(true) => {}
    }
    if !request.readonly {
        return Err(NodeVolumeError::InvalidArgument(
            "readonly must be true: secrets volumes are read-only (set readOnly: true on the pod's csi volume)".into(),
        ));
    }
    Ok((target, fs_group(request)?))
}

/// The volume's files (each with the entry that fills it) and its object versions.
fn volume_files(
    objects: &[RenderedObject],
    keys: &[ObjectKey],
) -> (Vec<VolumeFile>, BTreeMap<String, String>) {
    let mut files = Vec::new();
    let mut versions = BTreeMap::new();
    for (object, key) in objects.iter().zip(keys) {
        versions.insert(object.id.clone(), object.version.clone());
        for file in &object.files {
            files.push(VolumeFile {
                id: object.id.clone(),
                path: file.path.clone(),
                mode: file.mode,
                key: key.clone(),
            });
        }
    }
    (files, versions)
}

/// A volume-context value, empty when absent.
fn context_value(request: &PublishRequest, name: &str) -> String {
    request.context.get(name).cloned().unwrap_or_default()
}

/// The files' group: the volume's `fsGroup` attribute when set (an override), else
/// `volume_capability.mount.volume_mount_group`, which the kubelet fills with the pod's
/// `securityContext.fsGroup` because kvmount advertises VOLUME_MOUNT_GROUP.
fn fs_group(request: &PublishRequest) -> Result<Option<u32>, NodeVolumeError> {
    let (field, text) = match (
        request.context.get(FS_GROUP_ATTRIBUTE),
        &request.mount_group,
    ) {
        (Some(g), _) if !g.trim().is_empty() => (FS_GROUP_ATTRIBUTE, g.as_str()),
        (_, Some(g)) if !g.trim().is_empty() => {
            ("volume_capability.mount.volume_mount_group", g.as_str())
        }
        _ => return Ok(None),
    };
    let prefix: String = text.chars().take(24).collect();
    text.trim().parse::<u32>().map(Some).map_err(|_| {
        NodeVolumeError::InvalidArgument(format!(
            "{field}: {prefix:?} is not a group id; accepted: a number from 0 to 4294967295"
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvmount_vault::{RenderedFile, SecretBytes};

    use super::*;
    use crate::cache::CacheConfig;

    fn request(target: &str) -> PublishRequest {
        PublishRequest {
            volume_id: "vol".into(),
            target_path: target.into(),
            readonly: true,
            mount_capability: Some(true),
            mount_group: None,
            context: HashMap::from([(POD_NAME.to_owned(), "pod".to_owned())]),
            secrets: HashMap::new(),
        }
    }

    fn volumes(budget: Option<u64>) -> (Volumes, tempfile::TempDir) {
        let base =
            std::env::var_os("KVMOUNT_TEST_SHM").map_or_else(|| "/dev/shm".into(), PathBuf::from);
        let dir = tempfile::Builder::new()
            .prefix("kvmount-volumes-test.")
            .tempdir_in(base)
            .expect("tempdir on tmpfs");
        let cache = NodeCache::new(
            crate::access::VaultAccess::new(
                kvmount_vault::Connector::new(kvmount_vault::ConnectorConfig::default())
                    .expect("connector"),
                None,
            ),
            CacheConfig {
                refresh_after: Duration::from_secs(60),
                idle_ttl: Duration::from_secs(60),
            },
        );
        let volumes = Volumes::new(
            Arc::new(cache),
            None,
            StateStore::open(dir.path()).expect("state"),
            VolumeConfig {
                tmpfs_bytes: 1 << 20,
                cloud_files: Arc::default(),
                tmpfs_budget: budget,
                fetch_deadline: Duration::from_secs(1),
            },
        );
        (volumes, dir)
    }

    fn message(result: Result<impl std::fmt::Debug, NodeVolumeError>) -> String {
        match result {
            Err(NodeVolumeError::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_publish_is_checked_before_any_io() {
        let (target, group) = check_publish(&request("/pods/a/vol")).expect("valid");
        assert_eq!((target, group), (PathBuf::from("/pods/a/vol"), None));
        let mut r = request("/pods/a/vol");
        r.volume_id.clear();
        assert!(message(check_publish(&r)).contains("volume_id"));
        assert!(message(check_publish(&request("pods/../x"))).contains("absolute"));
        let mut r = request("/pods/a/vol");
        r.mount_capability = Some(false);
        assert!(message(check_publish(&r)).contains("block volumes"));
        let mut r = request("/pods/a/vol");
        r.readonly = false;
        assert!(message(check_publish(&r)).contains("readonly"));
        let mut r = request("/pods/a/vol");
        r.mount_group = Some("1000".into());
        assert_eq!(check_publish(&r).expect("group").1, Some(1000));
        r.context
            .insert(FS_GROUP_ATTRIBUTE.to_owned(), "staff".to_owned());
        assert!(message(check_publish(&r)).contains("fsGroup"));
    }

    #[test]
    fn files_name_the_entries_they_come_from() {
        let attributes = HashMap::from([
            ("keyvaultName".to_owned(), "demo".to_owned()),
            ("tenantID".to_owned(), "t".to_owned()),
            (
                "objects".to_owned(),
                "array:\n  - |\n    objectName: db\n    objectType: secret\n".to_owned(),
            ),
        ]);
        let secrets = HashMap::from([
            ("clientid".to_owned(), "app".to_owned()),
            ("clientsecret".to_owned(), "s".to_owned()),
        ]);
        let params = kvmount_vault::params::mount_params(
            &attributes,
            &secrets,
            0o644,
            kvmount_vault::cloud::EnvFile::Beneath(None),
        )
        .expect("params");
        let key = ObjectKey::new(&params, &params.objects[0]);
        let objects = vec![RenderedObject {
            id: "secret/db".into(),
            version: "v1".into(),
            files: vec![RenderedFile {
                path: "db".into(),
                mode: 0o640,
                contents: SecretBytes::new(b"x".to_vec()),
            }],
        }];
        let (files, versions) = volume_files(&objects, std::slice::from_ref(&key));
        assert_eq!(files.len(), 1);
        assert_eq!((files[0].path.as_str(), files[0].mode), ("db", 0o640));
        assert_eq!(files[0].key, key);
        assert_eq!(versions["secret/db"], "v1");
    }

    #[test]
    fn a_target_published_with_other_parameters_is_refused() {
        let (volumes, _dir) = volumes(None);
        let r = request("/pods/a/vol");
        volumes.records().insert(
            r.target_path.clone(),
            VolumeRecord {
                volume_id: "vol".into(),
                target_path: r.target_path.clone(),
                pod_name: "pod".into(),
                pod_namespace: String::new(),
                pod_uid: String::new(),
                class: None,
                attributes_digest: "d1".into(),
                fs_group: None,
                files: Vec::new(),
                versions: BTreeMap::new(),
                refreshed_at: 0,
                last_error: None,
                tmpfs_bytes: 3 * PAGE,
            },
        );
        volumes
            .refuse_other_parameters(&r, "d1")
            .expect("the same parameters: idempotent");
        assert!(matches!(
            volumes.refuse_other_parameters(&r, "d2"),
            Err(NodeVolumeError::AlreadyExists(_))
        ));
        let mut other = request("/pods/a/vol");
        other.volume_id = "vol2".into();
        assert!(matches!(
            volumes.refuse_other_parameters(&other, "d1"),
            Err(NodeVolumeError::AlreadyExists(_))
        ));
        // The budget counts the other volumes, and a republish's new size.
        let (budgeted, _dir) = volumes_with_record(4 * PAGE, &volumes);
        budgeted
            .check_budget("/pods/a/vol", 4 * PAGE)
            .expect("a republish replaces its own size");
        assert!(matches!(
            budgeted.check_budget("/pods/b/vol", 2 * PAGE),
            Err(NodeVolumeError::ResourceExhausted(_))
        ));
        assert_eq!(tmpfs_charge([0, 1, 4096, 4097]), 5 * PAGE);
    }

    fn volumes_with_record(budget: u64, from: &Volumes) -> (Volumes, tempfile::TempDir) {
        let (volumes, dir) = self::volumes(Some(budget));
        *volumes.records() = from.records().clone();
        (volumes, dir)
    }

    #[test]
    fn a_missed_fetch_deadline_is_deadline_exceeded() {
        let err = NodeVolumeError::from(FetchError::Deadline(Duration::from_secs(60)));
        assert!(matches!(err, NodeVolumeError::Deadline(_)), "{err:?}");
        assert!(err.to_string().contains("60s"), "{err}");
    }
}
