//! The in-pod agent: authenticate with the workload-identity token file, fetch the objects
//! through `kvmount_vault`, render them, write them atomically into the shared memory volume
//! with `kvmount_volume::AtomicWriter`, and refresh every interval.
//!
//! - The token file is re-read before every fetch (kubelet rotates it); the credential is
//!   rebuilt only when the token changed, so Entra tokens are reused in between.
//! - Each distinct object is read once per round, however many files use it.
//! - The writer publishes a new payload only when some file changed (`..data` switch).
//! - Failures are logged at every attempt with the next delay; init-only mode gives up after
//!   its deadline with a non-zero exit, so nothing retries forever silently.
//! - Between rounds no copy of a secret value stays in the agent's memory: the round's values
//!   are `SecretBytes` (zeroed on drop), the binaries free memory through the zero-on-free
//!   allocator (`kvmount-alloc`), the round's vault connections are closed after it (their
//!   read buffers held the answers) and the runtime thread's stack is overwritten. The Entra
//!   credential (and its cached access token) is kept until the token file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmount_vault::client::VaultClient;
use kvmount_vault::fetch::scrub_list;
use kvmount_vault::{
    Auth, Connector, ConnectorConfig, FetchedObject, ObjectSpec, SecretBytes, SecretString,
    VaultError, fetch_object, rendered_object,
};
use kvmount_volume::{AtomicWriter, FileSpec, Ownership, WriteOutcome};

use crate::config::{DEFAULT_MODE, Plan};
use crate::template::Part;

/// Backoff after the first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the agent stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration or environment is incomplete.
    #[error("{0}")]
    Config(String),
    /// The shared volume cannot be written (not memory-backed, missing, ...).
    #[error("the secrets volume: {0}")]
    Volume(#[from] kvmount_volume::VolumeError),
    /// Init-only mode did not get a first render before its deadline.
    #[error("no render after {attempts} attempts in {elapsed:?}; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
}

/// How this agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Render once and exit 0 (init containers, Jobs).
    pub init_only: bool,
    /// Init-only: give up after this long without a render.
    pub init_timeout: Duration,
    /// When the process started (for the first-render time in the log).
    pub started: Instant,
}

/// Where to authenticate and what as, resolved from the plan and the environment.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Tenant.
    pub tenant_id: String,
    /// Client ID.
    pub client_id: String,
    /// Token file.
    pub token_file: PathBuf,
}

impl Identity {
    /// The plan's values, else `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    pub fn resolve(plan: &Plan) -> Result<Self, AgentError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let missing = |what: &str, var: &str| {
            AgentError::Config(format!(
                "no {what}: set it in the configuration or the environment variable {var}"
            ))
        };
        Ok(Self {
            tenant_id: plan
                .tenant_id
                .clone()
                .or_else(|| env("AZURE_TENANT_ID"))
                .ok_or_else(|| missing("tenant", "AZURE_TENANT_ID"))?,
            client_id: plan
                .client_id
                .clone()
                .or_else(|| env("AZURE_CLIENT_ID"))
                .ok_or_else(|| missing("client ID", "AZURE_CLIENT_ID"))?,
            token_file: plan
                .token_file
                .clone()
                .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                .ok_or_else(|| missing("token file", "AZURE_FEDERATED_TOKEN_FILE"))?,
        })
    }
}

/// A Key Vault credential for one token (rebuilt when the token file changes) and the vault
/// client of the current round (dropped after it, see [`Session::end_round`]).
pub struct Session {
    connector: Connector,
    vault: String,
    identity: Identity,
    token: SecretString,
    credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
    client: Option<Arc<VaultClient>>,
}

impl Session {
    /// A session for `plan`'s vault.
    pub fn new(connector_config: ConnectorConfig, plan: &Plan) -> Result<Self, AgentError> {
        let connector =
            Connector::new(connector_config).map_err(|e| AgentError::Config(e.to_string()))?;
        Ok(Self {
            connector,
            vault: plan.keyvault_name.clone(),
            identity: Identity::resolve(plan)?,
            token: SecretString::default(),
            credential: None,
            client: None,
        })
    }

    /// Drops the round's vault client and closes its connections: the HTTP client's read
    /// buffer of a live connection still holds the last answer (secret values), which the
    /// zeroing allocator only clears once it is freed. The credential (and its cached Entra
    /// token) stays; the next round opens a new connection to the vault.
    pub fn end_round(&mut self) {
        self.client = None;
        self.connector.forget_vault(&self.vault);
    }

    /// The round's client, after re-reading the token file: a new credential when the token
    /// changed, a new vault client (new connections) after each [`Session::end_round`].
    pub fn client(&mut self) -> Result<Arc<VaultClient>, VaultError> {
        let token = read_token(&self.identity.token_file)?;
        let credential = match &self.credential {
            Some(credential) if token == self.token => credential.clone(),
            _ => {
                let auth = Auth::WorkloadIdentity {
                    client_id: self.identity.client_id.clone(),
                    token: token.clone(),
                };
                let credential = self.connector.credential(&self.identity.tenant_id, &auth)?;
                if self.credential.is_some() {
                    tracing::info!(token_file = %self.identity.token_file.display(), "service-account token changed; new credential");
                }
                self.credential = Some(credential.clone());
                self.client = None;
                self.token = token;
                credential
            }
        };
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Arc::new(self.connector.secret_client(&self.vault, credential)?);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Strings no message may contain.
    pub fn scrub(&self) -> Auth {
        Auth::WorkloadIdentity {
            client_id: self.identity.client_id.clone(),
            token: self.token.clone(),
        }
    }
}

fn read_token(path: &Path) -> Result<SecretString, VaultError> {
    let bytes = std::fs::read(path).map_err(|e| {
        VaultError::new(
            kvmount_vault::ErrorKind::Unauthenticated,
            format!("service-account token {}: {e}", path.display()),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        VaultError::new(
            kvmount_vault::ErrorKind::Unauthenticated,
            format!("service-account token {}: not UTF-8", path.display()),
        )
    })?;
    let mut token = SecretString::new(text);
    let trimmed = token.expose().trim().to_owned();
    token.clear();
    if trimmed.is_empty() {
        return Err(VaultError::new(
            kvmount_vault::ErrorKind::Unauthenticated,
            format!("service-account token {}: empty", path.display()),
        ));
    }
    Ok(SecretString::new(trimmed))
}

/// The key under which a spec's fetch is shared: everything that changes the bytes, the
/// history slot and `certKeyFiles` included (the node cache's key has the same parts).
pub fn fetch_key(spec: &ObjectSpec) -> String {
    format!(
        "{}/{}/{}/{:?}/{:?}/{}",
        spec.object_type,
        spec.name,
        spec.version.as_deref().unwrap_or(""),
        spec.encoding,
        spec.format,
        spec.cache_variant()
    )
}

/// Fetches every distinct object `specs` name, concurrently; the first failure fails all.
pub async fn fetch_distinct<'a>(
    session: &mut Session,
    specs: impl IntoIterator<Item = &'a ObjectSpec>,
) -> Result<HashMap<String, FetchedObject>, String> {
    let client = session.client().map_err(|e| e.to_string())?;
    let auth = session.scrub();
    let scrub = scrub_list(&auth);
    let mut unique: HashMap<String, &ObjectSpec> = HashMap::new();
    for spec in specs {
        unique.entry(fetch_key(spec)).or_insert(spec);
    }
    let fetches = unique.into_iter().map(|(key, spec)| {
        let client = &client;
        let scrub = &scrub;
        async move {
            fetch_object(client, spec, scrub)
                .await
                .map(|f| (key, f))
                .map_err(|e| format!("{}: {e}", spec.id()))
        }
    });
    Ok(futures::future::try_join_all(fetches)
        .await?
        .into_iter()
        .collect())
}

/// One rendered file.
pub struct OutFile {
    /// Path in the volume.
    pub path: String,
    /// Mode.
    pub mode: u32,
    /// Contents.
    pub contents: SecretBytes,
}

/// Rendered files and the `(object id, version)` pairs they came from (for logs).
pub type Rendered = (Vec<OutFile>, Vec<(String, String)>);

/// The files of `plan` from fetched objects, plus `(object id, version)` pairs for logs.
pub fn render_files(
    plan: &Plan,
    fetched: &HashMap<String, FetchedObject>,
) -> Result<Rendered, String> {
    let get = |spec: &ObjectSpec| {
        fetched
            .get(&fetch_key(spec))
            .ok_or_else(|| format!("{}: not fetched", spec.id()))
    };
    let mut files = Vec::new();
    let mut versions = Vec::new();
    for spec in &plan.files {
        let object = get(spec)?;
        let rendered = rendered_object(spec, object, DEFAULT_MODE);
        versions.push((rendered.id.clone(), rendered.version.clone()));
        for f in rendered.files {
            files.push(OutFile {
                path: f.path,
                mode: f.mode,
                contents: f.contents,
            });
        }
    }
    for t in &plan.templates {
        let refs = t.template.references();
        let spec_of = |r| {
            let i = refs.iter().position(|x| *x == r).unwrap_or(0);
            t.specs
                .get(i)
                .ok_or_else(|| format!("{}: template reference {r} has no spec", t.path))
        };
        // Size first: the buffer that holds secret bytes is allocated once and never grows
        // (growing would leave a copy in freed memory).
        let mut size = 0;
        for part in &t.template.parts {
            size += match part {
                Part::Text(text) => text.len(),
                Part::Object(r) => get(spec_of(r)?)?.contents.len(),
            };
        }
        let mut contents = Vec::with_capacity(size);
        for part in &t.template.parts {
            match part {
                Part::Text(text) => contents.extend_from_slice(text.as_bytes()),
                Part::Object(r) => {
                    let spec = spec_of(r)?;
                    let object = get(spec)?;
                    contents.extend_from_slice(object.contents.expose());
                    versions.push((format!("{}:{}", t.path, spec.id()), object.version.clone()));
                }
            }
        }
        files.push(OutFile {
            path: t.path.clone(),
            mode: t.mode,
            contents: SecretBytes::new(contents),
        });
    }
    Ok((files, versions))
}

/// Every spec the plan fetches.
pub fn all_specs(plan: &Plan) -> impl Iterator<Item = &ObjectSpec> {
    plan.files
        .iter()
        .chain(plan.templates.iter().flat_map(|t| t.specs.iter()))
}

/// Runs the agent until SIGTERM (or, in init-only mode, until the first render).
pub async fn run(
    plan: Plan,
    connector: ConnectorConfig,
    options: AgentOptions,
) -> Result<(), AgentError> {
    let mount = plan
        .mount_path
        .clone()
        .ok_or_else(|| AgentError::Config("no mountPath in the configuration".into()))?;
    let writer = AtomicWriter::open(&mount)?;
    let mut session = Session::new(connector, &plan)?;
    let owner = Ownership {
        uid: None,
        gid: plan.fs_group,
    };
    let mut stop = StopSignals::watch()?;
    tracing::info!(
        vault = %plan.keyvault_name,
        files = plan.files.len() + plan.templates.len(),
        mount = %mount.display(),
        refresh = ?plan.refresh,
        init_only = options.init_only,
        "agent started"
    );
    let mut progress = Progress::new(&plan, &options);
    loop {
        let result = tokio::select! {
            r = render_round(&mut session, &plan, &writer, &owner) => r,
            () = stop.recv() => return Ok(()),
        };
        // Nothing of the round stays behind: its connections close (their buffers are freed,
        // and zeroed by the allocator) and its stack frames are overwritten.
        session.end_round();
        // The round's HTTP, TLS and JSON code ran on this one runtime thread (the main one).
        kvmount_alloc::scrub_stack();
        let delay = match result {
            Ok((outcome, versions)) => match progress.published(&outcome, &versions) {
                Some(delay) => delay,
                None => return Ok(()),
            },
            Err(error) => progress.failed(error)?,
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.recv() => return Ok(()),
        }
    }
}

/// One round: every object fetched once, the files rendered and published together.
/// Returns what the write did and `(object id, version)` pairs for the log.
async fn render_round(
    session: &mut Session,
    plan: &Plan,
    writer: &AtomicWriter,
    owner: &Ownership,
) -> Result<(WriteOutcome, Vec<(String, String)>), String> {
    let fetched = fetch_distinct(session, all_specs(plan)).await?;
    let (files, versions) = render_files(plan, &fetched)?;
    let specs: Vec<FileSpec<'_>> = files
        .iter()
        .map(|f| FileSpec {
            path: &f.path,
            mode: f.mode,
            contents: f.contents.expose(),
        })
        .collect();
    let outcome = writer.write(&specs, owner).map_err(|e| e.to_string())?;
    Ok((outcome, versions))
}

/// SIGTERM and SIGINT, either of which stops the agent.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> Result<Self, AgentError> {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind, name: &str| {
            signal(kind).map_err(|e| AgentError::Config(format!("cannot watch {name}: {e}")))
        };
        Ok(Self {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Returns when either signal arrives (logged).
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = self.int.recv() => tracing::info!("SIGINT: stopping"),
        }
    }
}

/// The agent's rounds so far: whether it has published once, failures in a row and the next
/// backoff.
struct Progress<'a> {
    plan: &'a Plan,
    options: &'a AgentOptions,
    rendered_once: bool,
    attempts: u32,
    backoff: Duration,
}

impl<'a> Progress<'a> {
    fn new(plan: &'a Plan, options: &'a AgentOptions) -> Self {
        Self {
            plan,
            options,
            rendered_once: false,
            attempts: 0,
            backoff: FIRST_BACKOFF,
        }
    }

    /// A round published: logs it, and returns when the next round is due (`None`: the
    /// init-only agent is done).
    fn published(
        &mut self,
        outcome: &WriteOutcome,
        versions: &[(String, String)],
    ) -> Option<Duration> {
        self.attempts = 0;
        self.backoff = FIRST_BACKOFF;
        let versions: Vec<String> = versions.iter().map(|(id, v)| format!("{id}@{v}")).collect();
        if !self.rendered_once {
            self.rendered_once = true;
            tracing::info!(
                elapsed_ms = self.options.started.elapsed().as_millis() as u64,
                files = outcome.files_written,
                objects = %versions.join(","),
                "first render"
            );
            if self.options.init_only {
                return None;
            }
        } else if outcome.changed {
            tracing::info!(files = outcome.files_written, objects = %versions.join(","), "rotated: new content published");
        } else {
            tracing::debug!("unchanged");
        }
        Some(self.plan.refresh)
    }

    /// A round failed with `error`: returns how long to wait before the next (doubling from
    /// [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], never past the refresh interval once published;
    /// the files published last stay), or the error that ends an init-only agent that has
    /// tried for its whole timeout.
    fn failed(&mut self, error: String) -> Result<Duration, AgentError> {
        self.attempts += 1;
        let elapsed = self.options.started.elapsed();
        if self.options.init_only && !self.rendered_once && elapsed >= self.options.init_timeout {
            return Err(AgentError::GaveUp {
                attempts: self.attempts,
                elapsed,
                last: error,
            });
        }
        let cap = if self.rendered_once {
            self.plan.refresh
        } else {
            MAX_BACKOFF
        };
        let delay = self.backoff.min(cap);
        tracing::warn!(attempt = self.attempts, retry_in_ms = delay.as_millis() as u64, kept_last_content = self.rendered_once, %error, "fetch failed");
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(delay)
    }
}

/// Whether the first render is published (`<mount>/..data` exists): `probe`.
pub fn probe(mount: &Path) -> bool {
    std::fs::symlink_metadata(mount.join(kvmount_volume::DATA_DIR_NAME)).is_ok()
}

/// How often `probe --wait` looks again. A look is one `lstat`; the agent's first render
/// takes milliseconds once its reads are answered.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// Whether the first render is published within `wait`: `probe --wait`, the native sidecar's
/// postStart hook. The kubelet starts the app containers once the hook has returned (at its
/// next look at the pod), where a startupProbe would be run only every `periodSeconds` (1 s
/// at least).
pub fn wait_for_render(mount: &Path, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        if probe(mount) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep(PROBE_EVERY.min(until - now));
    }
}

/// `install DIR`: copies this binary to `DIR/kvmount-agent` (mode 0555) for `exec`.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.join("kvmount-agent");
    let tmp = dir.join(".kvmount-agent.tmp");
    std::fs::copy("/proc/self/exe", &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))?;
    std::fs::rename(&tmp, &target)?;
    Ok(target)
}
