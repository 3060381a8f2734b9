//! Custom clouds' environment files (`cloudEnvFileName`), read for the node's mounts.
//!
//! A class author names the file, so reading it may block (a slow file system under
//! `--cloud-env-dir`): it is read on a blocking thread with a deadline, never on the runtime
//! thread. A file that parsed is kept for [`REUSE_FOR`], so a burst of mounts of one class
//! (many pods starting, or the driver's rotation calling Mount for every pod) reads it once
//! instead of handing every call to another thread. (Measured side by side with the build
//! before this, warm Mounts were not faster beyond the run-to-run noise of this 2-core
//! machine; what it saves is a thread hand-off and a file read per call.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use kvmount_vault::ParamError;
use kvmount_vault::cloud::{Cloud, read_env_file};
use tokio::time::Instant;

use crate::blocking::Late;

/// How long a file that parsed is used again without reading it: a change to a file reaches
/// new mounts within this.
pub const REUSE_FOR: Duration = Duration::from_secs(30);
/// Most files kept at once (the oldest goes first).
const MOST_FILES: usize = 16;
/// Longest path kept: a class may spell one file many ways (`a//b`), each read on its own;
/// none of them may pin much memory.
const LONGEST_KEPT_PATH: usize = 512;
/// How long reading one file may take.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// The environment files beneath one directory (`--cloud-env-dir`), read off the runtime
/// thread and kept briefly.
#[derive(Debug, Default)]
pub struct CloudFiles {
    dir: Option<PathBuf>,
    kept: Mutex<HashMap<String, (Cloud, Instant)>>,
}

impl CloudFiles {
    /// Files beneath `dir`; `None` refuses every file (custom cloud files are off).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            kept: Mutex::default(),
        }
    }

    /// The cloud the file at `path` describes; errors name `cloudEnvFileName`.
    pub async fn read(&self, path: &str) -> Result<Cloud, ParamError> {
        if let Some(cloud) = self.fresh(path) {
            return Ok(cloud);
        }
        let Some(dir) = self.dir.clone() else {
            // Refused without touching the file system.
            return read_env_file(path, None);
        };
        let owned = path.to_owned();
        let read = move || read_env_file(&owned, Some(&dir));
        match crate::blocking::within(READ_DEADLINE, read).await {
            Ok(Ok(cloud)) => {
                self.keep(path, &cloud);
                Ok(cloud)
            }
            Ok(Err(refused)) => Err(refused),
            Err(Late::Panicked) => Err(ParamError::new("cloudEnvFileName", "cannot be used")),
            Err(Late::TimedOut) => Err(ParamError::new(
                "cloudEnvFileName",
                format!("was not read within {READ_DEADLINE:?}"),
            )),
        }
    }

    /// The kept cloud of `path` if it was read within [`REUSE_FOR`].
    fn fresh(&self, path: &str) -> Option<Cloud> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(path)
            .filter(|(_, read_at)| read_at.elapsed() < REUSE_FOR)
            .map(|(cloud, _)| cloud.clone())
    }

    fn keep(&self, path: &str, cloud: &Cloud) {
        if path.len() > LONGEST_KEPT_PATH {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|_, (_, read_at)| read_at.elapsed() < REUSE_FOR);
        if kept.len() >= MOST_FILES
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, (_, read_at))| *read_at)
                .map(|(p, _)| p.clone())
        {
            kept.remove(&oldest);
        }
        kept.insert(path.to_owned(), (cloud.clone(), Instant::now()));
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "a test writes its own fixtures (environment files, never secrets)"
)]
mod tests {
    use super::*;
    use std::path::Path;

    const STACK: &str = r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.local/","keyVaultDNSSuffix":"vault.stack.local"}"#;
    const OTHER: &str = r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.other.local/","keyVaultDNSSuffix":"vault.other.local"}"#;

    fn path(dir: &Path, name: &str) -> String {
        dir.join(name).display().to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_is_read_again_once_its_copy_is_old() {
        let dir = tempfile::tempdir().expect("dir");
        let file = path(dir.path(), "cloud.json");
        std::fs::write(&file, STACK).expect("write");
        let files = CloudFiles::new(Some(dir.path().to_owned()));
        let first = files.read(&file).await.expect("read");
        assert_eq!(first.keyvault_dns_suffix, "vault.stack.local");

        // Changed on disk: the kept copy serves until it is REUSE_FOR old.
        std::fs::write(&file, OTHER).expect("write");
        tokio::time::advance(REUSE_FOR - Duration::from_secs(1)).await;
        assert_eq!(files.read(&file).await.expect("kept"), first);
        tokio::time::advance(Duration::from_secs(1)).await;
        let again = files.read(&file).await.expect("read again");
        assert_eq!(again.keyvault_dns_suffix, "vault.other.local");
    }

    #[tokio::test]
    async fn refusals_are_not_kept_and_nothing_is_read_when_files_are_off() {
        let dir = tempfile::tempdir().expect("dir");
        let file = path(dir.path(), "cloud.json");
        let files = CloudFiles::new(Some(dir.path().to_owned()));
        let missing = files.read(&file).await.expect_err("missing");
        assert_eq!(missing.field, "cloudEnvFileName");
        // Written after the refusal: the next mount reads it.
        std::fs::write(&file, STACK).expect("write");
        assert!(files.read(&file).await.is_ok());

        let off = CloudFiles::new(None);
        let err = off.read(&file).await.expect_err("off");
        assert!(err.problem.contains("--cloud-env-dir"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_a_few_short_paths_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("cloud.json"), STACK).expect("write");
        let files = CloudFiles::new(Some(dir.path().to_owned()));
        // One file, spelt many ways: each spelling is read, at most MOST_FILES kept.
        let spelt =
            |slashes: usize| format!("{}{}cloud.json", dir.path().display(), "/".repeat(slashes));
        for slashes in 1..=MOST_FILES + 4 {
            files.read(&spelt(slashes)).await.expect("read");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        files.read(&spelt(600)).await.expect("read");
        let kept = files.kept.lock().expect("lock");
        assert_eq!(kept.len(), MOST_FILES);
        assert!(kept.keys().all(|p| p.len() <= LONGEST_KEPT_PATH));
        // The oldest went first.
        assert!(!kept.contains_key(&spelt(4)));
        assert!(kept.contains_key(&spelt(5)));
    }
}
