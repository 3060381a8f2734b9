//! Registering the CSI driver with the kubelet, without a node-driver-registrar container.
//!
//! The kubelet watches `<kubelet root>/plugins_registry/`; for each socket that appears there
//! it calls `GetInfo`, checks the versions, calls `NodeGetInfo` on the endpoint it was given,
//! records the driver in the node's CSINode object and reports with
//! `NotifyRegistrationStatus`. A kubelet that restarts walks the directory again. kvmount keeps
//! its registration socket there while it serves:
//!
//! - bound after the CSI socket, so the kubelet's `NodeGetInfo` finds it serving;
//! - re-created when it disappears (a wiped or re-created kubelet directory: the new file is
//!   what the kubelet's watcher acts on), checked every [`CHECK_EVERY`];
//! - left alone when another file takes its place (a second daemon during a rolling update
//!   with surge): the newer one registers, and this one offers itself again only once that
//!   file is gone, so two daemons never take the path from each other in turn;
//! - re-created after a refusal, with a growing pause, so the kubelet tries again (the
//!   upstream registrar exits instead, restarting its container; here that would stop every
//!   pod's volume service with it);
//! - removed at shutdown, so the kubelet drops the driver until the next daemon registers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kvmount_proto::pluginregistration::registration_server::RegistrationServer;
use tonic::transport::Server;

use crate::grpc::registration::{Outcome, RegistrationService, RegistrationState};
use crate::server::{BoundSocket, MAX_REQUEST_BYTES, file_identity};

/// How often the socket's presence (and the kubelet's last answer) is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// First pause before offering the socket again after the kubelet refused the driver.
const FIRST_RETRY: Duration = Duration::from_secs(2);

/// Longest pause between offers after repeated refusals.
const LAST_RETRY: Duration = Duration::from_secs(300);

/// Where and what to register.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The kubelet's registration directory (`<kubelet root>/plugins_registry`).
    pub dir: PathBuf,
    /// The CSI driver name.
    pub driver_name: String,
    /// The CSI socket's path as the kubelet sees it on the node.
    pub endpoint: String,
}

impl RegistrationConfig {
    /// The registration socket: `<dir>/<driver>-reg.sock`, the name the upstream registrar
    /// uses, so a node moving between the two keeps one file.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(format!("{}-reg.sock", self.driver_name))
    }
}

/// What the keeper does once the current socket's server has stopped.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The daemon stops.
    Stop,
    /// Offer a new socket, after the pause for a refusal.
    Offer(&'static str),
    /// Another file is at the path: wait until it is gone, then offer.
    Yield,
}

/// Serves the registration socket until `stopped()` resolves, re-creating it as described in
/// the module documentation. The first bind's failure is returned (the daemon stops, naming
/// the path); later failures are logged and retried.
pub async fn keep_registered<F, S>(
    config: RegistrationConfig,
    state: Arc<RegistrationState>,
    first: BoundSocket,
    stopped: S,
) -> anyhow::Result<()>
where
    S: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let path = config.socket_path();
    let mut socket = Some(first);
    let mut retry = FIRST_RETRY;
    loop {
        let mut bound = match socket.take() {
            Some(bound) => bound,
            // Never `bind`: it would remove a socket another daemon put there meanwhile.
            None => match BoundSocket::bind_new(&path) {
                Ok(bound) => bound,
                // Another daemon's socket appeared between ours going and this bind.
                Err(_) if file_identity(&path).is_some() => {
                    if yield_to_other_file(&path, &stopped).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot offer the registration socket; retrying");
                    if pause_or_stop(CHECK_EVERY, stopped()).await {
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        state.set(Outcome::Pending);
        let listener = bound
            .take_listener()
            .context("registration socket listener")?;
        tracing::info!(socket = %path.display(), endpoint = %config.endpoint, "offering the CSI driver to the kubelet");
        let service = RegistrationService::new(
            config.driver_name.clone(),
            config.endpoint.clone(),
            Arc::clone(&state),
        );
        // Served in a task that is aborted, not drained, when the socket is offered again: a
        // client that keeps its connection open must not hold the new offer up, and the
        // registration calls have nothing to finish.
        let mut server = tokio::spawn(
            Server::builder()
                .add_service(
                    RegistrationServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
                )
                .serve_with_incoming(kvmount_unix_h2::incoming(listener)),
        );
        let next = tokio::select! {
            next = watch(bound.path().to_owned(), bound.identity(), Arc::clone(&state), stopped()) => next,
            ended = &mut server => {
                tracing::error!(?ended, "the registration server stopped; offering the socket again");
                Next::Offer("closed")
            }
        };
        server.abort();
        // Removes the socket, unless another file took its place.
        drop(bound);
        match next {
            Next::Stop => return Ok(()),
            Next::Offer("refused") => {
                tracing::warn!(
                    pause_seconds = retry.as_secs(),
                    "the kubelet refused the driver; offering it again after a pause"
                );
                if pause_or_stop(retry, stopped()).await {
                    return Ok(());
                }
                retry = (retry * 2).min(LAST_RETRY);
            }
            Next::Offer(why) => {
                tracing::warn!(socket = %path.display(), "the registration socket was {why}; offering it again");
            }
            Next::Yield => {
                if yield_to_other_file(&path, &stopped).await {
                    return Ok(());
                }
            }
        }
        if state.outcome() == Outcome::Registered {
            retry = FIRST_RETRY;
        }
    }
}

/// Resolves when the socket should be offered again, or at stop. `ours` is the file as bound:
/// read again here, it could already be another daemon's (one that replaced ours between the
/// bind and this call would pass for ours).
async fn watch(
    path: PathBuf,
    ours: Option<(u64, u64)>,
    state: Arc<RegistrationState>,
    stop: impl Future<Output = ()>,
) -> Next {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Next::Stop,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let now = file_identity(&path);
        if now.is_none() {
            return Next::Offer("removed");
        }
        if now != ours {
            return Next::Yield;
        }
        if matches!(state.outcome(), Outcome::Refused(_)) {
            return Next::Offer("refused");
        }
    }
}

/// Waits until the file another daemon put at `path` is gone (it is never removed from here).
/// True if the daemon stopped first.
async fn yield_to_other_file<F, S>(path: &std::path::Path, stopped: &S) -> bool
where
    S: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    tracing::warn!(socket = %path.display(), "another file took the registration socket's place; offering it again once that file is gone");
    while file_identity(path).is_some() {
        if pause_or_stop(CHECK_EVERY, stopped()).await {
            return true;
        }
    }
    false
}

/// True if `stop` came first.
async fn pause_or_stop(pause: Duration, stop: impl Future<Output = ()>) -> bool {
    tokio::select! {
        _ = stop => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another daemon replaced our socket before `watch` began: compared with the file as
    /// bound, theirs is still seen as another file (read again at the start, it passed for
    /// ours, and this daemon never yielded: a CI run caught that race).
    #[tokio::test(start_paused = true)]
    async fn a_socket_replaced_before_the_watch_began_is_seen_as_another_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.sock");
        let ours = BoundSocket::bind(&path).expect("bind");
        std::fs::remove_file(&path).expect("remove ours");
        let _theirs = std::os::unix::net::UnixListener::bind(&path).expect("their socket");
        let state = Arc::new(RegistrationState::default());
        let next = tokio::time::timeout(
            Duration::from_secs(60),
            watch(path, ours.identity(), state, std::future::pending()),
        )
        .await;
        assert_eq!(next, Ok(Next::Yield), "not seen within 60 s (paused time)");
    }
}
