//! The one way async code runs blocking work: store reads and synced writes, signature checks,
//! and a block's domain pass (which may wait on bitcoind through the chain seam's `Broadcaster`).

/// A blocking task panicked or was cancelled at shutdown.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct TaskFailed(String);

/// Runs `work` on tokio's blocking pool and returns what it returned.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, TaskFailed> {
    tokio::task::spawn_blocking(work).await.map_err(|e| TaskFailed(e.to_string()))
}
