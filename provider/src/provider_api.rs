//! The provider's domain: turn one Mount (attributes, secrets, default mode) into files and
//! object versions. Plain Rust types; the gRPC layer wraps it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvmount_vault::cloud::EnvFile;
use kvmount_vault::params::{self, parse_default_mode, parse_string_map};
use kvmount_vault::{ObjectError, ParamError, RenderedObject};

use crate::cache::{FetchError, NodeCache};
use crate::cloud_files::CloudFiles;
use zeroize::Zeroize;

/// What the upstream driver hands us, as plain strings.
pub struct MountInput {
    /// JSON object of strings: class parameters, volume attributes, pod info, tokens.
    pub attributes: String,
    /// JSON object of strings: nodePublishSecretRef data.
    pub secrets: String,
    /// JSON-encoded decimal default mode, e.g. "420".
    pub permission: String,
    /// Where the driver will write the files (for logs only; we never write there).
    pub target_path: String,
}

impl Drop for MountInput {
    fn drop(&mut self) {
        self.attributes.zeroize();
        self.secrets.zeroize();
    }
}

/// Why a Mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A parameter or request field is wrong.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// Key Vault or Entra ID failed for an object.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The mount did not finish within its deadline.
    #[error("fetching the objects did not finish within {0:?}")]
    Deadline(Duration),
}

impl From<FetchError> for MountError {
    fn from(err: FetchError) -> Self {
        match err {
            FetchError::Object(object) => Self::Object(object),
            FetchError::Deadline(deadline) => Self::Deadline(deadline),
        }
    }
}

/// One successful Mount: the files and the versions read.
#[derive(Debug)]
pub struct MountOutput {
    /// Rendered objects in class order.
    pub objects: Vec<RenderedObject>,
}

/// Serves Mount calls from the node cache.
#[derive(Clone)]
pub struct Mounter {
    cache: Arc<NodeCache>,
    deadline: Duration,
    cloud_files: Arc<CloudFiles>,
}

/// [`params::mount_params`] for an async caller. When the class names a file on the node
/// (`cloudEnvFileName`), `cloud_files` reads it first, off the runtime thread, so a file that
/// never answers holds up no other call and no other pod.
pub async fn parse_mount_params(
    attributes: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    default_mode: u32,
    cloud_files: &CloudFiles,
) -> Result<params::MountParams, ParamError> {
    let env_file = match kvmount_vault::cloud::node_file(attributes) {
        Some(path) => EnvFile::Read(cloud_files.read(path).await),
        // Nothing to read: no directory, so nothing is read on this thread.
        None => EnvFile::Beneath(None),
    };
    params::mount_params(attributes, secrets, default_mode, env_file)
}

/// Zeroes every value of a parsed map before it is dropped.
struct ZeroOnDrop(HashMap<String, String>);

impl Drop for ZeroOnDrop {
    fn drop(&mut self) {
        for (_, value) in self.0.iter_mut() {
            value.zeroize();
        }
    }
}

impl Mounter {
    /// A mounter that reads through `cache`, giving each mount `deadline`; classes' cloud
    /// environment files come from `cloud_files`.
    pub fn new(cache: Arc<NodeCache>, deadline: Duration, cloud_files: Arc<CloudFiles>) -> Self {
        Self {
            cache,
            deadline,
            cloud_files,
        }
    }

    /// Parses the request, fetches every object concurrently and renders the files.
    pub async fn mount(&self, input: MountInput) -> Result<MountOutput, MountError> {
        let attributes = ZeroOnDrop(parse_string_map("attributes", &input.attributes)?);
        let secrets = ZeroOnDrop(parse_string_map("secrets", &input.secrets)?);
        let default_mode = parse_default_mode(&input.permission)?;
        let params =
            parse_mount_params(&attributes.0, &secrets.0, default_mode, &self.cloud_files).await?;
        drop(attributes);
        drop(secrets);
        tracing::info!(
            pod = %params.pod.name,
            namespace = %params.pod.namespace,
            class = params.class_name.as_deref().unwrap_or(""),
            vault = %params.keyvault_name,
            auth = params.auth.mode(),
            client_id = %params.auth.client_id(),
            objects = params.objects.len(),
            target = %input.target_path,
            "mount"
        );
        // The upstream driver never tells us when a volume goes away: these reads are not
        // retained by any volume and expire after the cache's idle time.
        let (objects, _keys) = self.cache.fetch_within(&params, self.deadline).await?;
        // Per object at debug only: the driver records every object's version in the pod's
        // SecretProviderClassPodStatus, and its rotation calls Mount for every pod each
        // interval, so an info line per object would be most of the daemon's log.
        for object in &objects {
            tracing::debug!(object = %object.id, version = %object.version, pod = %params.pod.name, "object ready");
        }
        Ok(MountOutput { objects })
    }
}
