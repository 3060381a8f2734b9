//! Helpers of the sidecar tests: a real tmpfs (torn down on drop), `kvmount-sidecar` as a child
//! process with its output captured, agent configurations and a Key Vault rotation.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmount_tests::{Vault, workspace_bin};

/// A tmpfs mounted on a fresh directory; unmounted and removed on drop.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmount-test-sidecar.")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("secrets");
        std::fs::create_dir(&path).expect("mount point");
        kvmount_volume::mount_tmpfs(
            &path,
            &kvmount_volume::TmpfsOptions {
                size_bytes: 4 << 20,
                mode: 0o755,
                uid: None,
                gid: None,
            },
        )
        .expect("mount tmpfs");
        Self { path, _dir: dir }
    }

    /// Remounts the tmpfs read-only.
    pub fn make_read_only(&self) {
        use rustix::mount::{MountFlags, mount_remount};
        mount_remount(
            &self.path,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )
        .expect("remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = kvmount_volume::teardown(&self.path);
    }
}

/// `kvmount-sidecar` as a child process; killed on drop.
pub struct Sidecar {
    child: Option<Child>,
    output: Arc<Mutex<String>>,
    pub status: Option<ExitStatus>,
}

impl Sidecar {
    pub fn spawn(args: &[String], env: &[(&str, String)], cwd: Option<&Path>) -> Self {
        Self::spawn_bin(&workspace_bin("kvmount-sidecar"), args, env, cwd)
    }

    /// Like [`Sidecar::spawn`] with another binary (`kvmount-agent`, or an installed copy).
    pub fn spawn_bin(
        bin: &Path,
        args: &[String],
        env: &[(&str, String)],
        cwd: Option<&Path>,
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("AZURE_CLIENT_ID")
            .env_remove("AZURE_TENANT_ID")
            .env_remove("AZURE_FEDERATED_TOKEN_FILE")
            .env_remove("AZURE_AUTHORITY_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawn kvmount-sidecar");
        let output = Arc::new(Mutex::new(String::new()));
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for stream in streams {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().expect("lock");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        Self {
            child: Some(child),
            output,
            status: None,
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits until the output contains `needle`; panics with the output after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(needle) {
            if let Some(status) = self.try_status() {
                panic!("exited ({status}) before {needle:?}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Waits for the exit (killing after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                std::thread::sleep(Duration::from_millis(50)); // drain the pipes
                return status;
            }
            if Instant::now() > deadline {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                }
                panic!("did not exit within {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The demo seed's app-a identity.
pub const APP_A: &str = "00000000-0000-0000-0000-00000000000a";

/// A service-account token file for team-a/app (federated with app-a) in `dir`.
pub fn token_file(vault: &Vault, dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, vault.sa_token("team-a", "app")).expect("token file");
    path
}

/// Sets a new current version of `name` through the official SDK (as app-a).
pub async fn rotate(vault: &Vault, name: &str, value: &str) {
    vault
        .set_secret("demo", APP_A, "app-a-password", name, value)
        .await;
}

/// Reads `dir/name` (following the visible link).
pub fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}
