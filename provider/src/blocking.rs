//! Work that may block on the file system, run off the daemon's one runtime thread, so that
//! nothing a class or a pod puts on a node (a FIFO, a slow mount, a lock) holds up another
//! call.

use std::time::Duration;

/// Why blocking work gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// It panicked.
    Panicked,
    /// It did not finish within the deadline; it goes on in the background, owning what it
    /// was handed (a claim it holds is released only when it ends).
    TimedOut,
}

/// Runs `work` on a blocking thread and waits at most `deadline` for its answer.
pub async fn within<T: Send + 'static>(
    deadline: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Late> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(_)) => Err(Late::Panicked),
        Err(_) => Err(Late::TimedOut),
    }
}
