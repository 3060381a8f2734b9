//! Serving gRPC on a Unix socket: stale-socket removal, mode 0600, any `:authority` the client
//! sends (`kvmount_unix_h2`), graceful drain, removal.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Server};

use kvmount_proto::provider::csi_driver_provider_server::CsiDriverProviderServer;

use crate::grpc::provider::ProviderService;

/// Largest gRPC request either socket takes (tonic's default is 4 MiB). A MountRequest or
/// NodePublishVolume carries a class's parameters, pod info and a few tokens: a few KiB, and a
/// class at every cap (100 objects, 256 KiB of `objects`) fits well below this.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Errors starting the socket server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket path exists and is not a socket: refusing to remove it.
    #[error("{0}: exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> ServeError + use<> {
    let path = path.to_owned();
    move |source| ServeError::Io { path, op, source }
}

/// A bound socket that is removed when dropped, unless another file has taken its place.
pub struct BoundSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
    identity: Option<(u64, u64)>,
}

/// The file at `path` (device and inode), if any.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl BoundSocket {
    /// Removes a stale socket at `path`, creates the parent directory, binds, and sets mode 0600.
    pub fn bind(path: &Path) -> Result<Self, ServeError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io_err(path, "remove stale socket"))?;
            }
            Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path, "inspect")(e)),
        }
        Self::bind_new(path)
    }

    /// [`BoundSocket::bind`] where nothing is: a socket found at `path` is not taken to be a
    /// stale one of this daemon's, and the bind fails (address in use).
    pub fn bind_new(path: &Path) -> Result<Self, ServeError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent, "create directory"))?;
        }
        // The socket file takes its mode from the umask at bind time: close the window in
        // which it would be reachable by others, then set the mode explicitly as well.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
        let bound = UnixListener::bind(path);
        rustix::process::umask(old);
        let listener = bound.map_err(io_err(path, "bind"))?;
        // Read at once: the later the file at `path` is looked at, the longer another daemon's
        // socket put there could pass for ours.
        let identity = file_identity(path);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path, "chmod 0600"))?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
            identity,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file this bound, as [`file_identity`] saw it right after the bind.
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    /// Takes the listener out (once), leaving the guard to remove the socket on drop.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // A file that replaced ours (a second daemon during a rolling update, say) is theirs.
        if self.identity.is_some() && file_identity(&self.path) == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves the provider API on `socket` until `shutdown` resolves, then drains in-flight calls
/// and removes the socket.
pub async fn serve_provider(
    mut socket: BoundSocket,
    service: ProviderService,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let listener = socket
        .take_listener()
        .ok_or_else(|| ServeError::NotASocket(socket.path().to_owned()))?;
    tracing::info!(socket = %socket.path().display(), "serving provider API");
    Server::builder()
        .add_service(
            CsiDriverProviderServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(kvmount_unix_h2::incoming(listener), shutdown)
        .await?;
    tracing::info!(socket = %socket.path().display(), "provider API stopped");
    drop(socket);
    Ok(())
}

/// A gRPC channel over a Unix socket (used by `dev`, tests and `status`).
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API but unused: every connection goes to the socket.
    #[allow(clippy::expect_used)] // invariant: a constant, valid URI
    let endpoint = Endpoint::try_from("http://[::1]:0").expect("constant URI");
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_new_leaves_a_socket_it_finds_and_bind_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.sock");
        let theirs = std::os::unix::net::UnixListener::bind(&path).expect("their socket");
        let their_file = file_identity(&path);
        assert!(BoundSocket::bind_new(&path).is_err());
        assert_eq!(file_identity(&path), their_file, "their socket stays");
        drop(theirs);
        let ours = BoundSocket::bind(&path).expect("a stale socket is replaced");
        std::os::unix::net::UnixStream::connect(&path).expect("ours listens there now");
        drop(ours);
        assert!(!path.exists(), "our socket goes with us");
    }
}
